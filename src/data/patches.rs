//! Patches: cutting tiles into square training samples, the train/validation
//! split, per-channel statistics, class frequencies, and batches.
//!
//! # Cutting (the Keras tutorial's way)
//! Each tile is cropped to the largest multiple of the patch side in each
//! direction, keeping the top-left corner (the tutorial's
//! `image.crop((0, 0, SIZE_X, SIZE_Y))`), then cut into non-overlapping
//! patches row by row (`patchify` with step = patch). A 797x644 tile gives
//! 3x2 patches of 256; the right 29 and bottom 132 pixels are dropped.
//!
//! # Scaling
//! Pixels become `f32` in [0, 1] (`/255`). The tutorial min-max scales each
//! patch on its own instead; a fixed `/255` keeps a dark patch dark, which is
//! information, and gives validation and inference the very same mapping.
//! [`Scaling::Standardize`] further subtracts a per-channel mean and divides
//! by a standard deviation, both measured on the *training* patches only
//! ([`Patches::channel_stats`]) so no validation pixel leaks into training.
//!
//! # Batch layout
//! `images`: `f32` `[N,3,P,P]` (NCHW, what the conv kernels read);
//! `labels`: `u32` `[N,P,P]`, class ids or [`IGNORE`](super::IGNORE).

use std::collections::BTreeMap;
use std::fmt;

use super::tiles::Tile;
use super::DataError;
use crate::rng::Rng;

/// Where a patch came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Index of its tile in the dataset.
    pub tile: usize,
    /// Left column of the patch in the tile.
    pub x: usize,
    /// Top row of the patch in the tile.
    pub y: usize,
}

/// Square patches with their labels, kept as bytes until batched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patches {
    /// Patch side P in pixels.
    pub size: usize,
    /// Class names, by class id.
    pub classes: Vec<String>,
    /// Interleaved RGB, `[N,P,P,3]`.
    pub rgb: Vec<u8>,
    /// Class ids, `[N,P,P]`; [`IGNORE`](super::IGNORE) (255) for no class.
    pub labels: Vec<u8>,
    /// Where each patch came from, `[N]`.
    pub origins: Vec<Origin>,
}

/// Patches across and down that cut a `width` x `height` tile: `(cols, rows)`,
/// the tutorial's `(width // patch, height // patch)`.
pub fn patch_grid(width: usize, height: usize, patch: usize) -> (usize, usize) {
    (width / patch, height / patch)
}

fn check_positive(name: &'static str, value: usize) -> Result<(), DataError> {
    if value == 0 {
        return Err(DataError::Option { name, value: "0".into(), reason: "it must be at least 1".into() });
    }
    Ok(())
}

/// Cut `tiles` into `patch` x `patch` patches (see the module doc). A tile
/// smaller than one patch is an error naming it: it would silently vanish.
pub fn patchify(tiles: &[Tile], patch: usize, classes: &[String]) -> Result<Patches, DataError> {
    check_positive("patch size", patch)?;
    let mut origins = Vec::new();
    for (t, tile) in tiles.iter().enumerate() {
        let (cols, rows) = patch_grid(tile.width, tile.height, patch);
        if cols == 0 || rows == 0 {
            let path = tile.path.clone().unwrap_or_else(|| tile.name.clone().into());
            return Err(DataError::TooSmall { path, width: tile.width, height: tile.height, patch });
        }
        for r in 0..rows {
            for c in 0..cols {
                origins.push(Origin { tile: t, x: c * patch, y: r * patch });
            }
        }
    }
    let mut rgb = Vec::with_capacity(origins.len() * patch * patch * 3);
    let mut labels = Vec::with_capacity(origins.len() * patch * patch);
    for o in &origins {
        let tile = &tiles[o.tile];
        for y in o.y..o.y + patch {
            let row = y * tile.width + o.x;
            rgb.extend_from_slice(&tile.rgb[row * 3..(row + patch) * 3]);
            labels.extend_from_slice(&tile.labels[row..row + patch]);
        }
    }
    Ok(Patches { size: patch, classes: classes.to_vec(), rgb, labels, origins })
}

