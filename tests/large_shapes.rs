//! The split-K weight gradients at the U-Net's largest level, against their
//! f64 references. Unit tests use small shapes; these catch what only long
//! loops show, e.g. lavapipe ends any shader loop after 65535 iterations, so a
//! thread that walks too many pixels would silently return a partial sum. The textbook kernels
//! cut their sums into runs for the same reason.

use unet_wgpu::ops::batchnorm2d::{reference as bn_ref, textbook};
use unet_wgpu::ops::conv2d::{self, conv2d_backward_weight, reference as conv_ref, BackwardWeight, Conv2d, Epilogue};
use unet_wgpu::ops::conv_transpose2d::{self, conv_transpose2d_backward_weight, reference as convt_ref};
use unet_wgpu::testing::{assert_close_f32, gpu, random_vec, to_f64};
use unet_wgpu::{Accumulate, Mode};

#[test]
fn conv2d_weight_gradient_of_the_top_level() {
    let gpu = gpu();
    for (xd, wd) in [([4, 3, 256, 256], [16, 3, 3, 3]), ([4, 16, 256, 256], [16, 16, 3, 3])] {
        let p = Conv2d::new(1, 1);
        let yd = [xd[0], wd[0], xd[2], xd[3]];
        let (x, dy) = (random_vec(1, xd.iter().product()), random_vec(2, yd.iter().product()));
        let (xt, dyt, dw, db) = (gpu.upload(&x, &xd), gpu.upload(&dy, &yd), gpu.empty(&wd), gpu.empty(&[wd[0]]));
        let mut enc = gpu.encoder();
        enc.clear(&dw);
        enc.clear(&db);
        conv2d_backward_weight(
            gpu,
            &mut enc,
            &BackwardWeight { x: &xt, dy: &dyt, dw: &dw, db: Some(&db), p, tiling: None },
        );
        gpu.submit(enc);
        let (want_dw, want_db) = conv_ref::conv2d_backward_weight(&to_f64(&x), &to_f64(&dy), xd, wd, &p);
        assert_close_f32(&format!("dw {xd:?}"), &gpu.read(&dw), &want_dw, 1e-3);
        assert_close_f32(&format!("db {xd:?}"), &gpu.read(&db), &want_db, 1e-3);
    }
}

#[test]
fn conv_transpose2d_weight_gradient_into_the_top_level() {
    let gpu = gpu();
    let (xd, co) = ([4, 32, 128, 128], 16);
    let yd = [xd[0], co, 2 * xd[2], 2 * xd[3]];
    let (x, dy) = (random_vec(3, xd.iter().product()), random_vec(4, yd.iter().product()));
    let (xt, dyt, dw, db) =
        (gpu.upload(&x, &xd), gpu.upload(&dy, &yd), gpu.empty(&[xd[1], co, 2, 2]), gpu.empty(&[co]));
    let mut enc = gpu.encoder();
    enc.clear(&dw);
    enc.clear(&db);
    conv_transpose2d_backward_weight(
        gpu,
        &mut enc,
        &conv_transpose2d::BackwardWeight { x: &xt, dy: &dyt, dw: &dw, db: Some(&db), workgroups: None },
    );
    gpu.submit(enc);
    let (want_dw, want_db) = convt_ref::conv_transpose2d_backward_weight(&to_f64(&x), &to_f64(&dy), xd, co);
    assert_close_f32("convT dw", &gpu.read(&dw), &want_dw, 1e-3);
    assert_close_f32("convT db", &gpu.read(&db), &want_db, 1e-3);
}

#[test]
fn textbook_conv2d_weight_gradient_of_the_top_level() {
    // 4 x 256 x 256 pixels a sum: the textbook kernel cuts it into runs under the loop guard.
    let gpu = gpu();
    let (xd, wd, p) = ([4, 3, 256, 256], [16, 3, 3, 3], Conv2d::new(1, 1));
    let yd = [xd[0], wd[0], xd[2], xd[3]];
    let (x, dy) = (random_vec(5, xd.iter().product()), random_vec(6, yd.iter().product()));
    let (xt, dyt, dw, db) = (gpu.upload(&x, &xd), gpu.upload(&dy, &yd), gpu.empty(&wd), gpu.empty(&[wd[0]]));
    let mut enc = gpu.encoder();
    enc.clear(&dw);
    enc.clear(&db);
    conv2d::textbook::conv2d_backward_weight(gpu, &mut enc, &xt, &dyt, &dw, Some(&db), p);
    gpu.submit(enc);
    let (want_dw, want_db) = conv_ref::conv2d_backward_weight(&to_f64(&x), &to_f64(&dy), xd, wd, &p);
    assert_close_f32("textbook dw", &gpu.read(&dw), &want_dw, 1e-3);
    assert_close_f32("textbook db", &gpu.read(&db), &want_db, 1e-3);
}

