//! A short training run on the textbook kernels (`train --kernels reference`) reaches the
//! validation mean IoU of the same run on the tuned kernels within 0.01: the same data, seed and
//! model, through the library's `train`. The two runs differ only in the order of f32 sums, so
//! their trajectories stay together over a few steps.

use unet_wgpu::nn::UNetConfig;
use unet_wgpu::testing::{gpu, with_kernels};
use unet_wgpu::train::{train, DataSource, LossName, TrainOptions};
use unet_wgpu::Kernels;

/// The validation mean IoU after the run, on `kernels`.
fn val_miou(kernels: Kernels) -> f64 {
    let out = std::env::temp_dir().join(format!("unet-wgpu-reference-training-{kernels}-{}", std::process::id()));
    let options = TrainOptions {
        data: DataSource::Synthetic { tiles: 8, size: 128 },
        loss: LossName::DiceCe,
        epochs: 2,
        batch: 4,
        patch: 64,
        lr: 3e-3,
        out: out.clone(),
        model: UNetConfig { base: 8, depth: 2, dropout: vec![0.0; 3], ..UNetConfig::default() },
        max_steps: Some(6),
        progress: false,
        ..TrainOptions::default()
    };
    let gpu = gpu();
    let summary = with_kernels(gpu, kernels, || train(gpu, &options).unwrap());
    std::fs::remove_dir_all(&out).unwrap();
    let last = summary.history.last().expect("an epoch ran");
    last.val_mean_iou.expect("the run validates")
}

#[test]
fn training_on_the_textbook_kernels_reaches_the_tuned_validation_miou() {
    let tuned = val_miou(Kernels::Tuned);
    let reference = val_miou(Kernels::Reference);
    println!("val mIoU: tuned {tuned}, textbook {reference}");
    assert!(tuned > 0.0, "the tuned run learned nothing (val mIoU {tuned}): the comparison would be empty");
    assert!((tuned - reference).abs() <= 0.01, "val mIoU: tuned {tuned}, textbook {reference} (more than 0.01 apart)");
}
