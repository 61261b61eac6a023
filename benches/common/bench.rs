//! A small kernel-benchmark harness: times a recorded sequence of dispatches
//! with GPU timestamps where the adapter has them (wall clock otherwise) and
//! prints one line per case with time, GFLOP/s and GB/s, and that rate as a
//! share of the GPU's [`Ceilings`] (measured first, see [`Bench::measure_ceilings`]).
//!
//! Used by `benches/kernels/` (`cargo bench --bench kernels [FILTER]`).

use super::ceiling::copy;
use unet_wgpu::ops::matmul::matmul_forward;
use unet_wgpu::runtime::{Encoder, Gpu, MAX_TIMED_DISPATCHES};
use unet_wgpu::testing::random_vec;

/// What this GPU reaches with shaders written like ours: the yardsticks of the `% ceil` column.
#[derive(Clone, Copy, Debug)]
pub struct Ceilings {
    /// GFLOP/s of the default GEMM (tiled as `gpu.tuning().matmul` says) at [`CEILING_GEMM`]^3
    /// (fastest repetition).
    pub gemm_gflops: f64,
    /// GB/s (read + written) of the vec4 copy over [`CEILING_COPY_BYTES`] (fastest repetition).
    pub copy_gbs: f64,
}

/// M = N = K of the GEMM ceiling.
pub const CEILING_GEMM: usize = 1024;
/// Bytes of the tensor the copy ceiling copies (64 MiB: far larger than the CPU caches).
pub const CEILING_COPY_BYTES: usize = 64 << 20;

/// How a case was timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// GPU timestamp queries around each dispatch.
    Gpu,
    /// Wall clock around submit + wait (includes submission overhead).
    Wall,
}

/// The result of one case.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// Kernel name, e.g. `"conv2d_forward"`.
    pub name: String,
    /// Shape description, e.g. `"4x16x256x256 k3"`.
    pub shape: String,
    /// Median seconds of one repetition (all dispatches `record` made).
    pub seconds: f64,
    /// Fastest repetition.
    pub min_seconds: f64,
    /// Floating-point operations of one repetition, if it is compute-bound.
    pub flops: Option<f64>,
    /// Bytes read plus written by one repetition (the minimum traffic).
    pub bytes: Option<f64>,
    /// How it was timed.
    pub clock: Clock,
    /// GFLOP/s as a percentage of the GEMM ceiling (when `flops` is known), else GB/s as a
    /// percentage of the copy ceiling; `None` without ceilings.
    pub ceiling_percent: Option<f64>,
}

impl Measurement {
    /// GFLOP/s at the median time.
    pub fn gflops(&self) -> Option<f64> {
        self.flops.map(|f| f / self.seconds / 1e9)
    }

    /// GB/s at the median time.
    pub fn gbs(&self) -> Option<f64> {
        self.bytes.map(|b| b / self.seconds / 1e9)
    }

    /// One table row (see [`Bench::header`]).
    pub fn row(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        format!(
            "{:<30} {:<26} {:>10.3} {:>10.3} {:>9} {:>9} {:>7} {}",
            self.name,
            self.shape,
            self.seconds * 1e3,
            self.min_seconds * 1e3,
            opt(self.gflops()),
            opt(self.gbs()),
            self.ceiling_percent.map_or("-".to_string(), |v| format!("{v:.1}%")),
            if self.clock == Clock::Gpu { "gpu" } else { "wall" }
        )
    }
}

/// What a row of the table names: kernel, shape, and the work of one repetition.
struct Case<'a> {
    name: &'a str,
    shape: &'a str,
    flops: Option<f64>,
    bytes: Option<f64>,
}

/// How a case runs: repetitions, and whether an untimed run goes first.
struct Runs {
    reps: usize,
    warm_up: bool,
}

/// Runs cases whose name contains the filter, printing a row for each.
pub struct Bench<'g> {
    /// The GPU.
    pub gpu: &'g Gpu,
    /// Only names containing this run (empty: all).
    pub filter: String,
    /// Timed repetitions per case (after one warm-up).
    pub reps: usize,
    /// Results so far.
    pub results: Vec<Measurement>,
    /// Set by [`Bench::measure_ceilings`]; rows then show their share of them.
    pub ceilings: Option<Ceilings>,
}

