//! Training for a front end that cannot block: the web page, where every wait
//! for the GPU must hand control back to the browser.
//!
//! [`train_live`] runs the steps of [`train`](super::train): the same patches,
//! batches, learning rates, dropout seeds and GPU work, so the same numbers,
//! bit for bit on one adapter. It differs in what surrounds the steps: it
//! awaits each step's loss (so a page yields to the browser between steps and
//! can draw every step), writes no file and prints nothing; a [`Watch`] sees
//! every step and epoch, and can stop the run.

use anyhow::bail;
use web_time::Instant;

use super::{load_patches, validate, Accumulators, EpochMetrics, TrainOptions, Trainer};
use crate::data::{BatchOptions, Patches, Scaling};
use crate::metrics::Confusion;
use crate::runtime::Gpu;

/// What a run is about to train, told once before its first step.
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// Training patches.
    pub train_patches: usize,
    /// Validation patches.
    pub val_patches: usize,
    /// Steps each epoch.
    pub steps_per_epoch: usize,
    /// Trainable parameters of the U-Net.
    pub parameters: usize,
    /// Class names, by class id.
    pub classes: Vec<String>,
    /// The colour of each class, by class id (for drawing masks).
    pub colours: Vec<[u8; 3]>,
}

/// One training step, its loss read back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Step within the epoch, from 1.
    pub step: usize,
    /// Steps since the start of the run, from 1.
    pub global_step: usize,
    /// The learning rate the step used.
    pub lr: f32,
    /// The step's loss, as computed on the GPU.
    pub loss: f32,
    /// Seconds since the run started (the first step includes compiling the pipelines).
    pub seconds: f64,
}

/// A validation patch with the model's prediction, for drawing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prediction {
    /// Patch side in pixels.
    pub size: usize,
    /// The image, interleaved RGB `[size,size,3]`.
    pub rgb: Vec<u8>,
    /// True class ids `[size,size]` (255: no class).
    pub truth: Vec<u8>,
    /// Predicted class ids `[size,size]`.
    pub predicted: Vec<u8>,
}

/// One epoch's figures, with what a page draws of them.
#[derive(Clone, Debug)]
pub struct EpochReport {
    /// The figures `train` prints and writes to `history.csv`.
    pub metrics: EpochMetrics,
    /// The validation confusion matrix (per-class IoU and Dice); `None` without validation.
    pub val_confusion: Option<Confusion>,
    /// The first validation patches with their predicted masks.
    pub predictions: Vec<Prediction>,
}

/// What a front end is told while [`train_live`] runs. Each call returns whether to go on:
/// `false` stops the run after the current step (or epoch).
pub trait Watch {
    /// Once, before the first step.
    fn start(&mut self, info: &RunInfo);
    /// After every training step.
    fn step(&mut self, report: &StepReport) -> bool;
    /// After every epoch's validation.
    fn epoch(&mut self, report: &EpochReport) -> bool;
}

/// How many validation patches each [`EpochReport`] shows with their predictions.
pub const SHOWN_PREDICTIONS: usize = 4;

