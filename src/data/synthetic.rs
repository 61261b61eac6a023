//! Synthetic aerial-like tiles, so that training runs anywhere with no
//! download: the same tiles for the same seed, labelled with the Dubai
//! palette's class ids.
//!
//! Each scene is painted in layers, later ones on top:
//! 1. **Land**: a sand colour (varied per tile) with coarse and fine value
//!    noise, and a few grey gravel lots (still land).
//! 2. **Water**: one or two irregular blobs (a disc whose edge is pushed in
//!    and out by noise), darker towards the middle.
//! 3. **Vegetation**: a few blobs of green (or dry olive) texture through
//!    which sand shows, labelled as a whole, as an annotator's polygon would
//!    be.
//! 4. **Roads**: full-length horizontal and vertical bands that cross, grey-
//!    blue, with a dashed light centre line.
//! 5. **Buildings**: rectangles, long side across or down, on free land only,
//!    with roofs of several colours (one of them sand, one of them road-like),
//!    a lit and a shaded roof half, a dark outline and a shadow on the land
//!    to the lower right.
//! 6. **Unlabeled**: a band along one edge and a few gravel-textured gaps,
//!    grey like the roads.
//! 7. Uneven lighting over the tile and per-pixel sensor noise.
//!
//! The colours overlap on purpose (sand roofs on sand, grey gaps and roofs
//! beside grey roads, sand inside vegetation, noise everywhere): no per-pixel
//! colour rule reaches 95% accuracy (a test checks this), so a network has to
//! use shapes and context, as on the real images.

use super::tiles::Tile;
use crate::rng::Rng;

/// Class ids, as in [`Palette::dubai`](super::Palette::dubai).
const BUILDING: u8 = 0;
const LAND: u8 = 1;
const ROAD: u8 = 2;
const VEGETATION: u8 = 3;
const WATER: u8 = 4;
const UNLABELED: u8 = 5;

/// `n` tiles of `size` x `size` pixels from `seed`, named `synthetic/000`,
/// `synthetic/001`, ... Tile `i` depends only on `seed` and `i`, so asking
/// for more tiles keeps the first ones.
pub fn tiles(seed: u64, n: usize, size: usize) -> Vec<Tile> {
    let mut seeds = Rng::new(seed);
    (0..n).map(|i| scene(seeds.next_u64(), size, format!("synthetic/{i:03}"))).collect()
}

/// A painter's canvas: colours in f32 (0..255, clamped at the end) and labels.
struct Canvas {
    size: usize,
    rgb: Vec<[f32; 3]>,
    labels: Vec<u8>,
}

/// Smooth random values in [0, 1] on a `width` x `height` grid, varying over
/// about `cell` pixels: random values at the corners of `cell`-sized squares,
/// blended with a smoothstep so no grid lines show.
fn value_noise(rng: &mut Rng, width: usize, height: usize, cell: usize) -> Vec<f32> {
    let cell = cell.max(1);
    let (nodes_x, nodes_y) = (width / cell + 2, height / cell + 2);
    let grid: Vec<f32> = (0..nodes_x * nodes_y).map(|_| rng.uniform() as f32).collect();
    let smooth = |t: f32| t * t * (3.0 - 2.0 * t);
    let mut out = Vec::with_capacity(width * height);
    for y in 0..height {
        let (gy, ty) = (y / cell, smooth((y % cell) as f32 / cell as f32));
        for x in 0..width {
            let (gx, tx) = (x / cell, smooth((x % cell) as f32 / cell as f32));
            let at = |dy: usize, dx: usize| grid[(gy + dy) * nodes_x + gx + dx];
            let top = at(0, 0) + (at(0, 1) - at(0, 0)) * tx;
            let bottom = at(1, 0) + (at(1, 1) - at(1, 0)) * tx;
            out.push(top + (bottom - top) * ty);
        }
    }
    out
}

