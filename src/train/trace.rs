//! A diagnostic record of what a training run trained on (`unet-wgpu train
//! --trace DIR`), so that another implementation can repeat the run step for
//! step (`benches/reference/trajectory.py` repeats it in PyTorch).
//!
//! `DIR` receives, before the first step:
//! - `initial.safetensors`: the model's weights as initialised (a checkpoint
//!   without optimizer state, with the run's metadata);
//! - `val.safetensors`: every validation patch, scaled as the trainer feeds
//!   them: `x` `[V,3,P,P]` f32 and `labels` `[V,P,P]` u8 (255: ignored);
//!
//! and after each training step `i` (from 1):
//! - `step-NNNNN.safetensors`: the batch it trained on, scaled: `x` `[N,3,P,P]`
//!   f32 and `labels` `[N,P,P]` u8, with `loss` and `lr` in the metadata;
//! - a row `step,lr,loss` of `steps.csv`: the loss our trainer computed on the
//!   GPU, read back.
//!
//! The final weights are the run's `last.safetensors`. Tracing waits for every
//! step to finish (to read its loss) and writes a few MB per step: meant for
//! short runs (`--max-steps`). It reads back and writes, nothing more: the
//! run's numbers are those of the same run untraced.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use safetensors::tensor::{Dtype, TensorView};

use super::Trainer;
use crate::checkpoint;
use crate::data::{Batch, BatchOptions, Patches, IGNORE};

/// An open trace directory (see the module documentation).
pub struct Trace {
    dir: PathBuf,
    csv: std::fs::File,
    steps: usize,
}

