//! One training step of the reference workload, end to end: the default
//! U-Net (base 16, depth 4, 6 classes), a batch of 256x256 images, forward +
//! fused Dice + CE loss + backward + Adam, one submit per step.
//!
//! `cargo bench --bench step [-- --batch 4 --size 256 --steps 10 --batch-norm --trace
//! --other-steps 2 --tiling gpu|cpu]` prints the adapter and the kernels (tuned, or the textbook ones with
//! `UNET_WGPU_KERNELS=reference`), GPU time by kernel (one extra timed step), the first (cold) step with the
//! pipelines it compiled and the time that took, the warm steps' median / min / max, images
//! per second, submits and blocking readbacks per warm step (1 and 0), the pool's allocations
//! and bytes (its peak: a warm step allocates nothing), and then the ceilings (see
//! `benches/common/ceiling.rs`) and GPU time by category (conv forward, backward data, backward
//! weight, transposed conv, pool, loss, optimizer, other, which holds the buffer copies and
//! clears) with the convolutions' GFLOP/s as a share of the GEMM ceiling. `--trace` adds
//! every dispatch of the timed step, in the order they ran (forward then backward), so
//! that a kernel's time can be traced to its layer. Last, `--other-steps` steps (default 2, the
//! first one cold; 0: none) on the other kernels, and both warm medians side by side: what the
//! tuning gains over the textbook kernels, as a measured number.

use std::time::Instant;

// The kernels bench uses all of the harness; this one only its timing and ceilings.
#[allow(dead_code)]
#[path = "common/mod.rs"]
mod common;

use crate::common::bench::{Bench, CEILING_GEMM};
use unet_wgpu::loss::{loss_forward_backward, LossConfig, LossOutput, Term, VALUES_LEN};
use unet_wgpu::nn::{UNet, UNetConfig, Upsampling};
use unet_wgpu::optim::{Method, OptimConfig, Optimizer};
use unet_wgpu::rng::Rng;
use unet_wgpu::runtime::MAX_TIMED_DISPATCHES;
use unet_wgpu::{Gpu, GpuOptions, Kernels, Mode, Step, Tensor};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One training step's inputs: the model, a batch, the loss, and the loss's output buffers
/// (allocated once: a tensor that outlives a step's submit returns to the pool only at the next
/// submit, so per-step outputs would cost one allocation in step 2).
struct Workload {
    model: UNet,
    x: Tensor,
    y: Tensor,
    cfg: LossConfig,
    weights: Tensor,
    out: LossOutput,
}

impl Workload {
    /// One step (forward, loss, backward, Adam, one submit) with dropout seed `seed`, waited for;
    /// returns its wall-clock seconds.
    fn step(&self, gpu: &Gpu, opt: &mut Optimizer, seed: u64) -> f64 {
        let start = Instant::now();
        let mut step = Step::train(gpu);
        self.model.arena.zero_grads(&mut step.enc);
        let logits = self.model.forward(&mut step, &self.x, seed);
        loss_forward_backward(gpu, &mut step.enc, &self.cfg, &logits, &self.y, &self.weights, &self.out);
        step.backward_into(vec![(logits, self.out.dlogits.clone())], self.model.arena.grads());
        opt.step(gpu, &mut step.enc, &self.model.arena, 1e-3);
        step.submit();
        gpu.wait();
        start.elapsed().as_secs_f64()
    }
}

