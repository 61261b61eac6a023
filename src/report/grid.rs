//! Picture grids (image | ground truth | prediction) and mask overlays: no plotting,
//! no font, plain pixels.

use crate::data::{Palette, IGNORE};

use std::path::Path;

use super::{write_png, ReportError};

/// One picture of [`overlay_grid`]: an image with its true and predicted labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Interleaved RGB, `[H,W,3]`.
    pub rgb: Vec<u8>,
    /// Ground-truth class ids, `[H,W]`; [`IGNORE`] for no class.
    pub truth: Vec<u8>,
    /// Predicted class ids, `[H,W]`.
    pub prediction: Vec<u8>,
}

/// Interleaved RGB `[H,W,3]` of class ids `labels` `[H,W]` in the palette's
/// colours; [`IGNORE`] and ids beyond the palette are black.
pub fn colour_labels(labels: &[u8], palette: &Palette) -> Vec<u8> {
    let colours = palette.colours();
    labels.iter().flat_map(|&l| colours.get(l as usize).copied().unwrap_or([0, 0, 0])).collect()
}

/// Pixels between the pictures of [`overlay_grid`].
pub const SEPARATOR: usize = 4;
const SEPARATOR_GREY: u8 = 128;

/// Draw rows of image | ground truth | prediction (masks in palette
/// colours, ignore pixels black), separated by thin grey lines, and write
/// the grid as PNG. Samples may differ in size; each cell is as wide as the
/// widest sample.
pub fn overlay_grid(samples: &[Sample], palette: &Palette, path: &Path) -> Result<(), ReportError> {
    if samples.is_empty() {
        return Err(ReportError::Empty { path: path.to_path_buf(), reason: "no sample to show".into() });
    }
    for (i, s) in samples.iter().enumerate() {
        let pixels = s.width * s.height;
        assert!(
            s.rgb.len() == 3 * pixels && s.truth.len() == pixels && s.prediction.len() == pixels,
            "sample {i} is {}x{} but has {} RGB bytes, {} truth and {} predicted labels",
            s.width,
            s.height,
            s.rgb.len(),
            s.truth.len(),
            s.prediction.len()
        );
    }
    let cell = samples.iter().map(|s| s.width).max().unwrap_or(0);
    let width = 3 * cell + 4 * SEPARATOR;
    let height = samples.iter().map(|s| s.height).sum::<usize>() + (samples.len() + 1) * SEPARATOR;
    let mut canvas = vec![SEPARATOR_GREY; width * height * 3];
    let mut top = SEPARATOR;
    for s in samples {
        let pictures = [s.rgb.clone(), colour_labels(&s.truth, palette), colour_labels(&s.prediction, palette)];
        for (k, picture) in pictures.iter().enumerate() {
            let left = SEPARATOR + k * (cell + SEPARATOR);
            for y in 0..s.height {
                let dst = ((top + y) * width + left) * 3;
                canvas[dst..dst + s.width * 3].copy_from_slice(&picture[y * s.width * 3..(y + 1) * s.width * 3]);
            }
        }
        top += s.height + SEPARATOR;
    }
    write_png(path, &canvas, width, height)
}

/// The image `rgb` `[H,W,3]` with the mask `labels` `[H,W]` laid over it:
/// `(1 - alpha) * image + alpha * class colour` per pixel; pixels with
/// [`IGNORE`] (or an id beyond the palette) keep the image's colour.
pub fn blend(rgb: &[u8], labels: &[u8], palette: &Palette, alpha: f32) -> Vec<u8> {
    assert_eq!(rgb.len(), 3 * labels.len(), "blend: {} RGB bytes for {} labels", rgb.len(), labels.len());
    let alpha = alpha.clamp(0.0, 1.0);
    let mut out = rgb.to_vec();
    for (px, &l) in out.chunks_exact_mut(3).zip(labels) {
        if l as u32 == IGNORE {
            continue;
        }
        if let Some(colour) = palette.colours().get(l as usize) {
            for (v, &c) in px.iter_mut().zip(colour) {
                *v = ((1.0 - alpha) * *v as f32 + alpha * c as f32).round() as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_dir::TempDir;

    #[test]
    fn grid_puts_image_truth_and_prediction_side_by_side() {
        let palette = Palette::dubai();
        let (w, h) = (5, 3);
        let sample = Sample {
            width: w,
            height: h,
            rgb: (0..w * h * 3).map(|i| i as u8).collect(),
            truth: vec![1, 1, 255, 2, 2, 0, 0, 0, 0, 0, 3, 3, 3, 3, 3],
            prediction: vec![4; w * h],
        };
        let small = Sample { width: 2, height: 2, rgb: vec![7; 12], truth: vec![0; 4], prediction: vec![5; 4] };
        let tmp = TempDir::new("grid");
        let path = tmp.0.join("grid.png");
        overlay_grid(&[sample.clone(), small], &palette, &path).unwrap();
        let img = image::open(&path).unwrap().into_rgb8();
        assert_eq!(img.dimensions(), ((3 * w + 4 * SEPARATOR) as u32, (h + 2 + 3 * SEPARATOR) as u32));
        let at = |x: usize, y: usize| img.get_pixel(x as u32, y as u32).0;
        let s = SEPARATOR;
        assert_eq!(at(0, 0), [SEPARATOR_GREY; 3]);
        assert_eq!(at(s, s), [0, 1, 2], "image first");
        assert_eq!(at(s + 1, s + 1), [18, 19, 20]);
        assert_eq!(at(2 * s + w, s), palette.colours()[1], "truth second");
        assert_eq!(at(2 * s + w + 2, s), [0, 0, 0], "ignore is black");
        assert_eq!(at(3 * s + 2 * w + 4, s + 2), palette.colours()[4], "prediction third");
        assert_eq!(at(3 * s + 2 * w + 1, 2 * s + h + 1), palette.colours()[5], "second row");
        assert_eq!(at(3 * s + 2 * w + 3, 2 * s + h + 1), [SEPARATOR_GREY; 3], "narrow sample leaves grey");
        assert!(overlay_grid(&[], &palette, &path).is_err());
    }

    #[test]
    fn blend_mixes_colours_and_leaves_ignore_alone() {
        let palette = Palette::dubai();
        let rgb = [100, 100, 100, 10, 20, 30, 0, 0, 0];
        let out = blend(&rgb, &[3, 255, 0], &palette, 0.5);
        let [r, g, b] = palette.colours()[3];
        let mix = |a: u8, c: u8| ((a as f32 + c as f32) / 2.0).round() as u8;
        assert_eq!(&out[..3], [mix(100, r), mix(100, g), mix(100, b)]);
        assert_eq!(&out[3..6], [10, 20, 30]);
        assert_eq!(&out[6..], palette.colours()[0].map(|c| mix(0, c)));
        assert_eq!(blend(&rgb, &[3, 255, 0], &palette, 0.0), rgb);
        assert_eq!(&blend(&rgb, &[3, 255, 0], &palette, 1.0)[..3], palette.colours()[3]);
    }
}
