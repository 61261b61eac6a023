//! 2-D batch normalisation, as PyTorch's `BatchNorm2d`. x, y: `[N,C,H,W]`;
//! gamma, beta, running_mean, running_var, and the saved mean and invstd: `[C]`.
//! Each channel `c` is normalised over its `M = N*H*W` values:
//!
//! - training: `mean`, `var` are the batch mean and the biased variance over
//!   those values; the running statistics move towards them with momentum
//!   [`MOMENTUM`], the variance in its unbiased form `var * M / (M - 1)`;
//! - evaluation: `mean = running_mean`, `var = running_var`.
//!
//! Then `invstd = 1 / sqrt(var + EPS)`, `xhat = (x - mean) * invstd`,
//! `y = gamma * xhat + beta`. The (mean, invstd) pair is saved for the backward:
//!
//! - training, where the statistics are functions of x:
//!   `dx += gamma * invstd / M * (M*dy - sum(dy) - xhat * sum(dy*xhat))`;
//! - evaluation, constant statistics: `dx += dy * gamma * invstd`;
//! - both: `dgamma += sum(dy * xhat)`, `dbeta += sum(dy)` (sums per channel).
//!
//! [`batchnorm2d_fused`] ends the normalisation in an [`Epilogue`], as
//! [`crate::ops::conv2d::conv2d_fused`] does: `y = epilogue(z)` with
//! `z = gamma * xhat + beta`, i.e. ReLU `y = max(z, 0)` or ReLU then inverted dropout
//! `y = mask(seed) * max(z, 0) / (1 - p)` (the mask of [`crate::ops::dropout`], bit for
//! bit). The backward goes back through it on the fly wherever the formulas above read
//! dy: `dz = dy * (y > 0) / (1 - p)` takes dy's place, with `y > 0` recomputed as
//! `z > 0` and kept, from the x it reads anyway (reading y instead cost 40% of the
//! backward on lavapipe). So `conv -> batch norm -> ReLU -> dropout` costs no ReLU or
//! dropout pass and no intermediate tensor, forward or backward.
//!
//! The per-channel sums run in two deterministic passes (see
//! `shaders/batchnorm2d.wgsl`): many workgroups per channel each reduce a chunk
//! to a partial, then one workgroup per channel merges the partials in a fixed
//! order. The variance comes from Welford/Chan merges of (count, mean, M2), never
//! from `E[x^2] - E[x]^2`, so activations with a large mean keep their precision.
//!
//! [`textbook`] holds the direct kernels (`shaders/batchnorm2d_textbook.wgsl`: one invocation per
//! output element or channel, the formulas above as loops, the epilogue left to the plain ReLU and
//! dropout kernels): the oracle the tiled kernels are tested against, and what every default
//! wrapper here dispatches under [`Kernels::Reference`] (`--kernels reference`).

use crate::autograd::tape::{Accumulate, Mode, Step};
use crate::autograd::tensor::Tensor;
use crate::ops::conv2d::{self, Epilogue};
use crate::runtime::{Encoder, Gpu, Kernels, Shader};
use crate::shader;

pub mod textbook;

const SHADER: Shader = shader!("batchnorm2d/tiled");
/// Threads a workgroup; a power of two (the shader's reduction tree halves it),
/// and the most partials per channel (pass 2 gives each partial a thread).
const WG: u32 = 256;
/// Values each pass-1 thread reduces at least: a chunk is at least
/// `threads * PER_THREAD` values, so that channels are not cut into many small chunks,
/// each of which ends in a tree of barriers (costly on CPU drivers). At the top U-Net
/// level (M = 262144 at batch 4, 16 channels) that is 16 chunks a channel, 256
/// workgroups; from M = 16384 down, one chunk. Chunks are at least M / WG long, so a
/// channel has at most WG of them (pass 2 gives each a thread).
const PER_THREAD: usize = 64;

/// Threads of a pass-1 workgroup for channels of `m` values: WG, or fewer where the
/// channel cannot give WG threads PER_THREAD values each (a power of two, at least 32),
/// so that the deep levels' small channels do not pay for a tree over idle threads.
fn partial_threads(m: usize) -> u32 {
    (m.div_ceil(PER_THREAD).next_power_of_two() as u32).clamp(32, WG)
}

/// Added to the variance before the square root (PyTorch's default).
pub const EPS: f32 = 1e-5;
/// Weight of the batch statistics in the running statistics' update (PyTorch's default).
pub const MOMENTUM: f32 = 0.1;

/// Mirrors `Params` in `shaders/batchnorm2d.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    hw: u32,
    splits: u32,
    chunk: u32,
    momentum: f32,
    eps: f32,
    which: u32,
    drop_threshold: u32,
    drop_seed_lo: u32,
    drop_seed_hi: u32,
    drop_scale: f32,
}

impl Params {
    /// Shape and the split of each channel's `M` values into `splits` chunks.
    fn new([n, c, h, w]: [usize; 4]) -> Params {
        let m = n * h * w;
        // A multiple of 4, so that the vec4 entry points' chunks hold whole quads.
        let per_chunk = partial_threads(m) as usize * PER_THREAD;
        let chunk = m.div_ceil(WG as usize).max(per_chunk).next_multiple_of(4).min(m.max(1));
        let splits = m.div_ceil(chunk).max(1);
        Params {
            n: n as u32,
            c: c as u32,
            hw: (h * w) as u32,
            splits: splits as u32,
            chunk: chunk as u32,
            momentum: MOMENTUM,
            eps: EPS,
            which: 0,
            drop_threshold: 0,
            drop_seed_lo: 0,
            drop_seed_hi: 0,
            drop_scale: 1.0,
        }
    }

