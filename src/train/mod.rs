//! The training loop: data -> U-Net -> fused loss -> backward -> optimizer,
//! one submit per step, metrics accumulated on the GPU and read back once per
//! epoch, a Keras-like line per epoch, checkpoints that resume exactly.
//!
//! What one step records, in order (all in one encoder, one `queue.submit`):
//! zero the gradient arena; the forward pass; the fused loss (values and
//! dlogits); `epoch_values += values` and the confusion-matrix update; the
//! backward walk into the gradient arena; the optimizer. The CPU prepares the
//! next batch while the GPU runs, and waits for step `i-1` (never `i`) before
//! submitting step `i+1`, so the progress bar follows the GPU.
//!
//! [`train`] is the native program's loop (files, progress bars, pictures);
//! [`live`] runs the same steps for a front end that cannot block (a web page).

use std::path::PathBuf;

use anyhow::bail;

use crate::autograd::tape::Step;
use crate::autograd::tensor::Tensor;
use crate::data::{Batch, Dataset, InputScaling, Palette, Patches, SplitLevel, SplitOptions, IGNORE};
use crate::loss::{loss_forward_backward, LossConfig, LossOutput, LossValues, VALUES_LEN};
use crate::metrics::{confusion_update, Confusion};
use crate::nn::{UNet, UNetConfig};
use crate::ops::elementwise::accumulate;
use crate::optim::{Method, OptimConfig, Optimizer, Schedule};
use crate::rng::Rng;
use crate::runtime::{Gpu, Readback};
#[cfg(not(target_arch = "wasm32"))]
use {
    crate::checkpoint::{self, Checkpoint},
    crate::data::{BatchOptions, LoadOptions, Scaling, Unknown},
    crate::history::History,
    crate::progress::{Progress, RunShape},
    crate::report::{overlay_grid, plot_history, ReportError, Sample},
    anyhow::Context,
    std::collections::BTreeMap,
    std::path::Path,
    std::time::Instant,
};

pub mod live;
mod losses;
mod options;
#[cfg(not(target_arch = "wasm32"))]
mod pictures;
#[cfg(not(target_arch = "wasm32"))]
use pictures::{picture, save_predictions};
#[cfg(not(target_arch = "wasm32"))]
mod trace;
pub use options::*;
mod epoch;
pub use epoch::*;
pub use losses::LossName;
#[cfg(not(target_arch = "wasm32"))]
pub use trace::Trace;

/// The seed of step `step`'s dropout masks.
fn dropout_seed(seed: u64, step: u64) -> u64 {
    let mut rng = Rng::new(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.next_u64()
}

/// A model with its optimizer and everything one step needs, allocated once.
pub struct Trainer<'g> {
    gpu: &'g Gpu,
    /// The model.
    pub model: UNet,
    /// The optimizer.
    pub optimizer: Optimizer,
    loss: LossConfig,
    class_weights: Tensor,
    out: Option<LossOutput>,
    seed: u64,
    last_submit: Option<wgpu::SubmissionIndex>,
    /// Loss values of recent steps, read back without waiting, for the progress bar.
    readback: Readback,
    /// Input tensors by batch size, rewritten each step (uploading into fresh
    /// pooled buffers would allocate again while the last step's are in flight).
    inputs: Vec<(usize, Tensor, Tensor)>,
}