/// The median of `times` (not empty).
fn median(times: &[f64]) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let (batch, size, steps) = (arg("--batch", 4), arg("--size", 256), arg("--steps", 10));
    // `--tiling gpu|cpu` (or UNET_WGPU_TILING) forces a family of tile sizes.
    let args: Vec<String> = std::env::args().collect();
    let tiling =
        args.iter().position(|a| a == "--tiling").and_then(|i| args.get(i + 1)).map(|v| v.parse()).transpose()?;
    let gpu = Gpu::new(&GpuOptions { tiling, ..GpuOptions::default() })?;
    println!("adapter: {}", gpu.describe());
    println!("tile sizes: {}; from: {}", gpu.tuning(), gpu.tuning_source());
    println!("kernels: {} (UNET_WGPU_KERNELS: tuned or reference)", gpu.kernels());
    let batch_norm = std::env::args().any(|a| a == "--batch-norm");
    let model = UNet::new(&gpu, UNetConfig { batch_norm, ..UNetConfig::default() });
    let classes = model.config.classes;
    let flops = model.training_flops(batch, size, size);
    println!(
        "model: U-Net base 16, depth 4{}, {} parameters; batch {batch} x 3 x {size} x {size}; {:.2} GFLOP per step (convolutions)",
        if batch_norm { ", batch norm" } else { "" },
        model.parameter_count(),
        flops / 1e9
    );

    let mut rng = Rng::new(1);
    let images: Vec<f32> = (0..batch * 3 * size * size).map(|_| rng.uniform() as f32).collect();
    let labels: Vec<u32> = (0..batch * size * size).map(|_| rng.below(classes) as u32).collect();
    let x = gpu.upload(&images, &[batch, 3, size, size]);
    let y = gpu.upload_u32(&labels, &[batch, size, size]);
    let cfg = LossConfig::sum(&[(1.0, Term::Dice { pooled: false }), (1.0, Term::CrossEntropy)]);
    let weights = gpu.upload(&vec![1.0; classes], &[classes]);
    let mut opt = Optimizer::new(&gpu, &model.arena, OptimConfig::new(Method::Adam));

    let out = LossOutput { values: gpu.empty(&[VALUES_LEN]), dlogits: gpu.empty(&[batch, classes, size, size]) };
    let work = Workload { model, x, y, cfg, weights, out };
    let mut times = Vec::new();
    let mut allocations = Vec::new();
    let counters_before = gpu.counters();
    let mut counters_after_first = counters_before;
    for s in 0..=steps {
        times.push(work.step(&gpu, &mut opt, s as u64));
        allocations.push(gpu.pool_stats().allocations);
        if s == 0 {
            counters_after_first = gpu.counters();
        }
    }
    let warm_counters = gpu.counters();
    let warm_steps = steps.max(1) as u64;
    // Counters over the warm steps only (the first step compiles and allocates).
    let (submits, readbacks) = (
        (warm_counters.submits - counters_after_first.submits) as f64 / warm_steps as f64,
        (warm_counters.readbacks - counters_after_first.readbacks) as f64 / warm_steps as f64,
    );

    // One more step with GPU timestamps around every dispatch: where the time goes. Forward
    // (with the loss) and backward (with the optimizer) go in two timed submits so that each
    // dispatch is known to belong to one or the other: the stride-1 backward-data
    // convolution runs through the forward kernel.
    let Workload { model, x, y, cfg, weights, out } = &work;
    let mut step = Step::with_encoder(&gpu, gpu.timed_encoder(MAX_TIMED_DISPATCHES), Mode::Train);
    model.arena.zero_grads(&mut step.enc);
    let logits = model.forward(&mut step, x, 0);
    loss_forward_backward(&gpu, &mut step.enc, cfg, &logits, y, weights, out);
    let forward_enc = std::mem::replace(&mut step.enc, gpu.timed_encoder(MAX_TIMED_DISPATCHES));
    let forward = gpu.submit_timed(forward_enc);
    step.backward_into(vec![(logits, out.dlogits.clone())], model.arena.grads());
    opt.step(&gpu, &mut step.enc, &model.arena, 1e-3);
    let backward = gpu.submit_timed(step.enc);
    let dispatches: Vec<(String, f64, bool)> = match (forward, backward) {
        (Some(f), Some(b)) => f
            .dispatches
            .into_iter()
            .map(|(n, t)| (n, t, false))
            .chain(b.dispatches.into_iter().map(|(n, t)| (n, t, true)))
            .collect(),
        _ => Vec::new(),
    };
    let total: f64 = dispatches.iter().map(|d| d.1).sum();
    if !dispatches.is_empty() {
        let mut by_kernel: Vec<(String, f64, usize)> = Vec::new();
        for (name, t, _) in &dispatches {
            match by_kernel.iter_mut().find(|(n, _, _)| n == name) {
                Some(entry) => (entry.1, entry.2) = (entry.1 + t, entry.2 + 1),
                None => by_kernel.push((name.clone(), *t, 1)),
            }
        }
        if std::env::args().any(|a| a == "--trace") {
            println!("GPU time by dispatch, in order:");
            for (i, (name, t, backward)) in dispatches.iter().enumerate() {
                let pass = if *backward { "backward" } else { "forward" };
                println!("  {i:>4} {pass:<8} {name:<56} {:>8.2} ms", t * 1e3);
            }
        }
        by_kernel.sort_by(|a, b| b.1.total_cmp(&a.1));
        let transfers = dispatches.iter().filter(|d| !d.0.contains("::")).count();
        println!(
            "GPU time by kernel ({} dispatches, {transfers} buffer copies and clears, {:.3} s):",
            dispatches.len() - transfers,
            total
        );
        for (name, t, count) in by_kernel {
            println!("  {name:<48} {count:>4} x  {:>9.1} ms  {:>5.1}%", t * 1e3, 100.0 * t / total);
        }
    }

    let first = times.remove(0);
    let mut warm = times.clone();
    warm.sort_by(f64::total_cmp);
    let median_warm = median(&warm);
    println!(
        "first step: {:.3} s ({} pipelines compiled in {:.3} s, buffers allocated)",
        first,
        counters_after_first.pipelines - counters_before.pipelines,
        (counters_after_first.pipeline_nanos - counters_before.pipeline_nanos) as f64 * 1e-9
    );
    println!(
        "warm steps ({}): median {:.3} s, min {:.3} s, max {:.3} s, {:.2} images/s, {:.2} GFLOP/s",
        warm.len(),
        median_warm,
        warm[0],
        warm[warm.len() - 1],
        batch as f64 / median_warm,
        flops / median_warm / 1e9
    );
    let stats = gpu.pool_stats();
    println!(
        "submits per step: {submits}; blocking readbacks per step: {readbacks}; GPU buffers allocated: {} after step 1, {} after the last",
        allocations[0],
        allocations[allocations.len() - 1],
    );
    println!(
        "peak GPU memory (buffer pool, never freed): {:.1} MiB in {} buffers",
        stats.bytes as f64 / (1 << 20) as f64,
        stats.allocations
    );

    // The ceilings last, so that their buffers do not count in the pool above.
    let mut bench = Bench::new(&gpu, "", 3);
    let ceilings = bench.measure_ceilings();
    println!(
        "ceilings: GEMM {:.2} GFLOP/s ({}, {n}^3), copy {:.2} GB/s",
        ceilings.gemm_gflops,
        gpu.tuning().matmul,
        ceilings.copy_gbs,
        n = CEILING_GEMM
    );
    if !dispatches.is_empty() {
        let category_flops = category_flops(&model.config, batch, size, size);
        let counted: f64 = category_flops.iter().map(|c| c.1).sum();
        assert!((counted - flops).abs() <= 1e-9 * flops, "FLOPs by category {counted} differ from the model's {flops}");
        println!("GPU time by category (share of the timed step; GFLOP/s of the (transposed) convolutions):");
        for cat in CATEGORIES {
            let t: f64 = dispatches.iter().filter(|d| category(&d.0, d.2) == cat).map(|d| d.1).sum();
            let n = dispatches.iter().filter(|d| category(&d.0, d.2) == cat).count();
            let f = category_flops.iter().find(|c| c.0 == cat).map(|c| c.1);
            let rate = match f {
                Some(f) if t > 0.0 => {
                    format!("{:>7.2} GFLOP/s {:>5.1}% of GEMM", f / t / 1e9, 100.0 * f / t / 1e9 / ceilings.gemm_gflops)
                }
                _ => String::new(),
            };
            println!("  {cat:<16} {n:>4} x {:>9.1} ms {:>5.1}%  {rate}", t * 1e3, 100.0 * t / total);
        }
    }

    // The other kernels: a cold step, then warm ones; both warm medians side by side.
    let other_steps = arg("--other-steps", 2);
    if other_steps > 0 {
        let kernels = gpu.kernels();
        let other = if kernels == Kernels::Tuned { Kernels::Reference } else { Kernels::Tuned };
        gpu.set_kernels(other);
        let mut other_times: Vec<f64> = (0..=other_steps).map(|s| work.step(&gpu, &mut opt, s as u64)).collect();
        gpu.set_kernels(kernels);
        let other_first = other_times.remove(0);
        let other_median = median(&other_times);
        println!(
            "{other} kernels: first step {other_first:.3} s, warm steps ({other_steps}): median {other_median:.3} s"
        );
        let (tuned, reference) =
            if kernels == Kernels::Tuned { (median_warm, other_median) } else { (other_median, median_warm) };
        println!("warm step, median: tuned {tuned:.3} s, reference (textbook kernels) {reference:.3} s: the tuned kernels are {:.1}x faster", reference / tuned);
    }
    Ok(())
}

