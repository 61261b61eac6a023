//! The figures of one epoch: how they accumulate over its steps, and how they print.

use super::*;
use crate::data::BatchOptions;

/// The figures of one epoch (validation ones are `None` without validation data).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EpochMetrics {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub loss: f64,
    /// Mean pixel accuracy of the training batches.
    pub accuracy: f64,
    /// Mean soft Jaccard (Keras `jacard_coef`) of the training batches.
    pub jacard_coef: f64,
    /// Mean IoU over the epoch's training confusion matrix (classes present).
    pub mean_iou: f64,
    /// Validation loss.
    pub val_loss: Option<f64>,
    /// Validation accuracy.
    pub val_accuracy: Option<f64>,
    /// Validation soft Jaccard.
    pub val_jacard_coef: Option<f64>,
    /// Validation mean IoU.
    pub val_mean_iou: Option<f64>,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Wall-clock seconds of the epoch (training and validation).
    pub seconds: f64,
}

impl EpochMetrics {
    /// The Keras-style line: `12/12 - 41s - loss: 0.8123 - accuracy: ... - val_mean_iou: ...`.
    pub fn keras_line(&self, steps: usize) -> String {
        let mut line = format!(
            "{steps}/{steps} - {:.0}s - loss: {:.4} - accuracy: {:.4} - jacard_coef: {:.4} - mean_iou: {:.4}",
            self.seconds, self.loss, self.accuracy, self.jacard_coef, self.mean_iou
        );
        let val = [
            ("val_loss", self.val_loss),
            ("val_accuracy", self.val_accuracy),
            ("val_jacard_coef", self.val_jacard_coef),
            ("val_mean_iou", self.val_mean_iou),
        ];
        for (name, value) in val {
            if let Some(v) = value {
                line += &format!(" - {name}: {v:.4}");
            }
        }
        line + &format!(" - lr: {:.2e}", self.lr)
    }

    /// The training figures of epoch `epoch` (from 1): the mean loss values and the confusion
    /// matrix of its steps, and the learning rate of its last step; no validation yet.
    pub(super) fn training(epoch: usize, values: &LossValues, confusion: &Confusion, lr: f32) -> EpochMetrics {
        EpochMetrics {
            epoch,
            loss: values.total as f64,
            accuracy: values.accuracy as f64,
            jacard_coef: values.soft_jaccard as f64,
            mean_iou: confusion.mean_iou().unwrap_or(0.0),
            lr: lr as f64,
            ..EpochMetrics::default()
        }
    }

    /// Adds the validation figures: the mean loss values and the confusion matrix of the
    /// validation pass.
    pub(super) fn set_validation(&mut self, values: &LossValues, confusion: &Confusion) {
        self.val_loss = Some(values.total as f64);
        self.val_accuracy = Some(values.accuracy as f64);
        self.val_jacard_coef = Some(values.soft_jaccard as f64);
        self.val_mean_iou = confusion.mean_iou();
    }

    /// The metric that picks the best checkpoint: validation mean IoU, or the
    /// training one without validation data.
    pub fn monitored(&self) -> f64 {
        self.val_mean_iou.unwrap_or(self.mean_iou)
    }
}

/// GPU-side sums of one pass over a split.
pub(super) struct Accumulators {
    pub(super) values: Tensor,
    pub(super) confusion: Tensor,
}

impl Accumulators {
    pub(super) fn new(gpu: &Gpu, classes: usize) -> Accumulators {
        Accumulators { values: gpu.empty(&[VALUES_LEN]), confusion: gpu.empty(&[classes, classes]) }
    }

    /// Read back after `steps` steps: mean loss values and the confusion matrix.
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn read(&self, gpu: &Gpu, steps: usize) -> (LossValues, Confusion) {
        pollster::block_on(self.read_async(gpu, steps))
    }

    /// [`Accumulators::read`] as a future.
    pub(super) async fn read_async(&self, gpu: &Gpu, steps: usize) -> (LossValues, Confusion) {
        let sums = gpu.read_async(&self.values).await;
        let mean: Vec<f32> = sums.iter().map(|s| s / steps.max(1) as f32).collect();
        (LossValues::from_slice(&mean), Confusion::read_async(gpu, &self.confusion).await)
    }
}

/// Records the validation pass over `patches` (in order, unturned, the training batches'
/// size and scaling) into `acc`, the first step overwriting it; returns the number of steps.
pub(super) fn validate(
    trainer: &mut Trainer<'_>,
    patches: &Patches,
    training: &BatchOptions,
    acc: &Accumulators,
) -> anyhow::Result<usize> {
    let batches = patches.batches(&BatchOptions { shuffle: false, augment: false, ..*training })?;
    let steps = batches.len();
    for (i, batch) in batches.enumerate() {
        let (x, y) = trainer.upload(&batch);
        trainer.eval_step(&x, &y, acc, i == 0);
    }
    Ok(steps)
}

#[cfg(not(target_arch = "wasm32"))]
impl EpochMetrics {
    /// The row of `history.csv`.
    pub(super) fn row(&self) -> Vec<(&'static str, f64)> {
        let opt = |v: Option<f64>| v.unwrap_or(f64::NAN);
        vec![
            ("epoch", self.epoch as f64),
            ("loss", self.loss),
            ("accuracy", self.accuracy),
            ("jacard_coef", self.jacard_coef),
            ("mean_iou", self.mean_iou),
            ("val_loss", opt(self.val_loss)),
            ("val_accuracy", opt(self.val_accuracy)),
            ("val_jacard_coef", opt(self.val_jacard_coef)),
            ("val_mean_iou", opt(self.val_mean_iou)),
            ("lr", self.lr),
            ("seconds", self.seconds),
        ]
    }

    /// Every row of a history read back.
    pub(super) fn all(history: &History) -> Vec<EpochMetrics> {
        let (get, opt) = (
            |r: usize, c: &str| history.get(r, c).unwrap_or(f64::NAN),
            |r: usize, c: &str| history.get(r, c).filter(|v| !v.is_nan()),
        );
        (0..history.len())
            .map(|r| EpochMetrics {
                epoch: get(r, "epoch") as usize,
                loss: get(r, "loss"),
                accuracy: get(r, "accuracy"),
                jacard_coef: get(r, "jacard_coef"),
                mean_iou: get(r, "mean_iou"),
                val_loss: opt(r, "val_loss"),
                val_accuracy: opt(r, "val_accuracy"),
                val_jacard_coef: opt(r, "val_jacard_coef"),
                val_mean_iou: opt(r, "val_mean_iou"),
                lr: get(r, "lr"),
                seconds: get(r, "seconds"),
            })
            .collect()
    }
}
