//! A whole U-Net training step on the textbook kernels (`--kernels reference`) against the same
//! step on the tuned ones: forward, Dice + CE loss, backward. The logits and the loss within
//! 1e-4, every parameter's gradient within 1e-3 (f32 sums in another order). Dropout is on, so
//! the ReLU and dropout epilogues, fused into the tuned kernels and run by the plain kernels on
//! the reference path, must draw the same mask.

mod common;

use common::{assert_steps_agree, from_the_same_start, small_unet_and_batch, train_step};
use unet_wgpu::nn::Upsampling;
use unet_wgpu::testing::{gpu, with_kernels};
use unet_wgpu::Kernels;

fn check(batch_norm: bool, upsampling: Upsampling) {
    let gpu = gpu();
    let (model, x, labels) = small_unet_and_batch(batch_norm, upsampling, 5000);
    let (tuned, textbook) = from_the_same_start(
        &model,
        || with_kernels(gpu, Kernels::Tuned, || train_step(&model, &x, &labels)),
        || with_kernels(gpu, Kernels::Reference, || train_step(&model, &x, &labels)),
    );
    let what = format!("batch norm {batch_norm}, {upsampling:?}");
    assert_steps_agree(&what, &tuned, &textbook, batch_norm);
    // Other kernels sum in another order: some gradient differs in its last bits.
    assert!(tuned.grads != textbook.grads, "the two steps agree bit for bit ({what}): did the reference kernels run?");
}

#[test]
fn a_unet_step_on_the_textbook_kernels_matches_the_tuned_step() {
    check(true, Upsampling::Transposed);
}

#[test]
fn a_unet_step_without_batch_norm_on_the_textbook_kernels_matches_the_tuned_step() {
    check(false, Upsampling::Bilinear);
}