    /// Sets the dropout fields of `epilogue` and returns the shader's constants for it
    /// (RELU, DROPOUT).
    fn epilogue(&mut self, epilogue: Epilogue) -> [(&'static str, f64); 2] {
        let ([threshold, lo, hi], scale) = epilogue.dropout_uniforms();
        (self.drop_threshold, self.drop_seed_lo, self.drop_seed_hi, self.drop_scale) = (threshold, lo, hi, scale);
        epilogue.constants()
    }

    /// Threads of this shape's pass-1 workgroups.
    fn partial_threads(&self) -> u32 {
        partial_threads((self.n * self.hw) as usize)
    }

    /// Threads of a pass-2 workgroup: one per partial, rounded up to a power of two for the
    /// tree. A channel in one chunk (every level below the top two) then merges in a
    /// workgroup of one thread, not in a tree of 8 barriers over 255 empty slots. The merges
    /// that remain are the same, in the same order: the bits do not change.
    fn final_threads(&self) -> u32 {
        self.splits.next_power_of_two()
    }

    /// Threads of an elementwise workgroup: WG, or fewer where a plane holds fewer units
    /// (values, or quads for the vec4 twins), rounded up to 8 lanes (a CPU driver's SIMD
    /// width). At 16x16 a plane is 64 quads, and a 256-thread workgroup would be 3/4 idle.
    fn plane_threads(&self) -> u32 {
        WG.min(self.plane_units().next_multiple_of(8))
    }

    /// Units of one (n, c) plane an elementwise thread handles one of: quads, or values.
    fn plane_units(&self) -> u32 {
        if Views::of(self).quads {
            self.hw / 4
        } else {
            self.hw
        }
    }
}

/// Which entry points run, and where they find the tensors of `N*C*H*W` values: where
/// `H*W` is a multiple of 4 (every U-Net level), the `*_vec4` twins, which read and write
/// them through vec4 views (bindings 13-15); elsewhere the scalar ones (1, 2, 11).
#[derive(Clone, Copy)]
struct Views {
    quads: bool,
}

impl Views {
    fn of(p: &Params) -> Views {
        Views { quads: p.hw.is_multiple_of(4) }
    }

    /// `scalar`'s entry point, or its twin `quads`.
    fn entry(self, scalar: &'static str, quads: &'static str) -> &'static str {
        [scalar, quads][self.quads as usize]
    }

    /// Binding `scalar`, or its vec4 view `quads`.
    fn binding(self, scalar: u32, quads: u32) -> u32 {
        [scalar, quads][self.quads as usize]
    }

    fn x(self) -> u32 {
        self.binding(1, 13)
    }

    fn dy(self) -> u32 {
        self.binding(2, 14)
    }

    fn out(self) -> u32 {
        self.binding(11, 15)
    }
}

/// Workgroups of the elementwise entry points: WG pixels (or quads) along x, one (n, c)
/// plane along y.
fn plane_groups(p: &Params) -> [u32; 3] {
    let groups = [p.plane_units().div_ceil(p.plane_threads()).max(1), p.n * p.c, 1];
    assert!(
        groups[0] <= 65535 && groups[1] <= 65535,
        "batchnorm2d: {groups:?} workgroups, over 65535 in one dimension"
    );
    groups
}

fn kernel(gpu: &Gpu, entry: &'static str) -> std::rc::Rc<crate::runtime::Kernel> {
    gpu.kernel(&SHADER, entry, &[("WG", WG as f64)])
}

fn assert_channels(what: &str, c: usize, t: &Tensor) {
    assert_eq!(t.shape(), [c], "batchnorm2d: {what} {:?} must be [C] = [{c}]", t.shape());
}

/// Training statistics: the batch `mean` and `invstd = 1/sqrt(var + EPS)` of x
/// (biased variance), and the in-place momentum update of `running_mean` and
/// `running_var` (unbiased variance). x: `[N,C,H,W]` with `N*H*W > 1`; the
/// rest: `[C]` (mean and invstd are written).
pub fn batchnorm2d_stats(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    mean: &Tensor,
    invstd: &Tensor,
) {
    let dims = x.dims4("batchnorm2d x");
    let c = dims[1];
    for (what, t) in [("running_mean", running_mean), ("running_var", running_var), ("mean", mean), ("invstd", invstd)]
    {
        assert_channels(what, c, t);
    }
    if gpu.kernels() == Kernels::Reference {
        return textbook::batchnorm2d_stats(gpu, enc, x, running_mean, running_var, mean, invstd);
    }
    let p = Params::new(dims);
    assert!(p.n * p.hw > 1, "batchnorm2d: training needs more than one value per channel, x is {:?}", x.shape());
    let partial = gpu.empty(&[c, p.splits as usize, 3]);
    let v = Views::of(&p);
    gpu.dispatch(
        enc,
        &gpu.kernel(
            &SHADER,
            v.entry("batchnorm_stats_partial", "batchnorm_stats_partial_vec4"),
            &[("WG", p.partial_threads() as f64)],
        ),
        &p,
        &[(v.x(), x), (9, &partial)],
        [p.splits, c as u32, 1],
    );
    gpu.dispatch(
        enc,
        &gpu.kernel(&SHADER, "batchnorm_stats_final", &[("WG", p.final_threads() as f64)]),
        &p,
        &[(5, mean), (6, invstd), (7, running_mean), (8, running_var), (9, &partial)],
        [c as u32, 1, 1],
    );
}

/// Evaluation statistics: `mean = running_mean`, `invstd = 1/sqrt(running_var + EPS)`.
/// All `[C]`; mean and invstd are written.
pub fn batchnorm2d_running_stats(
    gpu: &Gpu,
    enc: &mut Encoder,
    running_mean: &Tensor,
    running_var: &Tensor,
    mean: &Tensor,
    invstd: &Tensor,
) {
    let c = running_mean.len();
    for (what, t) in [("running_mean", running_mean), ("running_var", running_var), ("mean", mean), ("invstd", invstd)]
    {
        assert_channels(what, c, t);
    }
    if gpu.kernels() == Kernels::Reference {
        return textbook::batchnorm2d_running_stats(gpu, enc, running_mean, running_var, mean, invstd);
    }
    let p = Params::new([1, c, 1, 1]);
    gpu.dispatch(
        enc,
        &kernel(gpu, "batchnorm_stats_running"),
        &p,
        &[(5, mean), (6, invstd), (7, running_mean), (8, running_var)],
        [(c as u32).div_ceil(WG), 1, 1],
    );
}

/// `y = gamma * (x - mean) * invstd + beta`. x, y: `[N,C,H,W]`; mean, invstd
/// (from [`batchnorm2d_stats`] or [`batchnorm2d_running_stats`]), gamma, beta: `[C]`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm2d_forward(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    mean: &Tensor,
    invstd: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    y: &Tensor,
) {
    batchnorm2d_forward_fused(gpu, enc, x, mean, invstd, gamma, beta, y, Epilogue::Identity);
}

