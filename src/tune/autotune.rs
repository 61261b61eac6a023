//! The autotune (`unet-wgpu tune`): times each candidate tiling of each kernel family on the
//! adapter, after checking its result, and keeps the fastest.

use std::time::{Duration, Instant};

use crate::runtime::{Encoder, Gpu};

use super::families::{conv2d_family, conv_transpose2d_family, matmul_family, Family};
use super::tiling::conv_transpose2d::Workgroups;
use super::tiling::gemm::ConvGemm;
use super::tiling::matmul::{self, SharedTiling, Tiles};
use super::tiling::{builds_register_convolutions, conv2d, Tuning};

/// The candidates [`Tuning::autotune`] tries for each family, the builtin first.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidates {
    /// For [`Tuning::conv2d_forward`].
    pub conv2d_forward: Vec<conv2d::Tiling>,
    /// For [`Tuning::conv2d_backward_data`].
    pub conv2d_backward_data: Vec<conv2d::Tiling>,
    /// For [`Tuning::conv2d_backward_weight`].
    pub conv2d_backward_weight: Vec<conv2d::Tiling>,
    /// For [`Tuning::conv_transpose2d`].
    pub conv_transpose2d: Vec<Workgroups>,
    /// For [`Tuning::matmul`].
    pub matmul: Vec<Tiles>,
    /// For [`Tuning::conv_gemm`]: the register tiles (`None`) or GEMM tilings.
    pub conv_gemm: Vec<Option<ConvGemm>>,
}

impl Candidates {
    /// A short list per family around both builtin choices (CPU and GPU), `builtin`'s first,
    /// without duplicates and without what the adapter's `limits` forbid.
    pub fn new(builtin: &Tuning, limits: &wgpu::Limits) -> Candidates {
        // Each candidate is checked as part of a whole tuning (the builtin with one field swapped).
        fn keep<T: PartialEq + Copy>(first: T, rest: &[T], ok: impl Fn(T) -> bool) -> Vec<T> {
            let mut list = vec![first];
            for &c in rest {
                if !list.contains(&c) && ok(c) {
                    list.push(c);
                }
            }
            list
        }
        let with = |f: &dyn Fn(&mut Tuning)| {
            let mut t = *builtin;
            f(&mut t);
            t.check(limits).is_ok()
        };
        let conv = |wg, rows| conv2d::Tiling { wg, rows, ..builtin.conv2d_forward };
        let data = |wg, rows| conv2d::Tiling { wg, rows, ..builtin.conv2d_backward_data };
        let weight = |wg, bw_threads| conv2d::Tiling { wg, bw_threads, ..builtin.conv2d_backward_weight };
        let groups = |general, quads| Workgroups { general, quads };
        let register = |wg, tm, tn| Tiles::Register(matmul::Tiling { wg, tm, tn });
        let shared = |tx, ty, sm, sn, bk| Tiles::Shared(SharedTiling { tx, ty, sm, sn, bk });
        Candidates {
            conv2d_forward: keep(
                builtin.conv2d_forward,
                &[conv(32, 4), conv(64, 4), conv(64, 2), conv(128, 2), conv(256, 2)],
                |c| with(&|t| t.conv2d_forward = c),
            ),
            conv2d_backward_data: keep(
                builtin.conv2d_backward_data,
                &[data(32, 4), data(64, 4), data(64, 2), data(128, 2), data(256, 2)],
                |c| with(&|t| t.conv2d_backward_data = c),
            ),
            conv2d_backward_weight: keep(
                builtin.conv2d_backward_weight,
                &[weight(64, 128), weight(64, 512), weight(64, 2048), weight(128, 8192), weight(256, 65536)],
                |c| with(&|t| t.conv2d_backward_weight = c),
            ),
            conv_transpose2d: keep(
                builtin.conv_transpose2d,
                &[groups(64, 16), groups(64, 32), groups(64, 64), groups(128, 64), groups(256, 128)],
                |c| with(&|t| t.conv_transpose2d = c),
            ),
            matmul: keep(
                builtin.matmul,
                &[
                    register(16, 16, 16),
                    register(16, 8, 8),
                    register(64, 8, 8),
                    shared(16, 16, 4, 4, 8),
                    shared(8, 8, 4, 4, 16),
                ],
                |c| with(&|t| t.matmul = c),
            ),
            conv_gemm: keep(builtin.conv_gemm, &super::gemm::candidates(), |c| with(&|t| t.conv_gemm = c)),
        }
    }

