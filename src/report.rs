//! Pictures people look at: training curves, a comparison of losses, and
//! image | ground truth | prediction grids.
//!
//! Plots are drawn with `plotters` into an RGB buffer and encoded as PNG by
//! the `image` crate. plotters is built without its system font stack
//! (font-kit, fontconfig): text is rendered with `ab_glyph` from a TrueType
//! font read at run time from the usual system places (see [`FONT_PATHS`]),
//! or from the file named by the `UNET_WGPU_FONT` environment variable.
//! Without a font the plot functions return [`ReportError::NoFont`]; training
//! prints it as a warning and goes on. The picture grids need no font.
//!
//! Every PNG is written atomically (temporary file, then rename), so a viewer
//! refreshing `curves.png` during training never sees half a file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::checkpoint::write_atomically;
use crate::data::{Palette, IGNORE};
use crate::history::{Goal, History};

/// Where fonts are looked for, in order (after `UNET_WGPU_FONT`): Debian and
/// Ubuntu, Fedora, Arch, other Linux fonts, macOS, Windows.
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
    "C:\\Windows\\Fonts\\segoeui.ttf",
];

/// The environment variable naming a font file to use instead of [`FONT_PATHS`].
pub const FONT_ENV: &str = "UNET_WGPU_FONT";

/// What can go wrong drawing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No usable TrueType font for the plot text.
    #[error("no TrueType font for plot text: tried {tried}; install one (Debian/Ubuntu: `apt install fonts-dejavu-core`, Fedora: `dnf install dejavu-sans-fonts`) or set {FONT_ENV}=/path/to/font.ttf")]
    NoFont {
        /// The paths tried, comma-separated.
        tried: String,
    },
    /// Nothing to draw (an empty history, no sample, ...).
    #[error("nothing to draw in {}: {reason}", .path.display())]
    Empty {
        /// The picture that was to be drawn.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// plotters failed to draw.
    #[error("drawing {} failed: {reason}", .path.display())]
    Draw {
        /// The picture.
        path: PathBuf,
        /// What plotters said.
        reason: String,
    },
    /// Encoding or writing the PNG failed.
    #[error("cannot write {}: {reason}", .path.display())]
    Write {
        /// The picture.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Find a font and register it with plotters as `sans-serif`, once per
/// process. The outcome (the error too) is remembered.
pub fn ensure_font() -> Result<(), ReportError> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = FONT.get_or_init(|| {
        let mut tried = Vec::new();
        let from_env = std::env::var_os(FONT_ENV).map(PathBuf::from);
        for path in from_env.into_iter().chain(FONT_PATHS.iter().map(PathBuf::from)) {
            let Ok(bytes) = std::fs::read(&path) else {
                tried.push(path.display().to_string());
                continue;
            };
            // plotters keeps fonts for the life of the program: leak the
            // bytes once, as the registry wants a 'static slice.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
            tried.push(format!("{} (not a readable TrueType font)", path.display()));
        }
        Err(tried.join(", "))
    });
    outcome.clone().map_err(|tried| ReportError::NoFont { tried })
}

/// One plotted line.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
    colour: RGBColor,
    dashed: bool,
}

/// Ten distinguishable line colours: `compare-losses` draws eight runs at once.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A range holding every value, padded by 5% (and widened around a single value).
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 * lo.abs().max(0.1) };
    (lo - pad, hi + pad)
}

fn draw_err(path: &Path) -> impl Fn(String) -> ReportError + '_ {
    move |reason| ReportError::Draw { path: path.to_path_buf(), reason }
}

