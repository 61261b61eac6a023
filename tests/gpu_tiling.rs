//! A whole U-Net training step with the GPU family of tile sizes (`--tiling gpu`: every
//! convolution a workgroup-memory GEMM) against the same step with the CPU family (register
//! tiles), on whatever adapter runs the tests: logits and losses within 1e-4, every gradient
//! within 1e-3 (f32 sums in another order). Dropout is on, so the fused epilogues of both
//! families must draw the same mask.

use unet_wgpu::loss::{loss, LossConfig, LossValues, Term};
use unet_wgpu::nn::{UNet, UNetConfig, Upsampling};
use unet_wgpu::rng::Rng;
use unet_wgpu::testing::{assert_close_f32, gpu, random_vec, to_f64};
use unet_wgpu::{Step, TilingFamily, Tuning};

struct StepResult {
    logits: Vec<f32>,
    loss: LossValues,
    grads: Vec<(String, Vec<f32>)>,
}

/// One training step of `model` with the default wrappers on the tile sizes of `family`.
fn step(model: &UNet, family: TilingFamily, x: &[f32], labels: &[u32]) -> StepResult {
    let gpu = gpu();
    let before = gpu.tuning();
    gpu.set_tuning(Tuning::of_family(family));
    let (x, y) = (gpu.upload(x, &[2, 3, 32, 32]), gpu.upload_u32(labels, &[2, 32, 32]));
    let mut step = Step::train(gpu);
    model.arena.zero_grads(&mut step.enc);
    let logits = model.forward(&mut step, &x, 7);
    let cfg = LossConfig::sum(&[(1.0, Term::Dice { pooled: false }), (1.0, Term::CrossEntropy)]);
    let out = loss(gpu, &mut step.enc, &cfg, &logits, &y);
    step.backward_into(vec![(logits.clone(), out.dlogits.clone())], model.arena.grads());
    step.submit();
    gpu.set_tuning(before);
    StepResult {
        logits: gpu.read(&logits),
        loss: LossValues::from_slice(&gpu.read(&out.values)),
        grads: model.arena.params.iter().map(|p| (p.name.clone(), gpu.read(&p.grad))).collect(),
    }
}

fn check(batch_norm: bool, upsampling: Upsampling) {
    let gpu = gpu();
    let config =
        UNetConfig { base: 4, depth: 2, batch_norm, dropout: vec![0.1, 0.2, 0.3], upsampling, ..Default::default() };
    let model = UNet::new(gpu, config);
    let x = random_vec(7000, 2 * 3 * 32 * 32);
    let mut rng = Rng::new(7001);
    let labels: Vec<u32> = (0..2 * 32 * 32).map(|_| rng.below(model.config.classes) as u32).collect();
    let start: Vec<(String, Vec<f32>)> = model.state().iter().map(|(n, t)| (n.clone(), gpu.read(t))).collect();
    let cpu = step(&model, TilingFamily::Cpu, &x, &labels);
    for ((_, t), (_, v)) in model.state().iter().zip(&start) {
        gpu.write(t, bytemuck::cast_slice(v));
    }
    let gemm = step(&model, TilingFamily::Gpu, &x, &labels);
    assert!(!gpu.compiled_constants("conv2d/gemm", "conv2d_gemm_backward_weight").is_empty(), "the GEMMs ran");

    let what = format!("batch norm {batch_norm}, {upsampling:?}");
    assert_close_f32(&format!("logits ({what})"), &gemm.logits, &to_f64(&cpu.logits), 1e-4);
    for (name, a, b) in [
        ("loss", gemm.loss.total, cpu.loss.total),
        ("ce", gemm.loss.ce, cpu.loss.ce),
        ("dice", gemm.loss.dice, cpu.loss.dice),
    ] {
        assert_close_f32(&format!("{name} ({what})"), &[a], &[b as f64], 1e-4);
    }
    for ((name, got), (_, want)) in gemm.grads.iter().zip(&cpu.grads) {
        if let Some(conv) = name.strip_suffix(".bias").filter(|c| batch_norm && c.contains(".conv")) {
            // Batch norm follows: these biases have an exact gradient of zero, both sides hold
            // rounding noise, small next to the weights' gradient (as in tests/reference_kernels.rs).
            let w = &cpu.grads.iter().find(|(n, _)| *n == format!("{conv}.weight")).unwrap().1;
            let rms = (w.iter().map(|g| (*g as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
            for g in got.iter().chain(want) {
                assert!((*g as f64).abs() < 1e-3 * rms, "d {name} ({what}): {g} vs the weights' rms {rms}");
            }
            continue;
        }
        assert_close_f32(&format!("d {name} ({what})"), got, &to_f64(want), 1e-3);
    }
}

#[test]
fn a_unet_step_on_the_gpu_tiling_matches_the_cpu_tiling() {
    check(true, Upsampling::Transposed);
}

#[test]
fn a_unet_step_without_batch_norm_on_the_gpu_tiling_matches_the_cpu_tiling() {
    check(false, Upsampling::Transposed);
}
