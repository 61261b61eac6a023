//! Finding and decoding image/mask pairs.
//!
//! # Layouts
//! A directory holds `images/` (`*.jpg`, `*.jpeg` or `*.png`) and `masks/`
//! (`*.png` with the image's file stem). Such a pair of folders may sit in the
//! directory itself (the plain layout) or in each of its subfolders (the Dubai
//! layout, `Tile N/images/image_part_00K.jpg` with
//! `Tile N/masks/image_part_00K.png`); both are read. Masks with no image are
//! left alone; an image with no mask is an error.
//!
//! # Masks
//! - RGB masks (and palette-mode PNGs, which the decoder expands to RGB) are
//!   matched against the [`Palette`] colours.
//! - Grayscale masks hold class ids directly; 255 is [`IGNORE`].
//!
//! Here a [`Tile`] is one image with its mask. (The Dubai dataset calls its
//! groups of nine images "Tiles"; those are the folders.)

use std::path::{Path, PathBuf};
// Reading files (on several threads): native only.
#[cfg(not(target_arch = "wasm32"))]
use std::{
    cmp::Ordering,
    sync::atomic::{AtomicUsize, Ordering as AtomicOrdering},
};

use image::DynamicImage;

use super::palette::{Palette, Unknown, IGNORE};
use super::DataError;

/// One image with its per-pixel class ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tile {
    /// `Tile 2/image_part_001` (folder/stem), for messages and reports.
    pub name: String,
    /// The image file it was read from (`None` for synthetic tiles).
    pub path: Option<PathBuf>,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Interleaved RGB, `[H,W,3]`, row-major.
    pub rgb: Vec<u8>,
    /// Class ids, `[H,W]`, row-major; [`IGNORE`] (255) for no class.
    pub labels: Vec<u8>,
}

/// An image file and its mask file, not yet read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// `folder/stem`, or `stem` for the plain layout.
    pub name: String,
    /// The image file.
    pub image: PathBuf,
    /// The mask file.
    pub mask: PathBuf,
}

/// Compare names so that digit runs order by value: `Tile 2` < `Tile 10`.
#[cfg(not(target_arch = "wasm32"))]
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                // Compare values without parsing (no overflow on long runs):
                // strip leading zeros, then the longer run is larger.
                let trim = |s: &[u8]| -> usize { s.iter().take_while(|&&c| c == b'0').count() };
                let (na, nb) = (&a[trim(&a[..da])..da], &b[trim(&b[..db])..db]);
                let by_value = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if by_value != Ordering::Equal {
                    return by_value;
                }
                (a, b) = (&a[da..], &b[db..]);
            }
            (Some(x), Some(y)) if x != y => return x.cmp(y),
            _ => (a, b) = (&a[1..], &b[1..]),
        }
    }
}

/// Entries of `dir`, sorted naturally by file name.
#[cfg(not(target_arch = "wasm32"))]
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let io = |cause| DataError::Io { path: dir.to_path_buf(), cause };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        entries.push(entry.map_err(io)?.path());
    }
    entries.sort_by(|a, b| natural_cmp(&file_name(a), &file_name(b)));
    Ok(entries)
}

#[cfg(not(target_arch = "wasm32"))]
fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(not(target_arch = "wasm32"))]
fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    extensions.contains(&ext.as_str())
}

/// The image/mask pairs under `dir`, in either layout (see the module doc),
/// folders and files in natural order. With `groups` non-empty only those
/// subfolders are read, in the order given.
#[cfg(not(target_arch = "wasm32"))]
pub fn find_pairs(dir: &Path, groups: &[String]) -> Result<Vec<Pair>, DataError> {
    let entries = sorted_entries(dir)?;
    // (name prefix, folder holding images/ and masks/)
    let mut folders: Vec<(String, PathBuf)> = Vec::new();
    if groups.is_empty() {
        if dir.join("images").is_dir() {
            folders.push((String::new(), dir.to_path_buf()));
        }
        for sub in entries.iter().filter(|p| p.join("images").is_dir()) {
            folders.push((format!("{}/", file_name(sub)), sub.clone()));
        }
    } else {
        for group in groups {
            let sub = dir.join(group);
            if !sub.join("images").is_dir() {
                return Err(DataError::NoPairs {
                    dir: sub,
                    note: format!("; LoadOptions::groups names `{group}`, which has no images/ folder"),
                });
            }
            folders.push((format!("{group}/"), sub));
        }
    }
    let mut pairs = Vec::new();
    for (prefix, folder) in &folders {
        for image in sorted_entries(&folder.join("images"))? {
            if !image.is_file() || !has_extension(&image, &["jpg", "jpeg", "png"]) {
                continue;
            }
            let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let mask = folder.join("masks").join(format!("{stem}.png"));
            if !mask.is_file() {
                return Err(DataError::MissingMask { image, expected: mask });
            }
            pairs.push(Pair { name: format!("{prefix}{stem}"), image, mask });
        }
    }
    if pairs.is_empty() {
        let note = if entries.is_empty() {
            " (the folder is empty)".to_string()
        } else if folders.is_empty() {
            format!(" (it holds {} entries, none of them an images/ folder)", entries.len())
        } else {
            " (the images/ folders hold no .jpg, .jpeg or .png file)".to_string()
        };
        return Err(DataError::NoPairs { dir: dir.to_path_buf(), note });
    }
    Ok(pairs)
}