/// Which unit the train/validation split assigns to one side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SplitLevel {
    /// Whole images go to one side (the default). Neighbouring patches of one
    /// image share lighting, texture and objects cut in two by the patch
    /// border; splitting patches would put such near-duplicates on both
    /// sides and make validation scores look better than they are.
    #[default]
    Image,
    /// Patches are assigned one by one, as the Keras tutorial's
    /// `train_test_split` does: exact proportions, optimistic validation.
    Patch,
}

/// How to split patches into training and validation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SplitOptions {
    /// Seed of the assignment: the same seed gives the same split.
    pub seed: u64,
    /// Share of patches for validation, in [0, 1); 0.2 by default.
    pub validation: f64,
    /// Split by image or by patch.
    pub level: SplitLevel,
}

impl Default for SplitOptions {
    /// 80/20 by image, seed 0.
    fn default() -> SplitOptions {
        SplitOptions { seed: 0, validation: 0.2, level: SplitLevel::Image }
    }
}

/// Fisher-Yates shuffle with our seeded generator.
pub fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

/// Per-channel mean and standard deviation of pixels scaled to [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChannelStats {
    /// Mean of R, G, B.
    pub mean: [f32; 3],
    /// Standard deviation of R, G, B.
    pub std: [f32; 3],
}

/// How bytes become the network's input values.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Scaling {
    /// `v / 255`, in [0, 1].
    #[default]
    Unit,
    /// `(v / 255 - mean) / std` per channel, with the training set's stats.
    Standardize(ChannelStats),
}

impl Scaling {
    /// The checkpoint metadata key that records the scaling a model was trained with.
    pub const METADATA_KEY: &'static str = "data.scaling";

    /// The scaling as checkpoint metadata: `data.scaling` = `unit`, or
    /// `standardize:<m0>,<m1>,<m2>:<s0>,<s1>,<s2>` (means, then standard
    /// deviations of R, G, B; written so that they read back exactly).
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let value = match self {
            Scaling::Unit => "unit".to_string(),
            Scaling::Standardize(s) => {
                let list = |v: &[f32; 3]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
                format!("standardize:{}:{}", list(&s.mean), list(&s.std))
            }
        };
        BTreeMap::from([(Scaling::METADATA_KEY.to_string(), value)])
    }

    /// Read the scaling back from checkpoint metadata. A checkpoint without
    /// the key was trained on [`Scaling::Unit`] inputs (the default); an
    /// unreadable value is an error naming it.
    pub fn from_metadata(meta: &BTreeMap<String, String>) -> Result<Scaling, String> {
        let Some(value) = meta.get(Scaling::METADATA_KEY) else {
            return Ok(Scaling::Unit);
        };
        let bad = |why: &str| {
            format!(
                "{} = {value:?} {why}: expected `unit` or `standardize:<m0>,<m1>,<m2>:<s0>,<s1>,<s2>`",
                Scaling::METADATA_KEY
            )
        };
        if value == "unit" {
            return Ok(Scaling::Unit);
        }
        let parts: Vec<&str> = value.split(':').collect();
        let ["standardize", mean, std] = parts[..] else {
            return Err(bad("is not a known scaling"));
        };
        let three = |list: &str| -> Result<[f32; 3], String> {
            let values: Vec<f32> = list
                .split(',')
                .map(|x| x.trim().parse::<f32>().ok().filter(|v| v.is_finite()))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("has a value that is not a finite number"))?;
            values.try_into().map_err(|_| bad("needs three values per list"))
        };
        Ok(Scaling::Standardize(ChannelStats { mean: three(mean)?, std: three(std)? }))
    }

    /// The input value of each byte, per channel: a lookup table, because
    /// there are only 256 inputs and a batch converts millions of bytes.
    /// `table[c][v]` is the network input for byte `v` of channel `c`.
    pub(crate) fn table(&self) -> [[f32; 256]; 3] {
        let mut table = [[0.0; 256]; 3];
        for (c, row) in table.iter_mut().enumerate() {
            for (v, out) in row.iter_mut().enumerate() {
                let unit = v as f32 / 255.0;
                *out = match self {
                    Scaling::Unit => unit,
                    // A flat channel has std 0: dividing by a floor keeps the
                    // value finite (and 0) instead of NaN.
                    Scaling::Standardize(s) => (unit - s.mean[c]) / s.std[c].max(1e-6),
                };
            }
        }
        table
    }
}

