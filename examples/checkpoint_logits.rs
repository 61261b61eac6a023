//! Writes the logits a checkpoint gives for a fixed input, for checking the
//! checkpoint in PyTorch (`benches/reference/check_checkpoint.py`):
//!
//! `cargo run --release --example checkpoint_logits -- CHECKPOINT OUT.safetensors`
//!
//! The input is 1 x 3 x 64 x 64 values in [0, 1) from seed 0; the model runs
//! in eval mode (running statistics in batch norm, no dropout).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use unet_wgpu::checkpoint;
use unet_wgpu::nn::UNet;
use unet_wgpu::rng::Rng;
use unet_wgpu::{Gpu, GpuOptions, Step};

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let [ckpt, out] = args.as_slice() else {
        anyhow::bail!("usage: checkpoint_logits CHECKPOINT OUT.safetensors");
    };
    let gpu = Gpu::new(&GpuOptions::default())?;
    let model = UNet::from_checkpoint(&gpu, &checkpoint::load(ckpt)?).context("loading the checkpoint")?;
    let mut rng = Rng::new(0);
    let shape = [1, model.config.in_channels, 64, 64];
    let input: Vec<f32> = (0..shape.iter().product()).map(|_| rng.uniform() as f32).collect();
    let x = gpu.upload(&input, &shape);
    let mut step = Step::eval(&gpu);
    let logits = model.forward(&mut step, &x, 0);
    step.submit();
    checkpoint::save(&gpu, out, &[("input".into(), x), ("logits".into(), logits)], &BTreeMap::new())?;
    println!("wrote {}", out.display());
    Ok(())
}