/// Roughly normal noise with standard deviation 1, cheaper than Box-Muller:
/// the sum of three uniforms (variance 3 * 1/3 = 1 on [-1, 1)).
fn grain(rng: &mut Rng) -> f32 {
    (rng.range(-1.0, 1.0) + rng.range(-1.0, 1.0) + rng.range(-1.0, 1.0)) as f32
}

/// `base` with each channel moved by up to `spread` either way.
fn jitter(rng: &mut Rng, base: [f32; 3], spread: f32) -> [f32; 3] {
    base.map(|v| v + rng.range(-spread as f64, spread as f64) as f32)
}

/// A random integer in `lo..hi` (at least `lo`).
fn between(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    lo + rng.below(hi.saturating_sub(lo).max(1))
}

impl Canvas {
    fn new(size: usize) -> Canvas {
        Canvas { size, rgb: vec![[0.0; 3]; size * size], labels: vec![LAND; size * size] }
    }

    /// Pixel indices of an irregular blob around `(cy, cx)` of radius about
    /// `r`: inside where the distance, pushed by the noise, is below `r`.
    fn blob(&self, rng: &mut Rng, cy: f32, cx: f32, r: f32) -> Vec<usize> {
        // Noise at most pushes the edge out to 1.4 r: only that box is visited.
        let reach = (r * 1.5) as isize;
        let clamp = |v: isize| v.clamp(0, self.size as isize) as usize;
        let (y0, y1) = (clamp(cy as isize - reach), clamp(cy as isize + reach));
        let (x0, x1) = (clamp(cx as isize - reach), clamp(cx as isize + reach));
        let edge = value_noise(rng, x1 - x0, y1 - y0, (r / 2.0).max(2.0) as usize);
        let mut inside = Vec::new();
        for y in y0..y1 {
            for x in x0..x1 {
                let d = ((y as f32 - cy).powi(2) + (x as f32 - cx).powi(2)).sqrt() / r;
                if d + 0.8 * (edge[(y - y0) * (x1 - x0) + x - x0] - 0.5) < 1.0 {
                    inside.push(y * self.size + x);
                }
            }
        }
        inside
    }

    fn land(&mut self, rng: &mut Rng) {
        let sand = jitter(rng, [196.0, 168.0, 128.0], 14.0);
        let coarse = value_noise(rng, self.size, self.size, (self.size / 6).max(2));
        let fine = value_noise(rng, self.size, self.size, 5);
        for (i, px) in self.rgb.iter_mut().enumerate() {
            let shade = 1.0 + 0.22 * (coarse[i] - 0.5) + 0.12 * (fine[i] - 0.5);
            // Coarse noise also shifts the hue a little (reddish/yellowish sand).
            let warm = 14.0 * (coarse[i] - 0.5);
            *px = [sand[0] * shade + warm, sand[1] * shade, sand[2] * shade - warm];
        }
        // Gravel lots and packed-earth yards: still land, but grey like the
        // roads and the unlabeled gaps, so only their shape and place tell.
        let s = self.size as f32;
        for _ in 0..between(rng, 2, 5) {
            let r = s * rng.range(0.04, 0.1) as f32;
            let (cy, cx) = (rng.range(0.0, 1.0) as f32 * s, rng.range(0.0, 1.0) as f32 * s);
            let grey = jitter(rng, [140.0, 140.0, 144.0], 14.0);
            for i in self.blob(rng, cy, cx, r) {
                self.rgb[i] = std::array::from_fn(|c| 0.3 * self.rgb[i][c] + 0.7 * grey[c]);
            }
        }
    }

    fn water(&mut self, rng: &mut Rng) {
        let s = self.size as f32;
        for _ in 0..between(rng, 1, 3) {
            let r = s * rng.range(0.08, 0.17) as f32;
            let (cy, cx) = (rng.range(0.15, 0.85) as f32 * s, rng.range(0.15, 0.85) as f32 * s);
            let colour = jitter(rng, [58.0, 108.0, 124.0], 14.0);
            for i in self.blob(rng, cy, cx, r) {
                let (y, x) = ((i / self.size) as f32, (i % self.size) as f32);
                let depth = (1.0 - ((y - cy).powi(2) + (x - cx).powi(2)).sqrt() / (1.5 * r)).clamp(0.0, 1.0);
                // Shallow edges take on the sand's colour, deep water darkens.
                let sand = self.rgb[i];
                let mix = (0.35 + depth).min(1.0);
                self.rgb[i] = std::array::from_fn(|c| (sand[c] * (1.0 - mix) + colour[c] * mix) * (1.0 - 0.25 * depth));
                self.labels[i] = WATER;
            }
        }
    }