/// One of the 8 symmetries of a square: rotate by `rot90` quarter turns
/// counter-clockwise (numpy's `rot90`), then mirror left-right (`flip_h`),
/// then top-bottom (`flip_v`). Aerial images have no preferred orientation,
/// so each is as plausible as the original.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Augment {
    /// Quarter turns counter-clockwise, 0..4.
    pub rot90: u8,
    /// Mirror left-right.
    pub flip_h: bool,
    /// Mirror top-bottom.
    pub flip_v: bool,
}

impl Augment {
    /// A random symmetry: each flip with probability 1/2, 0 to 3 quarter
    /// turns uniformly (all 8 symmetries equally likely).
    pub fn random(rng: &mut Rng) -> Augment {
        Augment { rot90: rng.below(4) as u8, flip_h: rng.below(2) == 1, flip_v: rng.below(2) == 1 }
    }

    /// The source pixel `(row, col)` of output pixel `(y, x)` in a `p` x `p`
    /// patch: the transforms undone in reverse order.
    pub fn source(&self, y: usize, x: usize, p: usize) -> (usize, usize) {
        let (mut y, mut x) = (y, x);
        if self.flip_v {
            y = p - 1 - y;
        }
        if self.flip_h {
            x = p - 1 - x;
        }
        for _ in 0..self.rot90 % 4 {
            // forward: out[i][j] = in[j][p-1-i]
            (y, x) = (x, p - 1 - y);
        }
        (y, x)
    }

    /// Apply to a `p` x `p` image of `channels` interleaved bytes per pixel
    /// (3 for RGB, 1 for labels).
    pub fn apply(&self, pixels: &[u8], p: usize, channels: usize) -> Vec<u8> {
        assert_eq!(pixels.len(), p * p * channels, "a {p}x{p}x{channels} patch has {} values", pixels.len());
        let mut out = Vec::with_capacity(pixels.len());
        for y in 0..p {
            for x in 0..p {
                let (sy, sx) = self.source(y, x, p);
                let s = (sy * p + sx) * channels;
                out.extend_from_slice(&pixels[s..s + channels]);
            }
        }
        out
    }
}

/// How [`Patches::batches`] hands out patches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchOptions {
    /// Patches per batch (the last may be smaller unless `drop_last`).
    pub batch_size: usize,
    /// Seed of the order and of the augmentations; use a different one per
    /// epoch (e.g. `seed + epoch`) to see the patches in a new order.
    pub seed: u64,
    /// Shuffle the order (training); off keeps patch order (validation).
    pub shuffle: bool,
    /// Apply a random [`Augment`] to each patch (training only).
    pub augment: bool,
    /// Byte-to-input mapping.
    pub scaling: Scaling,
    /// Skip a last, smaller batch.
    pub drop_last: bool,
}

impl Default for BatchOptions {
    /// Batches of 8, shuffled with seed 0, no augmentation, [0, 1] inputs.
    fn default() -> BatchOptions {
        BatchOptions { batch_size: 8, seed: 0, shuffle: true, augment: false, scaling: Scaling::Unit, drop_last: false }
    }
}

/// A batch ready for upload.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Inputs, `[n,3,size,size]` (NCHW).
    pub images: Vec<f32>,
    /// Class ids, `[n,size,size]`; [`IGNORE`](super::IGNORE) for no class.
    pub labels: Vec<u32>,
    /// Patches in this batch.
    pub n: usize,
    /// Patch side.
    pub size: usize,
    /// Which patches (indices into the [`Patches`]), `[n]`.
    pub indices: Vec<usize>,
}

