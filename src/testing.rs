//! Helpers shared by the tests and the benchmarks: a per-thread GPU, seeded
//! random data, finite differences, and the closeness check.
//!
//! How "close" is measured: element `i` passes when
//! `|got_i - want_i| <= tol * max(|want_i|, rms(want))`. That is the relative
//! error for every element of ordinary size; for elements much smaller than
//! the tensor's RMS (where a sum cancelled to nearly zero) the error is taken
//! relative to the RMS instead, because there f32 rounding of the large terms,
//! not of the tiny result, sets the error.

use std::sync::Mutex;

use crate::rng::Rng;
use crate::runtime::{Gpu, GpuOptions, Kernels};
use crate::tune::cache::TuningFrom;

/// Devices that no running test holds. The test harness runs each test on a thread of its own:
/// a thread takes a device from here (or opens one) and hands it back when it ends, so a test
/// binary opens at most one device per test thread and closes none while its tests run. (On an
/// NVIDIA H200, Vulkan driver 580, a binary that opened one device per test could not open more
/// after about a hundred: "Parent device is lost".)
static IDLE: Mutex<Vec<Idle>> = Mutex::new(Vec::new());

/// A test device that no thread uses.
struct Idle(&'static Gpu);

// SAFETY: `Gpu` is not `Send` because of its `Rc`/`RefCell` caches, which two threads must not
// touch at once. An `Idle` device is touched by no thread: the thread that used it has ended, its
// test and that test's tensors with it, and the mutex orders its last use before the next
// thread's first.
unsafe impl Send for Idle {}

/// This thread's test device; dropped when the thread ends, which hands the device back.
struct Held(&'static Gpu);

impl Drop for Held {
    fn drop(&mut self) {
        IDLE.lock().unwrap_or_else(|e| e.into_inner()).push(Idle(self.0));
    }
}

thread_local! {
    static GPU: Held = Held(match IDLE.lock().unwrap_or_else(|e| e.into_inner()).pop() {
        Some(Idle(gpu)) => gpu,
        // The builtin tile sizes, whatever `unet-wgpu tune` left in the cache, and the tuned
        // kernels, whatever UNET_WGPU_KERNELS says: tests that do not depend on the machine's
        // history or environment (tests of the textbook kernels switch with `with_kernels`).
        None => Box::leak(Box::new(
            Gpu::new(&GpuOptions {
                tuning: TuningFrom::Builtin,
                kernels: Some(Kernels::Tuned),
                ..GpuOptions::default()
            })
                .unwrap_or_else(|e| panic!("tests need a GPU adapter: {e}")),
        )),
    });
}

/// This thread's GPU (tests run on several threads), with
/// [`crate::tune::Tuning::builtin`]'s tile sizes and the tuned kernels. Tests that ran earlier on other threads
/// may have used it: compare its counters before and after, not their absolute values.
/// Panics with the reason when there is no adapter: GPU tests never skip.
pub fn gpu() -> &'static Gpu {
    GPU.with(|held| held.0)
}

/// `n` values uniform in `[-1, 1)`, from `seed`.
pub fn random_vec(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.range(-1.0, 1.0) as f32).collect()
}

/// Widen to f64 for the references.
pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Central finite differences of `f` at `x`, in f64: `(f(x+e) - f(x-e)) / 2e`.
pub fn numeric_grad(f: impl Fn(&[f64]) -> f64, x: &[f64], eps: f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let v = x[i];
            x[i] = v + eps;
            let up = f(&x);
            x[i] = v - eps;
            let down = f(&x);
            x[i] = v;
            (up - down) / (2.0 * eps)
        })
        .collect()
}

/// `sum_i r_i * y_i`: a scalar whose gradient w.r.t. `y` is `r`. Gradient
/// checks use it with random `r` so every output element is weighted differently.
pub fn dot(r: &[f64], y: &[f64]) -> f64 {
    assert_eq!(r.len(), y.len(), "dot of lengths {} and {}", r.len(), y.len());
    r.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// The largest error of `got` against `want`, by the rule in the module doc,
/// and the index where it occurs.
pub fn max_rel_error(got: &[f64], want: &[f64]) -> (f64, usize) {
    max_rel_error_floor(got, want, f64::MIN_POSITIVE)
}

/// [`max_rel_error`] with errors measured against at least `floor`: for
/// tensors whose exact values lie far below what f32 can resolve.
pub fn max_rel_error_floor(got: &[f64], want: &[f64], floor: f64) -> (f64, usize) {
    assert_eq!(got.len(), want.len(), "compared lengths differ: got {}, want {}", got.len(), want.len());
    let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len().max(1) as f64).sqrt();
    let mut worst = (0.0, 0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let scale = w.abs().max(rms).max(floor);
        let err = if g == w { 0.0 } else { (g - w).abs() / scale };
        if err.is_nan() || err > worst.0 {
            worst = (if err.is_nan() { f64::INFINITY } else { err }, i);
        }
    }
    worst
}

/// Assert `got` matches `want` within `tol` (see the module doc). The message
/// names `what`, the worst index and both values.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_close_floor(what, got, want, tol, f64::MIN_POSITIVE);
}

/// [`assert_close`] with errors measured against at least `floor` (see [`max_rel_error_floor`]).
pub fn assert_close_floor(what: &str, got: &[f64], want: &[f64], tol: f64, floor: f64) {
    let (err, i) = max_rel_error_floor(got, want, floor);
    assert!(
        err <= tol,
        "{what}: relative error {err:.3e} > {tol:.0e} at index {i} of {}: got {}, want {}",
        want.len(),
        got[i],
        want[i]
    );
}

/// [`assert_close`] for GPU output (f32) against a reference (f64).
pub fn assert_close_f32(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_close(what, &to_f64(got), want, tol);
}

/// Runs `f` with `gpu`'s default op wrappers on `kernels`, then restores the previous choice, also
/// when `f` panics (the device goes on to serve the next test on this thread).
pub fn with_kernels<R>(gpu: &Gpu, kernels: Kernels, f: impl FnOnce() -> R) -> R {
    struct Restore<'a>(&'a Gpu, Kernels);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            self.0.set_kernels(self.1);
        }
    }
    let _restore = Restore(gpu, gpu.kernels());
    gpu.set_kernels(kernels);
    f()
}
