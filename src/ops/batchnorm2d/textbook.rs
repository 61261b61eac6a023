//! The textbook batch normalisation: `shaders/batchnorm2d/textbook.wgsl`, one invocation per
//! output element (or per channel for the statistics) running the loops of the formulas in
//! [`super`]'s doc: the mean first, then the mean of squared deviations from it; no tiling, no
//! workgroup memory, no Welford merges. The oracle the tiled kernels are tested against, and what
//! the default wrappers ([`super::batchnorm2d_stats`], ...) dispatch under
//! [`Kernels::Reference`](crate::runtime::Kernels).
//!
//! A channel's sums over its `M = N*H*W` values are cut into runs of whole rows (n, h) under
//! lavapipe's loop guard (as conv2d's, see [`conv2d::textbook::MAX_RUN`]), added in run order by
//! the next pass. The fused ReLU and dropout
//! are the plain kernels' business: the forward is followed by
//! [`conv2d::textbook::epilogue_forward`], and the backward starts from dz, the gradient before
//! them, from [`conv2d::textbook::epilogue_backward`].

use crate::autograd::tape::{Accumulate, Mode};
use crate::autograd::tensor::Tensor;
use crate::ops::conv2d;
use crate::runtime::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("batchnorm2d/textbook");
/// Threads a workgroup (the shader's `WG`).
const WG: u32 = 64;

/// Mirrors `Norm` in `shaders/batchnorm2d/textbook.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Norm {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    rows: u32,
    runs: u32,
    momentum: f32,
    eps: f32,
    train: u32,
    accumulate: u32,
}

impl Norm {
    /// x `[n, c, h, w]`, each channel's `n*h` rows cut into runs.
    fn new([n, c, h, w]: [usize; 4]) -> Norm {
        let (rows, runs) = conv2d::textbook::runs(n * h, w);
        Norm {
            n: n as u32,
            c: c as u32,
            h: h as u32,
            w: w as u32,
            rows,
            runs,
            momentum: super::MOMENTUM,
            eps: super::EPS,
            train: 0,
            accumulate: 0,
        }
    }

    /// Invocations of a `batchnorm_sum_*` entry point: one per (run, channel).
    fn runs(&self) -> usize {
        (self.runs * self.c) as usize
    }
}

/// The per-channel tensors `[C]` the forward and backward read: the statistics and the affine
/// parameters.
#[derive(Clone, Copy)]
pub struct Channels<'a> {
    /// The mean the values are centred on (batch or running).
    pub mean: &'a Tensor,
    /// `1 / sqrt(var + EPS)` (batch or running variance).
    pub invstd: &'a Tensor,
    /// Scale.
    pub gamma: &'a Tensor,
    /// Shift (read by the forward, and by a backward through a ReLU epilogue).
    pub beta: &'a Tensor,
}

/// The gradients the backward fills, each when given: dx `[N,C,H,W]` added into or overwritten
/// as its [`Accumulate`] says, dgamma and dbeta `[C]` added into.
#[derive(Clone, Copy, Default)]
pub struct Grads<'a> {
    /// Of x.
    pub dx: Option<(&'a Tensor, Accumulate)>,
    /// Of gamma.
    pub dgamma: Option<&'a Tensor>,
    /// Of beta.
    pub dbeta: Option<&'a Tensor>,
}

fn dispatch(gpu: &Gpu, enc: &mut Encoder, entry: &'static str, p: &Norm, buffers: &[(u32, &Tensor)], n: usize) {
    let kernel = gpu.kernel(&SHADER, entry, &[]);
    gpu.dispatch(enc, &kernel, p, buffers, groups_1d(n, WG));
}

/// Training statistics: the batch `mean` and `invstd = 1/sqrt(var + EPS)` of x (biased
/// variance), and the momentum update of `running_mean` and `running_var` (unbiased variance).
/// x `[N,C,H,W]` with `N*H*W > 1`; the rest `[C]`.
pub fn batchnorm2d_stats(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    mean: &Tensor,
    invstd: &Tensor,
) {
    let p = Norm::new(x.dims4("batchnorm2d x"));
    assert!(p.n * p.h * p.w > 1, "batchnorm2d: training needs more than one value per channel, x is {:?}", x.shape());
    let c = p.c as usize;
    // mean_c = sum x / M
    let sums = gpu.empty(&[p.runs()]);
    dispatch(gpu, enc, "batchnorm_sum_x", &p, &[(1, x), (9, &sums)], p.runs());
    dispatch(gpu, enc, "batchnorm_mean", &p, &[(5, mean), (9, &sums)], c);
    // var_c = sum (x - mean_c)^2 / M, then invstd and the running statistics.
    let squares = gpu.empty(&[p.runs()]);
    dispatch(gpu, enc, "batchnorm_sum_squares", &p, &[(1, x), (5, mean), (9, &squares)], p.runs());
    let stats = [(5, mean), (6, invstd), (7, running_mean), (8, running_var), (9, &squares)];
    dispatch(gpu, enc, "batchnorm_stats", &p, &stats, c);
}