/// Iterator over the batches of one epoch (see [`Patches::batches`]).
#[derive(Clone, Debug)]
pub struct Batches<'a> {
    patches: &'a Patches,
    order: Vec<usize>,
    next: usize,
    options: BatchOptions,
    rng: Rng,
    table: [[f32; 256]; 3],
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let left = self.order.len() - self.next;
        let n = left.min(self.options.batch_size);
        if n == 0 || (self.options.drop_last && n < self.options.batch_size) {
            return None;
        }
        let indices = self.order[self.next..self.next + n].to_vec();
        self.next += n;
        let p = self.patches.size;
        let plane = p * p;
        let mut images = vec![0.0f32; n * 3 * plane];
        let mut labels = vec![0u32; n * plane];
        for (b, &i) in indices.iter().enumerate() {
            let augment = if self.options.augment { Augment::random(&mut self.rng) } else { Augment::default() };
            let rgb = self.patches.image(i);
            let lab = self.patches.label(i);
            let (image, label) = (&mut images[b * 3 * plane..(b + 1) * 3 * plane], &mut labels[b * plane..][..plane]);
            for y in 0..p {
                for x in 0..p {
                    let (sy, sx) = augment.source(y, x, p);
                    let s = sy * p + sx;
                    let o = y * p + x;
                    for c in 0..3 {
                        image[c * plane + o] = self.table[c][rgb[s * 3 + c] as usize];
                    }
                    label[o] = lab[s] as u32;
                }
            }
        }
        Some(Batch { images, labels, n, size: p, indices })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.order.len() - self.next;
        let b = self.options.batch_size;
        let count = if self.options.drop_last { left / b } else { left.div_ceil(b) };
        (count, Some(count))
    }
}

impl ExactSizeIterator for Batches<'_> {}

impl Patches {
    /// Number of patches.
    pub fn len(&self) -> usize {
        self.origins.len()
    }

