//! `unet-wgpu`: train, predict, score, compare losses. A thin front end: it
//! parses arguments and calls the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use unet_wgpu::compare::{compare_losses, CompareOptions};
use unet_wgpu::data::{InputScaling, Palette, SplitLevel, Unknown};
use unet_wgpu::infer::predict::{predict_files, PredictOptions};
use unet_wgpu::infer::score::score_dirs;
use unet_wgpu::nn::{Init, UNetConfig, Upsampling};
use unet_wgpu::optim::{Method, OptimConfig, Schedule};
use unet_wgpu::train::{train, DataSource, LossName, TrainOptions};
use unet_wgpu::tune::{default_cache_path, save_cache, AdapterKey, CacheError, Tuning};
use unet_wgpu::{Backend, Gpu, GpuOptions, Kernels, Limits, TilingFamily};

/// A U-Net trainer for semantic segmentation whose every kernel is a WGSL
/// compute shader (Vulkan, Metal, DX12 or GL through wgpu).
#[derive(Parser)]
#[command(name = "unet-wgpu", version, about)]
struct Cli {
    /// Graphics API: vulkan, metal, dx12 or gl (default: the best adapter found;
    /// the WGPU_BACKEND variable does the same).
    #[arg(long, global = true)]
    backend: Option<Backend>,
    /// Device limits to request: adapter (everything it offers) or webgpu (WebGPU's defaults,
    /// what a browser grants). Default: adapter, or the UNET_WGPU_LIMITS variable.
    #[arg(long, global = true)]
    limits: Option<Limits>,
    /// Kernels of the convolutions, transposed convolutions, matrix products and batch norms:
    /// tuned (the tiled kernels, with the tile sizes of the tuning cache or the builtin ones) or
    /// reference (the textbook kernels: one invocation per output element, no tiling; slower).
    /// Default: tuned, or the UNET_WGPU_KERNELS variable.
    #[arg(long, global = true)]
    kernels: Option<Kernels>,
    /// Family of tile sizes, whatever the adapter: gpu (every convolution a workgroup-memory GEMM,
    /// the default of hardware GPUs) or cpu (register tiles, the default of CPU drivers such as
    /// lavapipe). No tuning cache is read when it is given. Default: the adapter's type, or the
    /// UNET_WGPU_TILING variable. `--kernels reference` overrides it.
    #[arg(long, global = true)]
    tiling: Option<TilingFamily>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a U-Net (default: on the built-in synthetic aerial tiles).
    ///
    /// The kernels' tile sizes come from the tuning cache's entry for this adapter when there is
    /// one (written by `unet-wgpu tune`; at $UNET_WGPU_CACHE, else
    /// $XDG_CACHE_HOME/unet-wgpu/tuning.json, else ~/.cache/unet-wgpu/tuning.json), else from
    /// built-in defaults; nothing is measured at startup. The first line printed says which.
    Train(TrainArgs),
    /// Segment images of any size with a trained checkpoint (sliding window, blended overlaps).
    Predict {
        /// The checkpoint (e.g. runs/latest/best.safetensors).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Images, or folders of images.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Where the masks and overlays go.
        #[arg(long, default_value = "predictions")]
        out: PathBuf,
        /// Window side in pixels.
        #[arg(long, default_value_t = 256)]
        patch: usize,
        /// Overlap of neighbouring windows in pixels (default: a quarter of the window).
        #[arg(long)]
        overlap: Option<usize>,
        /// Palette file of the masks (default: the Dubai colours).
        #[arg(long)]
        palette: Option<PathBuf>,
    },
    /// Score predicted masks against ground-truth masks (matched by file stem).
    Score {
        /// Folder of predicted masks (colour or class-index PNGs).
        predictions: PathBuf,
        /// Folder of ground-truth masks.
        truth: PathBuf,
        /// Palette file (default: the Dubai colours).
        #[arg(long)]
        palette: Option<PathBuf>,
        /// Map unknown colours to the ignore label instead of stopping.
        #[arg(long)]
        unknown_as_ignore: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Train the same model with several losses, each from one or more seeds, and compare them.
    ///
    /// Every run sees the same tiles and train/validation split (--split-seed, default
    /// --seed). Each loss trains from --seeds K seeds, --seed, --seed + 1, ..., which move
    /// the initialisation, dropout, batch order and augmentation. Runs go to OUT/<loss>/
    /// (one seed) or OUT/<loss>/seed-<s>/. OUT/compare.md (also printed) gives per loss the
    /// best validation Jaccard, mean IoU and accuracy of its runs: with several seeds their
    /// mean ± standard deviation and min-max, marking the losses whose range overlaps the
    /// best loss's ("within the spread of the best"). OUT/compare.png draws each loss's
    /// validation Jaccard per epoch: the mean over the seeds, in a band from min to max.
    CompareLosses {
        #[command(flatten)]
        train: TrainArgs,
        /// Losses to compare, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        losses: Vec<LossName>,
        /// Seeds per loss, from --seed on (1: one run per loss, as without this flag).
        #[arg(long, default_value_t = 1)]
        seeds: usize,
    },
    /// Print the adapter in use, the limits its device was granted, and the tile sizes.
    Info,
    /// Measure the kernels' tile sizes on this adapter and save them in the tuning cache.
    ///
    /// Times a few candidate tilings of each kernel family (conv2d forward, backward data,
    /// backward weight, transposed conv, matmul) on U-Net layer shapes, each first checked
    /// against the reference, and keeps the fastest. The cache ($UNET_WGPU_CACHE, else
    /// $XDG_CACHE_HOME/unet-wgpu/tuning.json, else ~/.cache/unet-wgpu/tuning.json) holds one
    /// entry per adapter; train, predict and the benches read it at startup.
    Tune {
        /// Seconds the measurements may take; each family gets an equal share of what is left,
        /// and keeps the builtin choice where its share ran out first (the builtin itself is
        /// always timed once, so a slow machine may run past the budget by that much).
        #[arg(long, default_value_t = 60.0)]
        budget: f64,
        /// Print the tile sizes in use and where they come from; measure and write nothing.
        #[arg(long)]
        print: bool,
    },
}

#[derive(Args, Clone)]
struct TrainArgs {
    /// Dataset directory (Dubai layout `Tile N/images|masks`, or `images/` + `masks/`);
    /// default: built-in synthetic tiles.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Palette file for datasets other than Dubai (lines `name #RRGGBB`, optional `ignore #RRGGBB`).
    #[arg(long)]
    palette: Option<PathBuf>,
    /// Map mask colours that are no class to the ignore label instead of stopping.
    #[arg(long)]
    unknown_as_ignore: bool,
    /// Read only these subfolders of --data, comma-separated (e.g. "Tile 2,Tile 3").
    #[arg(long, value_delimiter = ',')]
    tiles: Vec<String>,
    /// Number of synthetic tiles (without --data).
    #[arg(long, default_value_t = 32)]
    synthetic_tiles: usize,
    /// Side of each synthetic tile in pixels.
    #[arg(long, default_value_t = 512)]
    synthetic_size: usize,
    /// Loss: ce, dice, focal, dice+ce, dice+focal, tversky, focal-tversky, unified-focal.
    #[arg(long, default_value = "dice+ce")]
    loss: LossName,
    /// Epochs.
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    /// Patches per step.
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Patch side in pixels (a multiple of 2^depth).
    #[arg(long, default_value_t = 256)]
    patch: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 4e-3)]
    lr: f32,
    /// Optimizer: adam, adamw or sgd.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Weight decay (default: 0, or 0.01 with adamw).
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Clip gradients to this global norm.
    #[arg(long)]
    clip_norm: Option<f32>,
    /// Learning-rate schedule: constant, step (x0.5 every 10 epochs) or cosine (to
    /// lr/100 at the last epoch's end, a little every step).
    #[arg(long, default_value = "cosine")]
    schedule: String,
    /// Epochs (fractions allowed) of linear learning-rate warm-up at the start.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Seed of the initialisation, batch order, augmentation and dropout; also of the
    /// synthetic tiles and the train/validation split unless --split-seed is given.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seed of the synthetic tiles and the train/validation split (default: --seed).
    /// compare-losses keeps it for every seed, so that all its runs see the same data.
    #[arg(long)]
    split_seed: Option<u64>,
    /// How the validation patches are chosen: image (the default) holds out whole images;
    /// patch holds out single patches, with the sizes of the Keras tutorial's
    /// train_test_split(test_size=--validation): ceil(share x patches) for validation.
    /// Split by patch, neighbouring patches of one image (same light, same roofs, objects
    /// cut in two by the patch border) land on both sides, so validation measures
    /// recognition of near-copies and scores higher than on unseen images.
    #[arg(long, default_value = "image")]
    split: SplitLevel,
    /// Output directory (checkpoints, history.csv, pictures).
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Continue from OUT/last.safetensors.
    #[arg(long)]
    resume: bool,
    /// Filters at the first level (doubled per level; the Keras tutorial's U-Net has 16).
    #[arg(long, default_value_t = 8)]
    base: usize,
    /// Number of downsamplings.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// No batch norm after the 3x3 convolutions (the Keras tutorial's model; slower to learn,
    /// faster a step).
    #[arg(long)]
    no_batch_norm: bool,
    /// Weight initialisation: default (a He normal truncated at 2 standard deviations
    /// without Keras' correction, for every layer) or keras (the Keras tutorial's:
    /// he_normal with Keras' truncation correction for the 3x3 convolutions, glorot_uniform
    /// for the transposed and 1x1 convolutions). Biases start at 0 either way.
    #[arg(long, default_value = "default")]
    init: Init,
    /// Upsample with bilinear interpolation + 1x1 conv instead of transposed convs.
    #[arg(long)]
    bilinear: bool,
    /// Flip and rotate training patches at random (by multiples of 90 degrees). Off by
    /// default, as in the Keras tutorial: in runs of a few epochs the network is far from
    /// overfitting, and turned images (shadows falling the other way) slow its learning.
    #[arg(long)]
    augment: bool,
    /// Input scaling: standardize (per channel, with the training patches' mean and
    /// standard deviation; the default), unit (v/255) or minmax-per-patch (each patch's
    /// channels stretched to [0, 1] by that patch's own min and max: scikit-learn's
    /// MinMaxScaler per patch, as the Keras tutorial scales; prediction scales each window so).
    #[arg(long, conflicts_with = "no_standardize")]
    scaling: Option<InputScaling>,
    /// The same as --scaling unit: feed pixels as v/255.
    #[arg(long)]
    no_standardize: bool,
    /// Dropout probability per level, from the top level down to the bottleneck,
    /// comma-separated (one value: the same at every level; 0 turns dropout off).
    /// Default: 0.1,0.1,0.2,0.2,0.3 (levels past the list repeat its last value).
    #[arg(long, value_delimiter = ',')]
    dropout: Vec<f32>,
    /// Share of the data held out for validation.
    #[arg(long, default_value_t = 0.2)]
    validation: f64,
    /// Stop each epoch after this many steps (quick trials).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Diagnostic, for comparing with another implementation: write to DIR the initial
    /// weights (initial.safetensors), the validation patches as fed (val.safetensors), and
    /// after every step its batch as fed (step-NNNNN.safetensors) and its loss read back
    /// (steps.csv). Waits for each step and writes a few MB per step: use with --max-steps.
    /// benches/reference/trajectory.py repeats such a run in PyTorch.
    #[arg(long, value_name = "DIR")]
    trace: Option<PathBuf>,
}