impl Trace {
    /// Create `dir` and write the initial weights (`trainer`'s model now, with
    /// `metadata`) and the validation patches, batched and scaled as in `val`.
    pub fn start(
        dir: &Path,
        trainer: &Trainer,
        metadata: &BTreeMap<String, String>,
        val_patches: &Patches,
        val: &BatchOptions,
    ) -> anyhow::Result<Trace> {
        if trainer.optimizer.steps != 0 {
            bail!("--trace records a run from its first step; it cannot follow a resumed run");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the trace directory {}", dir.display()))?;
        checkpoint::save(trainer.gpu, &dir.join("initial.safetensors"), &trainer.model.state(), metadata)?;
        let batches: Vec<Batch> =
            val_patches.batches(&BatchOptions { shuffle: false, augment: false, ..*val })?.collect();
        write_batches(&dir.join("val.safetensors"), &batches, &BTreeMap::new())?;
        let csv_path = dir.join("steps.csv");
        let mut csv =
            std::fs::File::create(&csv_path).with_context(|| format!("cannot create {}", csv_path.display()))?;
        writeln!(csv, "step,lr,loss").with_context(|| format!("cannot write {}", csv_path.display()))?;
        Ok(Trace { dir: dir.to_path_buf(), csv, steps: 0 })
    }

    /// Record the step just submitted: wait for it, read its loss back, write
    /// its batch and a row of `steps.csv`.
    pub fn step(&mut self, trainer: &Trainer, batch: &Batch, lr: f32) -> anyhow::Result<()> {
        self.steps += 1;
        let out = trainer.out.as_ref().expect("a training step has run, so its outputs exist");
        // The read is queued after the step, so it sees that step's values.
        let loss = trainer.gpu.read(&out.values)[0];
        let meta = BTreeMap::from([("loss".to_string(), loss.to_string()), ("lr".to_string(), lr.to_string())]);
        let path = self.dir.join(format!("step-{:05}.safetensors", self.steps));
        write_batches(&path, std::slice::from_ref(batch), &meta)?;
        writeln!(self.csv, "{},{lr},{loss}", self.steps)
            .with_context(|| format!("cannot write {}", self.dir.join("steps.csv").display()))?;
        Ok(())
    }
}

/// Labels as bytes: class ids below 255 as they are, everything else (the
/// ignore label) as 255.
fn label_bytes(labels: &[u32]) -> Vec<u8> {
    labels.iter().map(|&y| if y < IGNORE { y as u8 } else { IGNORE as u8 }).collect()
}

/// Write `batches`, concatenated, as `x` and `labels` tensors.
fn write_batches(path: &Path, batches: &[Batch], metadata: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let size = batches.first().map_or(0, |b| b.size);
    let n: usize = batches.iter().map(|b| b.n).sum();
    let x: Vec<f32> = batches.iter().flat_map(|b| b.images.iter().copied()).collect();
    let labels: Vec<u8> = batches.iter().flat_map(|b| label_bytes(&b.labels)).collect();
    let x_bytes: &[u8] = bytemuck::cast_slice(&x);
    let views = vec![
        ("x".to_string(), TensorView::new(Dtype::F32, vec![n, 3, size, size], x_bytes)?),
        ("labels".to_string(), TensorView::new(Dtype::U8, vec![n, size, size], &labels)?),
    ];
    let info: HashMap<String, String> = metadata.clone().into_iter().collect();
    let bytes =
        safetensors::serialize(views, Some(info)).with_context(|| format!("cannot encode {}", path.display()))?;
    checkpoint::write_atomically(path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use safetensors::SafeTensors;

    use super::super::{train, DataSource, TrainOptions};
    use crate::checkpoint;
    use crate::nn::UNetConfig;
    use crate::testing::gpu;

    #[test]
    fn a_traced_run_records_weights_batches_and_losses_and_trains_as_an_untraced_one() {
        let gpu = gpu();
        let root = std::env::temp_dir().join(format!("unet-wgpu-trace-{}", std::process::id()));
        let plain = TrainOptions {
            data: DataSource::Synthetic { tiles: 4, size: 64 },
            epochs: 1,
            batch: 2,
            patch: 32,
            lr: 3e-3,
            out: root.join("plain"),
            model: UNetConfig { base: 4, depth: 2, dropout: vec![0.0; 3], ..UNetConfig::default() },
            validation: 0.25,
            max_steps: Some(3),
            progress: false,
            ..TrainOptions::default()
        };
        let traced = TrainOptions { out: root.join("traced"), trace: Some(root.join("trace")), ..plain.clone() };
        let (a, b) = (train(gpu, &plain).unwrap(), train(gpu, &traced).unwrap());
        let (x, y) = (&a.history[0], &b.history[0]);
        assert_eq!((x.loss, x.val_loss, x.val_mean_iou), (y.loss, y.val_loss, y.val_mean_iou));
        let (ca, cb) = (
            checkpoint::load(&root.join("plain/last.safetensors")).unwrap(),
            checkpoint::load(&root.join("traced/last.safetensors")).unwrap(),
        );
        assert_eq!(ca.tensors, cb.tensors, "tracing changed the run");

        let csv = std::fs::read_to_string(root.join("trace/steps.csv")).unwrap();
        let losses: Vec<f32> = csv.lines().skip(1).map(|l| l.rsplit(',').next().unwrap().parse().unwrap()).collect();
        assert_eq!(losses.len(), 3, "{csv}");
        let mean = losses.iter().sum::<f32>() / 3.0;
        assert!((mean as f64 - b.history[0].loss).abs() < 1e-5, "steps.csv {losses:?}, history {}", b.history[0].loss);
        let bytes = std::fs::read(root.join("trace/step-00003.safetensors")).unwrap();
        let step = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(step.tensor("x").unwrap().shape(), &[2, 3, 32, 32]);
        assert_eq!(step.tensor("labels").unwrap().shape(), &[2, 32, 32]);
        let initial = checkpoint::load(&root.join("trace/initial.safetensors")).unwrap();
        assert_eq!(
            initial.tensors.keys().collect::<Vec<_>>(),
            ca.tensors.keys().filter(|k| !k.starts_with("optimizer.")).collect::<Vec<_>>()
        );
        assert!(root.join("trace/val.safetensors").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