    /// True with no patch.
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// RGB bytes of patch `i`, `[P,P,3]`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.size * self.size * 3;
        &self.rgb[i * n..(i + 1) * n]
    }

    /// Class ids of patch `i`, `[P,P]`.
    pub fn label(&self, i: usize) -> &[u8] {
        let n = self.size * self.size;
        &self.labels[i * n..(i + 1) * n]
    }

    /// The patches at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Patches {
        let mut rgb = Vec::with_capacity(indices.len() * self.size * self.size * 3);
        let mut labels = Vec::with_capacity(indices.len() * self.size * self.size);
        for &i in indices {
            rgb.extend_from_slice(self.image(i));
            labels.extend_from_slice(self.label(i));
        }
        let origins = indices.iter().map(|&i| self.origins[i]).collect();
        Patches { size: self.size, classes: self.classes.clone(), rgb, labels, origins }
    }

    /// Split into `(train, validation)`, deterministically from the seed
    /// (see [`SplitLevel`] for why whole images is the default). Both keep
    /// the original patch order.
    ///
    /// By image, the images are shuffled and each, in turn, joins validation
    /// when that brings its patch count closer to the target share (and the
    /// first always does), so the share is near, not exactly, `validation`.
    pub fn split(&self, options: &SplitOptions) -> Result<(Patches, Patches), DataError> {
        if !(0.0..1.0).contains(&options.validation) {
            return Err(DataError::Option {
                name: "validation share",
                value: options.validation.to_string(),
                reason: "it must be in [0, 1), e.g. 0.2 for an 80/20 split".into(),
            });
        }
        let mut rng = Rng::new(options.seed);
        let mut in_validation = vec![false; self.len()];
        if options.validation > 0.0 {
            match options.level {
                SplitLevel::Patch => {
                    let mut order: Vec<usize> = (0..self.len()).collect();
                    shuffle(&mut order, &mut rng);
                    let count = (self.len() as f64 * options.validation).round() as usize;
                    for &i in &order[..count] {
                        in_validation[i] = true;
                    }
                }
                SplitLevel::Image => {
                    let mut images: Vec<usize> = self.origins.iter().map(|o| o.tile).collect();
                    images.sort_unstable();
                    images.dedup();
                    if images.len() < 2 {
                        return Err(DataError::Option {
                            name: "split level",
                            value: "Image".into(),
                            reason: format!(
                                "the patches come from {} image(s), and a split by image needs at least 2: use SplitLevel::Patch or add images",
                                images.len()
                            ),
                        });
                    }
                    let mut per_image = vec![0usize; images[images.len() - 1] + 1];
                    for o in &self.origins {
                        per_image[o.tile] += 1;
                    }
                    shuffle(&mut images, &mut rng);
                    let target = self.len() as f64 * options.validation;
                    let mut chosen = vec![false; per_image.len()];
                    let mut count = 0usize;
                    // The last image always stays in training.
                    for &image in &images[..images.len() - 1] {
                        let with = (count + per_image[image]) as f64;
                        if count == 0 || (with - target).abs() < (count as f64 - target).abs() {
                            chosen[image] = true;
                            count += per_image[image];
                        }
                    }
                    for (i, o) in self.origins.iter().enumerate() {
                        in_validation[i] = chosen[o.tile];
                    }
                }
            }
        }
        let (val, train): (Vec<usize>, Vec<usize>) = (0..self.len()).partition(|&i| in_validation[i]);
        Ok((self.select(&train), self.select(&val)))
    }

    /// Per-channel mean and standard deviation in [0, 1] units, for
    /// [`Scaling::Standardize`]. Compute it on the training patches only.
    pub fn channel_stats(&self) -> ChannelStats {
        // Exact integer sums: no f32 rounding drift over a billion pixels.
        let mut sum = [0u64; 3];
        let mut sum_sq = [0u64; 3];
        for px in self.rgb.chunks_exact(3) {
            for c in 0..3 {
                let v = px[c] as u64;
                sum[c] += v;
                sum_sq[c] += v * v;
            }
        }
        let n = (self.rgb.len() / 3).max(1) as f64;
        let mut stats = ChannelStats { mean: [0.0; 3], std: [0.0; 3] };
        for c in 0..3 {
            let mean = sum[c] as f64 / n;
            let var = (sum_sq[c] as f64 / n - mean * mean).max(0.0);
            stats.mean[c] = (mean / 255.0) as f32;
            stats.std[c] = (var.sqrt() / 255.0) as f32;
        }
        stats
    }

    /// Pixel count per class over these patches.
    pub fn class_frequencies(&self) -> ClassFrequencies {
        ClassFrequencies::count(&self.classes, [self.labels.as_slice()])
    }

    /// The batches of one epoch. Fails on a batch size of 0.
    pub fn batches(&self, options: &BatchOptions) -> Result<Batches<'_>, DataError> {
        check_positive("batch size", options.batch_size)?;
        let mut rng = Rng::new(options.seed);
        let mut order: Vec<usize> = (0..self.len()).collect();
        if options.shuffle {
            shuffle(&mut order, &mut rng);
        }
        Ok(Batches { patches: self, order, next: 0, options: *options, rng, table: options.scaling.table() })
    }
}

/// Pixels per class, printable as a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassFrequencies {
    /// Class names, by class id.
    pub names: Vec<String>,
    /// Pixels of each class.
    pub counts: Vec<u64>,
    /// Pixels labelled [`IGNORE`](super::IGNORE) (or any id beyond the classes).
    pub ignored: u64,
}

impl ClassFrequencies {
    /// Count the class ids in `labels` (any number of label slices).
    pub fn count<'a>(names: &[String], labels: impl IntoIterator<Item = &'a [u8]>) -> ClassFrequencies {
        let mut all = [0u64; 256];
        for slice in labels {
            for &l in slice {
                all[l as usize] += 1;
            }
        }
        let counts = all[..names.len()].to_vec();
        let ignored = all[names.len()..].iter().sum();
        ClassFrequencies { names: names.to_vec(), counts, ignored }
    }

    /// All pixels counted, ignored ones included.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.ignored
    }

    /// Share of all pixels (ignored ones included) in class `class`.
    pub fn share(&self, class: usize) -> f64 {
        self.counts[class] as f64 / self.total().max(1) as f64
    }

    /// The class with the most pixels (the lowest id on a tie).
    pub fn most_frequent(&self) -> usize {
        let max = self.counts.iter().copied().max().unwrap_or(0);
        self.counts.iter().position(|&c| c == max).unwrap_or(0)
    }
}

