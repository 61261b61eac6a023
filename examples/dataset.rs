//! Load a dataset (or make the synthetic one), time it, and print what the
//! trainer would see: tiles, patches, the split and the class frequencies.
//!
//! ```sh
//! cargo run --release --example dataset -- ../shared/datasets/dubai-aerial
//! cargo run --release --example dataset -- synthetic [--preview out.png]
//! ```
//! `--preview FILE` writes the first tile beside its colour-coded mask.

use std::time::Instant;

use anyhow::{Context, Result};
use unet_wgpu::data::{Dataset, LoadOptions, SplitOptions, DEFAULT_PATCH};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let source = args.first().map(String::as_str).unwrap_or("synthetic");
    let preview = args.iter().position(|a| a == "--preview").and_then(|i| args.get(i + 1));

    let start = Instant::now();
    let data = if source == "synthetic" {
        Dataset::synthetic(0, 8, 512)
    } else {
        Dataset::load(source, &LoadOptions::default()).with_context(|| format!("loading {source}"))?
    };
    let loaded = start.elapsed();
    let patches = data.patches(DEFAULT_PATCH)?;
    let patched = start.elapsed();
    let (train, val) = patches.split(&SplitOptions::default())?;
    let pixels: usize = data.tiles.iter().map(|t| t.width * t.height).sum();
    println!(
        "{source}: {} tiles, {:.1} Mpx, read in {:.2} s; {} patches of {DEFAULT_PATCH} in {:.2} s total",
        data.len(),
        pixels as f64 / 1e6,
        loaded.as_secs_f64(),
        patches.len(),
        patched.as_secs_f64()
    );
    println!("split by image 80/20: {} train, {} validation patches", train.len(), val.len());
    println!("train channel stats: {:?}", train.channel_stats());
    println!("\nall tiles:\n{}", data.class_frequencies());

    if let Some(path) = preview {
        let tile = &data.tiles[0];
        let labels: Vec<u32> = tile.labels.iter().map(|&l| l as u32).collect();
        let mask = data.palette.labels_to_rgb(&labels);
        let (w, h) = (tile.width, tile.height);
        let mut both = vec![0u8; 2 * w * h * 3];
        for y in 0..h {
            both[y * 6 * w..][..3 * w].copy_from_slice(&tile.rgb[y * 3 * w..][..3 * w]);
            both[y * 6 * w + 3 * w..][..3 * w].copy_from_slice(&mask[y * 3 * w..][..3 * w]);
        }
        image::RgbImage::from_raw(2 * w as u32, h as u32, both)
            .context("preview buffer")?
            .save(path)
            .with_context(|| format!("writing {path}"))?;
        println!("wrote {path} ({}: image | mask)", tile.name);
    }
    Ok(())
}
