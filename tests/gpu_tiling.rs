//! A whole U-Net training step with the GPU family of tile sizes (`--tiling gpu`: every
//! convolution a workgroup-memory GEMM) against the same step with the CPU family (register
//! tiles), on whatever adapter runs the tests: logits and losses within 1e-4, every gradient
//! within 1e-3 (f32 sums in another order). Dropout is on, so the fused epilogues of both
//! families must draw the same mask.

mod common;

use common::{assert_steps_agree, from_the_same_start, small_unet_and_batch, train_step, StepResult};
use unet_wgpu::nn::{UNet, Upsampling};
use unet_wgpu::testing::gpu;
use unet_wgpu::{TilingFamily, Tuning};

/// One training step of `model` with the default wrappers on the tile sizes of `family`.
fn step(model: &UNet, family: TilingFamily, x: &[f32], labels: &[u32]) -> StepResult {
    let gpu = gpu();
    let before = gpu.tuning();
    gpu.set_tuning(Tuning::of_family(family));
    let result = train_step(model, x, labels);
    gpu.set_tuning(before);
    result
}

fn check(batch_norm: bool, upsampling: Upsampling) {
    let gpu = gpu();
    let (model, x, labels) = small_unet_and_batch(batch_norm, upsampling, 7000);
    let (cpu, gemm) = from_the_same_start(
        &model,
        || step(&model, TilingFamily::Cpu, &x, &labels),
        || step(&model, TilingFamily::Gpu, &x, &labels),
    );
    assert!(!gpu.compiled_constants("conv2d/gemm", "conv2d_gemm_backward_weight").is_empty(), "the GEMMs ran");
    assert_steps_agree(&format!("batch norm {batch_norm}, {upsampling:?}"), &gemm, &cpu, batch_norm);
}

#[test]
fn a_unet_step_on_the_gpu_tiling_matches_the_cpu_tiling() {
    check(true, Upsampling::Transposed);
}

#[test]
fn a_unet_step_without_batch_norm_on_the_gpu_tiling_matches_the_cpu_tiling() {
    check(false, Upsampling::Transposed);
}
