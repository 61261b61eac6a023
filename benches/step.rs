//! One training step of the reference workload, end to end: the default
//! U-Net (base 16, depth 4, 6 classes), a batch of 256x256 images, forward +
//! fused Dice + CE loss + backward + Adam, one submit per step.
//!
//! `cargo bench --bench step [-- --batch 4 --size 256 --steps 10]` prints the
//! adapter, the first (cold) step, the warm steps' median / min / max,
//! images per second, and the pool's allocations and bytes (a warm step
//! allocates nothing).

use std::time::Instant;

use unet_wgpu::gpu::MAX_TIMED_DISPATCHES;
use unet_wgpu::loss::{loss_forward_backward, LossConfig, LossOutput, Term, VALUES_LEN};
use unet_wgpu::nn::{UNet, UNetConfig};
use unet_wgpu::optim::{Method, OptimConfig, Optimizer};
use unet_wgpu::rng::Rng;
use unet_wgpu::{Gpu, GpuOptions, Mode, Step};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let (batch, size, steps) = (arg("--batch", 4), arg("--size", 256), arg("--steps", 10));
    let gpu = Gpu::new(&GpuOptions::default())?;
    println!("adapter: {}", gpu.describe());
    let model = UNet::new(&gpu, UNetConfig::default());
    let classes = model.config.classes;
    let flops = model.training_flops(batch, size, size);
    println!(
        "model: U-Net base 16, depth 4, {} parameters; batch {batch} x 3 x {size} x {size}; {:.2} GFLOP per step (convolutions)",
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

    // Allocated once: a tensor that outlives a step's submit returns to the pool
    // only at the next submit, so per-step outputs would cost one allocation in step 2.
    let out = LossOutput { values: gpu.empty(&[VALUES_LEN]), dlogits: gpu.empty(&[batch, classes, size, size]) };
    let mut times = Vec::new();
    let mut allocations = Vec::new();
    for s in 0..=steps {
        let start = Instant::now();
        let mut step = Step::train(&gpu);
        model.arena.zero_grads(&mut step.enc);
        let logits = model.forward(&mut step, &x, s as u64);
        loss_forward_backward(&gpu, &mut step.enc, &cfg, &logits, &y, &weights, &out);
        step.backward_into(vec![(logits, out.dlogits.clone())], model.arena.grads());
        opt.step(&gpu, &mut step.enc, &model.arena, 1e-3);
        step.submit();
        gpu.wait();
        times.push(start.elapsed().as_secs_f64());
        allocations.push(gpu.pool_stats().allocations);
    }
    // One more step with GPU timestamps around every dispatch: where the time goes.
    let mut step = Step::with_encoder(&gpu, gpu.timed_encoder(MAX_TIMED_DISPATCHES), Mode::Train);
    model.arena.zero_grads(&mut step.enc);
    let logits = model.forward(&mut step, &x, 0);
    loss_forward_backward(&gpu, &mut step.enc, &cfg, &logits, &y, &weights, &out);
    step.backward_into(vec![(logits, out.dlogits.clone())], model.arena.grads());
    opt.step(&gpu, &mut step.enc, &model.arena, 1e-3);
    if let Some(timings) = gpu.submit_timed(step.enc) {
        let mut by_kernel: Vec<(String, f64, usize)> = Vec::new();
        for (name, t) in &timings.dispatches {
            match by_kernel.iter_mut().find(|(n, _, _)| n == name) {
                Some(entry) => (entry.1, entry.2) = (entry.1 + t, entry.2 + 1),
                None => by_kernel.push((name.clone(), *t, 1)),
            }
        }
        by_kernel.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = by_kernel.iter().map(|k| k.1).sum();
        println!("GPU time by kernel ({} dispatches, {:.3} s):", timings.dispatches.len(), total);
        for (name, t, count) in by_kernel {
            println!("  {name:<48} {count:>4} x  {:>9.1} ms  {:>5.1}%", t * 1e3, 100.0 * t / total);
        }
    }

    let first = times.remove(0);
    let mut warm = times.clone();
    warm.sort_by(f64::total_cmp);
    let median = warm[warm.len() / 2];
    println!("first step: {:.3} s (pipelines compiled, buffers allocated)", first);
    println!(
        "warm steps ({}): median {:.3} s, min {:.3} s, max {:.3} s, {:.2} images/s, {:.2} GFLOP/s",
        warm.len(),
        median,
        warm[0],
        warm[warm.len() - 1],
        batch as f64 / median,
        flops / median / 1e9
    );
    let stats = gpu.pool_stats();
    println!(
        "submits per step: 1; GPU buffers allocated: {} after step 1, {} after the last; pool {:.1} MiB",
        allocations[0],
        allocations[allocations.len() - 1],
        stats.bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}