/// Evaluation statistics: `mean = running_mean`, `invstd = 1/sqrt(running_var + EPS)`. All `[C]`.
pub fn batchnorm2d_running_stats(
    gpu: &Gpu,
    enc: &mut Encoder,
    running_mean: &Tensor,
    running_var: &Tensor,
    mean: &Tensor,
    invstd: &Tensor,
) {
    let p = Norm::new([1, running_mean.len(), 1, 1]);
    let buffers = [(5, mean), (6, invstd), (7, running_mean), (8, running_var)];
    dispatch(gpu, enc, "batchnorm_stats_running", &p, &buffers, running_mean.len());
}

/// `y = gamma * (x - mean) * invstd + beta`. x, y `[N,C,H,W]`.
pub fn batchnorm2d_forward(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, ch: Channels, y: &Tensor) {
    assert_eq!(x.shape(), y.shape(), "batchnorm2d: x {:?} vs y {:?}", x.shape(), y.shape());
    let p = Norm::new(x.dims4("batchnorm2d x"));
    let buffers = [(1, x), (3, ch.gamma), (4, ch.beta), (5, ch.mean), (6, ch.invstd), (11, y)];
    dispatch(gpu, enc, "batchnorm_forward", &p, &buffers, x.len());
}

/// Backward of [`batchnorm2d_forward`] from `dy` (dz, where an epilogue followed), into the
/// gradients `g` names. In [`Mode::Train`] mean and invstd are the batch statistics and dx
/// includes their dependence on x; in [`Mode::Eval`] they are constants. x, dy `[N,C,H,W]`.
pub fn batchnorm2d_backward(gpu: &Gpu, enc: &mut Encoder, mode: Mode, x: &Tensor, dy: &Tensor, ch: Channels, g: Grads) {
    assert_eq!(x.shape(), dy.shape(), "batchnorm2d backward: x {:?} vs dy {:?}", x.shape(), dy.shape());
    let mut p = Norm::new(x.dims4("batchnorm2d x"));
    p.train = (mode == Mode::Train) as u32;
    let c = p.c as usize;
    // sums = [sum dy | sum dy xhat], per channel; unread by the evaluation dx alone.
    let sums = gpu.empty(&[2, c]);
    if (mode == Mode::Train && g.dx.is_some()) || g.dgamma.is_some() || g.dbeta.is_some() {
        let part = gpu.empty(&[2 * p.runs()]);
        let buffers = [(1, x), (2, dy), (5, ch.mean), (6, ch.invstd), (9, &part)];
        dispatch(gpu, enc, "batchnorm_sum_backward", &p, &buffers, p.runs());
        dispatch(gpu, enc, "batchnorm_backward_sums", &p, &[(9, &part), (10, &sums)], 2 * c);
    }
    if let Some((dx, acc)) = g.dx {
        assert_eq!(x.shape(), dx.shape(), "batchnorm2d backward: x {:?} vs dx {:?}", x.shape(), dx.shape());
        p.accumulate = (acc == Accumulate::Add) as u32;
        let buffers = [(1, x), (2, dy), (3, ch.gamma), (5, ch.mean), (6, ch.invstd), (10, &sums), (11, dx)];
        dispatch(gpu, enc, "batchnorm_backward_data", &p, &buffers, x.len());
    }
    for (entry, dparam) in [("batchnorm_backward_gamma", g.dgamma), ("batchnorm_backward_beta", g.dbeta)] {
        if let Some(dparam) = dparam {
            dispatch(gpu, enc, entry, &p, &[(10, &sums), (12, dparam)], c);
        }
    }
}

/// dz, the gradient before the epilogue that followed the normalisation, given dy after it:
/// z recomputed by [`batchnorm2d_forward`], then [`conv2d::textbook::epilogue_backward`]. For the
/// identity, dy itself. x, dy `[N,C,H,W]`.
pub fn epilogue_backward(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    dy: &Tensor,
    ch: Channels,
    epilogue: conv2d::Epilogue,
) -> Tensor {
    if epilogue == conv2d::Epilogue::Identity {
        return dy.clone();
    }
    let z = gpu.empty(x.shape());
    batchnorm2d_forward(gpu, enc, x, ch, &z);
    conv2d::textbook::epilogue_backward(gpu, enc, &z, dy, epilogue)
}

#[cfg(test)]
mod tests;