impl TrainArgs {
    fn options(&self) -> anyhow::Result<TrainOptions> {
        let method = match self.optimizer.as_str() {
            "adam" => Method::Adam,
            "adamw" => Method::AdamW,
            "sgd" => Method::Sgd { momentum: self.momentum },
            other => anyhow::bail!("unknown optimizer {other:?}; choose adam, adamw or sgd"),
        };
        let mut optimizer = OptimConfig { clip_norm: self.clip_norm, ..OptimConfig::new(method) };
        if let Some(wd) = self.weight_decay {
            optimizer.weight_decay = wd;
        }
        let schedule = match self.schedule.as_str() {
            "constant" => Schedule::Constant,
            "step" => Schedule::Step { every: 10, gamma: 0.5 },
            "cosine" => Schedule::Cosine { epochs: self.epochs, min_lr: self.lr * 0.01 },
            other => anyhow::bail!("unknown schedule {other:?}; choose constant, step or cosine"),
        };
        let data = match &self.data {
            Some(path) => DataSource::Dir {
                path: path.clone(),
                palette: self.palette.clone(),
                unknown_as_ignore: self.unknown_as_ignore,
                groups: self.tiles.clone(),
            },
            None => DataSource::Synthetic { tiles: self.synthetic_tiles, size: self.synthetic_size },
        };
        let mut dropout = if self.dropout.is_empty() { UNetConfig::default().dropout } else { self.dropout.clone() };
        if let Some(p) = dropout.iter().find(|p| !(0.0..1.0).contains(*p)) {
            anyhow::bail!("--dropout {p} is not a probability in [0, 1)");
        }
        dropout.truncate(self.depth + 1);
        dropout.resize(self.depth + 1, *dropout.last().unwrap());
        let model = UNetConfig {
            depth: self.depth,
            base: self.base,
            batch_norm: !self.no_batch_norm,
            dropout,
            upsampling: if self.bilinear { Upsampling::Bilinear } else { Upsampling::Transposed },
            init: self.init,
            seed: self.seed,
            ..UNetConfig::default()
        };
        if !self.patch.is_multiple_of(1 << self.depth) {
            anyhow::bail!("--patch {} is not a multiple of 2^depth = {}", self.patch, 1 << self.depth);
        }
        Ok(TrainOptions {
            data,
            loss: self.loss,
            epochs: self.epochs,
            batch: self.batch,
            patch: self.patch,
            lr: self.lr,
            optimizer,
            schedule,
            warmup: self.warmup,
            seed: self.seed,
            split_seed: self.split_seed,
            split: self.split,
            out: self.out.clone(),
            resume: self.resume,
            model,
            augment: self.augment,
            scaling: if self.no_standardize { InputScaling::Unit } else { self.scaling.unwrap_or_default() },
            validation: self.validation,
            max_steps: self.max_steps,
            progress: true,
            trace: self.trace.clone(),
        })
    }
}