/// Categories of the per-category breakdown, in print order.
const CATEGORIES: [&str; 8] =
    ["conv fwd", "conv bwd-data", "conv bwd-weight", "transposed conv", "pool", "loss", "optimizer", "other"];

/// The category of a dispatch of kernel `name` (`"<shader>::<entry point>"`); `backward`: it
/// was recorded by the backward pass or the optimizer. A textbook kernel counts with its op.
fn category(name: &str, backward: bool) -> &'static str {
    let (shader, entry) = name.split_once("::").unwrap_or((name, ""));
    match shader {
        "conv2d/textbook" if entry.starts_with("conv2d_forward") => "conv fwd",
        "conv2d/textbook" if entry.contains("backward_data") => "conv bwd-data",
        "conv2d/textbook" => "conv bwd-weight",
        "conv_transpose2d/textbook" => "transposed conv",
        // Backward data of a stride-1 convolution is the forward kernel run on dy.
        "conv2d/tiled" | "conv2d/tiled_backward" | "conv2d/shared"
            if entry.contains("backward_data") || (backward && entry.starts_with("conv2d_forward")) =>
        {
            "conv bwd-data"
        }
        "conv2d/tiled" | "conv2d/shared" if entry.starts_with("conv2d_forward") => "conv fwd",
        "conv2d/tiled_backward" if entry.contains("backward_weight") || entry.starts_with("conv2d_reduce") => {
            "conv bwd-weight"
        }
        "conv_transpose2d/tiled" | "conv_transpose2d/tiled_quads" => "transposed conv",
        "maxpool2d" => "pool",
        "loss" => "loss",
        "optim" => "optimizer",
        _ => "other",
    }
}

