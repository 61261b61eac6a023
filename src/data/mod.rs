//! The data pipeline, all on the CPU: read image/mask pairs (or make
//! synthetic ones), turn mask colours into class ids, cut patches, split
//! train/validation, and hand out shuffled, augmented batches in the layout
//! the GPU tensors want.
//!
//! ```no_run
//! use unet_wgpu::data::{BatchOptions, Dataset, LoadOptions, SplitOptions, DEFAULT_PATCH};
//! # fn main() -> Result<(), unet_wgpu::data::DataError> {
//! let data = Dataset::load("tests/fixtures/dubai-slice", &LoadOptions::default())?;
//! let patches = data.patches(DEFAULT_PATCH)?;
//! let (train, val) = patches.split(&SplitOptions::default())?;
//! println!("{}", train.class_frequencies());
//! for batch in train.batches(&BatchOptions { batch_size: 8, seed: 1, ..Default::default() })? {
//!     // batch.images: [n,3,P,P] f32, batch.labels: [n,P,P] u32
//! }
//! # Ok(()) }
//! ```
//!
//! Memory: tiles and patches keep pixels as `u8` (RGB and class ids); only a
//! batch is widened to `f32`/`u32`. The whole Dubai set as `f32` patches would
//! take four times the memory for no gain.

pub mod palette;
pub mod patches;
pub mod scaling;
pub mod split;
pub mod synthetic;
pub mod tiles;

#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;
use std::path::PathBuf;

pub use palette::{Palette, Unknown, IGNORE};
pub use patches::{Augment, Batch, BatchOptions, Batches, ClassFrequencies, Origin, Patches};
pub use scaling::{ChannelStats, InputScaling, Scaling};
pub use split::{SplitLevel, SplitOptions};
pub use tiles::{Pair, Tile};

/// The patch side the Keras tutorial for the Dubai dataset uses.
pub const DEFAULT_PATCH: usize = 256;

/// Everything that can go wrong reading or preparing data. Each message names
/// the file, value or limit at fault and says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read at all.
    #[error("cannot read {}: {cause}; check that it exists and is readable", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said (in the message already, so not a `source()`,
        /// which would print it twice in an error chain).
        cause: std::io::Error,
    },
    /// An image or mask file is not a decodable JPEG/PNG (corrupt or truncated).
    #[error("cannot decode {}: {reason}; the file is truncated or not a valid JPEG/PNG: re-download it, or remove it together with its image/mask", .path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// A mask whose size differs from its image's.
    #[error("mask {} is {}x{} (WxH) but its image {} is {}x{}: masks must match their image pixel for pixel; check that the pair belongs together and neither was resized", .mask.display(), .got.0, .got.1, .image.display(), .want.0, .want.1)]
    MaskSize {
        /// The mask file.
        mask: PathBuf,
        /// The image file.
        image: PathBuf,
        /// Mask (width, height).
        got: (usize, usize),
        /// Image (width, height).
        want: (usize, usize),
    },
    /// A mask colour that is neither a class nor the no-class colour.
    #[error("mask {} has {count} pixels of colour {colour}, which is neither a class nor the no-class colour ({known}){}; fix the mask, add the colour to a palette file (LoadOptions::palette), or map unknown colours to the ignore label (LoadOptions::unknown = Unknown::Ignore)", .path.display(), others_note(.others))]
    UnknownColour {
        /// The mask file.
        path: PathBuf,
        /// The most frequent unknown colour, `#RRGGBB`.
        colour: String,
        /// How many pixels have that colour.
        count: u64,
        /// How many other unknown colours the mask has.
        others: usize,
        /// The palette's colours, for comparison.
        known: String,
    },
    /// A class-index (grayscale) mask value that is not a class id nor 255.
    #[error("class-index mask {} has {count} pixels of value {value}, but the palette has {classes} classes (ids 0..={}) and 255 means no class; fix the mask, use a palette with more classes, or set LoadOptions::unknown = Unknown::Ignore", .path.display(), .classes - 1)]
    MaskValue {
        /// The mask file.
        path: PathBuf,
        /// The first out-of-range value found.
        value: u16,
        /// How many pixels have that value.
        count: u64,
        /// Number of classes in the palette.
        classes: usize,
    },
    /// A directory with no image/mask pairs.
    #[error("no image/mask pairs under {}: expected `images/*.jpg|png` with `masks/*.png` of the same name, either in it or in its subfolders (the Dubai layout `Tile N/images`, `Tile N/masks`){}", .dir.display(), .note)]
    NoPairs {
        /// The directory searched.
        dir: PathBuf,
        /// What was found instead, if anything useful.
        note: String,
    },
    /// An image without its mask.
    #[error("image {} has no mask: expected {}; add the mask or remove the image", .image.display(), .expected.display())]
    MissingMask {
        /// The image file.
        image: PathBuf,
        /// Where its mask should be.
        expected: PathBuf,
    },
    /// An image smaller than one patch, which would give no patch at all.
    #[error("image {} is {width}x{height} (WxH), smaller than one {patch}x{patch} patch: use a smaller patch size or leave this image out", .path.display())]
    TooSmall {
        /// The image (file path, or name for synthetic tiles).
        path: PathBuf,
        /// Its width.
        width: usize,
        /// Its height.
        height: usize,
        /// The patch side asked for.
        patch: usize,
    },
    /// A palette file that does not follow the format.
    #[error("palette file {}{}: {reason}; the format is one `name #RRGGBB` line per class, plus an optional `ignore #RRGGBB` line", .path.display(), line_note(.line))]
    PaletteSyntax {
        /// The palette file.
        path: PathBuf,
        /// 1-based line number, 0 when the fault is the file as a whole.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A palette that cannot work (no class, a colour used twice, ...).
    #[error("invalid palette: {0}")]
    Palette(String),
    /// An option outside its range (patch size 0, batch size 0, ...).
    #[error("{name} = {value} is invalid: {reason}")]
    Option {
        /// The option.
        name: &'static str,
        /// Its value, as written.
        value: String,
        /// The allowed range.
        reason: String,
    },
}