/// `y = epilogue(gamma * (x - mean) * invstd + beta)`: [`batchnorm2d_forward`] with ReLU, or
/// ReLU then dropout, applied as y is stored. Shapes as [`batchnorm2d_forward`].
#[allow(clippy::too_many_arguments)]
pub fn batchnorm2d_forward_fused(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    mean: &Tensor,
    invstd: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    y: &Tensor,
    epilogue: Epilogue,
) {
    let dims = x.dims4("batchnorm2d x");
    assert_eq!(x.shape(), y.shape(), "batchnorm2d: x {:?} vs y {:?}", x.shape(), y.shape());
    for (what, t) in [("mean", mean), ("invstd", invstd), ("gamma", gamma), ("beta", beta)] {
        assert_channels(what, dims[1], t);
    }
    if gpu.kernels() == Kernels::Reference {
        // The textbook normalisation into z, then the epilogue by the plain ReLU and dropout kernels.
        let z = if epilogue == Epilogue::Identity { y.clone() } else { gpu.empty(y.shape()) };
        textbook::batchnorm2d_forward(gpu, enc, x, textbook::Channels { mean, invstd, gamma, beta }, &z);
        return conv2d::textbook::epilogue_forward(gpu, enc, &z, y, epilogue);
    }
    let mut p = Params::new(dims);
    let [relu, dropout] = p.epilogue(epilogue);
    let constants = [("WG", p.plane_threads() as f64), relu, dropout];
    let v = Views::of(&p);
    gpu.dispatch(
        enc,
        &gpu.kernel(&SHADER, v.entry("batchnorm_forward", "batchnorm_forward_vec4"), &constants),
        &p,
        &[(v.x(), x), (3, gamma), (4, beta), (5, mean), (6, invstd), (v.out(), y)],
        plane_groups(&p),
    );
}

/// Backward of [`batchnorm2d_forward`], accumulating into whichever of `dx`
/// (`[N,C,H,W]`), `dgamma`, `dbeta` (`[C]`) are given. x, dy: `[N,C,H,W]`;
/// mean, invstd (as saved by the forward), gamma: `[C]`. In [`Mode::Train`]
/// mean and invstd are the batch statistics and dx includes their dependence
/// on x; in [`Mode::Eval`] they are constants (the running statistics).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm2d_backward(
    gpu: &Gpu,
    enc: &mut Encoder,
    mode: Mode,
    x: &Tensor,
    dy: &Tensor,
    mean: &Tensor,
    invstd: &Tensor,
    gamma: &Tensor,
    dx: Option<&Tensor>,
    dgamma: Option<&Tensor>,
    dbeta: Option<&Tensor>,
) {
    // The identity's gate reads no beta, but the entry points bind one: gamma stands in.
    batchnorm2d_backward_fused(
        gpu,
        enc,
        mode,
        x,
        dy,
        mean,
        invstd,
        gamma,
        gamma,
        dx.map(|dx| (dx, Accumulate::Add)),
        dgamma,
        dbeta,
        Epilogue::Identity,
    );
}

/// Backward of [`batchnorm2d_forward_fused`]: [`batchnorm2d_backward`] with
/// `dz = dy * (y > 0) * scale` (scale `1 / (1 - p)` for [`Epilogue::ReluDropout`], else 1)
/// in place of dy, computed where dy is read. `y > 0` is recomputed from x, beta and the
/// dropout hash (`z > 0` and kept), so y itself is not needed; beta: `[C]`. dx is added
/// into or overwritten as its [`Accumulate`] says. Other shapes and the accumulation as
/// [`batchnorm2d_backward`].
#[allow(clippy::too_many_arguments)]
pub fn batchnorm2d_backward_fused(
    gpu: &Gpu,
    enc: &mut Encoder,
    mode: Mode,
    x: &Tensor,
    dy: &Tensor,
    mean: &Tensor,
    invstd: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    dx: Option<(&Tensor, Accumulate)>,
    dgamma: Option<&Tensor>,
    dbeta: Option<&Tensor>,
    epilogue: Epilogue,
) {
    let dims = x.dims4("batchnorm2d x");
    let c = dims[1];
    assert_eq!(x.shape(), dy.shape(), "batchnorm2d backward: x {:?} vs dy {:?}", x.shape(), dy.shape());
    if let Some((dx, _)) = dx {
        assert_eq!(x.shape(), dx.shape(), "batchnorm2d backward: x {:?} vs dx {:?}", x.shape(), dx.shape());
    }
    for (what, t) in [("mean", Some(mean)), ("invstd", Some(invstd)), ("gamma", Some(gamma)), ("beta", Some(beta))]
        .into_iter()
        .chain([("dgamma", dgamma), ("dbeta", dbeta)])
    {
        if let Some(t) = t {
            assert_channels(what, c, t);
        }
    }
    if gpu.kernels() == Kernels::Reference {
        // dz (the gradient before the epilogue) by the plain kernels, then the textbook backward.
        let ch = textbook::Channels { mean, invstd, gamma, beta };
        let dz = textbook::epilogue_backward(gpu, enc, x, dy, ch, epilogue);
        let grads = textbook::Grads { dx, dgamma, dbeta };
        return textbook::batchnorm2d_backward(gpu, enc, mode, x, &dz, ch, grads);
    }
    let mut p = Params::new(dims);
    let [relu, dropout] = p.epilogue(epilogue);
    let partial_constants = [("WG", p.partial_threads() as f64), relu, dropout];
    // The dx passes: elementwise workgroups, and dx added into or overwritten.
    let data_constants = |acc: Accumulate| [("WG", p.plane_threads() as f64), relu, dropout, acc.constant()];
    let groups = plane_groups(&p);
    let v = Views::of(&p);

    if mode == Mode::Eval {
        if let Some((dx, acc)) = dx {
            gpu.dispatch(
                enc,
                &gpu.kernel(
                    &SHADER,
                    v.entry("batchnorm_backward_data_eval", "batchnorm_backward_data_eval_vec4"),
                    &data_constants(acc),
                ),
                &p,
                &[(v.x(), x), (v.dy(), dy), (3, gamma), (4, beta), (5, mean), (6, invstd), (v.out(), dx)],
                groups,
            );
        }
        if dgamma.is_none() && dbeta.is_none() {
            return; // the channel sums are only needed for the parameters
        }
    }

    // sums = [sum dz (C values) | sum dz * xhat (C values)], in two passes.
    let partial = gpu.empty(&[c, p.splits as usize, 2]);
    let sums = gpu.empty(&[2, c]);
    gpu.dispatch(
        enc,
        &gpu.kernel(
            &SHADER,
            v.entry("batchnorm_backward_partial", "batchnorm_backward_partial_vec4"),
            &partial_constants,
        ),
        &p,
        &[(v.x(), x), (v.dy(), dy), (3, gamma), (4, beta), (5, mean), (6, invstd), (9, &partial)],
        [p.splits, c as u32, 1],
    );
    let final_kernel = gpu.kernel(&SHADER, "batchnorm_backward_final", &[("WG", p.final_threads() as f64)]);
    gpu.dispatch(enc, &final_kernel, &p, &[(9, &partial), (10, &sums)], [c as u32, 1, 1]);

    if let (Mode::Train, Some((dx, acc))) = (mode, dx) {
        let entry = v.entry("batchnorm_backward_data", "batchnorm_backward_data_vec4");
        gpu.dispatch(
            enc,
            &gpu.kernel(&SHADER, entry, &data_constants(acc)),
            &p,
            &[(v.x(), x), (v.dy(), dy), (3, gamma), (4, beta), (5, mean), (6, invstd), (10, &sums), (v.out(), dx)],
            groups,
        );
    }
    for (which, dparam) in [(0, dbeta), (1, dgamma)] {
        if let Some(dparam) = dparam {
            gpu.dispatch(
                enc,
                &kernel(gpu, "batchnorm_backward_param"),
                &Params { which, ..p },
                &[(10, &sums), (11, dparam)],
                [(c as u32).div_ceil(WG), 1, 1],
            );
        }
    }
}