    fn vegetation(&mut self, rng: &mut Rng) {
        let s = self.size as f32;
        let texture = value_noise(rng, self.size, self.size, 3);
        for _ in 0..between(rng, 2, 5) {
            let r = s * rng.range(0.05, 0.11) as f32;
            let (cy, cx) = (rng.range(0.1, 0.9) as f32 * s, rng.range(0.1, 0.9) as f32 * s);
            // Green irrigated plots, or dry olive scrub close to the sand.
            let dry = rng.below(3) == 0;
            let green = jitter(rng, if dry { [150.0, 142.0, 88.0] } else { [112.0, 128.0, 58.0] }, 16.0);
            let density = rng.range(0.4, 0.8) as f32;
            for i in self.blob(rng, cy, cx, r) {
                if self.labels[i] == WATER {
                    continue;
                }
                // Bushes over bare ground: where the texture is low, sand shows.
                let cover = ((texture[i] - (1.0 - density)) * 3.0).clamp(0.0, 1.0);
                let sand = self.rgb[i];
                self.rgb[i] = std::array::from_fn(|c| sand[c] * (1.0 - cover) + green[c] * cover);
                self.labels[i] = VEGETATION;
            }
        }
    }

    fn roads(&mut self, rng: &mut Rng) {
        let s = self.size;
        let colour = jitter(rng, [128.0, 134.0, 146.0], 10.0);
        let across = between(rng, 1, 3);
        let down = between(rng, 0, 3);
        for k in 0..across + down {
            let width = ((s as f64 * rng.range(0.025, 0.05)) as usize).max(3).min(s);
            let at = between(rng, 0, s.saturating_sub(width));
            let dash = (width * 2).max(4);
            for along in 0..s {
                for off in 0..width {
                    let (y, x) = if k < across { (at + off, along) } else { (along, at + off) };
                    let i = y * s + x;
                    let centre = off == width / 2 && (along / dash).is_multiple_of(2) && width >= 6;
                    self.rgb[i] = if centre { [215.0, 215.0, 205.0] } else { colour };
                    self.labels[i] = ROAD;
                }
            }
        }
    }

    fn buildings(&mut self, rng: &mut Rng) {
        let s = self.size;
        let roofs = [
            [205.0, 205.0, 210.0], // light grey
            [232.0, 230.0, 222.0], // white
            [200.0, 174.0, 134.0], // sand: only its shape tells it from land
            [168.0, 96.0, 72.0],   // terracotta
            [96.0, 96.0, 102.0],   // dark grey
            [124.0, 136.0, 152.0], // grey-blue, like a road
        ];
        let count = (s * s / 9000).max(2);
        for _ in 0..count {
            for _attempt in 0..30 {
                let long = ((s as f64 * rng.range(0.05, 0.14)) as usize).max(4);
                let short = ((long as f64 * rng.range(0.4, 0.9)) as usize).max(3);
                let (h, w) = if rng.below(2) == 0 { (short, long) } else { (long, short) };
                let shadow = (h.min(w) / 5).max(1);
                if h + shadow + 2 >= s || w + shadow + 2 >= s {
                    break;
                }
                let (y0, x0) = (between(rng, 1, s - h - shadow - 1), between(rng, 1, s - w - shadow - 1));
                let free = (y0 - 1..y0 + h + shadow + 1)
                    .all(|y| (x0 - 1..x0 + w + shadow + 1).all(|x| self.labels[y * s + x] == LAND));
                if !free {
                    continue;
                }
                let base = roofs[rng.below(roofs.len())];
                let roof = jitter(rng, base, 12.0);
                let ridge_across = w >= h;
                for y in y0..y0 + h + shadow {
                    for x in x0..x0 + w + shadow {
                        let i = y * s + x;
                        if y >= y0 + h || x >= x0 + w {
                            // Shadow on the land to the lower right: still land.
                            self.rgb[i] = self.rgb[i].map(|v| v * 0.55);
                            continue;
                        }
                        let (dy, dx) = (y - y0, x - x0);
                        let edge = dy == 0 || dx == 0 || dy == h - 1 || dx == w - 1;
                        let lit = if ridge_across { dy < h / 2 } else { dx < w / 2 };
                        let shade = if edge {
                            0.7
                        } else if lit {
                            1.08
                        } else {
                            0.9
                        };
                        self.rgb[i] = roof.map(|v| v * shade);
                        self.labels[i] = BUILDING;
                    }
                }
                break;
            }
        }
    }

