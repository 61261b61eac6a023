//! Optimizers over the flat parameter arena (`shaders/optim.wgsl`): SGD with
//! momentum, Adam and AdamW, each one dispatch per step for all parameters;
//! optional clipping by global gradient norm (two more dispatches, no CPU
//! round trip); learning-rate schedules.
//!
//! The update rules are PyTorch's (`torch.optim.SGD` with dampening 0,
//! `Adam` with L2 weight decay, `AdamW` with decoupled weight decay).

use crate::autograd::params::ParamArena;
use crate::autograd::tensor::Tensor;
use crate::runtime::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("optim");
const WG: u32 = 256;
const NORM_WG: usize = 256;
const NORM_GROUPS: usize = 256;

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// SGD with momentum (0 for plain SGD).
    Sgd {
        /// Momentum factor (PyTorch's `momentum`).
        momentum: f32,
    },
    /// Adam (weight decay as an L2 term added to the gradient).
    Adam,
    /// AdamW (decoupled weight decay).
    AdamW,
}

/// Optimizer settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimConfig {
    /// The update rule.
    pub method: Method,
    /// Adam's beta1 and beta2 (PyTorch defaults 0.9, 0.999).
    pub betas: (f32, f32),
    /// Adam's epsilon (1e-8).
    pub eps: f32,
    /// Weight decay (0; AdamW's PyTorch default is 0.01).
    pub weight_decay: f32,
    /// Clip gradients to this global L2 norm, if set.
    pub clip_norm: Option<f32>,
}

impl OptimConfig {
    /// `method` with PyTorch's defaults and no clipping.
    pub fn new(method: Method) -> OptimConfig {
        let weight_decay = if method == Method::AdamW { 0.01 } else { 0.0 };
        OptimConfig { method, betas: (0.9, 0.999), eps: 1e-8, weight_decay, clip_norm: None }
    }
}

/// How the learning rate changes over epochs. Training asks it before every step, at
/// the fractional epoch `e + i / n` (step `i` of `n` in epoch `e`), so a cosine decays
/// smoothly within epochs while a step schedule changes at epoch boundaries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        /// Epochs between decays.
        every: usize,
        /// Decay factor.
        gamma: f32,
    },
    /// Cosine from the base rate down to `min_lr` over `epochs` epochs.
    Cosine {
        /// Length of the schedule in epochs.
        epochs: usize,
        /// Final rate.
        min_lr: f32,
    },
}

impl Schedule {
    /// The learning rate at fractional epoch `epoch` (0-based) for base rate `lr`.
    pub fn lr(&self, lr: f32, epoch: f64) -> f32 {
        match *self {
            Schedule::Constant => lr,
            Schedule::Step { every, gamma } => lr * gamma.powi((epoch / every.max(1) as f64).floor() as i32),
            Schedule::Cosine { epochs, min_lr } => {
                let t = (epoch / epochs.max(1) as f64).min(1.0);
                min_lr + (lr - min_lr) * (0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
        }
    }
}

/// Factor of a linear warm-up over the first `warmup` epochs, for the step that
/// starts at fractional epoch `epoch` in epochs of `steps` steps: the first step
/// runs at `1 / (warmup * steps)` of the rate, each next one a step more, up to 1.
/// Adam's first steps, with its second-moment estimates still young, are the
/// ones a high rate throws off; `warmup = 0` is no warm-up.
pub fn warmup(epoch: f64, warmup: f64, steps: usize) -> f32 {
    if warmup <= 0.0 {
        return 1.0;
    }
    let steps = steps.max(1) as f64;
    ((epoch * steps + 1.0) / (warmup * steps)).min(1.0) as f32
}

/// Mirrors `Params` in `shaders/optim.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    adamw: u32,
    groups: u32,
    per_thread: u32,
    lr: f32,
    weight_decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    c1: f32,
    c2: f32,
    max_norm: f32,
}

/// An optimizer and its state (moments or momentum, same layout as the arena).
pub struct Optimizer {
    /// Settings.
    pub config: OptimConfig,
    /// Steps taken (Adam's `t` after the next step is `steps + 1`).
    pub steps: u64,
    /// First moment (Adam) or momentum buffer (SGD).
    pub m: Tensor,
    /// Second moment (Adam; unused by SGD).
    pub v: Tensor,
    /// `[scale, norm]`: the clip factor applied to the last step and the norm it saw.
    pub clip: Tensor,
    partials: Tensor,
}

impl Optimizer {
    /// Zero state for `arena`.
    pub fn new(gpu: &Gpu, arena: &ParamArena, config: OptimConfig) -> Optimizer {
        let n = arena.values.len();
        Optimizer {
            config,
            steps: 0,
            m: gpu.upload(&vec![0.0; n], &[n]),
            v: gpu.upload(&vec![0.0; n], &[n]),
            clip: gpu.upload(&[1.0, 0.0], &[2]),
            partials: gpu.empty(&[NORM_GROUPS]),
        }
    }