/// Decode a JPEG or PNG (format from the file's content, not its name).
#[cfg(not(target_arch = "wasm32"))]
pub fn decode(path: &Path) -> Result<DynamicImage, DataError> {
    let bytes = std::fs::read(path).map_err(|cause| DataError::Io { path: path.to_path_buf(), cause })?;
    let decode_error = |reason: String| DataError::Decode { path: path.to_path_buf(), reason };
    // The JPEG decoder fills in a cut-off file with grey instead of failing.
    // A complete JPEG has its end-of-image marker FF D9 after the start of
    // its last scan (FF DA); inside scan data an FF byte is always followed
    // by 00 or a restart marker, so neither pair can appear there by chance.
    // Bytes some cameras append after the image do not matter.
    if bytes.starts_with(&[0xFF, 0xD8]) {
        let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap_or(0);
        if !bytes[last_scan..].windows(2).any(|w| w == [0xFF, 0xD9]) {
            return Err(decode_error("JPEG data ends without its end-of-image marker".into()));
        }
    }
    // Decoders should return errors, but a panic on hostile input must not
    // take the trainer down with a message that names no file.
    std::panic::catch_unwind(|| image::load_from_memory(&bytes))
        .map_err(|_| decode_error("the decoder crashed on this file".into()))?
        .map_err(|e| decode_error(e.to_string()))
}

/// Read an image as interleaved RGB `[H,W,3]`: `(width, height, rgb)`.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_image(path: &Path) -> Result<(usize, usize, Vec<u8>), DataError> {
    let rgb = decode(path)?.into_rgb8();
    Ok((rgb.width() as usize, rgb.height() as usize, rgb.into_raw()))
}

/// Class ids `[H,W]` of a decoded mask: grayscale values are ids (255 =
/// [`IGNORE`]), colours are matched through `palette`.
pub fn mask_labels(mask: DynamicImage, palette: &Palette, unknown: Unknown, path: &Path) -> Result<Vec<u8>, DataError> {
    let values: Vec<u16> = match mask {
        DynamicImage::ImageLuma8(m) => m.into_raw().into_iter().map(u16::from).collect(),
        DynamicImage::ImageLumaA8(m) => m.into_raw().chunks_exact(2).map(|p| u16::from(p[0])).collect(),
        DynamicImage::ImageLuma16(m) => m.into_raw(),
        DynamicImage::ImageLumaA16(m) => m.into_raw().chunks_exact(2).map(|p| p[0]).collect(),
        colour => return palette.rgb_to_labels(colour.into_rgb8().as_raw(), unknown, path),
    };
    let classes = palette.len() as u16;
    let valid = |v: u16| v < classes || v == IGNORE as u16;
    if let Some(&bad) = values.iter().find(|&&v| !valid(v)) {
        if unknown == Unknown::Error {
            let count = values.iter().filter(|&&v| v == bad).count() as u64;
            return Err(DataError::MaskValue { path: path.to_path_buf(), value: bad, count, classes: palette.len() });
        }
    }
    Ok(values.into_iter().map(|v| if valid(v) { v as u8 } else { IGNORE as u8 }).collect())
}

/// Read one pair: decode both, check sizes, convert the mask to class ids.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_pair(pair: &Pair, palette: &Palette, unknown: Unknown) -> Result<Tile, DataError> {
    let (width, height, rgb) = read_image(&pair.image)?;
    let mask = decode(&pair.mask)?;
    let got = (mask.width() as usize, mask.height() as usize);
    if got != (width, height) {
        return Err(DataError::MaskSize {
            mask: pair.mask.clone(),
            image: pair.image.clone(),
            got,
            want: (width, height),
        });
    }
    let labels = mask_labels(mask, palette, unknown, &pair.mask)?;
    Ok(Tile { name: pair.name.clone(), path: Some(pair.image.clone()), width, height, rgb, labels })
}

