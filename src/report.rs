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
use crate::history::{Goal, History};

mod grid;
pub use grid::{blend, colour_labels, overlay_grid, Sample, SEPARATOR};

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
    /// `(x, low, high)`: a band shaded in a light tint of the line's colour behind
    /// it (the spread over seeds); empty for none.
    band: Vec<(f64, f64, f64)>,
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

/// Opacity of the bands of [`plot_comparison`] (over white: a light tint of the line colour).
const BAND_OPACITY: f64 = 0.18;

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
    let bands = lines.iter().flat_map(|l| l.band.iter().flat_map(|&(_, lo, hi)| [lo, hi]));
    let (y0, y1) = padded_range(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).chain(bands));
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
    // Bands first, so that every line is drawn over every band.
    for line in lines.iter().filter(|l| !l.band.is_empty()) {
        let upper = line.band.iter().map(|&(x, _, hi)| (x, hi));
        let lower = line.band.iter().rev().map(|&(x, lo, _)| (x, lo));
        let outline: Vec<(f64, f64)> = upper.chain(lower).collect();
        chart
            .draw_series(std::iter::once(Polygon::new(outline, line.colour.mix(BAND_OPACITY).filled())))
            .map_err(|e| err(e.to_string()))?;
    }
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
                    lines.push(Line { label, points, colour: COLOURS[i % COLOURS.len()], dashed, band: Vec::new() });
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

/// The compare-losses picture: one panel with `column` (e.g. `val_jacard_coef`) per
/// epoch, one line per loss, labelled with its name. Each loss has the histories of its
/// runs (one per seed): its line is their mean at each epoch, and where it has more
/// than one run, a band in a light tint of its colour spans their minimum to maximum.
/// With one run per loss, the lines are the runs' own values.
pub fn plot_comparison(runs: &[(String, Vec<History>)], column: &str, path: &Path) -> Result<(), ReportError> {
    let lines: Vec<Line> = runs
        .iter()
        .enumerate()
        .map(|(i, (name, histories))| {
            let by_epoch = spread_by_epoch(histories, column);
            Line {
                label: name.clone(),
                points: by_epoch.iter().map(|e| (e.epoch, e.mean)).collect(),
                colour: COLOURS[i % COLOURS.len()],
                dashed: false,
                band: if histories.len() > 1 {
                    by_epoch.iter().map(|e| (e.epoch, e.min, e.max)).collect()
                } else {
                    vec![]
                },
            }
        })
        .filter(|l| !l.points.is_empty())
        .collect();
    if lines.is_empty() {
        return Err(ReportError::Empty { path: path.to_path_buf(), reason: format!("no run has a `{column}` value") });
    }
    let seeds = runs.iter().map(|(_, h)| h.len()).max().unwrap_or(0);
    let caption = match seeds {
        0 | 1 => format!("{column} by loss"),
        n => format!("{column} by loss: mean of {n} seeds, band from min to max"),
    };
    render(path, (900, 560), |root| {
        root.fill(&WHITE).map_err(|e| draw_err(path)(e.to_string()))?;
        let legend = match Goal::of(column) {
            Goal::Min => SeriesLabelPosition::UpperRight,
            Goal::Max => SeriesLabelPosition::LowerRight,
        };
        panel(root, &caption, column, &lines, legend, path)
    })
}

/// One epoch of [`spread_by_epoch`].
#[derive(Clone, Copy, Debug, PartialEq)]
struct EpochSpread {
    epoch: f64,
    mean: f64,
    min: f64,
    max: f64,
}

/// The mean, minimum and maximum of `column` at each epoch over the runs that have a
/// value there, in epoch order.
fn spread_by_epoch(histories: &[History], column: &str) -> Vec<EpochSpread> {
    let mut by_epoch: Vec<(f64, Vec<f64>)> = Vec::new();
    for (epoch, value) in histories.iter().flat_map(|h| h.series(column)) {
        match by_epoch.iter_mut().find(|(e, _)| *e == epoch) {
            Some((_, values)) => values.push(value),
            None => by_epoch.push((epoch, vec![value])),
        }
    }
    by_epoch.sort_by(|a, b| a.0.total_cmp(&b.0));
    let spread = |(epoch, values): (f64, Vec<f64>)| EpochSpread {
        epoch,
        mean: values.iter().sum::<f64>() / values.len() as f64,
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    };
    by_epoch.into_iter().map(spread).collect()
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
        let runs = vec![("dice".to_string(), vec![history(4, 0.0)]), ("focal".to_string(), vec![history(4, 0.1)])];
        plot_comparison(&runs, "val_jacard_coef", &cmp).unwrap();
        assert!(has_colour(&cmp, COLOURS[0]) && has_colour(&cmp, COLOURS[1]));
        assert!(!has_colour(&cmp, COLOURS[2]), "only two runs, two line colours");
        assert!(tinted(&cmp, COLOURS[0]) < 500, "one run per loss: no band");
        let err = plot_comparison(&runs, "nope", &cmp).unwrap_err().to_string();
        assert!(err.contains("`nope`"), "{err}");
        let err = plot_history(&History::new(), &curves).unwrap_err().to_string();
        assert!(err.contains("no epoch"), "{err}");
    }

    /// Pixels lighter than colour `c` but of its hue: the tint of a band over white.
    fn tinted(path: &Path, c: RGBColor) -> usize {
        let mix = |a: u8, t: f64| (t * a as f64 + (1.0 - t) * 255.0).round() as i32;
        let close = |p: &[u8; 3], t: f64| (0..3).all(|k| (p[k] as i32 - mix([c.0, c.1, c.2][k], t)).abs() <= 3);
        let img = image::open(path).unwrap().into_rgb8();
        img.pixels().filter(|p| close(&p.0, BAND_OPACITY)).count()
    }

    #[test]
    fn comparison_over_seeds_draws_mean_lines_over_min_max_bands() {
        let (a, b, c) = (history(5, 0.0), history(5, 0.05), history(5, 0.1));
        let spread = spread_by_epoch(&[a.clone(), b.clone(), c.clone()], "val_jacard_coef");
        assert_eq!(spread.len(), 5);
        let e2 = spread[1];
        assert_eq!((e2.epoch, e2.max, e2.min), (2.0, 0.7 - 0.25, 0.7 - 0.25 - 0.1));
        assert!((e2.mean - (0.7 - 0.25 - 0.05)).abs() < 1e-12, "{e2:?}");
        // At an epoch that only some runs reached, the spread is over those runs.
        let short = spread_by_epoch(&[a.clone(), history(4, 0.1)], "val_jacard_coef");
        assert_eq!((short[4].min, short[4].max), (0.7 - 0.1, 0.7 - 0.1));
        if let Err(e) = ensure_font() {
            eprintln!("skipping the band picture: {e}");
            return;
        }
        let tmp = TempDir::new("bands");
        let cmp = tmp.0.join("compare.png");
        let runs = vec![("dice".to_string(), vec![a, b, c]), ("focal".to_string(), vec![history(5, 0.2)])];
        plot_comparison(&runs, "val_jacard_coef", &cmp).unwrap();
        let (colours, size) = colours_of(&cmp);
        assert_eq!(size, (900, 560));
        assert!(colours > 20, "{colours}");
        assert!(has_colour(&cmp, COLOURS[0]) && has_colour(&cmp, COLOURS[1]), "both mean lines");
        assert!(tinted(&cmp, COLOURS[0]) > 2000, "the band of dice's three seeds: {}", tinted(&cmp, COLOURS[0]));
        assert!(tinted(&cmp, COLOURS[1]) < 500, "focal has one seed: no band");
    }
}
