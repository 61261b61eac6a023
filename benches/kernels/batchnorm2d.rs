//! Batch normalisation: statistics (a two-pass per-channel reduction), the
//! normalisation, and the training backward, plain and with the ReLU + dropout
//! epilogue fused in (the U-Net's batch-norm path). Memory-bound (GB/s).

use crate::common::bench::Bench;
use unet_wgpu::ops::batchnorm2d::{
    batchnorm2d_backward, batchnorm2d_forward, batchnorm2d_stats, reference, Backward, Channels, Forward, Grads,
};
use unet_wgpu::ops::conv2d::Epilogue;
use unet_wgpu::testing::{assert_close_f32, random_vec, to_f64};
use unet_wgpu::{Accumulate, Mode};

use crate::{shape_str, unet_levels};

pub fn run(b: &mut Bench) {
    if !b.wants("batchnorm") {
        return;
    }
    let gpu = b.gpu;
    // Correctness first, on an odd shape whose channels split into several chunks.
    let dims = [2, 3, 67, 129];
    let x: Vec<f32> = random_vec(1, dims.iter().product()).iter().map(|v| 100.0 + v).collect();
    let xt = gpu.upload(&x, &dims);
    let (rm, rv, mean, invstd) =
        (gpu.upload(&[0.0; 3], &[3]), gpu.upload(&[1.0; 3], &[3]), gpu.empty(&[3]), gpu.empty(&[3]));
    let (gamma, beta, y) = (gpu.upload(&[1.0; 3], &[3]), gpu.upload(&[0.0; 3], &[3]), gpu.empty(&dims));
    let mut enc = gpu.encoder();
    batchnorm2d_stats(gpu, &mut enc, &xt, &rm, &rv, &mean, &invstd);
    let ch = Channels { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta };
    batchnorm2d_forward(gpu, &mut enc, &Forward { x: &xt, ch, y: &y, epilogue: Epilogue::Identity });
    gpu.submit(enc);
    let want = reference::batchnorm2d_forward_train(&to_f64(&x), &[1.0; 3], &[0.0; 3], dims, Epilogue::Identity);
    assert_close_f32("batchnorm2d", &gpu.read(&y), &want, 1e-4);

    // The fused epilogue: forward, and the backward's dx through it.
    let epilogue = Epilogue::ReluDropout { p: 0.2, seed: 42 };
    let dy = random_vec(4, x.len());
    let (dyt, dx) = (gpu.upload(&dy, &dims), gpu.upload(&vec![0.0; x.len()], &dims));
    let mut enc = gpu.encoder();
    batchnorm2d_forward(gpu, &mut enc, &Forward { x: &xt, ch, y: &y, epilogue });
    batchnorm2d_backward(
        gpu,
        &mut enc,
        &Backward {
            mode: Mode::Train,
            x: &xt,
            dy: &dyt,
            ch,
            grads: Grads { dx: Some((&dx, Accumulate::Add)), dgamma: None, dbeta: None },
            epilogue,
        },
    );
    gpu.submit(enc);
    let (xf, mean, invstd) = (to_f64(&x), to_f64(&gpu.read(&mean)), to_f64(&gpu.read(&invstd)));
    let (gamma, beta) = ([1.0; 3], [0.0; 3]);
    let want = reference::batchnorm2d_forward(
        &xf,
        reference::Channels { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta },
        dims,
        epilogue,
    );
    assert_close_f32("batchnorm2d fused", &gpu.read(&y), &want, 1e-4);
    let ch = reference::Channels { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta };
    let (want_dx, _, _) = reference::batchnorm2d_backward(&xf, &to_f64(&dy), ch, dims, true, epilogue);
    assert_close_f32("batchnorm2d fused backward", &gpu.read(&dx), &want_dx, 1e-3);

    for shape in unet_levels() {
        let (n, c) = (shape.iter().product(), [shape[1]]);
        let x = gpu.upload(&random_vec(2, n), &shape);
        let dy = gpu.upload(&random_vec(3, n), &shape);
        let (y, dx) = (gpu.empty(&shape), gpu.empty(&shape));
        let ones = vec![1.0; c[0]];
        let (gamma, beta, rm, rv) =
            (gpu.upload(&ones, &c), gpu.upload(&ones, &c), gpu.upload(&ones, &c), gpu.upload(&ones, &c));
        let (mean, invstd, dgamma, dbeta) = (gpu.empty(&c), gpu.empty(&c), gpu.empty(&c), gpu.empty(&c));
        let bytes = 4.0 * n as f64;
        // Statistics read x once; the normalisation reads x and writes y; the
        // backward reads x and dy for the channel sums, then x and dy again and
        // dx twice (it accumulates).
        let ch = Channels { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta };
        b.case("batchnorm2d_stats", &shape_str(&shape), None, Some(bytes), |gpu, enc| {
            batchnorm2d_stats(gpu, enc, &x, &rm, &rv, &mean, &invstd)
        });
        b.case("batchnorm2d_forward", &shape_str(&shape), None, Some(2.0 * bytes), |gpu, enc| {
            batchnorm2d_forward(gpu, enc, &Forward { x: &x, ch, y: &y, epilogue: Epilogue::Identity })
        });
        b.case("batchnorm2d_backward", &shape_str(&shape), None, Some(6.0 * bytes), |gpu, enc| {
            let grads = Grads { dx: Some((&dx, Accumulate::Add)), dgamma: Some(&dgamma), dbeta: Some(&dbeta) };
            batchnorm2d_backward(
                gpu,
                enc,
                &Backward { mode: Mode::Train, x: &x, dy: &dy, ch, grads, epilogue: Epilogue::Identity },
            )
        });
        // Fused ReLU + dropout: the forward moves what the plain one does (the chain
        // batchnorm -> relu -> dropout moves 6x), and so does the backward, which recomputes
        // the gate from x rather than reading y (the chain: 6x here, plus 4x for relu's
        // backward and 3x for dropout's).
        let epilogue = Epilogue::ReluDropout { p: 0.1, seed: 7 };
        b.case("batchnorm2d_forward_relu_dropout", &shape_str(&shape), None, Some(2.0 * bytes), |gpu, enc| {
            batchnorm2d_forward(gpu, enc, &Forward { x: &x, ch, y: &y, epilogue })
        });
        b.case("batchnorm2d_backward_relu_dropout", &shape_str(&shape), None, Some(6.0 * bytes), |gpu, enc| {
            let grads = Grads { dx: Some((&dx, Accumulate::Add)), dgamma: Some(&dgamma), dbeta: Some(&dbeta) };
            batchnorm2d_backward(gpu, enc, &Backward { mode: Mode::Train, x: &x, dy: &dy, ch, grads, epilogue })
        });
    }
}
