//! A small kernel-benchmark harness: times a recorded sequence of dispatches
//! with GPU timestamps where the adapter has them (wall clock otherwise) and
//! prints one line per case with time, GFLOP/s and GB/s.
//!
//! Used by `benches/kernels.rs` (`cargo bench --bench kernels [FILTER]`).

use crate::gpu::{Encoder, Gpu, MAX_TIMED_DISPATCHES};

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
            "{:<30} {:<26} {:>10.3} {:>10.3} {:>9} {:>9} {}",
            self.name,
            self.shape,
            self.seconds * 1e3,
            self.min_seconds * 1e3,
            opt(self.gflops()),
            opt(self.gbs()),
            if self.clock == Clock::Gpu { "gpu" } else { "wall" }
        )
    }
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
}

impl<'g> Bench<'g> {
    /// A harness on `gpu`.
    pub fn new(gpu: &'g Gpu, filter: &str, reps: usize) -> Bench<'g> {
        Bench { gpu, filter: filter.to_string(), reps, results: Vec::new() }
    }

    /// The header row, with the adapter named.
    pub fn header(&self) -> String {
        format!(
            "adapter: {}\n{:<30} {:<26} {:>10} {:>10} {:>9} {:>9} clock",
            self.gpu.describe(),
            "kernel",
            "shape",
            "median ms",
            "min ms",
            "GFLOP/s",
            "GB/s"
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
        if !self.wants(name) {
            return;
        }
        let gpu = self.gpu;
        // Warm-up: compiles the pipelines and touches the buffers.
        let mut enc = gpu.encoder();
        record(gpu, &mut enc);
        gpu.submit(enc);
        gpu.wait();

        let mut per_rep = Vec::with_capacity(self.reps);
        let mut clock = Clock::Wall;
        if gpu.has_timestamps {
            // Count this case's dispatches once, then time all repetitions in one encoder.
            let mut probe = gpu.timed_encoder(MAX_TIMED_DISPATCHES);
            record(gpu, &mut probe);
            let per = gpu.submit_timed(probe).map_or(0, |t| t.dispatches.len());
            let reps = self.reps.min(MAX_TIMED_DISPATCHES as usize / per.max(1));
            if per > 0 && reps > 0 {
                let mut enc = gpu.timed_encoder((per * reps) as u32);
                for _ in 0..reps {
                    record(gpu, &mut enc);
                }
                if let Some(t) = gpu.submit_timed(enc) {
                    per_rep = t.dispatches.chunks(per).map(|c| c.iter().map(|d| d.1).sum()).collect();
                    clock = Clock::Gpu;
                }
            }
        }
        if per_rep.is_empty() {
            for _ in 0..self.reps {
                let mut enc = gpu.encoder();
                let start = std::time::Instant::now();
                record(gpu, &mut enc);
                gpu.submit(enc);
                gpu.wait();
                per_rep.push(start.elapsed().as_secs_f64());
            }
        }
        per_rep.sort_by(f64::total_cmp);
        let m = Measurement {
            name: name.to_string(),
            shape: shape.to_string(),
            seconds: per_rep[per_rep.len() / 2],
            min_seconds: per_rep[0],
            flops,
            bytes,
            clock,
        };
        println!("{}", m.row());
        self.results.push(m);
    }
}