/// Read `pairs` on `threads` threads (0: one per core), keeping their order.
/// On failure returns the error of the first failing pair in order, the same
/// one a single thread would report.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_pairs(pairs: &[Pair], palette: &Palette, unknown: Unknown, threads: usize) -> Result<Vec<Tile>, DataError> {
    let n = pairs.len();
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |t| t.get()),
        t => t,
    }
    .clamp(1, n.max(1));
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<Result<Tile, DataError>>> = (0..n).map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, AtomicOrdering::Relaxed);
                        if i >= n {
                            break done;
                        }
                        let result = load_pair(&pairs[i], palette, unknown);
                        if result.is_err() {
                            // Stop handing out work. Every pair before `i` was
                            // handed out earlier and still finishes, so the
                            // first error in order is among the results.
                            next.store(n, AtomicOrdering::Relaxed);
                        }
                        done.push((i, result));
                    }
                })
            })
            .collect();
        for worker in workers {
            // `load_pair` catches decoder panics, so a worker cannot panic.
            for (i, result) in worker.join().expect("a loader thread panicked") {
                results[i] = Some(result);
            }
        }
    });
    // Stops at the first pair not read (after an error) or failed.
    results.into_iter().map_while(|r| r).collect()
}

#[cfg(test)]
mod tests {
    use super::super::test_dir::TempDir;
    use super::*;
    use image::{GrayImage, RgbImage};

    const LAND: [u8; 3] = [132, 41, 246];
    const ROAD: [u8; 3] = [110, 193, 228];

    /// A dataset folder with `n` w x h pairs (JPEG images, RGB masks: left
    /// half Land, right half Road), in `dir/<group>/`.
    fn write_pairs(dir: &Path, group: &str, n: usize, (w, h): (u32, u32)) {
        let root = dir.join(group);
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::create_dir_all(root.join("masks")).unwrap();
        for k in 1..=n {
            let image = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
            image.save(root.join(format!("images/part_{k}.jpg"))).unwrap();
            let mask = RgbImage::from_fn(w, h, |x, _| image::Rgb(if x < w / 2 { LAND } else { ROAD }));
            mask.save(root.join(format!("masks/part_{k}.png"))).unwrap();
        }
    }

    fn error_of(dir: &Path) -> String {
        let pairs = find_pairs(dir, &[]);
        let result = pairs.and_then(|p| load_pairs(&p, &Palette::dubai(), Unknown::Error, 1));
        result.expect_err("bad data must fail").to_string()
    }

    fn assert_mentions(msg: &str, parts: &[&str]) {
        for part in parts {
            assert!(msg.contains(part), "missing `{part}` in: {msg}");
        }
    }

    #[test]
    fn natural_order_sorts_numbers_by_value() {
        let mut names = vec!["Tile 10", "Tile 2", "Tile 1", "a002", "a10", "a01", "b"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, ["Tile 1", "Tile 2", "Tile 10", "a01", "a002", "a10", "b"]);
    }

