//! Class names and mask colours, and the conversion of an RGB mask into class
//! ids.
//!
//! Class ids are the order of the classes in the palette: `0..len()`. A pixel
//! of the palette's no-class colour (black in the Dubai masks) becomes
//! [`IGNORE`], which the loss and the metrics skip.
//!
//! # Palette file format
//! One class per line, in class-id order: the class name, then the colour as
//! `#RRGGBB`. The name is everything before the last word, so it may contain
//! spaces. A line `ignore #RRGGBB` (optional, at most one) names the no-class
//! colour. Blank lines and lines starting with `#` are skipped.
//! ```text
//! # Dubai aerial imagery
//! Building            #3C1098
//! Land (unpaved area) #8429F6
//! Road                #6EC1E4
//! Vegetation          #FEDD3A
//! Water               #E2A929
//! Unlabeled           #9B9B9B
//! ignore              #000000
//! ```

use std::collections::HashMap;
use std::path::Path;

use super::DataError;

/// The label of pixels that belong to no class (the no-class colour, or an
/// unknown colour with [`Unknown::Ignore`]). It does not fit any class id
/// because a palette holds at most [`MAX_CLASSES`] classes.
pub const IGNORE: u32 = 255;

/// The most classes a palette may hold: ids must stay below [`IGNORE`] so that
/// labels fit a `u8` in memory.
pub const MAX_CLASSES: usize = 255;

/// What to do with a mask pixel whose colour (or index) is neither a class nor
/// the no-class colour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unknown {
    /// Fail with [`DataError::UnknownColour`] (or [`DataError::MaskValue`]):
    /// a stray colour usually means a wrong palette, which silently ignoring
    /// would hide.
    #[default]
    Error,
    /// Label such pixels [`IGNORE`] (for masks with anti-aliased edges).
    Ignore,
}

/// Class names and their mask colours, plus the optional no-class colour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Palette {
    names: Vec<String>,
    colours: Vec<[u8; 3]>,
    ignore: Option<[u8; 3]>,
}

/// `#RRGGBB` for a colour, as error messages and palette files write it.
pub fn hex(rgb: [u8; 3]) -> String {
    format!("#{:02X}{:02X}{:02X}", rgb[0], rgb[1], rgb[2])
}

/// Parse `#RRGGBB` (the `#` is required, hex digits in either case).
pub fn parse_hex(text: &str) -> Option<[u8; 3]> {
    let digits = text.strip_prefix('#')?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&digits[i..i + 2], 16).ok();
    Some([byte(0)?, byte(2)?, byte(4)?])
}

impl Palette {
    /// The Dubai aerial imagery palette, with the colours the masks really use
    /// (the dataset's `classes.json` lists other, wrong colours). Black is the
    /// no-class colour.
    pub fn dubai() -> Palette {
        let classes = [
            ("Building", [60, 16, 152]),
            ("Land", [132, 41, 246]),
            ("Road", [110, 193, 228]),
            ("Vegetation", [254, 221, 58]),
            ("Water", [226, 169, 41]),
            ("Unlabeled", [155, 155, 155]),
        ];
        let classes = classes.iter().map(|&(name, rgb)| (name.to_string(), rgb)).collect();
        Palette::new(classes, Some([0, 0, 0])).expect("the Dubai palette is valid")
    }

    /// A palette of `(name, colour)` classes in class-id order and an optional
    /// no-class colour. Fails on no class, more than [`MAX_CLASSES`], or a
    /// colour used twice (a mask pixel of that colour would be ambiguous).
    pub fn new(classes: Vec<(String, [u8; 3])>, ignore: Option<[u8; 3]>) -> Result<Palette, DataError> {
        if classes.is_empty() {
            return Err(DataError::Palette("a palette needs at least one class".into()));
        }
        if classes.len() > MAX_CLASSES {
            return Err(DataError::Palette(format!(
                "{} classes, but at most {MAX_CLASSES} fit (ids must stay below the ignore label {IGNORE})",
                classes.len()
            )));
        }
        let mut seen: HashMap<[u8; 3], &str> = HashMap::new();
        for (name, rgb) in classes.iter().map(|(n, c)| (n.as_str(), *c)).chain(ignore.map(|c| ("ignore", c))) {
            if let Some(first) = seen.insert(rgb, name) {
                return Err(DataError::Palette(format!(
                    "colour {} is given to both `{first}` and `{name}`: give each class its own colour",
                    hex(rgb)
                )));
            }
        }
        let (names, colours) = classes.into_iter().unzip();
        Ok(Palette { names, colours, ignore })
    }

