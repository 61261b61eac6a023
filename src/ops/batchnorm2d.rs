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
//! The per-channel sums run in two deterministic passes (see
//! `shaders/batchnorm2d.wgsl`): many workgroups per channel each reduce a chunk
//! to a partial, then one workgroup per channel merges the partials in a fixed
//! order. The variance comes from Welford/Chan merges of (count, mean, M2), never
//! from `E[x^2] - E[x]^2`, so activations with a large mean keep their precision.

use crate::gpu::{Encoder, Gpu, Shader};
use crate::shader;
use crate::tape::{Mode, Step};
use crate::tensor::Tensor;

const SHADER: Shader = shader!("batchnorm2d");
/// Threads a workgroup; a power of two (the shader's reduction tree halves it),
/// and the most partials per channel (pass 2 gives each partial a thread).
const WG: u32 = 256;
/// Values each pass-1 thread reduces at least: a chunk is at least
/// `WG * PER_THREAD` values, so small channels are not split into tiny chunks
/// (each costs a tree of barriers). At the top U-Net level (M = 262144, 16
/// channels) that is 64 chunks a channel, 1024 workgroups; from M = 4096 down,
/// one chunk. Chunks are at least M / WG long, so a channel has at most WG of them.
const PER_THREAD: usize = 16;

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
}

impl Params {
    /// Shape and the split of each channel's `M` values into `splits` chunks.
    fn new([n, c, h, w]: [usize; 4]) -> Params {
        let m = n * h * w;
        let chunk = m.div_ceil(WG as usize).max(WG as usize * PER_THREAD).min(m.max(1));
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
        }
    }
}

/// Workgroups of the elementwise entry points: WG pixels along x, one (n, c) plane along y.
fn plane_groups(p: &Params) -> [u32; 3] {
    let groups = [p.hw.div_ceil(WG).max(1), p.n * p.c, 1];
    assert!(
        groups[0] <= 65535 && groups[1] <= 65535,
        "batchnorm2d: {groups:?} workgroups, over 65535 in one dimension"
    );
    groups
}

