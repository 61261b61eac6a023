//! The fused softmax + Dice + CE loss (value and gradient) against the same
//! loss built from separate kernels (softmax, loss on stored probabilities,
//! softmax backward), at batch 16 x 6 classes x 256 x 256. Memory-bound: GB/s
//! counts the fused path's minimum traffic for both, so the ratio of times is
//! the ratio of GB/s.

use crate::common::bench::Bench;
use unet_wgpu::loss::{loss_forward_backward, loss_unfused, reference, LossConfig, LossOutput, Term, VALUES_LEN};
use unet_wgpu::rng::Rng;
use unet_wgpu::testing::{assert_close_f32, to_f64};

pub fn run(b: &mut Bench) {
    if !b.wants("loss_") {
        return;
    }
    let gpu = b.gpu;
    let cfg = LossConfig::sum(&[(1.0, Term::Dice { pooled: false }), (1.0, Term::CrossEntropy)]);
    let problem = |[n, c, h, w]: [usize; 4]| {
        let mut rng = Rng::new(3);
        let z: Vec<f32> = (0..n * c * h * w).map(|_| rng.range(-4.0, 4.0) as f32).collect();
        let y: Vec<u32> = (0..n * h * w).map(|_| rng.below(c) as u32).collect();
        (z, y)
    };
    let run = |dims: [usize; 4]| {
        let (z, y) = problem(dims);
        let (zt, yt) = (gpu.upload(&z, &dims), gpu.upload_u32(&y, &[dims[0], dims[2], dims[3]]));
        let weights = gpu.upload(&[1.0; 6], &[6]);
        let out = LossOutput { values: gpu.empty(&[VALUES_LEN]), dlogits: gpu.empty(&dims) };
        (zt, yt, weights, out, z, y)
    };
    // Correctness first, both paths, on an odd shape.
    let small = [2, 6, 13, 17];
    for fused in [true, false] {
        let (zt, yt, weights, out, z, y) = run(small);
        let mut enc = gpu.encoder();
        if fused {
            loss_forward_backward(gpu, &mut enc, &cfg, &zt, &yt, &weights, &out);
        } else {
            loss_unfused(gpu, &mut enc, &cfg, &zt, &yt, &weights, &out);
        }
        gpu.submit(enc);
        let want = reference::loss(&cfg, &to_f64(&z), &y, small);
        assert_close_f32("loss dlogits", &gpu.read(&out.dlogits), &want.grad, 1e-3);
    }

    let dims = [16, 6, 256, 256];
    let (zt, yt, weights, out, _, _) = run(dims);
    let pixels = (16 * 256 * 256) as f64;
    let bytes = 4.0 * (3.0 * 6.0 * pixels + 2.0 * pixels);
    let shape = "16x6x256x256 dice+ce";
    b.case("loss_fused", shape, None, Some(bytes), |gpu, enc| {
        loss_forward_backward(gpu, enc, &cfg, &zt, &yt, &weights, &out)
    });
    b.case("loss_unfused", shape, None, Some(bytes), |gpu, enc| loss_unfused(gpu, enc, &cfg, &zt, &yt, &weights, &out));
    let time = |name: &str| b.results.iter().rev().find(|m| m.name == name).map(|m| m.seconds);
    if let (Some(fused), Some(unfused)) = (time("loss_fused"), time("loss_unfused")) {
        println!(
            "loss: fused {:.2} ms, unfused {:.2} ms: fused is {:.2}x faster",
            fused * 1e3,
            unfused * 1e3,
            unfused / fused
        );
    }
}