impl<'g> Trainer<'g> {
    /// A fresh model and optimizer.
    pub fn new(gpu: &'g Gpu, model: UNetConfig, optimizer: OptimConfig, loss: LossConfig, seed: u64) -> Trainer<'g> {
        let model = UNet::new(gpu, model);
        let optimizer = Optimizer::new(gpu, &model.arena, optimizer);
        let classes = model.config.classes;
        let weights = loss.class_weights.clone().unwrap_or_else(|| vec![1.0; classes]);
        let class_weights = gpu.upload(&weights, &[classes]);
        let readback = gpu.readback(VALUES_LEN, 3);
        Trainer {
            gpu,
            model,
            optimizer,
            loss,
            class_weights,
            out: None,
            seed,
            last_submit: None,
            readback,
            inputs: Vec::new(),
        }
    }

    fn outputs(&mut self, logits: &Tensor) -> &LossOutput {
        let gpu = self.gpu;
        let fits = self.out.as_ref().is_some_and(|o| o.dlogits.shape() == logits.shape());
        if !fits {
            self.out = Some(LossOutput { values: gpu.empty(&[VALUES_LEN]), dlogits: gpu.empty(logits.shape()) });
        }
        self.out.as_ref().unwrap()
    }

    /// The batch in GPU tensors: images `[N,3,P,P]`, labels `[N,P,P]`. The writes
    /// land at the next submit, after the steps already submitted have read
    /// the previous batch (queue order).
    pub fn upload(&mut self, batch: &Batch) -> (Tensor, Tensor) {
        let gpu = self.gpu;
        let (n, p) = (batch.n, batch.size);
        let fits = |(k, x, _): &&(usize, Tensor, Tensor)| *k == n && x.shape()[2] == p;
        if !self.inputs.iter().any(|e| fits(&e)) {
            self.inputs.push((n, gpu.empty(&[n, 3, p, p]), gpu.empty(&[n, p, p])));
        }
        let (_, x, y) = self.inputs.iter().find(|e| fits(e)).unwrap();
        gpu.write(x, bytemuck::cast_slice(&batch.images));
        gpu.write(y, bytemuck::cast_slice(&batch.labels));
        (x.clone(), y.clone())
    }

    /// Wait for the step before the last one submitted: keeps at most two
    /// steps in flight, so the CPU runs ahead by one batch and no further.
    fn throttle(&mut self, submitted: wgpu::SubmissionIndex) {
        if let Some(previous) = self.last_submit.replace(submitted) {
            let wait = wgpu::PollType::Wait { submission_index: Some(previous), timeout: None };
            self.gpu.device.poll(wait).expect("device lost during training");
        }
    }

    /// One training step on a batch (images `[N,3,P,P]`, labels `[N,P,P]`),
    /// adding its loss values and confusion counts into `acc`. Returns the
    /// loss of the newest earlier step whose values have arrived, if any.
    fn train_step(&mut self, x: &Tensor, y: &Tensor, lr: f32, acc: &Accumulators, first: bool) -> Option<f32> {
        let gpu = self.gpu;
        let mut step = Step::train(gpu);
        if first {
            step.enc.clear(&acc.values);
            step.enc.clear(&acc.confusion);
        }
        self.model.arena.zero_grads(&mut step.enc);
        let logits = self.model.forward(&mut step, x, dropout_seed(self.seed, self.optimizer.steps));
        let out = self.outputs(&logits);
        let (values, dlogits) = (out.values.clone(), out.dlogits.clone());
        loss_forward_backward(
            gpu,
            &mut step.enc,
            &self.loss,
            &logits,
            y,
            &self.class_weights,
            self.out.as_ref().unwrap(),
        );
        accumulate(gpu, &mut step.enc, &values, 1.0, &acc.values);
        self.readback.copy(&mut step.enc, &values);
        confusion_update(gpu, &mut step.enc, &logits, y, Some(IGNORE), &acc.confusion);
        step.backward_into(vec![(logits, dlogits)], self.model.arena.grads());
        self.optimizer.step(gpu, &mut step.enc, &self.model.arena, lr);
        let index = step.submit();
        self.readback.submitted();
        self.throttle(index);
        self.readback.latest(gpu).map(|v| v[0])
    }

    /// One evaluation step (no tape, eval-mode layers), accumulating into `acc`.
    fn eval_step(&mut self, x: &Tensor, y: &Tensor, acc: &Accumulators, first: bool) {
        let gpu = self.gpu;
        let mut step = Step::eval(gpu);
        if first {
            step.enc.clear(&acc.values);
            step.enc.clear(&acc.confusion);
        }
        let logits = self.model.forward(&mut step, x, 0);
        self.outputs(&logits);
        let out = self.out.as_ref().unwrap();
        loss_forward_backward(gpu, &mut step.enc, &self.loss, &logits, y, &self.class_weights, out);
        accumulate(gpu, &mut step.enc, &out.values, 1.0, &acc.values);
        confusion_update(gpu, &mut step.enc, &logits, y, Some(IGNORE), &acc.confusion);
        let index = step.submit();
        self.throttle(index);
    }

    /// Predicted class ids `[N,P,P]` of a batch, in eval mode (for pictures).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn predict(&self, x: &Tensor) -> Vec<u8> {
        pollster::block_on(self.predict_async(x))
    }

