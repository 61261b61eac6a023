//! The Keras tutorial's recipe as options, end to end on the Dubai slice: Keras'
//! initialisation, per-patch min-max scaling and a split by patch with
//! `train_test_split`'s sizes train a model whose checkpoint records them, and
//! prediction scales each window as training scaled each patch.

use std::path::PathBuf;

use unet_wgpu::checkpoint;
use unet_wgpu::data::{InputScaling, Scaling, SplitLevel};
use unet_wgpu::infer::predict::{predict_files, predict_image, PredictOptions};
use unet_wgpu::nn::{Init, UNet, UNetConfig};
use unet_wgpu::testing::gpu;
use unet_wgpu::train::{load_patches, train, DataSource, TrainOptions};

fn dubai_slice() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dubai-slice")
}

fn model() -> UNetConfig {
    UNetConfig { base: 4, depth: 2, dropout: vec![0.1; 3], init: Init::Keras, ..UNetConfig::default() }
}

#[test]
fn the_keras_recipe_trains_records_itself_and_predicts_alike() {
    let out = std::env::temp_dir().join(format!("unet-wgpu-keras-recipe-{}", std::process::id()));
    let options = TrainOptions {
        data: DataSource::Dir { path: dubai_slice(), palette: None, unknown_as_ignore: false, groups: vec![] },
        epochs: 1,
        batch: 4,
        patch: 128,
        lr: 1e-3,
        out: out.clone(),
        model: model(),
        scaling: InputScaling::MinMaxPerPatch,
        split: SplitLevel::Patch,
        max_steps: Some(2),
        progress: false,
        ..TrainOptions::default()
    };
    // The slice cuts into 2 x 3 x 4 + 2 x 5 x 5 = 74 patches of 128: sklearn's test
    // size is ceil(0.2 * 74) = 15.
    let (_, train_patches, val_patches) = load_patches(&options).unwrap();
    assert_eq!((train_patches.len(), val_patches.len()), (59, 15));
    let gpu = gpu();
    let summary = train(gpu, &options).unwrap();
    assert!(summary.history[0].loss.is_finite() && summary.history[0].val_mean_iou.is_some());

    let saved = checkpoint::load(&out.join("last.safetensors")).unwrap();
    assert_eq!(saved.metadata["data.scaling"], "minmax-per-patch");
    assert_eq!(saved.metadata["model.init"], "keras");
    assert_eq!(saved.metadata["train.split"], "patch (seed 0)");
    let image = dubai_slice().join("Tile 2/images/image_part_001.jpg");
    let predict = PredictOptions { patch: 128, ..PredictOptions::default() };
    let done = predict_files(gpu, &out.join("best.safetensors"), &[image], &out.join("pred"), &predict);
    assert!(done.unwrap()[0].mask.exists());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn prediction_scales_each_window_by_its_own_range() {
    // Brightening every byte by 100 leaves each window's min-max scaled values unchanged
    // (up to the last bit of rounding), so the labels stay; unit scaling sees brighter
    // inputs and labels otherwise. (Doubling would not tell the two apart: with zero
    // biases the network's logits are homogeneous in its input.)
    let gpu = gpu();
    let model = UNet::new(gpu, UNetConfig { seed: 5, ..model() });
    let (w, h) = (40, 28);
    let mut state = 17u32;
    let dim: Vec<u8> = (0..w * h * 3)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 25) as u8 // 0..=127
        })
        .collect();
    let bright: Vec<u8> = dim.iter().map(|v| v + 100).collect();
    let labels = |rgb: &[u8], scaling: Scaling| {
        let options = PredictOptions { patch: 16, batch: 4, scaling, ..PredictOptions::default() };
        predict_image(gpu, &model, rgb, w, h, &options).unwrap()
    };
    let same = |a: &[u8], b: &[u8]| a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64;
    let min_max = labels(&dim, Scaling::MinMaxPerPatch);
    let agree = same(&min_max, &labels(&bright, Scaling::MinMaxPerPatch));
    let unit = same(&labels(&dim, Scaling::Unit), &labels(&bright, Scaling::Unit));
    println!("labels kept when brightened: min-max per patch {agree}, unit {unit}");
    assert!(agree > 0.99, "min-max per window kept {agree} of the labels");
    assert!(unit < 0.97, "unit scaling kept {unit} of the labels: the test cannot tell the scalings apart");
    let classes: std::collections::BTreeSet<u8> = min_max.iter().copied().collect();
    assert!(classes.len() > 1, "a constant prediction would prove nothing: {classes:?}");
}