    /// What [`Tuning::autotune`] tries on an adapter: [`Candidates::new`] around its builtin,
    /// less what it cannot compile. Where [`builds_register_convolutions`] is false
    /// (SwiftShader), the three register-tile conv2d families are empty (not measured: the
    /// builtin's stay) and the convolutions' family has no register candidate.
    pub fn for_adapter(info: &wgpu::AdapterInfo, limits: &wgpu::Limits) -> Candidates {
        let mut c = Candidates::new(&Tuning::builtin(info), limits);
        if !builds_register_convolutions(info) {
            c.conv2d_forward.clear();
            c.conv2d_backward_data.clear();
            c.conv2d_backward_weight.clear();
            c.conv_gemm.retain(Option::is_some);
        }
        c
    }
}

/// The shapes [`Tuning::autotune_on`] times each candidate on; its choice is the candidate
/// fastest over all of them together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TuneShapes {
    /// Activations `[N, C, H, W]` of 3x3 "same" convolutions from C to C channels (conv2d).
    pub conv2d: Vec<[usize; 4]>,
    /// Inputs `[N, C, H, W]` of up-convolutions to `max(C/2, 1)` channels at `2H x 2W`.
    pub conv_transpose2d: Vec<[usize; 4]>,
    /// Products `[M, K, N]` (matmul).
    pub matmul: Vec<[usize; 3]>,
}

impl TuneShapes {
    /// Layers of the default U-Net at batch 4 (see `UNET_LEVELS` in `benches/kernels/main.rs`),
    /// the first level at 128² rather than 256² to keep the measurement short; the GEMMs of
    /// the ceiling (512³) and of a 64-channel 3x3 conv at 32² (M = O, K = 9 I, N = pixels).
    pub fn unet() -> TuneShapes {
        TuneShapes {
            conv2d: vec![[4, 16, 128, 128], [4, 64, 64, 64], [4, 256, 16, 16]],
            conv_transpose2d: vec![[4, 32, 128, 128], [4, 128, 32, 32], [4, 256, 16, 16]],
            matmul: vec![[512, 512, 512], [64, 576, 4096]],
        }
    }
}

/// One line of the autotune's table.
#[derive(Clone, Debug, PartialEq)]
pub struct TuneRow {
    /// Kernel family, e.g. `"conv2d_forward"`.
    pub kernel: &'static str,
    /// The shape timed, `"all shapes"` for a candidate's total, `"-"` where nothing was timed.
    pub shape: String,
    /// The candidate, as in [`Tuning`]'s `Display` (`"wg 64"`), `" (builtin)"` appended for it.
    pub candidate: String,
    /// Fastest of the repetitions in milliseconds (the sum over shapes on total rows); `None`
    /// where not timed.
    pub ms: Option<f64>,
    /// Why a candidate was not timed or not considered: `"wrong output: ..."`, `"budget spent"`.
    pub note: String,
    /// On the total row of the candidate kept for this family.
    pub chosen: bool,
}

/// What [`Tuning::autotune`] measured.
#[derive(Clone, Debug)]
pub struct TuneReport {
    /// Every candidate's rows, in the order measured.
    pub rows: Vec<TuneRow>,
    /// `"GPU timestamps"` or `"wall clock"`.
    pub clock: &'static str,
    /// Time spent, compilation and checks included.
    pub elapsed: Duration,
    /// The budget it was given.
    pub budget: Duration,
    /// Whether every candidate (but those with wrong output) had all its runs within the budget.
    pub complete: bool,
}

/// Rounds of timed runs (each candidate once on each shape per round); the fastest run counts.
pub const REPS: usize = 2;
/// A candidate replaces the builtin only if this much faster over all shapes: smaller gains
/// are within the noise of a shared machine.
pub const MARGIN: f64 = 0.03;

impl TuneReport {
    /// The table: kernel, shape, candidate, ms, chosen (`*`), then a line on how it was timed.
    pub fn table(&self) -> String {
        let mut out = format!("{:<22} {:<20} {:<40} {:>9}  chosen\n", "kernel", "shape", "candidate", "ms");
        for r in &self.rows {
            let ms = r.ms.map_or("-".to_string(), |v| format!("{v:.3}"));
            let mut line = format!(
                "{:<22} {:<20} {:<40} {:>9}  {}",
                r.kernel,
                r.shape,
                r.candidate,
                ms,
                if r.chosen { "*" } else { "" }
            );
            if !r.note.is_empty() {
                line += &format!("{}({})", if r.chosen { " " } else { "" }, r.note);
            }
            out += line.trim_end();
            out.push('\n');
        }
        out += &format!(
            "timed with {}, fastest of {REPS} runs a shape (fewer where noted); a candidate replaces the builtin only when {:.0}% faster \
             over all shapes; {:.1} s of a {:.1} s budget{}",
            self.clock,
            100.0 * MARGIN,
            self.elapsed.as_secs_f64(),
            self.budget.as_secs_f64(),
            if self.complete { "" } else { " (spent before every candidate had all its runs)" }
        );
        out
    }
}