#[test]
fn textbook_conv_transpose2d_weight_gradient_into_the_top_level() {
    // 4 x 128 x 128 input pixels (the weight's sum) and 4 x 256 x 256 output pixels (the bias's).
    let gpu = gpu();
    let (xd, co) = ([4, 4, 128, 128], 8);
    let yd = [xd[0], co, 2 * xd[2], 2 * xd[3]];
    let (x, dy) = (random_vec(7, xd.iter().product()), random_vec(8, yd.iter().product()));
    let (xt, dyt, dw, db) =
        (gpu.upload(&x, &xd), gpu.upload(&dy, &yd), gpu.empty(&[xd[1], co, 2, 2]), gpu.empty(&[co]));
    let mut enc = gpu.encoder();
    enc.clear(&dw);
    enc.clear(&db);
    conv_transpose2d::textbook::conv_transpose2d_backward_weight(gpu, &mut enc, &xt, &dyt, &dw, Some(&db));
    gpu.submit(enc);
    let (want_dw, want_db) = convt_ref::conv_transpose2d_backward_weight(&to_f64(&x), &to_f64(&dy), xd, co);
    assert_close_f32("textbook convT dw", &gpu.read(&dw), &want_dw, 1e-3);
    assert_close_f32("textbook convT db", &gpu.read(&db), &want_db, 1e-3);
}

#[test]
fn textbook_batch_norm_of_the_top_level() {
    // 4 x 256 x 256 values a channel: the textbook sums cut them into runs under the loop guard.
    let gpu = gpu();
    let dims = [4, 4, 256, 256];
    let (x, dy) = (random_vec(9, dims.iter().product()), random_vec(10, dims.iter().product()));
    let (xt, dyt) = (gpu.upload(&x, &dims), gpu.upload(&dy, &dims));
    let (gamma, beta) = (gpu.upload(&[1.0, 0.5, 2.0, 1.5], &[4]), gpu.upload(&[0.0; 4], &[4]));
    let [rm, rv, mean, invstd, dgamma, dbeta] = [(); 6].map(|_| gpu.upload(&[0.0; 4], &[4]));
    let dx = gpu.empty(&dims);
    let mut enc = gpu.encoder();
    textbook::batchnorm2d_stats(gpu, &mut enc, &xt, &rm, &rv, &mean, &invstd);
    let ch = textbook::Channels { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta };
    let grads = textbook::Grads { dx: Some((&dx, Accumulate::Overwrite)), dgamma: Some(&dgamma), dbeta: Some(&dbeta) };
    textbook::batchnorm2d_backward(gpu, &mut enc, Mode::Train, &xt, &dyt, ch, grads);
    gpu.submit(enc);
    let (xf, dyf) = (to_f64(&x), to_f64(&dy));
    let (want_mean, var) = bn_ref::batch_stats(&xf, dims);
    let want_invstd = bn_ref::invstd(&var);
    assert_close_f32("textbook mean", &gpu.read(&mean), &want_mean, 1e-4);
    assert_close_f32("textbook invstd", &gpu.read(&invstd), &want_invstd, 1e-4);
    let gamma = [1.0, 0.5, 2.0, 1.5];
    let (want_dx, want_dgamma, want_dbeta) = bn_ref::batchnorm2d_backward(
        &xf,
        &dyf,
        bn_ref::Channels { mean: &want_mean, invstd: &want_invstd, gamma: &gamma, beta: &[0.0; 4] },
        dims,
        true,
        Epilogue::Identity,
    );
    assert_close_f32("textbook dx", &gpu.read(&dx), &want_dx, 1e-3);
    assert_close_f32("textbook dgamma", &gpu.read(&dgamma), &want_dgamma, 1e-3);
    assert_close_f32("textbook dbeta", &gpu.read(&dbeta), &want_dbeta, 1e-3);
}