fn others_note(others: &usize) -> String {
    match *others {
        0 => String::new(),
        1 => " (and 1 other unknown colour)".into(),
        n => format!(" (and {n} other unknown colours)"),
    }
}

fn line_note(line: &usize) -> String {
    if *line == 0 {
        String::new()
    } else {
        format!(" line {line}")
    }
}

/// How to read a dataset directory.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Class colours of RGB masks (and the class count of class-index masks).
    pub palette: Palette,
    /// What to do with mask colours that are neither a class nor no-class.
    pub unknown: Unknown,
    /// Only these subfolders (e.g. `["Tile 2"]`); empty reads all of them.
    pub groups: Vec<String>,
    /// Decoding threads; 0 uses every core. Decoding is the slow part of
    /// loading, and images are independent.
    pub threads: usize,
}

impl Default for LoadOptions {
    /// The Dubai palette, unknown colours are errors, all folders, all cores.
    fn default() -> LoadOptions {
        LoadOptions { palette: Palette::dubai(), unknown: Unknown::Error, groups: Vec::new(), threads: 0 }
    }
}

/// Image/mask tiles with their palette: what [`Dataset::patches`] cuts up.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The classes the labels refer to.
    pub palette: Palette,
    /// The images with their labels, in a stable order (folders and files
    /// sorted naturally: `Tile 2` before `Tile 10`).
    pub tiles: Vec<Tile>,
}

impl Dataset {
    /// Read every image/mask pair under `dir` (layouts in [`tiles`]). Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<Dataset, DataError> {
        let pairs = tiles::find_pairs(dir.as_ref(), &options.groups)?;
        let tiles = tiles::load_pairs(&pairs, &options.palette, options.unknown, options.threads)?;
        Ok(Dataset { palette: options.palette.clone(), tiles })
    }

    /// `tiles` synthetic aerial-like tiles of `size`x`size` pixels, the same
    /// for the same seed on every machine (see [`synthetic`]); Dubai palette.
    pub fn synthetic(seed: u64, tiles: usize, size: usize) -> Dataset {
        Dataset { palette: Palette::dubai(), tiles: synthetic::tiles(seed, tiles, size) }
    }

    /// Number of tiles.
    pub fn len(&self) -> usize {
        self.tiles.len()
    }

    /// True with no tile.
    pub fn is_empty(&self) -> bool {
        self.tiles.is_empty()
    }

    /// Cut every tile into non-overlapping `patch`x`patch` patches, the
    /// Keras tutorial's way (see [`patches::patchify`]).
    pub fn patches(&self, patch: usize) -> Result<Patches, DataError> {
        patches::patchify(&self.tiles, patch, self.palette.names())
    }

    /// Pixel count per class over all tiles.
    pub fn class_frequencies(&self) -> ClassFrequencies {
        ClassFrequencies::count(self.palette.names(), self.tiles.iter().map(|t| t.labels.as_slice()))
    }
}

