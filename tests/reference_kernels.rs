//! A whole U-Net training step on the textbook kernels (`--kernels reference`) against the same
//! step on the tuned ones: forward, Dice + CE loss, backward. The logits and the loss within
//! 1e-4, every parameter's gradient within 1e-3 (f32 sums in another order). Dropout is on, so
//! the ReLU and dropout epilogues, fused into the tuned kernels and run by the plain kernels on
//! the reference path, must draw the same mask.

use unet_wgpu::loss::{loss, LossConfig, LossValues, Term};
use unet_wgpu::nn::{UNet, UNetConfig, Upsampling};
use unet_wgpu::rng::Rng;
use unet_wgpu::testing::{assert_close_f32, gpu, random_vec, to_f64, with_kernels};
use unet_wgpu::{Kernels, Step};

/// What one training step leaves: the logits, the loss values, and each parameter's gradient
/// by name.
struct StepResult {
    logits: Vec<f32>,
    loss: LossValues,
    grads: Vec<(String, Vec<f32>)>,
}

/// One training step of `model` with the default wrappers on `kernels`.
fn step(model: &UNet, kernels: Kernels, x: &[f32], labels: &[u32]) -> StepResult {
    let gpu = gpu();
    let (x, y) = (gpu.upload(x, &[2, 3, 32, 32]), gpu.upload_u32(labels, &[2, 32, 32]));
    with_kernels(gpu, kernels, || {
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
    })
}

fn check(batch_norm: bool, upsampling: Upsampling) {
    let gpu = gpu();
    let config =
        UNetConfig { base: 4, depth: 2, batch_norm, dropout: vec![0.1, 0.2, 0.3], upsampling, ..Default::default() };
    let model = UNet::new(gpu, config);
    let x = random_vec(5000, 2 * 3 * 32 * 32);
    let mut rng = Rng::new(5001);
    let labels: Vec<u32> = (0..2 * 32 * 32).map(|_| rng.below(model.config.classes) as u32).collect();

    // The running statistics move in each training step: both steps start from the same ones.
    let start: Vec<(String, Vec<f32>)> = model.state().iter().map(|(n, t)| (n.clone(), gpu.read(t))).collect();
    let tuned = step(&model, Kernels::Tuned, &x, &labels);
    for ((_, t), (_, v)) in model.state().iter().zip(&start) {
        gpu.write(t, bytemuck::cast_slice(v));
    }
    let textbook = step(&model, Kernels::Reference, &x, &labels);

    let what = format!("batch norm {batch_norm}, {upsampling:?}");
    assert_close_f32(&format!("logits ({what})"), &tuned.logits, &to_f64(&textbook.logits), 1e-4);
    for (name, a, b) in [
        ("loss", tuned.loss.total, textbook.loss.total),
        ("ce", tuned.loss.ce, textbook.loss.ce),
        ("dice", tuned.loss.dice, textbook.loss.dice),
    ] {
        assert_close_f32(&format!("{name} ({what})"), &[a], &[b as f64], 1e-4);
    }
    let mut differ = false;
    for ((name, got), (_, want)) in tuned.grads.iter().zip(&textbook.grads) {
        differ |= got != want;
        if let Some(conv) = name.strip_suffix(".bias").filter(|c| batch_norm && c.contains(".conv")) {
            // Batch norm follows every block convolution and subtracts the channel mean, so
            // these biases have an exact gradient of zero: both sides hold rounding noise, small
            // next to the weights' gradient.
            let w = &textbook.grads.iter().find(|(n, _)| *n == format!("{conv}.weight")).unwrap().1;
            let rms = (w.iter().map(|g| (*g as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
            for g in got.iter().chain(want) {
                assert!((*g as f64).abs() < 1e-3 * rms, "d {name} ({what}): {g} vs the weights' rms {rms}");
            }
            continue;
        }
        assert_close_f32(&format!("d {name} ({what})"), got, &to_f64(want), 1e-3);
    }
    // Other kernels sum in another order: some gradient differs in its last bits.
    assert!(differ, "the two steps agree bit for bit ({what}): did the reference kernels run?");
}

#[test]
fn a_unet_step_on_the_textbook_kernels_matches_the_tuned_step() {
    check(true, Upsampling::Transposed);
}

#[test]
fn a_unet_step_without_batch_norm_on_the_textbook_kernels_matches_the_tuned_step() {
    check(false, Upsampling::Bilinear);
}
