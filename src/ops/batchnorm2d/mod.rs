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
//! [`batchnorm2d`] ends the normalisation in an [`Epilogue`], as
//! [`crate::ops::conv2d::conv2d`] does: `y = epilogue(z)` with
//! `z = gamma * xhat + beta`, i.e. ReLU `y = max(z, 0)` or ReLU then inverted dropout
//! `y = mask(seed) * max(z, 0) / (1 - p)` (the mask of [`crate::ops::dropout`], bit for
//! bit). The backward goes back through it on the fly wherever the formulas above read
//! dy: `dz = dy * (y > 0) / (1 - p)` takes dy's place, with `y > 0` recomputed as
//! `z > 0` and kept, from the x it reads anyway (reading y instead cost 40% of the
//! backward on lavapipe). So `conv -> batch norm -> ReLU -> dropout` costs no ReLU or
//! dropout pass and no intermediate tensor, forward or backward.
//!
//! The per-channel sums run in two deterministic passes (see
//! `shaders/batchnorm2d/tiled.wgsl`): many workgroups per channel each reduce a chunk
//! to a partial, then one workgroup per channel merges the partials in a fixed
//! order. The variance comes from Welford/Chan merges of (count, mean, M2), never
//! from `E[x^2] - E[x]^2`, so activations with a large mean keep their precision.
//!
//! [`textbook`] holds the direct kernels (`shaders/batchnorm2d/textbook.wgsl`: one invocation per
//! output element or channel, the formulas above as loops, the epilogue left to the plain ReLU and
//! dropout kernels): the oracle the tiled kernels are tested against, and what every default
//! wrapper here dispatches under [`Kernels::Reference`] (`--kernels reference`).

use crate::autograd::tape::{Accumulate, Mode, Step};
use crate::autograd::tensor::Tensor;
use crate::ops::conv2d::{self, Epilogue};
use crate::runtime::{Encoder, Gpu, Kernels, Shader};
use crate::shader;

pub mod textbook;
pub use textbook::{Channels, Grads};

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

/// Mirrors `Params` in `shaders/batchnorm2d/tiled.wgsl`.
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

/// The operands and options of a forward: `y = epilogue(gamma * (x - mean) * invstd + beta)`.
#[derive(Clone, Copy)]
pub struct Forward<'a> {
    /// `[N,C,H,W]`.
    pub x: &'a Tensor,
    /// mean, invstd (from [`batchnorm2d_stats`] or [`batchnorm2d_running_stats`]), gamma, beta:
    /// `[C]` each.
    pub ch: Channels<'a>,
    /// `[N,C,H,W]`, written.
    pub y: &'a Tensor,
    /// What is applied to each output as it is stored: nothing, ReLU, or ReLU then dropout.
    pub epilogue: Epilogue,
}

/// `y = epilogue(gamma * (x - mean) * invstd + beta)`, the operands and options in `f`.
pub fn batchnorm2d_forward(gpu: &Gpu, enc: &mut Encoder, f: &Forward) {
    let Forward { x, ch, y, epilogue } = *f;
    let Channels { mean, invstd, gamma, beta } = ch;
    let dims = x.dims4("batchnorm2d x");
    assert_eq!(x.shape(), y.shape(), "batchnorm2d: x {:?} vs y {:?}", x.shape(), y.shape());
    for (what, t) in [("mean", mean), ("invstd", invstd), ("gamma", gamma), ("beta", beta)] {
        assert_channels(what, dims[1], t);
    }
    if gpu.kernels() == Kernels::Reference {
        // The textbook normalisation into z, then the epilogue by the plain ReLU and dropout kernels.
        let z = if epilogue == Epilogue::Identity { y.clone() } else { gpu.empty(y.shape()) };
        textbook::batchnorm2d_forward(gpu, enc, x, ch, &z);
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

/// Batch normalisation then an epilogue on the tape, in the step's mode:
/// `epilogue(batchnorm2d(x))` (`Epilogue::Identity`: the plain normalisation), one forward pass
/// and no ReLU or dropout pass in the backward (see the module doc). x: `[N,C,H,W]`; gamma, beta
/// (the affine parameters), running_mean, running_var: `[C]`. In [`Mode::Train`] the running
/// statistics are updated in place (on the GPU, in order with the step). In [`Mode::Eval`] the
/// dropout of [`Epilogue::ReluDropout`] is off (plain ReLU), as is one with `p == 0`. Returns y:
/// `[N,C,H,W]`.
pub fn batchnorm2d(
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
    let ch = Channels { mean: &mean, invstd: &invstd, gamma, beta };
    batchnorm2d_forward(gpu, &mut step.enc, &Forward { x, ch, y: &y, epilogue });
    let (x, gamma, beta) = (x.clone(), gamma.clone(), beta.clone());
    step.record("batchnorm2d", &y, move |ctx, dy| {
        // dx is written whole (train and eval alike): a first contribution overwrites it.
        let (dx, dgamma, dbeta) = (ctx.grad_to_fill(&x), ctx.grad(&gamma), ctx.grad(&beta));
        let ch = Channels { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta };
        let grads =
            Grads { dx: dx.as_ref().map(|(dx, acc)| (dx, *acc)), dgamma: dgamma.as_ref(), dbeta: dbeta.as_ref() };
        batchnorm2d_backward(ctx.gpu, ctx.enc, &Backward { mode, x: &x, dy, ch, grads, epilogue });
    });
    y
}

/// Plain-Rust batch normalisation, the contract the shader is tested against.
/// Slices are NCHW with dims `[n, c, h, w]`; per-channel slices have `c` values.
mod backward;
pub use backward::*;

pub mod reference;

#[cfg(test)]
mod tests;
