//! What a training run is asked to do: where the data comes from, and every option of the run.

use super::*;

/// Where the tiles come from.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    /// The built-in synthetic aerial scenes: `tiles` tiles of `size` x `size`.
    Synthetic {
        /// Number of tiles.
        tiles: usize,
        /// Side of each tile in pixels.
        size: usize,
    },
    /// A dataset directory (Dubai layout or `images/` + `masks/`). Native only.
    #[cfg(not(target_arch = "wasm32"))]
    Dir {
        /// The directory.
        path: PathBuf,
        /// A palette file for other datasets (default: the Dubai colours).
        palette: Option<PathBuf>,
        /// Map unknown mask colours to the ignore label instead of stopping.
        unknown_as_ignore: bool,
        /// Read only these subfolders (e.g. `Tile 2`); empty: all.
        groups: Vec<String>,
    },
}

/// Everything a training run needs.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// The tiles.
    pub data: DataSource,
    /// The loss.
    pub loss: LossName,
    /// Epochs to train (in total, counting those before a resume).
    pub epochs: usize,
    /// Patches per step.
    pub batch: usize,
    /// Patch side.
    pub patch: usize,
    /// Base learning rate.
    pub lr: f32,
    /// Optimizer.
    pub optimizer: OptimConfig,
    /// Learning-rate schedule over epochs (asked before every step).
    pub schedule: Schedule,
    /// Epochs of linear learning-rate warm-up at the start ([`crate::optim::warmup`]).
    pub warmup: f64,
    /// Seed of the batch order, augmentation and dropout (the model's init seed is in
    /// `model`); also of the data, as `split_seed` says.
    pub seed: u64,
    /// Seed of the synthetic tiles and of the train/validation split; `None`: `seed`.
    /// `compare-losses` fixes it, so that every seed of a comparison sees the same data.
    pub split_seed: Option<u64>,
    /// Split by image (the default) or by patch (the Keras tutorial's, optimistic).
    pub split: SplitLevel,
    /// Output directory (checkpoints, history, pictures).
    pub out: PathBuf,
    /// Continue from `out/last.safetensors`.
    pub resume: bool,
    /// The model.
    pub model: UNetConfig,
    /// Random flips and rotations of training patches.
    pub augment: bool,
    /// How input bytes are scaled ([`InputScaling`]; statistics from the training patches).
    pub scaling: InputScaling,
    /// Share of the data for validation.
    pub validation: f64,
    /// Stop each epoch after this many steps (quick runs and tests).
    pub max_steps: Option<usize>,
    /// Print progress (the Keras-like lines go to stdout either way).
    pub progress: bool,
    /// Diagnostic: write the initial weights, the validation patches and every step's
    /// batch and loss to this directory ([`Trace`]); waits for each step. `None`: off.
    pub trace: Option<PathBuf>,
}

impl TrainOptions {
    /// The seed of the synthetic tiles and of the split: `split_seed`, else `seed`.
    pub fn data_seed(&self) -> u64 {
        self.split_seed.unwrap_or(self.seed)
    }
}

impl Default for TrainOptions {
    /// The defaults of `unet-wgpu train`: 32 synthetic tiles, Dice + CE, 6
    /// epochs of batches of 2 patches of 256, Adam at 4e-3 on a cosine
    /// schedule, a U-Net of base 8 (half the Keras tutorial's filters) with batch
    /// norm, standardised inputs, no augmentation. Chosen to reach a validation
    /// mean IoU above 0.75 within five minutes on a two-core software driver
    /// (docs/learning.md): batch norm and standardised inputs learn faster a step,
    /// two patches a step give twice the updates of four for the same work, and
    /// unturned patches are learnt faster in a run too short to overfit (README).
    fn default() -> Self {
        TrainOptions {
            data: DataSource::Synthetic { tiles: 32, size: 512 },
            loss: LossName::DiceCe,
            epochs: 6,
            batch: 2,
            patch: 256,
            lr: 4e-3,
            optimizer: OptimConfig::new(Method::Adam),
            schedule: Schedule::Cosine { epochs: 6, min_lr: 4e-5 },
            warmup: 0.0,
            seed: 0,
            split_seed: None,
            split: SplitLevel::Image,
            out: PathBuf::from("runs/latest"),
            resume: false,
            model: UNetConfig { base: 8, batch_norm: true, ..UNetConfig::default() },
            augment: false,
            scaling: InputScaling::Standardize,
            validation: 0.2,
            max_steps: None,
            progress: true,
            trace: None,
        }
    }
}