fn palette(path: &Option<PathBuf>) -> anyhow::Result<Palette> {
    Ok(match path {
        Some(p) => Palette::load(p)?,
        None => Palette::dubai(),
    })
}

/// `unet-wgpu info`: the adapter, the limits our kernels depend on, and the tile sizes.
fn info(gpu: &Gpu) {
    let l = &gpu.limits;
    println!("adapter: {}", gpu.describe());
    println!("device type: {:?}", gpu.info.device_type);
    println!("timestamp queries: {}", if gpu.has_timestamps { "yes" } else { "no" });
    println!("limits granted:");
    let rows: [(&str, u64); 8] = [
        ("max_compute_invocations_per_workgroup", l.max_compute_invocations_per_workgroup.into()),
        ("max_compute_workgroup_size_x", l.max_compute_workgroup_size_x.into()),
        ("max_compute_workgroup_storage_size", l.max_compute_workgroup_storage_size.into()),
        ("max_compute_workgroups_per_dimension", l.max_compute_workgroups_per_dimension.into()),
        ("max_storage_buffers_per_shader_stage", l.max_storage_buffers_per_shader_stage.into()),
        ("max_storage_buffer_binding_size", l.max_storage_buffer_binding_size),
        ("max_buffer_size", l.max_buffer_size),
        ("min_uniform_buffer_offset_alignment", l.min_uniform_buffer_offset_alignment.into()),
    ];
    for (name, value) in rows {
        println!("  {name:<40} {value}");
    }
    println!("tile sizes: {} (from: {})", gpu.tuning(), gpu.tuning_source());
    println!("kernels: {}", gpu.kernels());
}