    /// The state as named per-parameter views (`optimizer.m.<param>`,
    /// `optimizer.v.<param>`), for checkpoints: independent of the arena's padding.
    pub fn state(&self, arena: &ParamArena) -> Vec<(String, Tensor)> {
        let mut named = Vec::with_capacity(2 * arena.params.len());
        for (label, buf) in [("m", &self.m), ("v", &self.v)] {
            for p in &arena.params {
                let offset = p.value.offset() - arena.values.offset();
                named.push((format!("optimizer.{label}.{}", p.name), buf.view(offset, p.value.shape())));
            }
        }
        named
    }

    /// Update every parameter from its gradient with learning rate `lr`.
    pub fn step(&mut self, gpu: &Gpu, enc: &mut Encoder, arena: &ParamArena, lr: f32) {
        self.steps += 1;
        let n = arena.values.len();
        let per_thread = n.div_ceil(NORM_WG * NORM_GROUPS);
        let t = self.steps as i32;
        let (b1, b2) = self.config.betas;
        let (method, beta1) = match self.config.method {
            Method::Sgd { momentum } => ("sgd_update", momentum),
            Method::Adam | Method::AdamW => ("adam_update", b1),
        };
        let params = Params {
            n: n as u32,
            adamw: (self.config.method == Method::AdamW) as u32,
            groups: n.div_ceil(NORM_WG * per_thread) as u32,
            per_thread: per_thread as u32,
            lr,
            weight_decay: self.config.weight_decay,
            beta1,
            beta2: b2,
            eps: self.config.eps,
            c1: (1.0 - (b1 as f64).powi(t)) as f32,
            c2: (1.0 - (b2 as f64).powi(t)) as f32,
            max_norm: self.config.clip_norm.unwrap_or(f32::INFINITY),
        };
        if self.config.clip_norm.is_some() {
            let partial = gpu.kernel(&SHADER, "grad_norm_partial", &[]);
            let g = &arena.grads;
            gpu.dispatch(enc, &partial, &params, &[(2, g), (6, &self.partials)], [params.groups, 1, 1]);
            let finalize = gpu.kernel(&SHADER, "grad_norm_finalize", &[]);
            gpu.dispatch(enc, &finalize, &params, &[(5, &self.clip), (6, &self.partials)], [1, 1, 1]);
        }
        let kernel = gpu.kernel(&SHADER, method, &[("WG", WG as f64)]);
        let mut bindings = vec![(1, &arena.values), (2, &arena.grads), (3, &self.m), (5, &self.clip)];
        if method == "adam_update" {
            bindings.push((4, &self.v));
        }
        gpu.dispatch(enc, &kernel, &params, &bindings, groups_1d(n, WG));
    }
}

/// Plain-Rust updates, the contract the shader is tested against.
pub mod reference {
    use super::{Method, OptimConfig};

