//! Patches: cutting tiles into square training samples, class frequencies, and
//! batches. The train/validation split is in [`super::split`], the input scaling
//! in [`super::scaling`].
//!
//! # Cutting (the Keras tutorial's way)
//! Each tile is cropped to the largest multiple of the patch side in each
//! direction, keeping the top-left corner (the tutorial's
//! `image.crop((0, 0, SIZE_X, SIZE_Y))`), then cut into non-overlapping
//! patches row by row (`patchify` with step = patch). A 797x644 tile gives
//! 3x2 patches of 256; the right 29 and bottom 132 pixels are dropped.
//!
//! # Batch layout
//! `images`: `f32` `[N,3,P,P]` (NCHW, what the conv kernels read);
//! `labels`: `u32` `[N,P,P]`, class ids or [`IGNORE`](super::IGNORE).

use std::fmt;

use super::scaling::Scaling;
use super::split::shuffle;
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
            let table = self.options.scaling.table(rgb);
            let lab = self.patches.label(i);
            let (image, label) = (&mut images[b * 3 * plane..(b + 1) * 3 * plane], &mut labels[b * plane..][..plane]);
            for y in 0..p {
                for x in 0..p {
                    let (sy, sx) = augment.source(y, x, p);
                    let s = sy * p + sx;
                    let o = y * p + x;
                    for c in 0..3 {
                        image[c * plane + o] = table[c][rgb[s * 3 + c] as usize];
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
        Ok(Batches { patches: self, order, next: 0, options: *options, rng })
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
pub(crate) mod tests {
    use super::*;

    /// Class names "a", "b", "c".
    pub(crate) fn names() -> Vec<String> {
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    }

    /// A w x h tile whose pixel (y, x) has R = x, G = y, B = tile id and label
    /// (x + y) % 3: every pixel is identifiable after cutting and flipping.
    pub(crate) fn tile(id: u8, width: usize, height: usize) -> Tile {
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