/// `unet-wgpu tune`: measure and save the tile sizes, or (`print`) show those in use.
fn tune(gpu: &Gpu, budget: f64, print: bool) -> anyhow::Result<()> {
    let path = default_cache_path();
    if print {
        println!("tile sizes in use: {}", gpu.tuning());
        println!("from: {}", gpu.tuning_source());
        println!("builtin for this adapter: {}", Tuning::builtin(&gpu.info));
        match &path {
            Some(p) => println!("cache file: {}{}", p.display(), if p.exists() { "" } else { " (not written yet)" }),
            None => println!("cache file: none ({})", CacheError::NoPath),
        }
        return Ok(());
    }
    let path = path.ok_or(CacheError::NoPath)?;
    anyhow::ensure!(budget.is_finite() && budget >= 0.0, "--budget {budget}: expected seconds, 0 or more");
    println!("measuring tile sizes for at most {budget} s ...");
    let (tuning, report) = Tuning::autotune(gpu, std::time::Duration::from_secs_f64(budget));
    println!("{}", report.table());
    let note = format!(
        "measured by unet-wgpu {} `tune` in {:.1} s ({}){}",
        env!("CARGO_PKG_VERSION"),
        report.elapsed.as_secs_f64(),
        report.clock,
        if report.complete { "" } else { "; the budget ran out before every candidate had all its runs" }
    );
    save_cache(&path, &AdapterKey::of(&gpu.info), &tuning, &note)?;
    println!("chosen: {tuning}");
    println!("written to {} (entry for {})", path.display(), gpu.describe());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Score { predictions, truth, palette: palette_file, unknown_as_ignore, json } = &cli.command {
        let unknown = if *unknown_as_ignore { Unknown::Ignore } else { Unknown::Error };
        let report = score_dirs(predictions, truth, &palette(palette_file)?, unknown)?;
        println!("{}", if *json { report.to_json() } else { report.to_table() });
        return Ok(()); // scoring needs no GPU
    }
    let options = GpuOptions {
        backend: cli.backend,
        limits: cli.limits,
        kernels: cli.kernels,
        tiling: cli.tiling,
        verbose: true,
        ..GpuOptions::default()
    };
    let gpu = Gpu::new(&options)?;
    match cli.command {
        Command::Score { .. } => unreachable!("handled above"),
        Command::Predict { checkpoint, inputs, out, patch, overlap, palette: palette_file } => {
            let options =
                PredictOptions { patch, overlap, palette: palette(&palette_file)?, ..PredictOptions::default() };
            for p in predict_files(&gpu, &checkpoint, &inputs, &out, &options)? {
                println!("{} -> {}, {}", p.input.display(), p.mask.display(), p.overlay.display());
            }
        }
        Command::Tune { budget, print } => tune(&gpu, budget, print)?,
        Command::Info => info(&gpu),
        Command::Train(args) => {
            let summary = train(&gpu, &args.options()?)?;
            if summary.best.is_finite() {
                println!("best validation mean IoU {:.4}: {}", summary.best, summary.best_checkpoint.display());
            } else {
                println!("no epoch was trained (--epochs {})", args.epochs);
            }
        }
        Command::CompareLosses { train: args, losses, seeds } => {
            anyhow::ensure!(args.trace.is_none(), "--trace records one run: use it with `train`, not `compare-losses`");
            let losses = if losses.is_empty() { LossName::ALL.to_vec() } else { losses };
            let table = compare_losses(&gpu, &CompareOptions { base: args.options()?, losses, seeds })?;
            println!("{table}");
        }
    }
    Ok(())
}