impl<'g> Bench<'g> {
    /// A harness on `gpu`.
    pub fn new(gpu: &'g Gpu, filter: &str, reps: usize) -> Bench<'g> {
        Bench { gpu, filter: filter.to_string(), reps, results: Vec::new(), ceilings: None }
    }

    /// Time the ceilings (a `CEILING_GEMM`^3 GEMM with the GPU's tuning and a `CEILING_COPY_BYTES`
    /// copy, at most 3 repetitions each, the fastest kept: a ceiling is what the GPU can reach)
    /// and keep them for the `% ceil` column. Checks the GEMM on a few entries afterwards, so
    /// a wrong kernel cannot set the yardstick.
    pub fn measure_ceilings(&mut self) -> Ceilings {
        let gpu = self.gpu;
        let reps = self.reps.clamp(1, 3);
        let n = CEILING_GEMM;
        let (a, b) = (random_vec(1, n * n), random_vec(2, n * n));
        let (at, bt, c) = (gpu.upload(&a, &[n, n]), gpu.upload(&b, &[n, n]), gpu.empty(&[n, n]));
        let gemm = self
            .time_all(reps, true, &mut |gpu, enc| {
                matmul_forward(gpu, enc, &unet_wgpu::ops::matmul::Forward { a: &at, b: &bt, c: &c, tiles: None })
            })
            .0[0];
        let got = gpu.read(&c);
        for (i, j) in [(0, 0), (1, n - 1), (n / 2, 7), (n - 1, n - 1), (n - 3, n / 3)] {
            let terms = (0..n).map(|k| a[i * n + k] as f64 * b[k * n + j] as f64);
            let (want, scale) = terms.fold((0.0, 0.0), |(s, t), v| (s + v, t + v.abs()));
            let err = (got[i * n + j] as f64 - want).abs();
            assert!(err <= 1e-5 * scale, "GEMM ceiling kernel: c[{i},{j}] = {}, want {want}", got[i * n + j]);
        }
        drop((at, bt, c));

        let len = CEILING_COPY_BYTES / 4;
        let (x, y) = (gpu.upload(&random_vec(3, len), &[len]), gpu.empty(&[len]));
        let copy_time = self.time_all(reps, true, &mut |gpu, enc| copy(gpu, enc, &x, &y)).0[0];
        let ceilings = Ceilings {
            gemm_gflops: 2.0 * (n as f64).powi(3) / gemm / 1e9,
            copy_gbs: 2.0 * CEILING_COPY_BYTES as f64 / copy_time / 1e9,
        };
        self.ceilings = Some(ceilings);
        ceilings
    }

    /// The header: the adapter, the ceilings (when measured), then the column names.
    pub fn header(&self) -> String {
        let ceilings = self.ceilings.map_or(String::new(), |c| {
            format!(
                "ceilings: GEMM {:.2} GFLOP/s ({}, {n}x{n}x{n}), copy {:.2} GB/s ({} MiB); \
                 % ceil = GFLOP/s over the GEMM's for compute-bound rows, GB/s over the copy's otherwise\n",
                c.gemm_gflops,
                self.gpu.tuning().matmul,
                c.copy_gbs,
                CEILING_COPY_BYTES >> 20,
                n = CEILING_GEMM
            )
        });
        format!(
            "adapter: {}\n{ceilings}{:<30} {:<26} {:>10} {:>10} {:>9} {:>9} {:>7} clock",
            self.gpu.describe(),
            "kernel",
            "shape",
            "median ms",
            "min ms",
            "GFLOP/s",
            "GB/s",
            "% ceil"
        )
    }

    /// Whether a case named `name` would run (so callers can skip allocating).
    pub fn wants(&self, name: &str) -> bool {
        name.contains(&self.filter)
    }

    /// Time `record` (which records one repetition's dispatches into the
    /// encoder) and print a row. `flops` and `bytes` are per repetition.
    pub fn case(
        &mut self,
        name: &str,
        shape: &str,
        flops: Option<f64>,
        bytes: Option<f64>,
        mut record: impl FnMut(&Gpu, &mut Encoder),
    ) {
        let runs = Runs { reps: self.reps, warm_up: true };
        self.case_with(Case { name, shape, flops, bytes }, runs, &mut record);
    }

    /// [`Bench::case`] for work that takes seconds: `reps` repetitions and no warm-up run (the
    /// pipelines should have been compiled by an earlier, smaller case); with 1 repetition the
    /// work runs once.
    pub fn case_reps(
        &mut self,
        name: &str,
        shape: &str,
        flops: Option<f64>,
        bytes: Option<f64>,
        reps: usize,
        mut record: impl FnMut(&Gpu, &mut Encoder),
    ) {
        self.case_with(Case { name, shape, flops, bytes }, Runs { reps, warm_up: false }, &mut record);
    }

    fn case_with(&mut self, case: Case, runs: Runs, record: &mut dyn FnMut(&Gpu, &mut Encoder)) {
        let (Case { name, shape, flops, bytes }, Runs { reps, warm_up }) = (case, runs);
        if !self.wants(name) {
            return;
        }
        let (per_rep, clock) = self.time_all(reps, warm_up, record);
        let seconds = per_rep[per_rep.len() / 2];
        let ceiling_percent = self.ceilings.and_then(|c| match (flops, bytes) {
            (Some(f), _) => Some(100.0 * f / seconds / 1e9 / c.gemm_gflops),
            (None, Some(b)) => Some(100.0 * b / seconds / 1e9 / c.copy_gbs),
            (None, None) => None,
        });
        let m = Measurement {
            name: name.to_string(),
            shape: shape.to_string(),
            seconds,
            min_seconds: per_rep[0],
            flops,
            bytes,
            clock,
            ceiling_percent,
        };
        println!("{}", m.row());
        self.results.push(m);
    }

    /// Seconds of each of `reps` repetitions of `record`, sorted. With `warm_up`, one untimed
    /// run first compiles the pipelines and touches the buffers. With timestamps, one run
    /// counts the dispatches of a repetition; when no warm-up is asked for and a single
    /// repetition, that run is the measurement.
    fn time_all(&self, reps: usize, warm_up: bool, record: &mut dyn FnMut(&Gpu, &mut Encoder)) -> (Vec<f64>, Clock) {
        let gpu = self.gpu;
        let reps = reps.max(1);
        if warm_up {
            let mut enc = gpu.encoder();
            record(gpu, &mut enc);
            gpu.submit(enc);
            gpu.wait();
        }

        let mut per_rep = Vec::with_capacity(reps);
        let mut clock = Clock::Wall;
        if gpu.has_timestamps {
            // Count this case's dispatches once, then time all repetitions in one encoder.
            let mut probe = gpu.timed_encoder(MAX_TIMED_DISPATCHES);
            record(gpu, &mut probe);
            let probe = gpu.submit_timed(probe).map(|t| t.dispatches).unwrap_or_default();
            let per = probe.len();
            let fit = reps.min(MAX_TIMED_DISPATCHES as usize / per.max(1));
            if per > 0 && (per as u32) < MAX_TIMED_DISPATCHES && !warm_up && reps == 1 {
                per_rep.push(probe.iter().map(|d| d.1).sum());
                clock = Clock::Gpu;
            } else if per > 0 && fit > 0 {
                let mut enc = gpu.timed_encoder((per * fit) as u32);
                for _ in 0..fit {
                    record(gpu, &mut enc);
                }
                if let Some(t) = gpu.submit_timed(enc) {
                    per_rep = t.dispatches.chunks(per).map(|c| c.iter().map(|d| d.1).sum()).collect();
                    clock = Clock::Gpu;
                }
            }
        }
        if per_rep.is_empty() {
            for _ in 0..reps {
                let mut enc = gpu.encoder();
                let start = std::time::Instant::now();
                record(gpu, &mut enc);
                gpu.submit(enc);
                gpu.wait();
                per_rep.push(start.elapsed().as_secs_f64());
            }
        }
        per_rep.sort_by(f64::total_cmp);
        (per_rep, clock)
    }
}