fn kernel(gpu: &Gpu, entry: &'static str) -> std::rc::Rc<crate::gpu::Kernel> {
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
    let p = Params::new(dims);
    assert!(p.n * p.hw > 1, "batchnorm2d: training needs more than one value per channel, x is {:?}", x.shape());
    let partial = gpu.empty(&[c, p.splits as usize, 3]);
    gpu.dispatch(enc, &kernel(gpu, "batchnorm_stats_partial"), &p, &[(1, x), (9, &partial)], [p.splits, c as u32, 1]);
    gpu.dispatch(
        enc,
        &kernel(gpu, "batchnorm_stats_final"),
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
    let dims = x.dims4("batchnorm2d x");
    assert_eq!(x.shape(), y.shape(), "batchnorm2d: x {:?} vs y {:?}", x.shape(), y.shape());
    for (what, t) in [("mean", mean), ("invstd", invstd), ("gamma", gamma), ("beta", beta)] {
        assert_channels(what, dims[1], t);
    }
    let p = Params::new(dims);
    gpu.dispatch(
        enc,
        &kernel(gpu, "batchnorm_forward"),
        &p,
        &[(1, x), (3, gamma), (4, beta), (5, mean), (6, invstd), (11, y)],
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
    let dims = x.dims4("batchnorm2d x");
    let c = dims[1];
    assert_eq!(x.shape(), dy.shape(), "batchnorm2d backward: x {:?} vs dy {:?}", x.shape(), dy.shape());
    if let Some(dx) = dx {
        assert_eq!(x.shape(), dx.shape(), "batchnorm2d backward: x {:?} vs dx {:?}", x.shape(), dx.shape());
    }
    for (what, t) in
        [("mean", Some(mean)), ("invstd", Some(invstd)), ("gamma", Some(gamma)), ("dgamma", dgamma), ("dbeta", dbeta)]
    {
        if let Some(t) = t {
            assert_channels(what, c, t);
        }
    }
    let p = Params::new(dims);
    let groups = plane_groups(&p);

    if mode == Mode::Eval {
        if let Some(dx) = dx {
            gpu.dispatch(
                enc,
                &kernel(gpu, "batchnorm_backward_data_eval"),
                &p,
                &[(2, dy), (3, gamma), (6, invstd), (11, dx)],
                groups,
            );
        }
        if dgamma.is_none() && dbeta.is_none() {
            return; // the channel sums are only needed for the parameters
        }
    }

    // sums = [sum dy (C values) | sum dy * xhat (C values)], in two passes.
    let partial = gpu.empty(&[c, p.splits as usize, 2]);
    let sums = gpu.empty(&[2, c]);
    gpu.dispatch(
        enc,
        &kernel(gpu, "batchnorm_backward_partial"),
        &p,
        &[(1, x), (2, dy), (5, mean), (6, invstd), (9, &partial)],
        [p.splits, c as u32, 1],
    );
    gpu.dispatch(enc, &kernel(gpu, "batchnorm_backward_final"), &p, &[(9, &partial), (10, &sums)], [c as u32, 1, 1]);

    if let (Mode::Train, Some(dx)) = (mode, dx) {
        gpu.dispatch(
            enc,
            &kernel(gpu, "batchnorm_backward_data"),
            &p,
            &[(1, x), (2, dy), (3, gamma), (5, mean), (6, invstd), (10, &sums), (11, dx)],
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
    let c = x.dims4("batchnorm2d x")[1];
    let (gpu, mode) = (step.gpu, step.mode);
    let (mean, invstd) = (gpu.empty(&[c]), gpu.empty(&[c]));
    match mode {
        Mode::Train => batchnorm2d_stats(gpu, &mut step.enc, x, running_mean, running_var, &mean, &invstd),
        Mode::Eval => batchnorm2d_running_stats(gpu, &mut step.enc, running_mean, running_var, &mean, &invstd),
    }
    let y = step.output(x.shape(), &[x, gamma, beta]);
    batchnorm2d_forward(gpu, &mut step.enc, x, &mean, &invstd, gamma, beta, &y);
    let (x, gamma, beta) = (x.clone(), gamma.clone(), beta.clone());
    step.record("batchnorm2d", &y, move |ctx, dy| {
        let (dx, dgamma, dbeta) = (ctx.grad(&x), ctx.grad(&gamma), ctx.grad(&beta));
        batchnorm2d_backward(
            ctx.gpu,
            ctx.enc,
            mode,
            &x,
            dy,
            &mean,
            &invstd,
            &gamma,
            dx.as_ref(),
            dgamma.as_ref(),
            dbeta.as_ref(),
        );
    });
    y
}

/// Plain-Rust batch normalisation, the contract the shader is tested against.
/// Slices are NCHW with dims `[n, c, h, w]`; per-channel slices have `c` values.
pub mod reference {
    /// The `M = n*h*w` values of channel `ch`.
    fn channel(x: &[f64], [n, c, h, w]: [usize; 4], ch: usize) -> impl Iterator<Item = f64> + '_ {
        let hw = h * w;
        (0..n).flat_map(move |b| x[(b * c + ch) * hw..(b * c + ch + 1) * hw].iter().copied())
    }

    /// Per-channel batch mean and biased variance, in two passes (the variance
    /// is the mean of squared deviations from the mean).
    pub fn batch_stats(x: &[f64], dims: [usize; 4]) -> (Vec<f64>, Vec<f64>) {
        let m = (dims[0] * dims[2] * dims[3]) as f64;
        let mean: Vec<f64> = (0..dims[1]).map(|ch| channel(x, dims, ch).sum::<f64>() / m).collect();
        let var =
            (0..dims[1]).map(|ch| channel(x, dims, ch).map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / m).collect();
        (mean, var)
    }

    /// `1 / sqrt(var + EPS)`, per channel.
    pub fn invstd(var: &[f64]) -> Vec<f64> {
        var.iter().map(|v| 1.0 / (v + super::EPS as f64).sqrt()).collect()
    }

    /// The running statistics after one training step on a batch with `m`
    /// values per channel: `(1 - MOMENTUM) * running + MOMENTUM * batch`, with
    /// the unbiased batch variance `var * m / (m - 1)`.
    pub fn update_running(
        running_mean: &[f64],
        running_var: &[f64],
        mean: &[f64],
        var: &[f64],
        m: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let k = super::MOMENTUM as f64;
        let m = m as f64;
        let new_mean = running_mean.iter().zip(mean).map(|(r, b)| (1.0 - k) * r + k * b).collect();
        let new_var = running_var.iter().zip(var).map(|(r, v)| (1.0 - k) * r + k * v * m / (m - 1.0)).collect();
        (new_mean, new_var)
    }

    /// `y = gamma * (x - mean) * invstd + beta`.
    pub fn batchnorm2d_forward(
        x: &[f64],
        mean: &[f64],
        invstd: &[f64],
        gamma: &[f64],
        beta: &[f64],
        dims: [usize; 4],
    ) -> Vec<f64> {
        let (c, hw) = (dims[1], dims[2] * dims[3]);
        x.iter()
            .enumerate()
            .map(|(i, v)| {
                let ch = (i / hw) % c;
                gamma[ch] * (v - mean[ch]) * invstd[ch] + beta[ch]
            })
            .collect()
    }

    /// The training forward as one function of x (batch statistics included),
    /// for finite differences.
    pub fn batchnorm2d_forward_train(x: &[f64], gamma: &[f64], beta: &[f64], dims: [usize; 4]) -> Vec<f64> {
        let (mean, var) = batch_stats(x, dims);
        batchnorm2d_forward(x, &mean, &invstd(&var), gamma, beta, dims)
    }

    /// `(dx, dgamma, dbeta)` (not accumulated). With `train`, mean and invstd are
    /// the batch statistics of x and dx includes their dependence on x:
    /// `dx = gamma * invstd / M * (M*dy - sum(dy) - xhat * sum(dy*xhat))`;
    /// without, they are constants: `dx = dy * gamma * invstd`.
    /// `dgamma = sum(dy * xhat)`, `dbeta = sum(dy)` per channel.
    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm2d_backward(
        x: &[f64],
        dy: &[f64],
        mean: &[f64],
        invstd: &[f64],
        gamma: &[f64],
        dims: [usize; 4],
        train: bool,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (c, hw) = (dims[1], dims[2] * dims[3]);
        let m = (dims[0] * hw) as f64;
        let ch_of = |i: usize| (i / hw) % c;
        let xhat: Vec<f64> = x.iter().enumerate().map(|(i, v)| (v - mean[ch_of(i)]) * invstd[ch_of(i)]).collect();
        let (mut dgamma, mut dbeta) = (vec![0.0; c], vec![0.0; c]);
        for i in 0..x.len() {
            dgamma[ch_of(i)] += dy[i] * xhat[i];
            dbeta[ch_of(i)] += dy[i];
        }
        let dx = (0..x.len())
            .map(|i| {
                let ch = ch_of(i);
                if train {
                    gamma[ch] * invstd[ch] / m * (m * dy[i] - dbeta[ch] - xhat[i] * dgamma[ch])
                } else {
                    dy[i] * gamma[ch] * invstd[ch]
                }
            })
            .collect();
        (dx, dgamma, dbeta)
    }
}

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

    /// Inputs of one check; gradients start at `*0` (the backward accumulates).
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
            }
        }

        fn run_gpu(&self, mode: Mode) -> Run {
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
            batchnorm2d_forward(gpu, &mut enc, &x, &mean, &invstd, &gamma, &beta, &y);
            let (gx, ggamma, gbeta) = (Some(&dx), Some(&dgamma), Some(&dbeta));
            batchnorm2d_backward(gpu, &mut enc, mode, &x, &dy, &mean, &invstd, &gamma, gx, ggamma, gbeta);
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
            let got = self.run_gpu(mode);
            let dims = self.dims;
            let what = |name: &str| format!("{mode:?} {name} {dims:?}");
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
            let y = reference::batchnorm2d_forward(&x, &mean, &invstd, &gamma, &beta, dims);
            let (dx, dgamma, dbeta) = reference::batchnorm2d_backward(
                &x,
                &to_f64(&self.dy),
                &mean,
                &invstd,
                &gamma,
                dims,
                mode == Mode::Train,
            );
            let plus =
                |g: Vec<f64>, start: &[f32]| -> Vec<f64> { g.iter().zip(start).map(|(g, &s)| g + s as f64).collect() };

            assert_close_f32(&what("mean"), &got.mean, &mean, 1e-5);
            assert_close_f32(&what("invstd"), &got.invstd, &invstd, 1e-4);
            assert_close_f32(&what("running_mean"), &got.running_mean, &want_rm, 1e-5);
            assert_close_f32(&what("running_var"), &got.running_var, &want_rv, 1e-4);
            assert_close_f32(&what("y"), &got.y, &y, 1e-4);
            assert_close_f32(&what("dx"), &got.dx, &plus(dx, &self.dx0), 1e-3);
            assert_close_f32(&what("dgamma"), &got.dgamma, &plus(dgamma, &self.dgamma0), 1e-3);
            assert_close_f32(&what("dbeta"), &got.dbeta, &plus(dbeta, &self.dbeta0), 1e-3);
        }
    }

    #[test]
    fn gpu_matches_reference_on_odd_shapes() {
        for (seed, dims) in [(10, [1, 3, 5, 7]), (20, [2, 5, 5, 7]), (30, [2, 3, 1, 1]), (40, [3, 2, 17, 19])] {
            let case = Case::new(seed, dims, 0.0, 1.0);
            case.check(Mode::Train);
            case.check(Mode::Eval);
        }
        // One value per channel: only evaluation is defined (as in PyTorch).
        Case::new(50, [1, 5, 1, 1], 0.0, 1.0).check(Mode::Eval);
    }

    #[test]
    fn channels_split_over_many_workgroups() {
        // M = 2 * 67 * 129 = 17286 values a channel: 5 chunks, the last one short.
        let dims = [2, 3, 67, 129];
        assert_eq!(Params::new(dims).splits, 5);
        let case = Case::new(60, dims, 0.5, 2.0);
        case.check(Mode::Train);
        // Fixed-order reductions: a second run gives the same bits.
        let (a, b) = (case.run_gpu(Mode::Train), case.run_gpu(Mode::Train));
        assert_eq!((a.mean, a.invstd, a.y, a.dx, a.dgamma), (b.mean, b.invstd, b.y, b.dx, b.dgamma));
    }

    #[test]
    fn large_mean_keeps_variance_precise() {
        // Values around 100 with spread 1: E[x^2] - E[x]^2 in f32 would lose about
        // four of the seven digits of the variance.
        for (seed, dims) in [(70, [2, 5, 5, 7]), (80, [2, 2, 67, 129])] {
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
}
