//! What tests/gpu_tiling.rs and tests/reference_kernels.rs share: a small U-Net with dropout
//! on and a batch for it, one training step on whatever kernels and tile sizes the GPU is set
//! to (forward, Dice + CE loss, backward), two such steps from the same start, and the check
//! that two steps agree: the logits and the loss within 1e-4, every parameter's gradient within
//! 1e-3 (f32 sums in another order).

use unet_wgpu::loss::{loss, LossConfig, LossValues, Term};
use unet_wgpu::nn::{UNet, UNetConfig, Upsampling};
use unet_wgpu::rng::Rng;
use unet_wgpu::testing::{assert_close_f32, gpu, random_vec, to_f64};
use unet_wgpu::Step;

/// What one training step leaves: the logits, the loss values, and each parameter's gradient
/// by name.
pub struct StepResult {
    pub logits: Vec<f32>,
    pub loss: LossValues,
    pub grads: Vec<(String, Vec<f32>)>,
}

/// A U-Net of base 4 and depth 2 with dropout 0.1, 0.2, 0.3, and a batch of two random 32 x 32
/// images (drawn from `seed`) with random labels (drawn from `seed + 1`).
pub fn small_unet_and_batch(batch_norm: bool, upsampling: Upsampling, seed: u64) -> (UNet, Vec<f32>, Vec<u32>) {
    let config =
        UNetConfig { base: 4, depth: 2, batch_norm, dropout: vec![0.1, 0.2, 0.3], upsampling, ..Default::default() };
    let model = UNet::new(gpu(), config);
    let x = random_vec(seed, 2 * 3 * 32 * 32);
    let mut rng = Rng::new(seed + 1);
    let labels: Vec<u32> = (0..2 * 32 * 32).map(|_| rng.below(model.config.classes) as u32).collect();
    (model, x, labels)
}

/// One training step of `model` with the default wrappers on the kernels and tile sizes the GPU
/// is set to: forward (dropout seed 7), Dice + CE loss, backward.
pub fn train_step(model: &UNet, x: &[f32], labels: &[u32]) -> StepResult {
    let gpu = gpu();
    let (x, y) = (gpu.upload(x, &[2, 3, 32, 32]), gpu.upload_u32(labels, &[2, 32, 32]));
    let mut step = Step::train(gpu);
    model.arena.zero_grads(&mut step.enc);
    let logits = model.forward(&mut step, &x, 7);
    let cfg = LossConfig::sum(&[(1.0, Term::Dice { pooled: false }), (1.0, Term::CrossEntropy)]);
    let out = loss(gpu, &mut step.enc, &cfg, &logits, &y);
    step.backward_into(vec![(logits.clone(), out.dlogits.clone())], model.arena.grads());
    step.submit();
    StepResult {
        logits: gpu.read(&logits),
        loss: LossValues::from_slice(&gpu.read(&out.values)),
        grads: model.arena.params.iter().map(|p| (p.name.clone(), gpu.read(&p.grad))).collect(),
    }
}

/// `first()` and `second()`, each a training step of `model`, from the same state: the running
/// statistics move in a training step, so they are put back before the second.
pub fn from_the_same_start(
    model: &UNet,
    first: impl FnOnce() -> StepResult,
    second: impl FnOnce() -> StepResult,
) -> (StepResult, StepResult) {
    let gpu = gpu();
    let start: Vec<(String, Vec<f32>)> = model.state().iter().map(|(n, t)| (n.clone(), gpu.read(t))).collect();
    let first = first();
    for ((_, t), (_, v)) in model.state().iter().zip(&start) {
        gpu.write(t, bytemuck::cast_slice(v));
    }
    (first, second())
}

/// `got` agrees with `want`: logits and losses within 1e-4, gradients within 1e-3. `what` names
/// the model in the messages.
pub fn assert_steps_agree(what: &str, got: &StepResult, want: &StepResult, batch_norm: bool) {
    assert_close_f32(&format!("logits ({what})"), &got.logits, &to_f64(&want.logits), 1e-4);
    for (name, a, b) in [
        ("loss", got.loss.total, want.loss.total),
        ("ce", got.loss.ce, want.loss.ce),
        ("dice", got.loss.dice, want.loss.dice),
    ] {
        assert_close_f32(&format!("{name} ({what})"), &[a], &[b as f64], 1e-4);
    }
    for ((name, got), (_, want_grad)) in got.grads.iter().zip(&want.grads) {
        if let Some(conv) = name.strip_suffix(".bias").filter(|c| batch_norm && c.contains(".conv")) {
            // Batch norm follows every block convolution and subtracts the channel mean, so
            // these biases have an exact gradient of zero: both sides hold rounding noise, small
            // next to the weights' gradient.
            let w = &want.grads.iter().find(|(n, _)| *n == format!("{conv}.weight")).unwrap().1;
            let rms = (w.iter().map(|g| (*g as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
            for g in got.iter().chain(want_grad) {
                assert!((*g as f64).abs() < 1e-3 * rms, "d {name} ({what}): {g} vs the weights' rms {rms}");
            }
            continue;
        }
        assert_close_f32(&format!("d {name} ({what})"), got, &to_f64(want_grad), 1e-3);
    }
}