    /// Parse a palette file's text (format in the module doc); `path` only
    /// names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Palette, DataError> {
        let mut classes = Vec::new();
        let mut ignore = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            // A colour starts with '#' too, but always after a name: a line
            // that starts with '#' can only be a comment.
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |reason: String| DataError::PaletteSyntax { path: path.to_path_buf(), line: i + 1, reason };
            let Some((name, colour)) = line.rsplit_once(char::is_whitespace) else {
                return Err(syntax(format!("`{line}` is not `name #RRGGBB`")));
            };
            let name = name.trim();
            let Some(rgb) = parse_hex(colour) else {
                return Err(syntax(format!("`{colour}` is not a colour: write it as #RRGGBB, e.g. #3C1098")));
            };
            if name.is_empty() {
                return Err(syntax(format!("colour {colour} has no class name before it")));
            }
            if name == "ignore" {
                if ignore.replace(rgb).is_some() {
                    return Err(syntax("a second `ignore` line: there is one no-class colour".into()));
                }
            } else {
                classes.push((name.to_string(), rgb));
            }
        }
        Palette::new(classes, ignore).map_err(|e| match e {
            DataError::Palette(reason) => DataError::PaletteSyntax { path: path.to_path_buf(), line: 0, reason },
            other => other,
        })
    }

    /// Read a palette file (format in the module doc).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(path: impl AsRef<Path>) -> Result<Palette, DataError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|cause| DataError::Io { path: path.to_path_buf(), cause })?;
        Palette::parse(&text, path)
    }

    /// The palette as a palette file's text; [`Palette::parse`] reads it back.
    pub fn to_file_text(&self) -> String {
        let width = self.names.iter().map(|n| n.len()).max().unwrap_or(0).max(6);
        let mut text = String::new();
        for (name, rgb) in self.names.iter().zip(&self.colours) {
            text += &format!("{name:<width$} {}\n", hex(*rgb));
        }
        if let Some(rgb) = self.ignore {
            text += &format!("{:<width$} {}\n", "ignore", hex(rgb));
        }
        text
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always false: a palette has at least one class.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Class names, by class id.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Class colours, by class id.
    pub fn colours(&self) -> &[[u8; 3]] {
        &self.colours
    }

    /// The no-class colour, if any.
    pub fn ignore_colour(&self) -> Option<[u8; 3]> {
        self.ignore
    }

    /// The class id of `rgb`, [`IGNORE`] for the no-class colour, `None` for
    /// any other colour.
    pub fn class_of(&self, rgb: [u8; 3]) -> Option<u32> {
        if self.ignore == Some(rgb) {
            return Some(IGNORE);
        }
        self.colours.iter().position(|&c| c == rgb).map(|i| i as u32)
    }

    /// Class ids (as `u8`; [`IGNORE`] is 255) of an interleaved RGB mask
    /// `rgb` `[H,W,3]`. `path` names the mask in errors. An unknown colour fails
    /// with the colour, its pixel count and how many other unknown colours
    /// there are, unless `unknown` is [`Unknown::Ignore`].
    pub fn rgb_to_labels(&self, rgb: &[u8], unknown: Unknown, path: &Path) -> Result<Vec<u8>, DataError> {
        let mut labels = Vec::with_capacity(rgb.len() / 3);
        let mut unknowns: HashMap<[u8; 3], u64> = HashMap::new();
        // Masks are long runs of one colour: remembering the last match skips
        // the palette search for almost every pixel.
        let mut last: Option<([u8; 3], u8)> = None;
        for px in rgb.chunks_exact(3) {
            let px = [px[0], px[1], px[2]];
            let label = match last {
                Some((c, l)) if c == px => l,
                _ => match self.class_of(px) {
                    Some(class) => {
                        last = Some((px, class as u8));
                        class as u8
                    }
                    None => {
                        *unknowns.entry(px).or_default() += 1;
                        IGNORE as u8
                    }
                },
            };
            labels.push(label);
        }
        if unknown == Unknown::Error && !unknowns.is_empty() {
            // Report the most frequent stray colour (ties: the smallest, so the
            // message does not depend on hash order).
            let (&colour, &count) = unknowns.iter().max_by_key(|(c, n)| (**n, std::cmp::Reverse(**c))).unwrap();
            return Err(DataError::UnknownColour {
                path: path.to_path_buf(),
                colour: hex(colour),
                count,
                others: unknowns.len() - 1,
                known: self.describe_colours(),
            });
        }
        Ok(labels)
    }

    /// An interleaved RGB image `[H,W,3]` of class ids `labels` `[H,W]`, for
    /// looking at masks and predictions; [`IGNORE`] and out-of-range ids are
    /// drawn in the no-class colour (black when there is none).
    pub fn labels_to_rgb(&self, labels: &[u32]) -> Vec<u8> {
        let none = self.ignore.unwrap_or([0, 0, 0]);
        labels.iter().flat_map(|&l| self.colours.get(l as usize).copied().unwrap_or(none)).collect()
    }

    /// `Building #3C1098, Land #8429F6, ..., no class #000000` for messages.
    pub(crate) fn describe_colours(&self) -> String {
        let mut parts: Vec<String> =
            self.names.iter().zip(&self.colours).map(|(n, c)| format!("{n} {}", hex(*c))).collect();
        if let Some(c) = self.ignore {
            parts.push(format!("no class {}", hex(c)));
        }
        parts.join(", ")
    }
}