    /// [`Trainer::predict`] as a future.
    pub async fn predict_async(&self, x: &Tensor) -> Vec<u8> {
        let mut step = Step::eval(self.gpu);
        let logits = self.model.forward(&mut step, x, 0);
        step.submit();
        let [n, c, h, w] = logits.dims4("logits");
        let z = self.gpu.read_async(&logits).await;
        (0..n * h * w)
            .map(|i| {
                let (b, pos) = (i / (h * w), i % (h * w));
                (0..c).fold(
                    0,
                    |best, k| if z[(b * c + k) * h * w + pos] > z[(b * c + best) * h * w + pos] { k } else { best },
                ) as u8
            })
            .collect()
    }

    /// Every tensor a checkpoint holds: the model's state, then the optimizer's.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut named = self.model.state();
        named.extend(self.optimizer.state(&self.model.arena));
        named
    }
}

/// Load or synthesise the tiles and cut them into training and validation patches.
pub fn load_patches(options: &TrainOptions) -> anyhow::Result<(Palette, Patches, Patches)> {
    let dataset = match &options.data {
        DataSource::Synthetic { tiles, size } => Dataset::synthetic(options.data_seed(), *tiles, *size),
        #[cfg(not(target_arch = "wasm32"))]
        DataSource::Dir { path, palette, unknown_as_ignore, groups } => {
            let palette = match palette {
                Some(p) => Palette::load(p)?,
                None => Palette::dubai(),
            };
            let unknown = if *unknown_as_ignore { Unknown::Ignore } else { Unknown::Error };
            Dataset::load(path, &LoadOptions { palette, unknown, groups: groups.clone(), ..LoadOptions::default() })?
        }
    };
    let patches = dataset.patches(options.patch)?;
    if patches.is_empty() {
        bail!("the dataset gave no {0}x{0} patches; use a smaller --patch", options.patch);
    }
    let split = SplitOptions { seed: options.data_seed(), validation: options.validation, level: options.split };
    let (train, val) =
        if options.validation > 0.0 { patches.split(&split)? } else { (patches.clone(), patches.select(&[])) };
    Ok((dataset.palette.clone(), train, val))
}

#[cfg(not(target_arch = "wasm32"))]
/// The metadata a checkpoint carries besides the model's configuration.
fn run_metadata(
    options: &TrainOptions,
    epoch: usize,
    steps: u64,
    best: f64,
    palette: &Palette,
    scaling: Scaling,
) -> BTreeMap<String, String> {
    let mut meta = options.model.to_metadata();
    let colours: Vec<String> = palette.colours().iter().map(|c| crate::data::palette::hex(*c)).collect();
    meta.extend(scaling.to_metadata());
    meta.extend([
        ("train.epoch".to_string(), epoch.to_string()),
        ("train.steps".to_string(), steps.to_string()),
        ("train.best".to_string(), best.to_string()),
        ("train.loss".to_string(), options.loss.as_str().to_string()),
        ("train.seed".to_string(), options.seed.to_string()),
        ("train.split".to_string(), format!("{} (seed {})", options.split, options.data_seed())),
        ("train.lr".to_string(), options.lr.to_string()),
        ("train.batch".to_string(), options.batch.to_string()),
        ("train.patch".to_string(), options.patch.to_string()),
        ("data.classes".to_string(), palette.names().join(",")),
        ("data.colours".to_string(), colours.join(",")),
    ]);
    meta
}

#[cfg(not(target_arch = "wasm32"))]
fn meta_number<T: std::str::FromStr>(ck: &Checkpoint, key: &str) -> anyhow::Result<T> {
    ck.metadata.get(key).and_then(|v| v.parse().ok()).with_context(|| {
        format!("{}: no readable {key} in the metadata; was it written by `unet-wgpu train`?", ck.path.display())
    })
}