impl fmt::Display for ClassFrequencies {
    /// ```text
    /// class           pixels   share
    /// Building       1234567  13.31%
    /// ...
    /// (no class)        5520   0.56%
    /// total          9903224
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.names.iter().map(|n| n.len()).max().unwrap_or(0).max(10);
        let total = self.total().max(1) as f64;
        writeln!(f, "{:<width$} {:>12} {:>7}", "class", "pixels", "share")?;
        let rows = self.names.iter().map(String::as_str).zip(self.counts.iter().copied());
        for (name, count) in rows.chain([("(no class)", self.ignored)]) {
            writeln!(f, "{name:<width$} {count:>12} {:>6.2}%", 100.0 * count as f64 / total)?;
        }
        write!(f, "{:<width$} {:>12}", "total", self.total())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_round_trips_through_checkpoint_metadata() {
        let stats = ChannelStats { mean: [0.1, 0.2, 1.0 / 3.0], std: [0.25, 0.5, 0.123_456_79] };
        for scaling in [Scaling::Unit, Scaling::Standardize(stats)] {
            assert_eq!(Scaling::from_metadata(&scaling.to_metadata()), Ok(scaling));
        }
        assert_eq!(
            Scaling::Standardize(stats).to_metadata()["data.scaling"],
            "standardize:0.1,0.2,0.33333334:0.25,0.5,0.12345679"
        );
        assert_eq!(Scaling::from_metadata(&BTreeMap::new()), Ok(Scaling::Unit));
        for bad in [
            "minmax",
            "standardize:1,2:1,2,3",
            "standardize:1,2,x:1,2,3",
            "standardize:1,2,3",
            "standardize:1,2,3:1,2,inf",
        ] {
            let meta = BTreeMap::from([("data.scaling".to_string(), bad.to_string())]);
            let err = Scaling::from_metadata(&meta).unwrap_err();
            assert!(err.contains("data.scaling") && err.contains(bad), "{err}");
        }
    }

    fn names() -> Vec<String> {
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    }

    /// A w x h tile whose pixel (y, x) has R = x, G = y, B = tile id and label
    /// (x + y) % 3: every pixel is identifiable after cutting and flipping.
    fn tile(id: u8, width: usize, height: usize) -> Tile {
        let mut rgb = Vec::new();
        let mut labels = Vec::new();
        for y in 0..height {
            for x in 0..width {
                rgb.extend([x as u8, y as u8, id]);
                labels.push(((x + y) % 3) as u8);
            }
        }
        Tile { name: format!("t{id}"), path: None, width, height, rgb, labels }
    }

    #[test]
    fn patch_grid_follows_the_tutorial_arithmetic() {
        assert_eq!(patch_grid(797, 644, 256), (3, 2));
        assert_eq!(patch_grid(509, 544, 256), (1, 2));
        assert_eq!(patch_grid(2149, 1479, 256), (8, 5));
        assert_eq!(patch_grid(256, 255, 256), (1, 0));
    }

    #[test]
    fn patchify_crops_top_left_and_cuts_row_by_row() {
        let tiles = [tile(0, 9, 5), tile(1, 4, 4)];
        let p = patchify(&tiles, 2, &names()).unwrap();
        assert_eq!(p.len(), 4 * 2 + 2 * 2);
        assert_eq!(p.origins[1], Origin { tile: 0, x: 2, y: 0 });
        assert_eq!(p.origins[4], Origin { tile: 0, x: 0, y: 2 });
        assert_eq!(p.origins[8], Origin { tile: 1, x: 0, y: 0 });
        // Patch 5 = tile 0, rows 2..4, cols 2..4.
        assert_eq!(p.image(5), [2, 2, 0, 3, 2, 0, 2, 3, 0, 3, 3, 0]);
        assert_eq!(p.label(5), [1, 2, 2, 0]);
        // Column 8 and row 4 of tile 0 were cropped away.
        assert!(p.rgb.chunks(3).all(|px| px[2] != 0 || (px[0] < 8 && px[1] < 4)));
    }