#[cfg(test)]
pub(crate) mod test_dir {
    //! Unique scratch directories for tests that write files.
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh empty directory under the system temp dir, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("unet-wgpu-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four pairs of the Dubai dataset shipped with the crate (see its README.md): tests read
    /// nothing outside the repository.
    fn dubai_slice() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dubai-slice")
    }

    #[test]
    fn dubai_pairs_are_found_in_natural_order() {
        let pairs = tiles::find_pairs(&dubai_slice(), &[]).unwrap();
        let names: Vec<&str> = pairs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["Tile 2/image_part_001", "Tile 2/image_part_002", "Tile 3/image_part_006", "Tile 3/image_part_007"]
        );
        let only_3 = tiles::find_pairs(&dubai_slice(), &["Tile 3".to_string()]).unwrap();
        assert_eq!(only_3.len(), 2);
    }

    #[test]
    fn dubai_palette_and_rgb_masks_load_with_plausible_labels_and_patch_counts() {
        let data = Dataset::load(dubai_slice(), &LoadOptions::default()).unwrap();
        assert_eq!(data.len(), 4);
        for tile in &data.tiles {
            assert_eq!(tile.labels.len(), tile.width * tile.height);
            assert!(tile.labels.iter().all(|&l| (l as usize) < 6 || l as u32 == IGNORE), "{}", tile.name);
        }
        // Tile 2 (palette-mode PNG masks) is 509 or 510 x 544: 1x2 patches of
        // 256; Tile 3 is 682x658: 2x2. Tile 3 has a few black (ignored) pixels.
        assert_eq!((data.tiles[0].width, data.tiles[1].width), (509, 510));
        let patches = data.patches(DEFAULT_PATCH).unwrap();
        assert_eq!(patches.len(), 2 * 2 + 2 * 4);
        let freq = data.class_frequencies();
        println!("{freq}");
        assert_eq!(freq.total(), 509 * 544 + 510 * 544 + 2 * 682 * 658);
        assert_eq!(freq.ignored, 302 + 4, "black pixels of Tile 3 parts 006 and 007: {freq}");
        let land = freq.counts[1];
        assert!(freq.counts.iter().all(|&c| c <= land), "Land should be the most frequent: {freq}");
    }

    #[test]
    fn image_smaller_than_a_patch_is_an_error_naming_the_file() {
        let tmp = test_dir::TempDir::new("toosmall");
        std::fs::create_dir_all(tmp.0.join("images")).unwrap();
        std::fs::create_dir_all(tmp.0.join("masks")).unwrap();
        image::RgbImage::new(40, 20).save(tmp.0.join("images/a.png")).unwrap();
        image::RgbImage::from_pixel(40, 20, image::Rgb([132, 41, 246])).save(tmp.0.join("masks/a.png")).unwrap();
        let data = Dataset::load(&tmp.0, &LoadOptions::default()).unwrap();
        assert_eq!(data.tiles[0].name, "a");
        assert!(data.tiles[0].labels.iter().all(|&l| l == 1));
        assert_eq!(data.patches(16).unwrap().len(), 2);
        let msg = data.patches(32).unwrap_err().to_string();
        for part in ["images/a.png", "40x20", "32x32 patch", "smaller patch size"] {
            assert!(msg.contains(part), "missing `{part}` in: {msg}");
        }
    }

    #[test]
    fn synthetic_dataset_patches_and_batches_end_to_end() {
        let data = Dataset::synthetic(3, 3, 128);
        let patches = data.patches(64).unwrap();
        assert_eq!(patches.len(), 12);
        let (train, val) = patches.split(&SplitOptions::default()).unwrap();
        assert_eq!(train.len() + val.len(), 12);
        let stats = train.channel_stats();
        let options =
            BatchOptions { batch_size: 5, seed: 9, scaling: Scaling::Standardize(stats), ..Default::default() };
        let batches: Vec<Batch> = train.batches(&options).unwrap().collect();
        assert_eq!(batches.iter().map(|b| b.n).sum::<usize>(), train.len());
        assert_eq!(batches[0].images.len(), 5 * 3 * 64 * 64);
    }
}