#[cfg(not(target_arch = "wasm32"))]
/// What [`train`] returns.
#[derive(Debug)]
pub struct TrainSummary {
    /// Every epoch's figures (those before a resume included, read from history.csv).
    pub history: Vec<EpochMetrics>,
    /// The best monitored value (validation mean IoU).
    pub best: f64,
    /// Where the best checkpoint is.
    pub best_checkpoint: PathBuf,
}

#[cfg(not(target_arch = "wasm32"))]
/// Train a U-Net as `options` say; prints a line per epoch and writes
/// `last.safetensors`, `best.safetensors` and `history.csv` under `options.out`.
pub fn train(gpu: &Gpu, options: &TrainOptions) -> anyhow::Result<TrainSummary> {
    let (palette, train_patches, val_patches) = load_patches(options)?;
    if palette.len() != options.model.classes {
        bail!(
            "the palette has {} classes but the model is set up for {}; set --classes {}",
            palette.len(),
            options.model.classes,
            palette.len()
        );
    }
    std::fs::create_dir_all(&options.out).with_context(|| format!("cannot create {}", options.out.display()))?;
    let (last_path, best_path, history_path) =
        (options.out.join("last.safetensors"), options.out.join("best.safetensors"), options.out.join("history.csv"));
    let curves_path = options.out.join("curves.png");
    // Measured on the training patches only, and the same on resume (same patches).
    let scaling = options.scaling.fit(&train_patches);

    let mut trainer =
        Trainer::new(gpu, options.model.clone(), options.optimizer, options.loss.config(None), options.seed);
    let mut history = History::new();
    let mut best = f64::NEG_INFINITY;
    let mut start_epoch = 0;
    if options.resume {
        let ck = checkpoint::load(&last_path)
            .with_context(|| "nothing to resume: train without --resume first".to_string())?;
        let saved =
            UNetConfig::from_metadata(&ck.metadata).map_err(|e| anyhow::anyhow!("{}: {e}", ck.path.display()))?;
        if saved != options.model {
            bail!(
                "{} holds a model configured as {saved:?}, not {:?}; use the same model options",
                ck.path.display(),
                options.model
            );
        }
        let saved_scaling =
            Scaling::from_metadata(&ck.metadata).map_err(|e| anyhow::anyhow!("{}: {e}", ck.path.display()))?;
        if saved_scaling != scaling {
            let fix = match saved_scaling.kind() {
                kind if kind != scaling.kind() => format!("use --scaling {kind}"),
                _ => "the training patches differ: use the same --data, --tiles, --patch, --seed, --split-seed and --split".into(),
            };
            bail!("{} was trained on inputs scaled as {saved_scaling:?}, not {scaling:?}; {fix}", ck.path.display());
        }
        ck.restore(gpu, &trainer.state())?;
        start_epoch = meta_number(&ck, "train.epoch")?;
        trainer.optimizer.steps = meta_number(&ck, "train.steps")?;
        best = meta_number(&ck, "train.best")?;
        history = History::read(&history_path)?;
        history.truncate_after_epoch(start_epoch as f64);
        println!("resuming after epoch {start_epoch} from {}", ck.path.display());
    }

    let classes = options.model.classes;
    println!(
        "{} training patches, {} validation patches of {}x{}; U-Net with {} parameters; loss {}",
        train_patches.len(),
        val_patches.len(),
        options.patch,
        options.patch,
        trainer.model.parameter_count(),
        options.loss.as_str()
    );
    println!("class pixel frequencies (training patches):\n{}", train_patches.class_frequencies());

    let (train_acc, val_acc) = (Accumulators::new(gpu, classes), Accumulators::new(gpu, classes));
    let mut trace = match &options.trace {
        Some(dir) => {
            let meta = run_metadata(options, start_epoch, trainer.optimizer.steps, best, &palette, scaling);
            let val = BatchOptions { batch_size: options.batch, scaling, ..BatchOptions::default() };
            Some(Trace::start(dir, &trainer, &meta, &val_patches, &val)?)
        }
        None => None,
    };
    let mut last_val_confusion = None;
    for epoch in start_epoch..options.epochs {
        let started = Instant::now();
        println!("Epoch {}/{}", epoch + 1, options.epochs);
        let batch_options = BatchOptions {
            batch_size: options.batch,
            seed: options.seed.wrapping_add(epoch as u64),
            shuffle: true,
            augment: options.augment,
            scaling,
            drop_last: false,
        };
        let batches = train_patches.batches(&batch_options)?;
        let steps = batches.len().min(options.max_steps.unwrap_or(usize::MAX));
        let mut progress = Progress::epoch(options.progress, steps);
        let run = (epoch == start_epoch).then_some(RunShape {
            later_epochs: options.epochs - epoch - 1,
            val_batches: val_patches.len().div_ceil(options.batch),
        });
        let (mut seen, mut seen_sum) = (0, 0.0);
        let mut lr = options.lr;
        for (i, batch) in batches.take(steps).enumerate() {
            let at = epoch as f64 + i as f64 / steps.max(1) as f64;
            lr = options.schedule.lr(options.lr, at) * crate::optim::warmup(at, options.warmup, steps);
            let (x, y) = trainer.upload(&batch);
            if let Some(loss) = trainer.train_step(&x, &y, lr, &train_acc, i == 0) {
                (seen, seen_sum) = (seen + 1, seen_sum + loss as f64);
            }
            if let Some(trace) = &mut trace {
                trace.step(&trainer, &batch, lr)?;
            }
            progress.step(i + 1, (seen > 0).then(|| seen_sum / seen as f64), run);
        }
        progress.finish();
        let (train_values, train_confusion) = train_acc.read(gpu, steps);

        let mut metrics = EpochMetrics::training(epoch + 1, &train_values, &train_confusion, lr);
        if !val_patches.is_empty() {
            let val_steps = validate(&mut trainer, &val_patches, &batch_options, &val_acc)?;
            let (values, confusion) = val_acc.read(gpu, val_steps);
            metrics.set_validation(&values, &confusion);
            last_val_confusion = Some(confusion);
        }
        metrics.seconds = started.elapsed().as_secs_f64();
        println!("{}", metrics.keras_line(steps));
        if !metrics.loss.is_finite() {
            bail!("the training loss became {} in epoch {}; lower --lr (now {})", metrics.loss, epoch + 1, options.lr);
        }

        let improved = metrics.monitored() > best;
        if improved {
            best = metrics.monitored();
        }
        history.push(&metrics.row());
        let meta = run_metadata(options, epoch + 1, trainer.optimizer.steps, best, &palette, scaling);
        checkpoint::save(gpu, &last_path, &trainer.state(), &meta)?;
        if improved {
            checkpoint::save(gpu, &best_path, &trainer.model.state(), &meta)?;
        }
        history.write(&history_path)?;
        picture("loss curves", plot_history(&history, &curves_path));
    }
    if let Some(confusion) = &last_val_confusion {
        println!("validation IoU per class, last epoch:\n{}", per_class_table(confusion, &palette));
    }
    save_predictions(&trainer, &val_patches, &palette, scaling, &options.out.join("val_predictions.png"))?;
    Ok(TrainSummary { history: EpochMetrics::all(&history), best, best_checkpoint: best_path })
}

#[cfg(not(target_arch = "wasm32"))]
/// One line per class: IoU and Dice on the validation patches, or `absent`.
fn per_class_table(confusion: &Confusion, palette: &Palette) -> String {
    let mut table = format!("{:<12} {:>7} {:>7}", "class", "IoU", "Dice");
    for (k, name) in palette.names().iter().enumerate() {
        table += &match (confusion.iou(k), confusion.dice(k)) {
            (Some(iou), Some(dice)) => format!("\n{name:<12} {iou:>7.4} {dice:>7.4}"),
            _ => format!("\n{name:<12} {:>7} {:>7}", "absent", "absent"),
        };
    }
    table
}

#[cfg(test)]
mod tests;