    #[test]
    fn patchify_rejects_small_tiles_and_patch_zero() {
        let msg = patchify(&[tile(0, 8, 8), tile(7, 8, 3)], 4, &names()).unwrap_err().to_string();
        assert!(msg.contains("t7") && msg.contains("8x3") && msg.contains("4x4 patch"), "{msg}");
        let msg = patchify(&[tile(0, 8, 8)], 0, &names()).unwrap_err().to_string();
        assert!(msg.contains("patch size = 0"), "{msg}");
    }

    #[test]
    fn augment_rotations_and_flips_move_pixels_like_numpy() {
        // [[a, b], [c, d]] as labels 0..4
        let m = [0u8, 1, 2, 3];
        let rot = |k| Augment { rot90: k, ..Default::default() }.apply(&m, 2, 1);
        assert_eq!(rot(1), [1, 3, 0, 2]); // np.rot90: [[b, d], [a, c]]
        assert_eq!(rot(2), [3, 2, 1, 0]);
        assert_eq!(rot(4), m);
        assert_eq!(Augment { flip_h: true, ..Default::default() }.apply(&m, 2, 1), [1, 0, 3, 2]);
        assert_eq!(Augment { flip_v: true, ..Default::default() }.apply(&m, 2, 1), [2, 3, 0, 1]);
        // Rotate then mirror left-right: [[d, b], [c, a]].
        assert_eq!(Augment { rot90: 1, flip_h: true, flip_v: false }.apply(&m, 2, 1), [3, 1, 2, 0]);
    }

    #[test]
    fn all_eight_symmetries_are_distinct_and_drawn() {
        let m: Vec<u8> = (0..9).collect();
        let mut seen = std::collections::HashSet::new();
        let mut rng = Rng::new(5);
        for _ in 0..200 {
            seen.insert(Augment::random(&mut rng).apply(&m, 3, 1));
        }
        assert_eq!(seen.len(), 8);
    }