/// Train as [`train`](super::train) does (same numbers), awaiting the GPU instead of
/// blocking, and telling `watch` about every step and epoch. Returns the figures of the
/// epochs that ran. `options.out`, `resume`, `trace` and `progress` play no part: nothing
/// is written or printed.
pub async fn train_live(gpu: &Gpu, options: &TrainOptions, watch: &mut dyn Watch) -> anyhow::Result<Vec<EpochMetrics>> {
    let (palette, train_patches, val_patches) = load_patches(options)?;
    if palette.len() != options.model.classes {
        bail!("the palette has {} classes but the model is set up for {}", palette.len(), options.model.classes);
    }
    let scaling = options.scaling.fit(&train_patches);
    let mut trainer =
        Trainer::new(gpu, options.model.clone(), options.optimizer, options.loss.config(None), options.seed);
    let steps_per_epoch =
        train_patches.batches(&batch_options(options, scaling, 0))?.len().min(options.max_steps.unwrap_or(usize::MAX));
    watch.start(&RunInfo {
        train_patches: train_patches.len(),
        val_patches: val_patches.len(),
        steps_per_epoch,
        parameters: trainer.model.parameter_count(),
        classes: palette.names().to_vec(),
        colours: palette.colours().to_vec(),
    });

    let classes = options.model.classes;
    let (train_acc, val_acc) = (Accumulators::new(gpu, classes), Accumulators::new(gpu, classes));
    let run_started = Instant::now();
    let mut history = Vec::new();
    let mut global_step = 0;
    for epoch in 0..options.epochs {
        let started = Instant::now();
        let batch_options = batch_options(options, scaling, epoch);
        let batches = train_patches.batches(&batch_options)?;
        let steps = batches.len().min(options.max_steps.unwrap_or(usize::MAX));
        let mut lr = options.lr;
        for (i, batch) in batches.take(steps).enumerate() {
            let at = epoch as f64 + i as f64 / steps.max(1) as f64;
            lr = options.schedule.lr(options.lr, at) * crate::optim::warmup(at, options.warmup, steps);
            let (x, y) = trainer.upload(&batch);
            trainer.train_step(&x, &y, lr, &train_acc, i == 0);
            // Queued after the step, so it reads that step's values (as `--trace` does).
            let values = trainer.out.as_ref().expect("a step has run, so its outputs exist").values.clone();
            let loss = gpu.read_async(&values).await[0];
            global_step += 1;
            let seconds = run_started.elapsed().as_secs_f64();
            let report = StepReport { epoch: epoch + 1, step: i + 1, global_step, lr, loss, seconds };
            if !watch.step(&report) {
                return Ok(history);
            }
        }
        let (train_values, train_confusion) = train_acc.read_async(gpu, steps).await;
        let mut metrics = EpochMetrics::training(epoch + 1, &train_values, &train_confusion, lr);
        let mut val_confusion = None;
        if !val_patches.is_empty() {
            let val_steps = validate(&mut trainer, &val_patches, &batch_options, &val_acc)?;
            let (values, confusion) = val_acc.read_async(gpu, val_steps).await;
            metrics.set_validation(&values, &confusion);
            val_confusion = Some(confusion);
        }
        let predictions = predictions(&trainer, &val_patches, scaling).await?;
        metrics.seconds = started.elapsed().as_secs_f64();
        if !metrics.loss.is_finite() {
            bail!(
                "the training loss became {} in epoch {}; lower the learning rate (now {})",
                metrics.loss,
                epoch + 1,
                options.lr
            );
        }
        history.push(metrics.clone());
        if !watch.epoch(&EpochReport { metrics, val_confusion, predictions }) {
            break;
        }
    }
    Ok(history)
}

/// The training batches of epoch `epoch` (from 0), as [`train`](super::train) draws them.
fn batch_options(options: &TrainOptions, scaling: Scaling, epoch: usize) -> BatchOptions {
    BatchOptions {
        batch_size: options.batch,
        seed: options.seed.wrapping_add(epoch as u64),
        shuffle: true,
        augment: options.augment,
        scaling,
        drop_last: false,
    }
}