    fn unlabeled(&mut self, rng: &mut Rng) {
        let s = self.size;
        let band = ((s as f64 * rng.range(0.02, 0.07)) as usize).max(2);
        let side = rng.below(4);
        let grey = jitter(rng, [150.0, 150.0, 150.0], 12.0);
        let gravel = value_noise(rng, s, s, 2);
        let paint = |canvas: &mut Canvas, i: usize| {
            canvas.rgb[i] = grey.map(|v| v * (0.8 + 0.4 * gravel[i]));
            canvas.labels[i] = UNLABELED;
        };
        for y in 0..s {
            for x in 0..s {
                let d = [y, x, s - 1 - y, s - 1 - x][side];
                if d < band {
                    paint(self, y * s + x);
                }
            }
        }
        for _ in 0..between(rng, 1, 4) {
            let (h, w) = (between(rng, s / 40 + 2, s / 12 + 3), between(rng, s / 40 + 2, s / 12 + 3));
            let (y0, x0) = (between(rng, 0, s.saturating_sub(h)), between(rng, 0, s.saturating_sub(w)));
            for y in y0..(y0 + h).min(s) {
                for x in x0..(x0 + w).min(s) {
                    paint(self, y * s + x);
                }
            }
        }
    }

    /// Uneven lighting (a gradient across the tile) and sensor noise, then
    /// bytes.
    fn finish(self, rng: &mut Rng, name: String) -> Tile {
        let s = self.size;
        let (gy, gx) = (rng.range(-0.15, 0.15) as f32, rng.range(-0.15, 0.15) as f32);
        let brightness = rng.range(0.85, 1.1) as f32;
        let mut rgb = Vec::with_capacity(s * s * 3);
        for (i, px) in self.rgb.iter().enumerate() {
            let (y, x) = ((i / s) as f32 / s as f32 - 0.5, (i % s) as f32 / s as f32 - 0.5);
            let light = brightness * (1.0 + gy * y + gx * x);
            // Grain shared by the channels (brightness) plus a little per channel.
            let shared = 11.0 * grain(rng);
            for &v in px {
                rgb.push((v * light + shared + 4.0 * grain(rng)).round().clamp(0.0, 255.0) as u8);
            }
        }
        Tile { name, path: None, width: s, height: s, rgb, labels: self.labels }
    }
}

