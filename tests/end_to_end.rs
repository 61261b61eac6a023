//! End to end on real Dubai aerial tiles (the slice in `tests/fixtures/dubai-slice`):
//! a small U-Net trains for a few steps on patches of its two Tile 2 images,
//! the loss falls, and the checkpoint it writes loads back into a model that
//! computes the same logits.

use std::path::PathBuf;

use unet_wgpu::checkpoint;
use unet_wgpu::nn::{UNet, UNetConfig};
use unet_wgpu::testing::{gpu, random_vec};
use unet_wgpu::train::{train, DataSource, LossName, TrainOptions};
use unet_wgpu::Step;

#[test]
fn a_small_unet_learns_on_dubai_tiles_and_its_checkpoint_round_trips() {
    let dataset = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dubai-slice");
    let out = std::env::temp_dir().join(format!("unet-wgpu-e2e-{}", std::process::id()));
    let options = TrainOptions {
        data: DataSource::Dir { path: dataset, palette: None, unknown_as_ignore: false, groups: vec!["Tile 2".into()] },
        loss: LossName::DiceCe,
        epochs: 4,
        batch: 4,
        patch: 128,
        lr: 3e-3,
        out: out.clone(),
        model: UNetConfig { base: 4, depth: 2, dropout: vec![0.0; 3], ..UNetConfig::default() },
        max_steps: Some(6),
        progress: false,
        ..TrainOptions::default()
    };
    let gpu = gpu();
    let summary = train(gpu, &options).unwrap();
    let losses: Vec<f64> = summary.history.iter().map(|m| m.loss).collect();
    assert!(losses[3] < losses[0], "training loss did not fall: {losses:?}");
    assert!(summary.history.iter().all(|m| m.val_loss.is_some_and(f64::is_finite)));

    let saved = checkpoint::load(&out.join("last.safetensors")).unwrap();
    assert_eq!(saved.metadata["data.classes"], "Building,Land,Road,Vegetation,Water,Unlabeled");
    let model = UNet::from_checkpoint(gpu, &saved).unwrap();
    let again = out.join("again.safetensors");
    checkpoint::save(gpu, &again, &model.state(), &saved.metadata).unwrap();
    let reloaded = UNet::from_checkpoint(gpu, &checkpoint::load(&again).unwrap()).unwrap();
    let x = gpu.upload(&random_vec(3, 3 * 32 * 32), &[1, 3, 32, 32]);
    let logits = |m: &UNet| {
        let mut step = Step::eval(gpu);
        let y = m.forward(&mut step, &x, 0);
        step.submit();
        gpu.read(&y)
    };
    assert_eq!(logits(&model), logits(&reloaded));
    std::fs::remove_dir_all(&out).unwrap();
}