impl Tuning {
    /// Measure the candidates of each kernel family ([`Candidates::new`] around this adapter's
    /// builtin) on the U-Net's layer shapes ([`TuneShapes::unet`]) and keep the fastest, within
    /// `budget` of wall-clock time. See [`Tuning::autotune_on`].
    pub fn autotune(gpu: &Gpu, budget: Duration) -> (Tuning, TuneReport) {
        Tuning::autotune_on(gpu, budget, &TuneShapes::unet())
    }

    /// [`Tuning::autotune`] on chosen shapes. Per family (conv2d forward, backward data,
    /// backward weight, conv_transpose2d, matmul, then the convolutions as GEMMs or register
    /// tiles), each candidate is first run on small shapes
    /// and compared with the reference (a candidate that gives other numbers is dropped), then
    /// timed on every shape in up to [`REPS`] rounds (each candidate once a round, so that a slow
    /// spell of a shared machine spreads over all of them), with GPU timestamps where the adapter
    /// has them; the fastest run counts, and the candidate with the least total wins if it beats the builtin
    /// by [`MARGIN`]. Each family gets an equal share of the budget left when it starts; once a
    /// share is spent (or the rest of it would not fit another candidate as quick as the quickest
    /// so far) the family stops measuring and keeps the best complete candidate (the builtin
    /// when none). Pipelines compiled here stay in `gpu`'s cache; its active tuning
    /// is not changed (see `Gpu::set_tuning`).
    pub fn autotune_on(gpu: &Gpu, budget: Duration, shapes: &TuneShapes) -> (Tuning, TuneReport) {
        let start = Instant::now();
        let deadline = start + budget;
        let builtin = Tuning::builtin(&gpu.info);
        let candidates = Candidates::for_adapter(&gpu.info, &gpu.limits);
        let mut rows = Vec::new();
        let mut complete = true;
        let mut tuning = builtin;
        const FAMILIES: u32 = 6;
        let share = |done: u32| {
            let now = Instant::now();
            now + deadline.saturating_duration_since(now) / (FAMILIES - done)
        };
        // With any budget at all, each family's builtin is timed once however slow the machine:
        // the report then has a baseline, and a candidate that won has beaten a measured time.
        let timed_builtin = !budget.is_zero();
        let mut run = |family: Family<'_, _>, done: u32| {
            tune_family(gpu, family, (share(done), timed_builtin), &mut rows, &mut complete)
        };
        // The register-tile families are empty where the adapter cannot compile them.
        if !candidates.conv2d_forward.is_empty() {
            tuning.conv2d_forward =
                run(conv2d_family(gpu, "conv2d_forward", candidates.conv2d_forward, &shapes.conv2d), 0);
            tuning.conv2d_backward_data =
                run(conv2d_family(gpu, "conv2d_backward_data", candidates.conv2d_backward_data, &shapes.conv2d), 1);
            tuning.conv2d_backward_weight =
                run(conv2d_family(gpu, "conv2d_backward_weight", candidates.conv2d_backward_weight, &shapes.conv2d), 2);
        }
        let family = conv_transpose2d_family(gpu, candidates.conv_transpose2d, &shapes.conv_transpose2d);
        tuning.conv_transpose2d = tune_family(gpu, family, (share(3), timed_builtin), &mut rows, &mut complete);
        let family = matmul_family(gpu, candidates.matmul, &shapes.matmul);
        tuning.matmul = tune_family(gpu, family, (share(4), timed_builtin), &mut rows, &mut complete);
        // Last: the register candidate runs the register tilings chosen above.
        let family = super::gemm::family(gpu, tuning, candidates.conv_gemm, (&shapes.conv2d, &shapes.conv_transpose2d));
        tuning.conv_gemm = tune_family(gpu, family, (share(5), timed_builtin), &mut rows, &mut complete);
        let clock = if gpu.has_timestamps { "GPU timestamps" } else { "wall clock" };
        (tuning, TuneReport { rows, clock, elapsed: start.elapsed(), budget, complete })
    }
}