/// One scene from `seed` (layers in the module doc).
fn scene(seed: u64, size: usize, name: String) -> Tile {
    let mut rng = Rng::new(seed);
    let mut canvas = Canvas::new(size);
    if size > 0 {
        canvas.land(&mut rng);
        canvas.water(&mut rng);
        canvas.vegetation(&mut rng);
        canvas.roads(&mut rng);
        canvas.buildings(&mut rng);
        canvas.unlabeled(&mut rng);
    }
    canvas.finish(&mut rng, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{ClassFrequencies, Palette};

    #[test]
    fn tiles_are_deterministic_and_sized() {
        let a = tiles(7, 2, 96);
        assert_eq!(a, tiles(7, 2, 96));
        assert_eq!(a[0], tiles(7, 1, 96)[0], "more tiles keep the first ones");
        assert_ne!(a[0].rgb, tiles(8, 1, 96)[0].rgb);
        assert_ne!(a[0].rgb, a[1].rgb);
        for t in &a {
            assert_eq!((t.width, t.height, t.rgb.len(), t.labels.len()), (96, 96, 96 * 96 * 3, 96 * 96));
            assert!(t.labels.iter().all(|&l| l <= UNLABELED));
        }
        assert!(tiles(1, 1, 0)[0].rgb.is_empty(), "size 0 gives an empty tile, no panic");
        for size in 1..24 {
            assert_eq!(tiles(size as u64, 1, size)[0].labels.len(), size * size, "tiny tiles paint without panic");
        }
    }

    #[test]
    fn every_tile_has_all_six_classes_with_land_the_largest() {
        let names = Palette::dubai().names().to_vec();
        for tile in tiles(1, 4, 256) {
            let f = ClassFrequencies::count(&names, [tile.labels.as_slice()]);
            assert!(f.counts.iter().all(|&c| c > 0), "{}: a class is missing\n{f}", tile.name);
            assert_eq!(f.most_frequent(), LAND as usize, "{}\n{f}", tile.name);
            assert_eq!(f.ignored, 0);
        }
    }

    /// The best any per-pixel colour rule can do, measured on the data it is
    /// fitted to (so optimistic): colours quantised to 16 levels a channel,
    /// each colour bin labelled with its most frequent class. Also the
    /// nearest-class-mean-colour rule.
    #[test]
    fn per_pixel_colour_classifiers_stay_well_below_95_percent() {
        let data = tiles(2, 4, 256);
        let mut bins = vec![[0u32; 6]; 4096];
        let mut sums = [[0f64; 3]; 6];
        let mut counts = [0f64; 6];
        let bin = |px: &[u8]| (px[0] as usize >> 4) << 8 | (px[1] as usize >> 4) << 4 | px[2] as usize >> 4;
        for t in &data {
            for (px, &l) in t.rgb.chunks_exact(3).zip(&t.labels) {
                bins[bin(px)][l as usize] += 1;
                for c in 0..3 {
                    sums[l as usize][c] += px[c] as f64;
                }
                counts[l as usize] += 1.0;
            }
        }
        let means: Vec<[f64; 3]> = (0..6).map(|k| sums[k].map(|s| s / counts[k])).collect();
        let (mut bayes, mut nearest, mut total) = (0usize, 0usize, 0usize);
        for t in &data {
            for (px, &l) in t.rgb.chunks_exact(3).zip(&t.labels) {
                let b = &bins[bin(px)];
                let best = (0..6).max_by_key(|&k| b[k]).unwrap();
                bayes += (best == l as usize) as usize;
                let dist = |k: usize| (0..3).map(|c| (px[c] as f64 - means[k][c]).powi(2)).sum::<f64>();
                let near = (0..6).min_by(|&a, &b| dist(a).total_cmp(&dist(b))).unwrap();
                nearest += (near == l as usize) as usize;
                total += 1;
            }
        }
        let (bayes, nearest) = (bayes as f64 / total as f64, nearest as f64 / total as f64);
        println!("per-pixel colour accuracy: best colour-bin rule {bayes:.3}, nearest mean colour {nearest:.3}");
        assert!(bayes < 0.93, "a colour lookup reaches {bayes:.3}: the scenes are too easy");
        assert!(nearest < 0.85, "nearest mean colour reaches {nearest:.3}: the scenes are too easy");
    }

    #[test]
    fn value_noise_is_smooth_and_in_range() {
        let noise = value_noise(&mut Rng::new(3), 64, 64, 16);
        assert!(noise.iter().all(|v| (0.0..=1.0).contains(v)));
        let max_step =
            noise.windows(2).enumerate().filter(|(i, _)| (i + 1) % 64 != 0).map(|(_, w)| (w[1] - w[0]).abs());
        assert!(max_step.fold(0.0, f32::max) < 0.2, "neighbouring values should be close");
    }
}