/// Batch normalisation on the tape, in the step's mode. x: `[N,C,H,W]`;
/// gamma, beta (the affine parameters), running_mean, running_var: `[C]`.
/// In [`Mode::Train`] the running statistics are updated in place (on the
/// GPU, in order with the step). Returns y: `[N,C,H,W]`.
pub fn batchnorm2d(
    step: &mut Step,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
) -> Tensor {
    batchnorm2d_fused(step, x, gamma, beta, running_mean, running_var, Epilogue::Identity)
}

/// Batch normalisation then an epilogue on the tape: `epilogue(batchnorm2d(x))`, one
/// forward pass and no ReLU or dropout pass in the backward (see the module doc). In
/// [`Mode::Eval`] the dropout of [`Epilogue::ReluDropout`] is off (plain ReLU), as is one
/// with `p == 0`. Shapes as [`batchnorm2d`].
pub fn batchnorm2d_fused(
    step: &mut Step,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    epilogue: Epilogue,
) -> Tensor {
    let epilogue = match epilogue {
        Epilogue::ReluDropout { p, .. } if step.mode == Mode::Eval || p == 0.0 => Epilogue::Relu,
        e => e,
    };
    let c = x.dims4("batchnorm2d x")[1];
    let (gpu, mode) = (step.gpu, step.mode);
    let (mean, invstd) = (gpu.empty(&[c]), gpu.empty(&[c]));
    match mode {
        Mode::Train => batchnorm2d_stats(gpu, &mut step.enc, x, running_mean, running_var, &mean, &invstd),
        Mode::Eval => batchnorm2d_running_stats(gpu, &mut step.enc, running_mean, running_var, &mean, &invstd),
    }
    let y = step.output(x.shape(), &[x, gamma, beta]);
    batchnorm2d_forward_fused(gpu, &mut step.enc, x, &mean, &invstd, gamma, beta, &y, epilogue);
    let (x, gamma, beta) = (x.clone(), gamma.clone(), beta.clone());
    step.record("batchnorm2d", &y, move |ctx, dy| {
        // dx is written whole (train and eval alike): a first contribution overwrites it.
        let (dx, dgamma, dbeta) = (ctx.grad_to_fill(&x), ctx.grad(&gamma), ctx.grad(&beta));
        batchnorm2d_backward_fused(
            ctx.gpu,
            ctx.enc,
            mode,
            &x,
            dy,
            &mean,
            &invstd,
            &gamma,
            &beta,
            dx.as_ref().map(|(dx, acc)| (dx, *acc)),
            dgamma.as_ref(),
            dbeta.as_ref(),
            epilogue,
        );
    });
    y
}

