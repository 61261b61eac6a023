//! Parity with PyTorch: `tests/fixtures/unet_parity.safetensors` (with batch
//! norm) and `unet_parity_plain.safetensors` (without: the Keras shape, whose
//! ReLUs run fused in the convolutions' stores), written by
//! `tests/fixtures/make_parity.py` from the same tiny U-Nets in PyTorch (f64),
//! hold their weights, a batch, the logits, the value of every loss and every
//! parameter's gradient of Dice + CE. Our forward, losses and backward must
//! agree: 1e-4 for the forward and the losses, 1e-3 for the gradients.

use std::path::Path;

use unet_wgpu::checkpoint;
use unet_wgpu::loss::{loss, LossConfig, LossValues, Term};
use unet_wgpu::nn::{UNet, UNetConfig};
use unet_wgpu::testing::{assert_close_f32, gpu, to_f64};
use unet_wgpu::Step;

#[test]
fn a_tiny_unet_with_batch_norm_matches_pytorch() {
    check("unet_parity.safetensors", true);
}

#[test]
fn a_tiny_unet_without_batch_norm_matches_pytorch() {
    check("unet_parity_plain.safetensors", false);
}

/// Forward, losses and gradients of the fixture's model against PyTorch's.
fn check(fixture: &str, batch_norm: bool) {
    let fixture = checkpoint::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture))
        .expect("the fixture is committed; regenerate it with tests/fixtures/make_parity.py");
    let tensor = |name: &str| &fixture.tensors.get(name).unwrap_or_else(|| panic!("fixture lacks {name}")).1;
    let gpu = gpu();
    let config = UNetConfig { base: 4, depth: 2, batch_norm, dropout: vec![0.0; 3], ..UNetConfig::default() };
    let model = UNet::new(gpu, config);
    for (name, t) in model.state() {
        gpu.write(&t, bytemuck::cast_slice(tensor(&format!("param.{name}"))));
    }
    let x = gpu.upload(tensor("input.x"), &[2, 3, 32, 32]);
    let labels: Vec<u32> = tensor("input.labels").iter().map(|&v| v as u32).collect();
    let y = gpu.upload_u32(&labels, &[2, 32, 32]);

    let counted = |terms: &[(f32, Term)]| LossConfig { ignore_index: Some(255), ..LossConfig::sum(terms) };
    let mut step = Step::train(gpu);
    model.arena.zero_grads(&mut step.enc);
    let logits = model.forward(&mut step, &x, 0);
    let dice_ce = loss(
        gpu,
        &mut step.enc,
        &counted(&[(1.0, Term::Dice { pooled: false }), (1.0, Term::CrossEntropy)]),
        &logits,
        &y,
    );
    let pooled = loss(gpu, &mut step.enc, &counted(&[(1.0, Term::Dice { pooled: true })]), &logits, &y);
    let focal_tversky = loss(gpu, &mut step.enc, &counted(&[(1.0, Term::FOCAL_TVERSKY)]), &logits, &y);
    step.backward_into(vec![(logits.clone(), dice_ce.dlogits.clone())], model.arena.grads());
    step.submit();

    assert_close_f32("logits", &gpu.read(&logits), &to_f64(tensor("output.logits")), 1e-4);
    let values = LossValues::from_slice(&gpu.read(&dice_ce.values));
    let ours = [
        ("ce", values.ce),
        ("dice", values.dice),
        ("focal", values.focal),
        ("tversky", values.tversky),
        ("unified_focal", values.unified_focal),
        ("dice_pooled", LossValues::from_slice(&gpu.read(&pooled.values)).dice),
        ("focal_tversky", LossValues::from_slice(&gpu.read(&focal_tversky.values)).tversky),
    ];
    for (name, value) in ours {
        assert_close_f32(name, &[value], &to_f64(tensor(&format!("loss.{name}"))), 1e-4);
    }
    for p in &model.arena.params {
        let (got, want) = (gpu.read(&p.grad), to_f64(tensor(&format!("grad.{}", p.name))));
        if let Some(conv) = p.name.strip_suffix(".bias").filter(|c| batch_norm && c.contains(".conv")) {
            // Batch norm follows every block convolution and subtracts the
            // channel mean, so these biases have an exact gradient of zero:
            // both sides hold rounding noise, small next to the weights' gradient.
            let w = to_f64(tensor(&format!("grad.{conv}.weight")));
            let rms = (w.iter().map(|g| g * g).sum::<f64>() / w.len() as f64).sqrt();
            assert!(got.iter().all(|g| (*g as f64).abs() < 1e-3 * rms), "d {}: {got:?} vs weights' rms {rms}", p.name);
            continue;
        }
        assert_close_f32(&format!("d {}", p.name), &got, &want, 1e-3);
    }
}