    /// One step (number `t`, from 1) on `w` with gradient `g`, updating the state `m`, `v`.
    pub fn step(cfg: &OptimConfig, t: u64, lr: f64, w: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64]) {
        let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        let scale = cfg.clip_norm.map_or(1.0, |max| (max as f64 / (norm + 1e-6)).min(1.0));
        let wd = cfg.weight_decay as f64;
        let (b1, b2) = (cfg.betas.0 as f64, cfg.betas.1 as f64);
        for i in 0..w.len() {
            let mut grad = g[i] * scale;
            match cfg.method {
                Method::Sgd { momentum } => {
                    grad += wd * w[i];
                    m[i] = momentum as f64 * m[i] + grad;
                    w[i] -= lr * m[i];
                }
                Method::Adam | Method::AdamW => {
                    if cfg.method == Method::AdamW {
                        w[i] -= lr * wd * w[i];
                    } else {
                        grad += wd * w[i];
                    }
                    m[i] = b1 * m[i] + (1.0 - b1) * grad;
                    v[i] = b2 * v[i] + (1.0 - b2) * grad * grad;
                    let (c1, c2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
                    w[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + cfg.eps as f64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::params::ParamSpec;
    use crate::testing::{assert_close_f32, gpu, random_vec, to_f64};

    #[test]
    fn gpu_updates_match_the_reference_over_several_steps() {
        let gpu = gpu();
        let specs = vec![
            ParamSpec { name: "a.weight".into(), shape: vec![3, 2, 3, 3], init: random_vec(1, 54) },
            ParamSpec { name: "a.bias".into(), shape: vec![3], init: random_vec(2, 3) },
            ParamSpec { name: "b.weight".into(), shape: vec![5, 7], init: random_vec(3, 35) },
        ];
        let methods = [Method::Sgd { momentum: 0.0 }, Method::Sgd { momentum: 0.9 }, Method::Adam, Method::AdamW];
        for method in methods {
            for (clip, wd) in [(None, 0.0), (Some(0.5), 0.01), (Some(100.0), 0.1)] {
                let cfg = OptimConfig { clip_norm: clip, weight_decay: wd, ..OptimConfig::new(method) };
                let arena = ParamArena::new(gpu, &specs);
                let mut opt = Optimizer::new(gpu, &arena, cfg);
                let mut want: Vec<Vec<f64>> = specs.iter().map(|s| to_f64(&s.init)).collect();
                let (mut m, mut v): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (
                    want.iter().map(|w| vec![0.0; w.len()]).collect(),
                    want.iter().map(|w| vec![0.0; w.len()]).collect(),
                );
                for t in 1..=4u64 {
                    let grads: Vec<Vec<f32>> =
                        specs.iter().enumerate().map(|(k, s)| random_vec(10 * t + k as u64, s.init.len())).collect();
                    for (p, g) in arena.params.iter().zip(&grads) {
                        gpu.write(&p.grad, bytemuck::cast_slice(g));
                    }
                    let lr = 0.1 / t as f32;
                    let mut enc = gpu.encoder();
                    opt.step(gpu, &mut enc, &arena, lr);
                    gpu.submit(enc);
                    // The reference clips by the norm over all parameters together.
                    let flat_g: Vec<f64> = grads.iter().flat_map(|g| to_f64(g)).collect();
                    let mut flat_w: Vec<f64> = want.concat();
                    let (mut flat_m, mut flat_v) = (m.concat(), v.concat());
                    reference::step(&cfg, t, lr as f64, &mut flat_w, &flat_g, &mut flat_m, &mut flat_v);
                    let mut at = 0;
                    for k in 0..specs.len() {
                        let len = want[k].len();
                        want[k].copy_from_slice(&flat_w[at..at + len]);
                        m[k].copy_from_slice(&flat_m[at..at + len]);
                        v[k].copy_from_slice(&flat_v[at..at + len]);
                        at += len;
                    }
                }
                for (p, w) in arena.params.iter().zip(&want) {
                    assert_close_f32(
                        &format!("{method:?} clip {clip:?} wd {wd}: {}", p.name),
                        &gpu.read(&p.value),
                        w,
                        1e-4,
                    );
                }
            }
        }
    }

    #[test]
    fn padding_between_parameters_stays_zero() {
        let gpu = gpu();
        let specs = vec![
            ParamSpec { name: "x".into(), shape: vec![3], init: vec![1.0; 3] },
            ParamSpec { name: "y".into(), shape: vec![2], init: vec![2.0; 2] },
        ];
        let arena = ParamArena::new(gpu, &specs);
        let mut opt = Optimizer::new(gpu, &arena, OptimConfig { weight_decay: 0.5, ..OptimConfig::new(Method::AdamW) });
        gpu.write(&arena.params[0].grad, bytemuck::cast_slice(&[1.0f32; 3]));
        let mut enc = gpu.encoder();
        opt.step(gpu, &mut enc, &arena, 0.1);
        gpu.submit(enc);
        let all = gpu.read(&arena.values);
        let used: usize = 3 + 2;
        assert_eq!(all.iter().filter(|&&x| x != 0.0).count(), used, "{all:?}");
        assert_eq!(arena.count(), used);
    }

    #[test]
    fn schedules() {
        assert_eq!(Schedule::Constant.lr(0.1, 7.0), 0.1);
        let step = Schedule::Step { every: 2, gamma: 0.5 };
        assert!((step.lr(1.0, 5.0) - 0.25).abs() < 1e-7);
        // Within an epoch the step schedule holds; it halves at the boundary.
        assert_eq!((step.lr(1.0, 1.99), step.lr(1.0, 2.0)), (1.0, 0.5));
        let cos = Schedule::Cosine { epochs: 10, min_lr: 0.0 };
        assert_eq!(cos.lr(1.0, 0.0), 1.0);
        assert!((cos.lr(1.0, 5.0) - 0.5).abs() < 1e-6);
        assert!(cos.lr(1.0, 10.0).abs() < 1e-7);
        // The cosine decays within an epoch too: half way through epoch 5 lies between
        // the rates at 5 and 6.
        let mid = cos.lr(1.0, 5.5);
        assert!(mid < cos.lr(1.0, 5.0) && mid > cos.lr(1.0, 6.0), "{mid}");
    }

    #[test]
    fn warmup_ramps_linearly_then_holds() {
        assert_eq!(warmup(0.0, 0.0, 10), 1.0);
        // Half an epoch of warm-up in epochs of 10 steps: 5 steps at 1/5, 2/5, ... 5/5.
        let factors: Vec<f32> = (0..7).map(|i| warmup(i as f64 / 10.0, 0.5, 10)).collect();
        let want = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0];
        assert!(factors.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{factors:?}");
        assert_eq!(warmup(3.0, 0.5, 10), 1.0);
    }
}
