use super::*;
use crate::testing::gpu;

fn tiny(out: &Path, epochs: usize) -> TrainOptions {
    TrainOptions {
        data: DataSource::Synthetic { tiles: 4, size: 64 },
        epochs,
        batch: 4,
        patch: 32,
        lr: 3e-3,
        out: out.to_path_buf(),
        model: UNetConfig { base: 4, depth: 2, dropout: vec![0.1, 0.1, 0.2], ..UNetConfig::default() },
        validation: 0.25,
        progress: false,
        ..TrainOptions::default()
    }
}

#[test]
fn training_lowers_the_loss_and_a_resumed_run_continues_exactly() {
    let gpu = gpu();
    let root = std::env::temp_dir().join(format!("unet-wgpu-train-{}", std::process::id()));
    let (a, b) = (root.join("a"), root.join("b"));
    let straight = train(gpu, &tiny(&a, 3)).unwrap();
    assert_eq!(straight.history.len(), 3);
    assert!(straight.history[2].loss < straight.history[0].loss, "{:?}", straight.history);
    assert!(straight.history.iter().all(|m| m.val_mean_iou.is_some()));

    train(gpu, &tiny(&b, 2)).unwrap();
    let resumed = train(gpu, &TrainOptions { resume: true, ..tiny(&b, 3) }).unwrap();
    assert_eq!(resumed.history.len(), 3);
    let (x, y) = (&straight.history[2], &resumed.history[2]);
    assert_eq!((x.loss, x.val_loss, x.val_mean_iou), (y.loss, y.val_loss, y.val_mean_iou));
    let (ca, cb) = (
        checkpoint::load(&a.join("last.safetensors")).unwrap(),
        checkpoint::load(&b.join("last.safetensors")).unwrap(),
    );
    assert_eq!(ca.tensors, cb.tensors, "the resumed run ends with other weights");
    assert_eq!(History::read(&b.join("history.csv")).unwrap().len(), 3);
    assert!(b.join("best.safetensors").exists());
    assert!(b.join("val_predictions.png").exists());

    let err = train(gpu, &TrainOptions { resume: true, ..tiny(&root.join("c"), 1) }).unwrap_err();
    assert!(format!("{err:#}").contains("nothing to resume"), "{err:#}");
    // The inputs of a resumed run must be scaled as the checkpoint's were.
    let err = train(gpu, &TrainOptions { resume: true, scaling: InputScaling::Unit, ..tiny(&b, 4) }).unwrap_err();
    assert!(format!("{err:#}").contains("use --scaling standardize"), "{err:#}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn training_steps_after_the_first_allocate_no_gpu_buffers() {
    let gpu = gpu();
    let options = tiny(Path::new("unused"), 1);
    let (_, patches, _) = load_patches(&options).unwrap();
    let mut trainer = Trainer::new(gpu, options.model.clone(), options.optimizer, options.loss.config(None), 0);
    let acc = Accumulators::new(gpu, 6);
    let mut allocations = Vec::new();
    let batches = patches.batches(&BatchOptions { batch_size: 2, drop_last: true, ..BatchOptions::default() });
    for (i, batch) in batches.unwrap().take(8).enumerate() {
        let (x, y) = trainer.upload(&batch);
        trainer.train_step(&x, &y, 1e-3, &acc, i == 0);
        allocations.push(gpu.pool_stats().allocations);
    }
    assert!(allocations.iter().all(|&a| a == allocations[0]), "buffers allocated after each step: {allocations:?}");
}

#[test]
fn the_keras_line() {
    let m = EpochMetrics {
        epoch: 1,
        loss: 0.5,
        accuracy: 0.75,
        val_mean_iou: Some(0.25),
        lr: 1e-3,
        seconds: 12.0,
        ..Default::default()
    };
    let line = m.keras_line(7);
    assert!(line.starts_with("7/7 - 12s - loss: 0.5000 - accuracy: 0.7500"), "{line}");
    assert!(line.contains("val_mean_iou: 0.2500") && !line.contains("val_loss"), "{line}");
}