/// Draw `lines` into `area` with a caption, axis labels and a legend.
fn panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    caption: &str,
    y_label: &str,
    lines: &[Line],
    legend: SeriesLabelPosition,
    path: &Path,
) -> Result<(), ReportError> {
    let err = draw_err(path);
    let (x0, x1) = padded_range(lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)));
    let (y0, y1) = padded_range(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        // Epochs are whole numbers: about one label an epoch on short runs, none between.
        .x_labels(((x1 - x0).ceil() as usize + 1).clamp(2, 12))
        .x_label_formatter(&|x| if x.fract() == 0.0 { format!("{x:.0}") } else { String::new() })
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for line in lines {
        let style = line.colour.stroke_width(2);
        let anno = if line.dashed {
            chart.draw_series(DashedLineSeries::new(line.points.iter().copied(), 8, 5, style))
        } else {
            chart.draw_series(LineSeries::new(line.points.iter().copied(), style).point_size(2))
        }
        .map_err(|e| err(e.to_string()))?;
        // The legend sample looks like the line: solid, or two dashes.
        let (a, b) = if line.dashed { ((0, 8), (12, 20)) } else { ((0, 10), (10, 20)) };
        anno.label(line.label.as_str()).legend(move |(x, y)| {
            EmptyElement::at((x, y))
                + PathElement::new(vec![(a.0, 0), (a.1, 0)], style)
                + PathElement::new(vec![(b.0, 0), (b.1, 0)], style)
        });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(legend)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Render `draw` into a `width` x `height` white RGB canvas and write it as PNG.
fn render(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<(), ReportError>,
) -> Result<(), ReportError> {
    ensure_font()?;
    let mut rgb = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(|e| draw_err(path)(e.to_string()))?;
    }
    write_png(path, &rgb, width as usize, height as usize)
}

/// Encode interleaved RGB `[H,W,3]` as PNG and write it atomically.
pub fn write_png(path: &Path, rgb: &[u8], width: usize, height: usize) -> Result<(), ReportError> {
    assert_eq!(
        rgb.len(),
        width * height * 3,
        "{width}x{height} RGB needs {} bytes, got {}",
        width * height * 3,
        rgb.len()
    );
    let write = |reason: String| ReportError::Write { path: path.to_path_buf(), reason };
    let mut png = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new(&mut png);
    image::ImageEncoder::write_image(encoder, rgb, width as u32, height as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| write(e.to_string()))?;
    write_atomically(path, &png).map_err(|e| write(e.to_string()))
}

/// `curves.png`: loss and val_loss in the left panel; accuracy, jacard_coef,
/// mean_iou and their `val_` versions in the right one (training solid,
/// validation dashed, one colour per metric); x is the epoch. Columns the
/// history lacks are left out.
pub fn plot_history(history: &History, path: &Path) -> Result<(), ReportError> {
    let lines = |metrics: &[&str]| -> Vec<Line> {
        let mut lines = Vec::new();
        for (i, metric) in metrics.iter().enumerate() {
            for (prefix, dashed) in [("", false), ("val_", true)] {
                let label = format!("{prefix}{metric}");
                let points = history.series(&label);
                if !points.is_empty() {
                    lines.push(Line { label, points, colour: COLOURS[i % COLOURS.len()], dashed });
                }
            }
        }
        lines
    };
    let (losses, metrics) = (lines(&["loss"]), lines(&["accuracy", "jacard_coef", "mean_iou"]));
    if losses.is_empty() && metrics.is_empty() {
        return Err(ReportError::Empty { path: path.to_path_buf(), reason: "the history has no epoch yet".into() });
    }
    render(path, (1400, 560), |root| {
        root.fill(&WHITE).map_err(|e| draw_err(path)(e.to_string()))?;
        let areas = root.split_evenly((1, 2));
        panel(&areas[0], "Loss", "loss", &losses, SeriesLabelPosition::UpperRight, path)?;
        // Scores rise: the legend sits where the curves start low.
        panel(&areas[1], "Metrics", "score", &metrics, SeriesLabelPosition::LowerRight, path)
    })
}

/// The compare-losses picture: one panel with `column` (e.g.
/// `val_jacard_coef`) per epoch, one line per run, labelled with the run's
/// name (e.g. the loss it trained with).
pub fn plot_comparison(runs: &[(String, History)], column: &str, path: &Path) -> Result<(), ReportError> {
    let lines: Vec<Line> = runs
        .iter()
        .enumerate()
        .map(|(i, (name, h))| Line {
            label: name.clone(),
            points: h.series(column),
            colour: COLOURS[i % COLOURS.len()],
            dashed: false,
        })
        .filter(|l| !l.points.is_empty())
        .collect();
    if lines.is_empty() {
        return Err(ReportError::Empty { path: path.to_path_buf(), reason: format!("no run has a `{column}` value") });
    }
    render(path, (900, 560), |root| {
        root.fill(&WHITE).map_err(|e| draw_err(path)(e.to_string()))?;
        let legend = match Goal::of(column) {
            Goal::Min => SeriesLabelPosition::UpperRight,
            Goal::Max => SeriesLabelPosition::LowerRight,
        };
        panel(root, &format!("{column} by loss"), column, &lines, legend, path)
    })
}

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

    fn history(epochs: usize, shift: f64) -> History {
        let mut h = History::new();
        for e in 1..=epochs {
            let t = e as f64;
            h.push(&[
                ("epoch", t),
                ("loss", 1.0 / t),
                ("val_loss", 1.1 / t + shift),
                ("accuracy", 1.0 - 0.5 / t),
                ("val_accuracy", 0.9 - 0.5 / t),
                ("jacard_coef", 0.8 - 0.5 / t),
                ("val_jacard_coef", 0.7 - 0.5 / t - shift),
                ("mean_iou", 0.6 - 0.4 / t),
            ]);
        }
        h
    }

    /// Distinct colours in a PNG, and its size.
    fn colours_of(path: &Path) -> (usize, (u32, u32)) {
        let img = image::open(path).unwrap().into_rgb8();
        let set: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        (set.len(), img.dimensions())
    }

    fn has_colour(path: &Path, c: RGBColor) -> bool {
        image::open(path).unwrap().into_rgb8().pixels().any(|p| p.0 == [c.0, c.1, c.2])
    }

    #[test]
    fn curves_and_comparison_are_drawn_when_a_font_exists() {
        if let Err(e) = ensure_font() {
            // The error must tell how to get a font; nothing else to check here.
            let msg = e.to_string();
            assert!(msg.contains("DejaVuSans.ttf") && msg.contains("fonts-dejavu-core"), "{msg}");
            eprintln!("skipping plot checks: {msg}");
            return;
        }
        let tmp = TempDir::new("report");
        let curves = tmp.0.join("curves.png");
        plot_history(&history(6, 0.0), &curves).unwrap();
        let (colours, size) = colours_of(&curves);
        assert_eq!(size, (1400, 560));
        assert!(colours > 20, "a plot with lines and text has many colours, got {colours}");
        for c in &COLOURS[..3] {
            assert!(has_colour(&curves, *c), "line colour {c:?} missing");
        }
        // One epoch still gives a picture (a degenerate x range must not fail).
        plot_history(&history(1, 0.0), &curves).unwrap();

        let cmp = tmp.0.join("compare.png");
        let runs = vec![("dice".to_string(), history(4, 0.0)), ("focal".to_string(), history(4, 0.1))];
        plot_comparison(&runs, "val_jacard_coef", &cmp).unwrap();
        assert!(has_colour(&cmp, COLOURS[0]) && has_colour(&cmp, COLOURS[1]));
        assert!(!has_colour(&cmp, COLOURS[2]), "only two runs, two line colours");
        let err = plot_comparison(&runs, "nope", &cmp).unwrap_err().to_string();
        assert!(err.contains("`nope`"), "{err}");
        let err = plot_history(&History::new(), &curves).unwrap_err().to_string();
        assert!(err.contains("no epoch"), "{err}");
    }

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