    #[test]
    fn batches_are_nchw_scaled_and_augment_image_and_mask_alike() {
        let p = patchify(&[tile(0, 6, 6), tile(1, 6, 3)], 3, &names()).unwrap();
        let options = BatchOptions { batch_size: 4, seed: 3, augment: true, ..Default::default() };
        let batches: Vec<Batch> = p.batches(&options).unwrap().collect();
        assert_eq!(batches.iter().map(|b| b.n).collect::<Vec<_>>(), [4, 2]);
        let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..6).collect::<Vec<_>>());
        for b in &batches {
            assert_eq!((b.images.len(), b.labels.len(), b.size), (b.n * 27, b.n * 9, 3));
            for k in 0..b.n {
                for o in 0..9 {
                    // Channels R = x, G = y of the source pixel in its tile;
                    // the label must be (x + y) % 3 of that same pixel.
                    let x = (b.images[k * 27 + o] * 255.0).round() as usize;
                    let y = (b.images[k * 27 + 9 + o] * 255.0).round() as usize;
                    assert_eq!(b.labels[k * 9 + o], ((x + y) % 3) as u32);
                    let tile = (b.images[k * 27 + 18 + o] * 255.0).round() as usize;
                    assert_eq!(tile, p.origins[b.indices[k]].tile);
                }
            }
        }
        let again: Vec<Batch> = p.batches(&options).unwrap().collect();
        assert_eq!(again, batches, "same seed, same batches");
    }

    #[test]
    fn unshuffled_batches_keep_order_and_drop_last_works() {
        let p = patchify(&[tile(0, 6, 6), tile(1, 6, 3)], 3, &names()).unwrap();
        let options = BatchOptions { batch_size: 4, shuffle: false, drop_last: true, ..Default::default() };
        let batches = p.batches(&options).unwrap();
        assert_eq!(batches.len(), 1);
        let b: Vec<Batch> = batches.collect();
        assert_eq!(b[0].indices, [0, 1, 2, 3]);
        assert!(p.batches(&BatchOptions { batch_size: 0, ..options }).is_err());
    }

    #[test]
    fn standardized_batches_have_zero_mean_and_unit_std() {
        let p = patchify(&[tile(0, 8, 8), tile(9, 8, 8)], 4, &names()).unwrap();
        let stats = p.channel_stats();
        assert!((stats.mean[0] - 3.5 / 255.0).abs() < 1e-6, "{stats:?}");
        assert!((stats.std[2] - 4.5 / 255.0).abs() < 1e-6, "{stats:?}");
        let options = BatchOptions { batch_size: 8, scaling: Scaling::Standardize(stats), ..Default::default() };
        let b = p.batches(&options).unwrap().next().unwrap();
        let plane = 16;
        for c in 0..3 {
            let v: Vec<f64> =
                (0..b.n).flat_map(|k| b.images[(k * 3 + c) * plane..][..plane].iter().map(|&v| v as f64)).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
            assert!(mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3, "channel {c}: mean {mean}, var {var}");
        }
    }

    #[test]
    fn split_by_image_keeps_images_whole_and_is_deterministic() {
        let tiles: Vec<Tile> = (0..10).map(|i| tile(i, 4 + 2 * (i as usize % 3), 4)).collect();
        let p = patchify(&tiles, 2, &names()).unwrap();
        let options = SplitOptions { seed: 11, ..Default::default() };
        let (train, val) = p.split(&options).unwrap();
        assert_eq!(train.len() + val.len(), p.len());
        let share = val.len() as f64 / p.len() as f64;
        assert!((0.1..0.3).contains(&share), "validation share {share}");
        for o in &val.origins {
            assert!(train.origins.iter().all(|t| t.tile != o.tile), "image {} on both sides", o.tile);
        }
        assert_eq!(p.split(&options).unwrap(), (train.clone(), val.clone()));
        let (_, other) = p.split(&SplitOptions { seed: 12, ..options }).unwrap();
        assert_ne!(other.origins, val.origins, "another seed, another split");
    }

    #[test]
    fn split_by_patch_has_exact_proportions_and_edge_cases() {
        let p = patchify(&[tile(0, 10, 10)], 2, &names()).unwrap();
        let (train, val) = p.split(&SplitOptions { level: SplitLevel::Patch, ..Default::default() }).unwrap();
        assert_eq!((train.len(), val.len()), (20, 5));
        let (train, val) = p.split(&SplitOptions { validation: 0.0, ..Default::default() }).unwrap();
        assert_eq!((train.len(), val.len()), (25, 0));
        let msg = p.split(&SplitOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("1 image(s)") && msg.contains("SplitLevel::Patch"), "{msg}");
        assert!(p.split(&SplitOptions { validation: 1.0, ..Default::default() }).is_err());
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut a: Vec<usize> = (0..50).collect();
        let mut b = a.clone();
        shuffle(&mut a, &mut Rng::new(4));
        shuffle(&mut b, &mut Rng::new(4));
        assert_eq!(a, b);
        assert_ne!(a, (0..50).collect::<Vec<_>>());
        a.sort();
        assert_eq!(a, (0..50).collect::<Vec<_>>());
        shuffle::<u8>(&mut [], &mut Rng::new(4)); // no panic on empty input
    }

    #[test]
    fn class_frequencies_count_and_print() {
        let labels = [0u8, 1, 1, 2, 2, 2, 255, 255];
        let f = ClassFrequencies::count(&names(), [&labels[..4], &labels[4..]]);
        assert_eq!((f.counts.clone(), f.ignored, f.total()), (vec![1, 2, 3], 2, 8));
        assert_eq!(f.most_frequent(), 2);
        assert!((f.share(1) - 0.25).abs() < 1e-12);
        let table = f.to_string();
        assert!(table.contains("c                     3  37.50%"), "{table}");
        assert!(table.contains("(no class)            2  25.00%"), "{table}");
    }
}