impl Default for Palette {
    /// The Dubai palette.
    fn default() -> Palette {
        Palette::dubai()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dubai_palette_has_the_readme_colours_in_class_order() {
        let p = Palette::dubai();
        assert_eq!(p.len(), 6);
        assert_eq!(p.names()[1], "Land");
        assert_eq!(p.class_of([60, 16, 152]), Some(0));
        assert_eq!(p.class_of(parse_hex("#9B9B9B").unwrap()), Some(5));
        assert_eq!(p.class_of([0, 0, 0]), Some(IGNORE));
        // classes.json's (wrong) Water colour is not a class.
        assert_eq!(p.class_of(parse_hex("#50E3C2").unwrap()), None);
    }

    #[test]
    fn hex_round_trips_and_rejects_bad_text() {
        assert_eq!(hex([254, 221, 58]), "#FEDD3A");
        assert_eq!(parse_hex("#fedd3a"), Some([254, 221, 58]));
        for bad in ["FEDD3A", "#FEDD3", "#FEDD3AA", "#GGDD3A", "#"] {
            assert_eq!(parse_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn palette_file_round_trips_and_allows_spaces_and_comments() {
        let p = Palette::dubai();
        assert_eq!(Palette::parse(&p.to_file_text(), Path::new("p.txt")).unwrap(), p);
        let text = "# my data\n\nLand (unpaved area)  #8429F6\nsea #0000ff\n";
        let q = Palette::parse(text, Path::new("p.txt")).unwrap();
        assert_eq!(q.names(), ["Land (unpaved area)", "sea"]);
        assert_eq!(q.colours(), [[132, 41, 246], [0, 0, 255]]);
        assert_eq!(q.ignore_colour(), None);
    }

    #[test]
    fn palette_file_errors_name_the_file_and_line() {
        let cases = [
            ("a #112233\nb 112233\n", "p.txt line 2", "not a colour"),
            ("a #112233\nnocolour\n", "p.txt line 2", "not `name #RRGGBB`"),
            ("a #112233\nb #112233\n", "p.txt", "both `a` and `b`"),
            ("ignore #000000\n", "p.txt", "at least one class"),
            ("a #112233\nignore #000000\nignore #000001\n", "line 3", "second `ignore`"),
        ];
        for (text, place, reason) in cases {
            let msg = Palette::parse(text, Path::new("p.txt")).unwrap_err().to_string();
            assert!(msg.contains(place) && msg.contains(reason), "{text:?} gave: {msg}");
        }
    }

    #[test]
    fn palette_load_reports_a_missing_file() {
        let msg = Palette::load("/nonexistent/palette.txt").unwrap_err().to_string();
        assert!(msg.contains("/nonexistent/palette.txt"), "{msg}");
    }

    #[test]
    fn rgb_to_labels_maps_classes_and_black_to_ignore() {
        let p = Palette::dubai();
        let rgb = [132, 41, 246, 0, 0, 0, 226, 169, 41, 226, 169, 41, 60, 16, 152];
        let labels = p.rgb_to_labels(&rgb, Unknown::Error, Path::new("m.png")).unwrap();
        assert_eq!(labels, [1, 255, 4, 4, 0]);
        let back = p.labels_to_rgb(&labels.iter().map(|&l| l as u32).collect::<Vec<_>>());
        assert_eq!(back, rgb);
    }

    #[test]
    fn unknown_colour_names_file_colour_and_count_or_is_ignored() {
        let p = Palette::dubai();
        let mut rgb = vec![];
        for px in [[1, 2, 3], [132, 41, 246], [1, 2, 3], [9, 9, 9], [1, 2, 3]] {
            rgb.extend(px);
        }
        let msg = p.rgb_to_labels(&rgb, Unknown::Error, Path::new("Tile 9/masks/x.png")).unwrap_err().to_string();
        for part in ["Tile 9/masks/x.png", "3 pixels", "#010203", "1 other unknown colour", "Land #8429F6"] {
            assert!(msg.contains(part), "missing `{part}` in: {msg}");
        }
        let labels = p.rgb_to_labels(&rgb, Unknown::Ignore, Path::new("x.png")).unwrap();
        assert_eq!(labels, [255, 1, 255, 255, 255]);
    }
}