/// Plain-Rust batch normalisation, the contract the shader is tested against.
/// Slices are NCHW with dims `[n, c, h, w]`; per-channel slices have `c` values.
pub mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, assert_close_f32, dot, gpu, numeric_grad, random_vec, to_f64};

    fn channels(seed: u64, c: usize, lo: f64, hi: f64) -> Vec<f32> {
        random_vec(seed, c).iter().map(|&v| (lo + (hi - lo) * (v as f64 + 1.0) / 2.0) as f32).collect()
    }

    #[test]
    fn reference_backward_matches_finite_differences() {
        let dims = [2, 3, 5, 7];
        let x = to_f64(&random_vec(1, dims.iter().product()));
        let gamma = to_f64(&channels(2, 3, 0.5, 2.0));
        let beta = to_f64(&random_vec(3, 3));
        let r = to_f64(&random_vec(4, x.len()));

        // Training: the loss sees x through the batch statistics too.
        let (mean, var) = reference::batch_stats(&x, dims);
        let invstd = reference::invstd(&var);
        let (dx, dgamma, dbeta) = reference::batchnorm2d_backward(&x, &r, &mean, &invstd, &gamma, dims, true);
        let f = reference::batchnorm2d_forward_train;
        let fd_x = numeric_grad(|x| dot(&r, &f(x, &gamma, &beta, dims)), &x, 1e-6);
        let fd_gamma = numeric_grad(|g| dot(&r, &f(&x, g, &beta, dims)), &gamma, 1e-6);
        let fd_beta = numeric_grad(|b| dot(&r, &f(&x, &gamma, b, dims)), &beta, 1e-6);
        assert_close("train dx", &dx, &fd_x, 1e-5);
        assert_close("train dgamma", &dgamma, &fd_gamma, 1e-6);
        assert_close("train dbeta", &dbeta, &fd_beta, 1e-6);

        // Evaluation: constant running statistics.
        let running_mean = to_f64(&random_vec(5, 3));
        let running_invstd = reference::invstd(&to_f64(&channels(6, 3, 0.2, 3.0)));
        let g = |x: &[f64], gamma: &[f64], beta: &[f64]| {
            dot(&r, &reference::batchnorm2d_forward(x, &running_mean, &running_invstd, gamma, beta, dims))
        };
        let (dx, dgamma, dbeta) =
            reference::batchnorm2d_backward(&x, &r, &running_mean, &running_invstd, &gamma, dims, false);
        assert_close("eval dx", &dx, &numeric_grad(|x| g(x, &gamma, &beta), &x, 1e-6), 1e-6);
        assert_close("eval dgamma", &dgamma, &numeric_grad(|p| g(&x, p, &beta), &gamma, 1e-6), 1e-6);
        assert_close("eval dbeta", &dbeta, &numeric_grad(|p| g(&x, &gamma, p), &beta, 1e-6), 1e-6);
    }

    /// Everything one GPU run produces, read back.
    struct Run {
        y: Vec<f32>,
        mean: Vec<f32>,
        invstd: Vec<f32>,
        running_mean: Vec<f32>,
        running_var: Vec<f32>,
        dx: Vec<f32>,
        dgamma: Vec<f32>,
        dbeta: Vec<f32>,
    }

    /// Inputs of one check; gradients start at `*0` (the backward accumulates; with
    /// `overwrite`, dx is overwritten instead and `dx0` is the stale value it must lose).
    struct Case {
        dims: [usize; 4],
        x: Vec<f32>,
        gamma: Vec<f32>,
        beta: Vec<f32>,
        running_mean: Vec<f32>,
        running_var: Vec<f32>,
        dy: Vec<f32>,
        dx0: Vec<f32>,
        dgamma0: Vec<f32>,
        dbeta0: Vec<f32>,
        overwrite: bool,
    }

    impl Case {
        /// Random inputs; x is `offset + spread * U(-1, 1)`.
        fn new(seed: u64, dims: [usize; 4], offset: f32, spread: f32) -> Case {
            let (len, c) = (dims.iter().product(), dims[1]);
            Case {
                dims,
                x: random_vec(seed, len).iter().map(|v| offset + spread * v).collect(),
                gamma: channels(seed + 1, c, 0.5, 2.0),
                beta: random_vec(seed + 2, c),
                running_mean: random_vec(seed + 3, c),
                running_var: channels(seed + 4, c, 0.5, 2.0),
                dy: random_vec(seed + 5, len),
                dx0: random_vec(seed + 6, len),
                dgamma0: random_vec(seed + 7, c),
                dbeta0: random_vec(seed + 8, c),
                overwrite: false,
            }
        }

        /// Moves the values of x whose pre-activation z (in either mode) lies within 1e-3 of
        /// ReLU's kink, where the f32 GPU and the f64 reference may disagree on its side.
        fn off_the_kink(mut self) -> Case {
            let c = self.dims[1];
            let hw = self.dims[2] * self.dims[3];
            let (gamma, beta) = (to_f64(&self.gamma), to_f64(&self.beta));
            for _ in 0..10 {
                let x = to_f64(&self.x);
                let (mean, var) = reference::batch_stats(&x, self.dims);
                let train =
                    reference::batchnorm2d_forward(&x, &mean, &reference::invstd(&var), &gamma, &beta, self.dims);
                let (rm, rv) = (to_f64(&self.running_mean), to_f64(&self.running_var));
                let eval = reference::batchnorm2d_forward(&x, &rm, &reference::invstd(&rv), &gamma, &beta, self.dims);
                let near: Vec<usize> =
                    (0..x.len()).filter(|&i| train[i].abs() < 1e-3 || eval[i].abs() < 1e-3).collect();
                if near.is_empty() {
                    return self;
                }
                for i in near {
                    // z grows with x (gamma > 0): push it 0.01 further along its sign.
                    let step = if train[i] + eval[i] >= 0.0 { 0.01 } else { -0.01 };
                    self.x[i] += step / self.gamma[(i / hw) % c];
                }
            }
            panic!("batchnorm2d test case {:?}: x stays near ReLU's kink", self.dims);
        }

        fn run_gpu(&self, mode: Mode) -> Run {
            self.run_gpu_fused(mode, Epilogue::Identity)
        }

        fn run_gpu_fused(&self, mode: Mode, e: Epilogue) -> Run {
            let gpu = gpu();
            let (dims, c) = (self.dims, [self.dims[1]]);
            let x = gpu.upload(&self.x, &dims);
            let (gamma, beta) = (gpu.upload(&self.gamma, &c), gpu.upload(&self.beta, &c));
            let (rm, rv) = (gpu.upload(&self.running_mean, &c), gpu.upload(&self.running_var, &c));
            let dy = gpu.upload(&self.dy, &dims);
            let (dx, dgamma, dbeta) =
                (gpu.upload(&self.dx0, &dims), gpu.upload(&self.dgamma0, &c), gpu.upload(&self.dbeta0, &c));
            let (mean, invstd, y) = (gpu.empty(&c), gpu.empty(&c), gpu.empty(&dims));
            let mut enc = gpu.encoder();
            match mode {
                Mode::Train => batchnorm2d_stats(gpu, &mut enc, &x, &rm, &rv, &mean, &invstd),
                Mode::Eval => batchnorm2d_running_stats(gpu, &mut enc, &rm, &rv, &mean, &invstd),
            }
            batchnorm2d_forward_fused(gpu, &mut enc, &x, &mean, &invstd, &gamma, &beta, &y, e);
            let acc = if self.overwrite { Accumulate::Overwrite } else { Accumulate::Add };
            let (gx, ggamma, gbeta) = (Some((&dx, acc)), Some(&dgamma), Some(&dbeta));
            batchnorm2d_backward_fused(
                gpu, &mut enc, mode, &x, &dy, &mean, &invstd, &gamma, &beta, gx, ggamma, gbeta, e,
            );
            gpu.submit(enc);
            Run {
                y: gpu.read(&y),
                mean: gpu.read(&mean),
                invstd: gpu.read(&invstd),
                running_mean: gpu.read(&rm),
                running_var: gpu.read(&rv),
                dx: gpu.read(&dx),
                dgamma: gpu.read(&dgamma),
                dbeta: gpu.read(&dbeta),
            }
        }

        fn check(&self, mode: Mode) {
            self.check_fused(mode, Epilogue::Identity)
        }

        fn check_fused(&self, mode: Mode, e: Epilogue) {
            let got = self.run_gpu_fused(mode, e);
            let dims = self.dims;
            let what = |name: &str| format!("{mode:?} {e:?} {name} {dims:?}");
            let x = to_f64(&self.x);
            let (gamma, beta) = (to_f64(&self.gamma), to_f64(&self.beta));
            let (rm, rv) = (to_f64(&self.running_mean), to_f64(&self.running_var));
            let (mean, invstd, want_rm, want_rv) = match mode {
                Mode::Train => {
                    let (mean, var) = reference::batch_stats(&x, dims);
                    let (new_rm, new_rv) =
                        reference::update_running(&rm, &rv, &mean, &var, dims[0] * dims[2] * dims[3]);
                    (mean, reference::invstd(&var), new_rm, new_rv)
                }
                Mode::Eval => (rm.clone(), reference::invstd(&rv), rm, rv),
            };
            let y = reference::batchnorm2d_forward_fused(&x, &mean, &invstd, &gamma, &beta, dims, e);
            let (dx, dgamma, dbeta) = reference::batchnorm2d_backward_fused(
                &x,
                &to_f64(&self.dy),
                &mean,
                &invstd,
                &gamma,
                &beta,
                dims,
                mode == Mode::Train,
                e,
            );
            let plus =
                |g: Vec<f64>, start: &[f32]| -> Vec<f64> { g.iter().zip(start).map(|(g, &s)| g + s as f64).collect() };

            assert_close_f32(&what("mean"), &got.mean, &mean, 1e-5);
            assert_close_f32(&what("invstd"), &got.invstd, &invstd, 1e-4);
            assert_close_f32(&what("running_mean"), &got.running_mean, &want_rm, 1e-5);
            assert_close_f32(&what("running_var"), &got.running_var, &want_rv, 1e-4);
            assert_close_f32(&what("y"), &got.y, &y, 1e-4);
            let want_dx = if self.overwrite { dx } else { plus(dx, &self.dx0) };
            assert_close_f32(&what("dx"), &got.dx, &want_dx, 1e-3);
            assert_close_f32(&what("dgamma"), &got.dgamma, &plus(dgamma, &self.dgamma0), 1e-3);
            assert_close_f32(&what("dbeta"), &got.dbeta, &plus(dbeta, &self.dbeta0), 1e-3);
        }
    }

    #[test]
    fn gpu_matches_reference_on_odd_shapes() {
        // H*W odd (the scalar entry points) and H*W a multiple of 4 (their vec4 twins).
        let scalar = [(10, [1, 3, 5, 7]), (20, [2, 5, 5, 7]), (30, [2, 3, 1, 1]), (40, [3, 2, 17, 19])];
        let quads = [(11, [1, 3, 2, 2]), (21, [2, 5, 4, 5]), (41, [3, 2, 8, 12])];
        for (seed, dims) in scalar.into_iter().chain(quads) {
            let case = Case::new(seed, dims, 0.0, 1.0);
            case.check(Mode::Train);
            case.check(Mode::Eval);
        }
        // One value per channel: only evaluation is defined (as in PyTorch).
        Case::new(50, [1, 5, 1, 1], 0.0, 1.0).check(Mode::Eval);
    }

    #[test]
    fn workgroups_fit_the_work() {
        // Pass 2: one thread per partial, a power of two (the top level at batch 4: 16 chunks).
        assert_eq!((Params::new([4, 16, 256, 256]).splits, Params::new([4, 16, 256, 256]).final_threads()), (16, 16));
        assert_eq!(Params::new([2, 3, 67, 129]).final_threads(), 2);
        assert_eq!(Params::new([4, 256, 16, 16]).final_threads(), 1);
        // Elementwise: at most a plane's units (quads where H*W % 4 == 0), rounded up to 8.
        assert_eq!(Params::new([2, 16, 256, 256]).plane_threads(), WG);
        assert_eq!(Params::new([2, 256, 16, 16]).plane_threads(), 64);
        assert_eq!(Params::new([2, 3, 3, 5]).plane_threads(), 16);
    }

    #[test]
    fn channels_split_over_many_workgroups() {
        // M = 2 * 67 * 129 = 17286 values a channel (scalar entry points) and M = 2 * 64 * 132
        // = 16896 (quads): 2 chunks each, the last one short.
        for (seed, dims) in [(60, [2, 3, 67, 129]), (61, [2, 3, 64, 132])] {
            assert_eq!(Params::new(dims).splits, 2);
            let case = Case::new(seed, dims, 0.5, 2.0);
            case.check(Mode::Train);
            // Fixed-order reductions: a second run gives the same bits.
            let (a, b) = (case.run_gpu(Mode::Train), case.run_gpu(Mode::Train));
            assert_eq!((a.mean, a.invstd, a.y, a.dx, a.dgamma), (b.mean, b.invstd, b.y, b.dx, b.dgamma));
        }
    }

    #[test]
    fn large_mean_keeps_variance_precise() {
        // Values around 100 with spread 1: E[x^2] - E[x]^2 in f32 would lose about
        // four of the seven digits of the variance.
        for (seed, dims) in [(70, [2, 5, 5, 7]), (80, [2, 2, 67, 129]), (81, [2, 2, 64, 132])] {
            let case = Case::new(seed, dims, 100.0, 1.0);
            case.check(Mode::Train);
        }
    }

    #[test]
    fn tape_matches_wrappers() {
        let gpu = gpu();
        let mut case = Case::new(90, [2, 3, 2, 3], 0.3, 1.5);
        // The tape's gradient buffers start at zero.
        case.dx0.fill(0.0);
        case.dgamma0.fill(0.0);
        case.dbeta0.fill(0.0);
        let want = case.run_gpu(Mode::Train);
        let (dims, c) = (case.dims, [3]);
        let x = gpu.upload(&case.x, &dims).with_grad();
        let gamma = gpu.upload(&case.gamma, &c).with_grad();
        let beta = gpu.upload(&case.beta, &c).with_grad();
        let (rm, rv) = (gpu.upload(&case.running_mean, &c), gpu.upload(&case.running_var, &c));
        let mut step = Step::train(gpu);
        let y = batchnorm2d(&mut step, &x, &gamma, &beta, &rm, &rv);
        let mut grads = step.backward(vec![(y.clone(), gpu.upload(&case.dy, &dims))]);
        let (dx, dgamma, dbeta) = (grads.take(&x).unwrap(), grads.take(&gamma).unwrap(), grads.take(&beta).unwrap());
        step.submit();
        assert_eq!(gpu.read(&y), want.y);
        assert_eq!(gpu.read(&rm), want.running_mean);
        assert_eq!(gpu.read(&rv), want.running_var);
        assert_eq!(gpu.read(&dx), want.dx);
        assert_eq!(gpu.read(&dgamma), want.dgamma);
        assert_eq!(gpu.read(&dbeta), want.dbeta);

        // Only x needs a gradient: the same dx, no parameter kernels.
        let (gamma_const, beta_const) = (gpu.upload(&case.gamma, &c), gpu.upload(&case.beta, &c));
        let mut step = Step::train(gpu);
        let y_only_x = batchnorm2d(&mut step, &x, &gamma_const, &beta_const, &rm, &rv);
        let mut grads = step.backward(vec![(y_only_x, gpu.upload(&case.dy, &dims))]);
        let dx_only = grads.take(&x).unwrap();
        assert_eq!(grads.len(), 0, "gamma and beta need no gradient");
        step.submit();
        assert_eq!(gpu.read(&dx_only), want.dx);
        let (rm, rv) = (gpu.upload(&want.running_mean, &c), gpu.upload(&want.running_var, &c));

        // Evaluation uses the (now updated) running statistics and records nothing.
        let mut step = Step::eval(gpu);
        let y = batchnorm2d(&mut step, &x, &gamma, &beta, &rm, &rv);
        assert_eq!(step.tape_len(), 0);
        step.submit();
        let (rm, rv) = (to_f64(&want.running_mean), to_f64(&want.running_var));
        let want_y = reference::batchnorm2d_forward(
            &to_f64(&case.x),
            &rm,
            &reference::invstd(&rv),
            &to_f64(&case.gamma),
            &to_f64(&case.beta),
            dims,
        );
        assert_close_f32("eval y", &gpu.read(&y), &want_y, 1e-4);
    }

    const EPILOGUES: [Epilogue; 3] =
        [Epilogue::Identity, Epilogue::Relu, Epilogue::ReluDropout { p: 0.3, seed: 0x9e37_79b9_7f4a_7c15 }];

    #[test]
    fn reference_fused_backward_matches_finite_differences() {
        // Off the kink: a step of 1e-6 never moves a pre-activation across zero.
        let case = Case::new(100, [2, 3, 5, 7], 0.0, 1.0).off_the_kink();
        let dims = case.dims;
        let (x, gamma, beta) = (to_f64(&case.x), to_f64(&case.gamma), to_f64(&case.beta));
        let r = to_f64(&case.dy);
        let (mean, var) = reference::batch_stats(&x, dims);
        let invstd = reference::invstd(&var);
        let (rm, rinvstd) = (to_f64(&case.running_mean), reference::invstd(&to_f64(&case.running_var)));
        for e in EPILOGUES {
            // Training: the loss sees x through the batch statistics too.
            let (dx, dgamma, dbeta) =
                reference::batchnorm2d_backward_fused(&x, &r, &mean, &invstd, &gamma, &beta, dims, true, e);
            let f = |x: &[f64], g: &[f64], b: &[f64]| {
                dot(&r, &reference::batchnorm2d_forward_train_fused(x, g, b, dims, e))
            };
            assert_close(&format!("train dx {e:?}"), &dx, &numeric_grad(|p| f(p, &gamma, &beta), &x, 1e-6), 1e-5);
            assert_close(
                &format!("train dgamma {e:?}"),
                &dgamma,
                &numeric_grad(|p| f(&x, p, &beta), &gamma, 1e-6),
                1e-6,
            );
            assert_close(&format!("train dbeta {e:?}"), &dbeta, &numeric_grad(|p| f(&x, &gamma, p), &beta, 1e-6), 1e-6);

            // Evaluation: constant running statistics.
            let (dx, dgamma, dbeta) =
                reference::batchnorm2d_backward_fused(&x, &r, &rm, &rinvstd, &gamma, &beta, dims, false, e);
            let g = |x: &[f64], g: &[f64], b: &[f64]| {
                dot(&r, &reference::batchnorm2d_forward_fused(x, &rm, &rinvstd, g, b, dims, e))
            };
            assert_close(&format!("eval dx {e:?}"), &dx, &numeric_grad(|p| g(p, &gamma, &beta), &x, 1e-6), 1e-6);
            assert_close(
                &format!("eval dgamma {e:?}"),
                &dgamma,
                &numeric_grad(|p| g(&x, p, &beta), &gamma, 1e-6),
                1e-6,
            );
            assert_close(&format!("eval dbeta {e:?}"), &dbeta, &numeric_grad(|p| g(&x, &gamma, p), &beta, 1e-6), 1e-6);
        }
        // The epilogues are not vacuous here: ReLU zeroes some values, the dropout others.
        let z = reference::batchnorm2d_forward(&x, &mean, &invstd, &gamma, &beta, dims);
        let y = reference::batchnorm2d_forward_fused(&x, &mean, &invstd, &gamma, &beta, dims, EPILOGUES[2]);
        assert!(z.iter().any(|&v| v < 0.0) && z.iter().zip(&y).any(|(&z, &y)| z > 0.0 && y == 0.0));
    }

    #[test]
    fn fused_gpu_matches_reference_on_odd_shapes() {
        // C of 3, 5 and 7; H*W from 1 to 8643 (up to 2 chunks a channel); batch 1 and > 1; H*W odd
        // (the scalar entry points) and a multiple of 4 (their vec4 twins).
        let shapes = [(110, [1, 3, 5, 7]), (120, [2, 5, 5, 7]), (130, [2, 3, 1, 1]), (140, [3, 7, 17, 19])];
        let large = [(150, [1, 3, 67, 129]), (160, [2, 3, 67, 129])];
        let quads = [(111, [1, 3, 2, 2]), (121, [2, 5, 4, 6]), (161, [2, 3, 64, 132])];
        for (seed, dims) in shapes.into_iter().chain(large).chain(quads) {
            let case = Case::new(seed, dims, 0.2, 1.0).off_the_kink();
            for e in EPILOGUES {
                case.check_fused(Mode::Train, e);
                case.check_fused(Mode::Eval, e);
            }
        }
        // One value per channel: only evaluation is defined.
        let case = Case::new(170, [1, 5, 1, 1], 0.0, 1.0).off_the_kink();
        for e in EPILOGUES {
            case.check_fused(Mode::Eval, e);
        }
    }

    #[test]
    fn overwriting_dx_drops_its_stale_values() {
        // The first contribution to a gradient overwrites an unzeroed buffer: scalar and vec4
        // entry points, training and evaluation, every epilogue.
        for (seed, dims) in [(180, [2, 3, 5, 7]), (181, [2, 5, 4, 6])] {
            let case = Case { overwrite: true, ..Case::new(seed, dims, 0.2, 1.0).off_the_kink() };
            for e in EPILOGUES {
                case.check_fused(Mode::Train, e);
                case.check_fused(Mode::Eval, e);
            }
        }
    }

    #[test]
    fn fused_mask_equals_dropout_bit_for_bit() {
        // gamma = 0, beta = 1: z = 1 everywhere, so y = mask * 1 / (1 - p) exposes the mask,
        // to be compared with dropout.wgsl's on a tensor of ones. A seed with both halves set.
        let gpu = gpu();
        // The scalar entry point and its vec4 twin (H*W a multiple of 4).
        for dims in [[2, 3, 67, 129], [2, 3, 64, 132]] {
            fused_mask_equals_dropout(gpu, dims);
        }
    }

    fn fused_mask_equals_dropout(gpu: &Gpu, dims: [usize; 4]) {
        let c = [3];
        let (p, seed) = (0.3, 0xfedc_ba98_7654_3210);
        let n: usize = dims.iter().product();
        let x = gpu.upload(&random_vec(180, n), &dims);
        let ones = gpu.upload(&vec![1.0; n], &dims);
        let (gamma, beta) = (gpu.upload(&[0.0; 3], &c), gpu.upload(&[1.0; 3], &c));
        let (rm, rv, mean, invstd) =
            (gpu.upload(&[0.0; 3], &c), gpu.upload(&[1.0; 3], &c), gpu.empty(&c), gpu.empty(&c));
        let (fused, plain) = (gpu.empty(&dims), gpu.empty(&dims));
        let mut enc = gpu.encoder();
        batchnorm2d_stats(gpu, &mut enc, &x, &rm, &rv, &mean, &invstd);
        let e = Epilogue::ReluDropout { p, seed };
        batchnorm2d_forward_fused(gpu, &mut enc, &x, &mean, &invstd, &gamma, &beta, &fused, e);
        crate::ops::dropout::dropout_forward(gpu, &mut enc, &ones, &plain, p, seed);
        gpu.submit(enc);
        let (fused, plain) = (gpu.read(&fused), gpu.read(&plain));
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(bits(&fused) == bits(&plain), "the fused mask differs from dropout.wgsl's at {dims:?}");
        let kept = fused.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
        assert!((kept - 0.7).abs() < 0.01, "kept {kept}, want 0.7");
    }

    #[test]
    fn fused_tape_equals_the_chain() {
        use crate::ops::{dropout::dropout, relu::relu};
        let gpu = gpu();
        let case = Case::new(190, [2, 5, 6, 7], 0.3, 1.5).off_the_kink();
        let (dims, c) = (case.dims, [5]);
        let x = gpu.upload(&case.x, &dims).with_grad();
        let gamma = gpu.upload(&case.gamma, &c).with_grad();
        let beta = gpu.upload(&case.beta, &c).with_grad();
        for e in &EPILOGUES[1..] {
            let (p, seed) = match *e {
                Epilogue::ReluDropout { p, seed } => (p, seed),
                _ => (0.0, 0),
            };
            // Each path updates its own copy of the running statistics.
            let run = |fused: bool, mode: Mode| {
                let (rm, rv) = (gpu.upload(&case.running_mean, &c), gpu.upload(&case.running_var, &c));
                let mut step = match mode {
                    Mode::Train => Step::train(gpu),
                    Mode::Eval => Step::eval(gpu),
                };
                let y = if fused {
                    batchnorm2d_fused(&mut step, &x, &gamma, &beta, &rm, &rv, *e)
                } else {
                    let h = batchnorm2d(&mut step, &x, &gamma, &beta, &rm, &rv);
                    let h = relu(&mut step, &h);
                    dropout(&mut step, &h, p, seed)
                };
                let nodes = step.tape_len();
                if mode == Mode::Eval {
                    step.submit();
                    return (vec![gpu.read(&y)], nodes);
                }
                let mut grads = step.backward(vec![(y.clone(), gpu.upload(&case.dy, &dims))]);
                let (dx, dgamma, dbeta) =
                    (grads.take(&x).unwrap(), grads.take(&gamma).unwrap(), grads.take(&beta).unwrap());
                step.submit();
                ([&y, &dx, &dgamma, &dbeta, &rm, &rv].map(|t| gpu.read(t)).to_vec(), nodes)
            };
            let ((fused, fused_nodes), (chain, _)) = (run(true, Mode::Train), run(false, Mode::Train));
            assert_eq!(fused_nodes, 1, "one node for batch norm, ReLU and dropout");
            for (name, (f, c)) in
                ["y", "dx", "dgamma", "dbeta", "running_mean", "running_var"].iter().zip(fused.iter().zip(&chain))
            {
                assert_close_f32(&format!("fused vs chain {e:?} {name}"), f, &to_f64(c), 1e-6);
            }
            // And against the reference (the tape's gradients start at zero).
            let xf = to_f64(&case.x);
            let (mean, var) = reference::batch_stats(&xf, dims);
            let (g, b) = (to_f64(&case.gamma), to_f64(&case.beta));
            let invstd = reference::invstd(&var);
            let want_y = reference::batchnorm2d_forward_fused(&xf, &mean, &invstd, &g, &b, dims, *e);
            let (dx, dgamma, dbeta) =
                reference::batchnorm2d_backward_fused(&xf, &to_f64(&case.dy), &mean, &invstd, &g, &b, dims, true, *e);
            assert_close_f32(&format!("fused tape y {e:?}"), &fused[0], &want_y, 1e-4);
            assert_close_f32(&format!("fused tape dx {e:?}"), &fused[1], &dx, 1e-3);
            assert_close_f32(&format!("fused tape dgamma {e:?}"), &fused[2], &dgamma, 1e-3);
            assert_close_f32(&format!("fused tape dbeta {e:?}"), &fused[3], &dbeta, 1e-3);

            // In eval mode the dropout is off (plain ReLU), as in the chain, and nothing is recorded.
            let ((fused, nodes), (chain, _)) = (run(true, Mode::Eval), run(false, Mode::Eval));
            assert_eq!(nodes, 0);
            assert_close_f32(&format!("fused vs chain eval {e:?} y"), &fused[0], &to_f64(&chain[0]), 1e-6);
        }
    }
}