/// FLOPs of one training step by category, counted as [`UNet::training_flops`] counts them
/// (2 per multiply-add; the first convolution has no backward data): their sum is checked
/// against it.
fn category_flops(c: &UNetConfig, n: usize, h: usize, w: usize) -> Vec<(&'static str, f64)> {
    let f = |level: usize| (c.base << level) as f64;
    let pixels = |level: usize| (n * (h >> level) * (w >> level)) as f64;
    let conv = |level: usize, i: f64, o: f64, k: f64| pixels(level) * i * o * k * k;
    let (mut convs, mut transposed) = (0.0, 0.0);
    let mut input = c.in_channels as f64;
    for level in 0..=c.depth {
        convs += conv(level, input, f(level), 3.0) + conv(level, f(level), f(level), 3.0);
        input = f(level);
    }
    for level in 0..c.depth {
        match c.upsampling {
            Upsampling::Transposed => transposed += pixels(level + 1) * f(level + 1) * f(level) * 4.0,
            Upsampling::Bilinear => convs += conv(level, f(level + 1), f(level), 1.0),
        }
        convs += conv(level, 2.0 * f(level), f(level), 3.0) + conv(level, f(level), f(level), 3.0);
    }
    convs += conv(0, f(0), c.classes as f64, 1.0);
    let first = conv(0, c.in_channels as f64, f(0), 3.0);
    vec![
        ("conv fwd", 2.0 * convs),
        ("conv bwd-data", 2.0 * (convs - first)),
        ("conv bwd-weight", 2.0 * convs),
        ("transposed conv", 2.0 * 3.0 * transposed),
    ]
}
