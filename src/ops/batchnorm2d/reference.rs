//! Plain-Rust batch normalisation, the contract the shader is tested against.
//! Slices are NCHW with dims `[n, c, h, w]`; per-channel slices have `c` values.

use super::Epilogue;
use crate::ops::conv2d;

/// The per-channel values `[c]` the forward and backward read: statistics and affine parameters.
#[derive(Clone, Copy, Debug)]
pub struct Channels<'a> {
    /// The mean the values are centred on (batch or running).
    pub mean: &'a [f64],
    /// `1 / sqrt(var + EPS)`.
    pub invstd: &'a [f64],
    /// Scale.
    pub gamma: &'a [f64],
    /// Shift.
    pub beta: &'a [f64],
}

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
    let var = (0..dims[1]).map(|ch| channel(x, dims, ch).map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / m).collect();
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

/// `y = epilogue(gamma * (x - mean) * invstd + beta)`: the normalisation, then
/// [`conv2d::reference::epilogue_forward`] (ReLU, then dropout's mask over y's flat index).
pub fn batchnorm2d_forward(x: &[f64], ch: Channels, dims: [usize; 4], epilogue: Epilogue) -> Vec<f64> {
    conv2d::reference::epilogue_forward(&normalise(x, ch, dims), epilogue)
}

/// `z = gamma * (x - mean) * invstd + beta`.
fn normalise(x: &[f64], ch: Channels, dims: [usize; 4]) -> Vec<f64> {
    let Channels { mean, invstd, gamma, beta } = ch;
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
pub fn batchnorm2d_forward_train(
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    dims: [usize; 4],
    epilogue: Epilogue,
) -> Vec<f64> {
    let (mean, var) = batch_stats(x, dims);
    batchnorm2d_forward(x, Channels { mean: &mean, invstd: &invstd(&var), gamma, beta }, dims, epilogue)
}

/// `(dx, dgamma, dbeta)` of [`batchnorm2d_forward`] (not accumulated): the chain rule through
/// the epilogue (`dz` from the pre-activation `z = gamma * xhat + beta`, by
/// [`conv2d::reference::epilogue_backward`]), then the normalisation's backward with dz. With
/// `train`, mean and invstd are the batch statistics of x and dx includes their dependence on x:
/// `dx = gamma * invstd / M * (M*dz - sum(dz) - xhat * sum(dz*xhat))`; without, they are
/// constants: `dx = dz * gamma * invstd`. `dgamma = sum(dz * xhat)`, `dbeta = sum(dz)` per
/// channel. The identity reads no beta.
pub fn batchnorm2d_backward(
    x: &[f64],
    dy: &[f64],
    ch: Channels,
    dims: [usize; 4],
    train: bool,
    epilogue: Epilogue,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let Channels { mean, invstd, gamma, .. } = ch;
    if epilogue == Epilogue::Identity {
        return normalise_backward(x, dy, mean, invstd, gamma, dims, train);
    }
    let dz = conv2d::reference::epilogue_backward(&normalise(x, ch, dims), dy, epilogue);
    normalise_backward(x, &dz, mean, invstd, gamma, dims, train)
}

/// `(dx, dgamma, dbeta)` of the normalisation alone, from dz.
fn normalise_backward(
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