/// The first [`SHOWN_PREDICTIONS`] validation patches with the model's predictions.
async fn predictions(trainer: &Trainer<'_>, patches: &Patches, scaling: Scaling) -> anyhow::Result<Vec<Prediction>> {
    let count = patches.len().min(SHOWN_PREDICTIONS);
    if count == 0 {
        return Ok(Vec::new());
    }
    let first = patches.select(&(0..count).collect::<Vec<_>>());
    let options = BatchOptions { batch_size: count, shuffle: false, scaling, ..BatchOptions::default() };
    let batch = first.batches(&options)?.next().expect("one batch");
    let size = batch.size;
    let x = trainer.gpu.upload(&batch.images, &[count, 3, size, size]);
    let predicted = trainer.predict_async(&x).await;
    Ok((0..count)
        .map(|i| Prediction {
            size,
            rgb: first.image(i).to_vec(),
            truth: first.label(i).to_vec(),
            predicted: predicted[i * size * size..(i + 1) * size * size].to_vec(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::{train, DataSource};
    use super::*;
    use crate::nn::UNetConfig;
    use crate::testing::gpu;

    /// Records what the run told it.
    #[derive(Default)]
    struct Record {
        info: Option<RunInfo>,
        losses: Vec<f32>,
        epochs: Vec<EpochReport>,
        stop_after: Option<usize>,
    }

    impl Watch for Record {
        fn start(&mut self, info: &RunInfo) {
            self.info = Some(info.clone());
        }
        fn step(&mut self, report: &StepReport) -> bool {
            self.losses.push(report.loss);
            assert_eq!(report.global_step, self.losses.len());
            self.stop_after != Some(self.losses.len())
        }
        fn epoch(&mut self, report: &EpochReport) -> bool {
            self.epochs.push(report.clone());
            true
        }
    }

    fn tiny(out: &std::path::Path) -> TrainOptions {
        TrainOptions {
            data: DataSource::Synthetic { tiles: 4, size: 64 },
            epochs: 2,
            batch: 2,
            patch: 32,
            lr: 3e-3,
            out: out.to_path_buf(),
            model: UNetConfig { base: 4, depth: 2, dropout: vec![0.1, 0.1, 0.2], ..UNetConfig::default() },
            validation: 0.25,
            max_steps: Some(4),
            progress: false,
            ..TrainOptions::default()
        }
    }

    #[test]
    fn a_live_run_gives_the_numbers_of_train_step_for_step() {
        let gpu = gpu();
        let root = std::env::temp_dir().join(format!("unet-wgpu-live-{}", std::process::id()));
        let traced = TrainOptions { trace: Some(root.join("trace")), ..tiny(&root.join("out")) };
        let native = train(gpu, &traced).unwrap();
        let csv = std::fs::read_to_string(root.join("trace/steps.csv")).unwrap();
        let native_losses: Vec<f32> =
            csv.lines().skip(1).map(|l| l.rsplit(',').next().unwrap().parse().unwrap()).collect();

        let mut record = Record::default();
        let live = pollster::block_on(train_live(gpu, &tiny(&root.join("unused")), &mut record)).unwrap();
        assert_eq!(record.losses, native_losses, "per-step losses");
        assert_eq!(live.len(), 2);
        for (a, b) in live.iter().zip(&native.history) {
            let figures = |m: &EpochMetrics| (m.loss, m.accuracy, m.mean_iou, m.val_loss, m.val_mean_iou, m.lr);
            assert_eq!(figures(a), figures(b), "epoch {}", a.epoch);
        }
        let info = record.info.unwrap();
        assert_eq!((info.train_patches, info.val_patches, info.steps_per_epoch), (12, 4, 4));
        let last = record.epochs.last().unwrap();
        assert_eq!(last.val_confusion.as_ref().unwrap().mean_iou(), live[1].val_mean_iou);
        assert_eq!(last.predictions.len(), 4);
        assert!(last.predictions.iter().all(|p| p.predicted.len() == 32 * 32 && p.rgb.len() == 3 * 32 * 32));
        assert!(last.predictions.iter().flat_map(|p| &p.predicted).all(|&k| (k as usize) < info.classes.len()));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_watch_stops_a_live_run() {
        let gpu = gpu();
        let mut record = Record { stop_after: Some(3), ..Record::default() };
        let history = pollster::block_on(train_live(gpu, &tiny(std::path::Path::new("unused")), &mut record)).unwrap();
        assert_eq!(record.losses.len(), 3);
        assert!(history.is_empty() && record.epochs.is_empty());
    }
}