    #[test]
    fn both_layouts_are_found_and_loaded_in_order() {
        let tmp = TempDir::new("layouts");
        write_pairs(&tmp.0, "Tile 10", 1, (8, 6));
        write_pairs(&tmp.0, "Tile 2", 2, (8, 6));
        write_pairs(&tmp.0, "", 1, (8, 6)); // plain layout in the root too
        std::fs::write(tmp.0.join("Tile 2/masks/orphan.png"), b"left alone").unwrap();
        let pairs = find_pairs(&tmp.0, &[]).unwrap();
        let names: Vec<&str> = pairs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["part_1", "Tile 2/part_1", "Tile 2/part_2", "Tile 10/part_1"]);
        let only = find_pairs(&tmp.0, &["Tile 10".to_string()]).unwrap();
        assert_eq!(only.len(), 1);
        let tiles = load_pairs(&pairs, &Palette::dubai(), Unknown::Error, 2).unwrap();
        assert_eq!(tiles.len(), 4);
        let t = &tiles[1];
        assert_eq!((t.width, t.height, t.rgb.len()), (8, 6, 8 * 6 * 3));
        assert_eq!(&t.labels[..8], [1, 1, 1, 1, 2, 2, 2, 2]);
    }

    #[test]
    fn grayscale_masks_hold_class_ids() {
        // (Palette-mode PNG masks are covered by the Dubai test: Tile 2's are.)
        let tmp = TempDir::new("maskkinds");
        let gray = tmp.0.join("g.png");
        GrayImage::from_raw(4, 1, vec![0, 5, 255, 3]).unwrap().save(&gray).unwrap();
        let labels = mask_labels(decode(&gray).unwrap(), &Palette::dubai(), Unknown::Error, &gray).unwrap();
        assert_eq!(labels, [0, 5, 255, 3]);
    }

    #[test]
    fn grayscale_value_beyond_the_classes_is_an_error_or_ignored() {
        let tmp = TempDir::new("grayvalue");
        let gray = tmp.0.join("g.png");
        GrayImage::from_raw(4, 1, vec![0, 7, 7, 1]).unwrap().save(&gray).unwrap();
        let decoded = decode(&gray).unwrap();
        let msg = mask_labels(decoded.clone(), &Palette::dubai(), Unknown::Error, &gray).unwrap_err().to_string();
        assert_mentions(&msg, &["g.png", "2 pixels of value 7", "6 classes"]);
        let labels = mask_labels(decoded, &Palette::dubai(), Unknown::Ignore, &gray).unwrap();
        assert_eq!(labels, [0, 255, 255, 1]);
    }

    #[test]
    fn truncated_and_garbage_files_are_decode_errors() {
        let tmp = TempDir::new("truncated");
        write_pairs(&tmp.0, "", 1, (32, 32));
        let jpg = tmp.0.join("images/part_1.jpg");
        let bytes = std::fs::read(&jpg).unwrap();
        std::fs::write(&jpg, &bytes[..bytes.len() / 2]).unwrap();
        assert_mentions(&error_of(&tmp.0), &["cannot decode", "images/part_1.jpg", "truncated"]);

        // Trailing bytes after a complete JPEG are fine.
        let mut padded = bytes.clone();
        padded.extend(std::iter::repeat_n(0x55, 300));
        std::fs::write(&jpg, &padded).unwrap();
        assert_eq!(read_image(&jpg).unwrap().0, 32);

        std::fs::write(&jpg, &bytes).unwrap();
        let png = tmp.0.join("masks/part_1.png");
        let bytes = std::fs::read(&png).unwrap();
        std::fs::write(&png, &bytes[..bytes.len() - 20]).unwrap();
        assert_mentions(&error_of(&tmp.0), &["cannot decode", "masks/part_1.png"]);

        std::fs::write(&png, b"not an image at all").unwrap();
        assert_mentions(&error_of(&tmp.0), &["cannot decode", "masks/part_1.png"]);
        std::fs::write(&png, b"").unwrap();
        assert_mentions(&error_of(&tmp.0), &["cannot decode", "masks/part_1.png"]);
    }

    #[test]
    fn mask_of_another_size_is_an_error() {
        let tmp = TempDir::new("masksize");
        write_pairs(&tmp.0, "Tile 1", 1, (16, 12));
        let mask = RgbImage::from_pixel(15, 12, image::Rgb(LAND));
        mask.save(tmp.0.join("Tile 1/masks/part_1.png")).unwrap();
        assert_mentions(&error_of(&tmp.0), &["Tile 1/masks/part_1.png", "15x12", "Tile 1/images/part_1.jpg", "16x12"]);
    }

    #[test]
    fn unknown_mask_colour_is_an_error_naming_file_colour_and_count() {
        let tmp = TempDir::new("colour");
        write_pairs(&tmp.0, "", 1, (4, 4));
        let mut mask = RgbImage::from_pixel(4, 4, image::Rgb(LAND));
        for x in 0..3 {
            mask.put_pixel(x, 1, image::Rgb([80, 227, 194])); // classes.json's wrong Water
        }
        mask.save(tmp.0.join("masks/part_1.png")).unwrap();
        assert_mentions(&error_of(&tmp.0), &["masks/part_1.png", "3 pixels of colour #50E3C2", "Unknown::Ignore"]);
    }

    #[test]
    fn missing_mask_empty_dir_and_missing_dir_are_errors() {
        let tmp = TempDir::new("missing");
        assert_mentions(&error_of(&tmp.0), &["no image/mask pairs", "the folder is empty"]);
        std::fs::write(tmp.0.join("notes.txt"), b"").unwrap();
        assert_mentions(&error_of(&tmp.0), &["no image/mask pairs", "none of them an images/ folder"]);
        write_pairs(&tmp.0, "Tile 1", 2, (8, 8));
        std::fs::remove_file(tmp.0.join("Tile 1/masks/part_2.png")).unwrap();
        assert_mentions(&error_of(&tmp.0), &["Tile 1/images/part_2.jpg has no mask", "Tile 1/masks/part_2.png"]);
        let msg = find_pairs(&tmp.0, &["Tile 9".into()]).unwrap_err().to_string();
        assert_mentions(&msg, &["Tile 9", "no images/ folder"]);
        assert_mentions(&error_of(&tmp.0.join("nowhere")), &["cannot read", "nowhere"]);
    }

    #[test]
    fn the_first_bad_pair_in_order_is_reported_whatever_the_threads() {
        let tmp = TempDir::new("firsterror");
        write_pairs(&tmp.0, "", 6, (8, 8));
        std::fs::write(tmp.0.join("images/part_3.jpg"), b"junk").unwrap();
        std::fs::write(tmp.0.join("images/part_5.jpg"), b"junk").unwrap();
        let pairs = find_pairs(&tmp.0, &[]).unwrap();
        for threads in [1, 2, 4] {
            let msg = load_pairs(&pairs, &Palette::dubai(), Unknown::Error, threads).unwrap_err().to_string();
            assert_mentions(&msg, &["part_3.jpg"]);
        }
    }
}