/// Check, time and choose among one family's candidates until `deadline`; returns the choice.
/// With `timed_builtin`, the builtin (the first candidate) gets its first round even past the
/// deadline. The runs go in rounds (every candidate once on every shape, then again), so that a
/// slow spell of a shared machine does not fall on one candidate's runs only.
pub(super) fn tune_family<C: Copy>(
    gpu: &Gpu,
    f: Family<'_, C>,
    (deadline, timed_builtin): (Instant, bool),
    rows: &mut Vec<TuneRow>,
    complete: &mut bool,
) -> C {
    let n = f.candidates.len();
    // best[i][s]: the fastest run of candidate i on shape s so far.
    let mut best = vec![vec![None::<f64>; f.shapes.len()]; n];
    let mut wrong: Vec<Option<String>> = vec![None; n];
    let mut checked = vec![false; n];
    let mut rounds = vec![0; n];
    // Wall time of the quickest candidate round so far (check and compilation included): one
    // that would not end before the deadline is not started, leaving the time to later families.
    let mut quickest: Option<Duration> = None;
    'rounds: for _ in 0..REPS {
        for (i, c) in f.candidates.iter().enumerate() {
            let started = Instant::now();
            let owed = timed_builtin && i == 0 && rounds[0] == 0;
            if !owed && (started >= deadline || quickest.is_some_and(|q| started + q > deadline)) {
                break 'rounds;
            }
            if wrong[i].is_some() {
                continue;
            }
            if !checked[i] {
                if let Err(e) = (f.check)(gpu, c) {
                    wrong[i] = Some(e);
                    continue;
                }
                checked[i] = true;
                if i == 0 {
                    // One untimed run of the builtin on each shape first: the first touches of
                    // the shapes' buffers should not count against the first candidate.
                    for (_, record) in &f.shapes {
                        let mut enc = gpu.encoder();
                        record(gpu, &mut enc, c);
                        gpu.submit(enc);
                        gpu.wait();
                    }
                }
            }
            let mut timed_all = true;
            for (s, (_, record)) in f.shapes.iter().enumerate() {
                if !owed && Instant::now() >= deadline {
                    timed_all = false;
                    break;
                }
                let t = time(gpu, &|gpu, enc| record(gpu, enc, c));
                best[i][s] = Some(best[i][s].map_or(t, |b: f64| b.min(t)));
            }
            if timed_all {
                rounds[i] += 1;
                quickest = Some(quickest.map_or(started.elapsed(), |q| q.min(started.elapsed())));
            }
        }
    }

    let label = |i: usize| (f.label)(&f.candidates[i]) + if i == 0 { " (builtin)" } else { "" };
    let row = |i: usize, shape: &str, ms: Option<f64>, note: &str| TuneRow {
        kernel: f.kernel,
        shape: shape.to_string(),
        candidate: label(i),
        ms,
        note: note.to_string(),
        chosen: false,
    };
    // (candidate index, total seconds, index of its total row)
    let mut totals: Vec<(usize, f64, usize)> = Vec::new();
    for i in 0..n {
        if let Some(e) = &wrong[i] {
            rows.push(row(i, "-", None, &format!("wrong output: {e}")));
            continue;
        }
        if rounds[i] < REPS {
            *complete = false;
        }
        if best[i].iter().all(Option::is_none) {
            rows.push(row(i, "-", None, "budget spent"));
            continue;
        }
        for ((shape, _), t) in f.shapes.iter().zip(&best[i]) {
            rows.push(row(i, shape, t.map(|t| t * 1e3), if t.is_none() { "budget spent" } else { "" }));
        }
        if let Some(total) = best[i].iter().copied().sum::<Option<f64>>() {
            let note = match rounds[i] {
                r if r >= REPS => String::new(),
                1 => "1 run".to_string(),
                r => format!("{r} runs"),
            };
            rows.push(row(i, "all shapes", Some(total * 1e3), &note));
            totals.push((i, total, rows.len() - 1));
        }
    }
    let builtin = totals.iter().find(|t| t.0 == 0).copied();
    let fastest = totals.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1));
    let chosen = match (builtin, fastest) {
        (Some(b), Some(f)) if f.1 < b.1 * (1.0 - MARGIN) => Some(f),
        (Some(b), _) => Some(b),
        _ => None, // the builtin itself was not timed: keep it
    };
    match chosen {
        Some((i, _, r)) => {
            rows[r].chosen = true;
            f.candidates[i]
        }
        None => {
            rows.push(TuneRow { chosen: true, ..row(0, "-", None, "kept: not timed within the budget") });
            f.candidates[0]
        }
    }
}

/// Seconds of one run of `record`: the sum of its dispatches' GPU times where the adapter has
/// timestamps, else the wall clock around submit and wait.
fn time(gpu: &Gpu, record: &dyn Fn(&Gpu, &mut Encoder)) -> f64 {
    if gpu.has_timestamps {
        let mut enc = gpu.timed_encoder(64);
        record(gpu, &mut enc);
        if let Some(t) = gpu.submit_timed(enc) {
            return t.dispatches.iter().map(|d| d.1).sum();
        }
    }
    let start = Instant::now();
    let mut enc = gpu.encoder();
    record(gpu, &mut enc);
    gpu.submit(enc);
    gpu.wait();
    start.elapsed().as_secs_f64()
}
