//! Kernel benchmarks at U-Net shapes (batch 4, or `BENCH_BATCH`; 256x256 input; 16
//! channels at 256x256 down to 256 channels at 16x16).
//!
//! `cargo bench --bench kernels [-- --tiling gpu|cpu] [FILTER]` first measures the ceilings (a
//! 1024^3 register-tiled GEMM and a 64 MiB vec4 copy), then prints one row per
//! kernel: median and best time, GFLOP/s (compute-bound kernels) or GB/s
//! (memory-bound), that rate as a percentage of the GEMM's or the copy's, and
//! whether GPU timestamps or the wall clock timed it. Each case first checks
//! the kernel against its reference on a small shape, so a fast wrong kernel
//! cannot post a number. The ceilings are measured again at the end: on a
//! shared machine whose speed drifts, the two show by how much.

use crate::common::bench::Bench;
use unet_wgpu::{Gpu, GpuOptions};

#[path = "../common/mod.rs"]
mod common;

mod batchnorm2d;
mod bias_add;
mod concat;
mod conv2d;
mod conv_gemm;
mod conv_transpose2d;
mod dropout;
mod elementwise;
mod loss;
mod matmul;
mod maxpool2d;
mod metrics;
mod reduce;
mod relu;
mod softmax;
mod upsample;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; the first other argument (not the value of `--tiling`)
    // filters by name.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tiling_at = args.iter().position(|a| a == "--tiling");
    let tiling = tiling_at.and_then(|i| args.get(i + 1)).map(|v| v.parse()).transpose()?;
    let filter = (0..args.len())
        .find(|&i| !args[i].starts_with("--") && tiling_at.is_none_or(|t| i != t + 1))
        .map_or(String::new(), |i| args[i].clone());
    // `--tiling gpu|cpu` (or UNET_WGPU_TILING) forces a family of tile sizes on the default wrappers.
    let gpu = Gpu::new(&GpuOptions { tiling, ..GpuOptions::default() })?;
    println!("tile sizes: {}; from: {}", gpu.tuning(), gpu.tuning_source());
    let reps = std::env::var("BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut bench = Bench::new(&gpu, &filter, reps);
    // The yardsticks first: every row shows its rate as a share of them.
    bench.measure_ceilings();
    println!("{}", bench.header());
    batchnorm2d::run(&mut bench);
    bias_add::run(&mut bench);
    concat::run(&mut bench);
    conv2d::run(&mut bench);
    conv_transpose2d::run(&mut bench);
    conv_gemm::run(&mut bench);
    dropout::run(&mut bench);
    elementwise::run(&mut bench);
    loss::run(&mut bench);
    matmul::run(&mut bench);
    maxpool2d::run(&mut bench);
    metrics::run(&mut bench);
    reduce::run(&mut bench);
    relu::run(&mut bench);
    softmax::run(&mut bench);
    upsample::run(&mut bench);
    if !bench.results.is_empty() {
        let first = bench.ceilings.expect("measured above");
        let last = bench.measure_ceilings();
        println!(
            "ceilings again after the rows: GEMM {:.2} GFLOP/s, copy {:.2} GB/s (the rows' % used the first: {:.2}, {:.2})",
            last.gemm_gflops, last.copy_gbs, first.gemm_gflops, first.copy_gbs
        );
    }
    Ok(())
}

/// U-Net activation shapes `[n, c, h, w]`, one per level: batch 4, or `$BENCH_BATCH` (2 is
/// what `train` runs by default).
pub fn unet_levels() -> [[usize; 4]; 5] {
    let n = std::env::var("BENCH_BATCH").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    [[n, 16, 256, 256], [n, 32, 128, 128], [n, 64, 64, 64], [n, 128, 32, 32], [n, 256, 16, 16]]
}

/// `"4x16x256x256"`.
pub fn shape_str(s: &[usize]) -> String {
    s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}
