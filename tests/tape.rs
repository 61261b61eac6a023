//! The tape composes ops into a network and gets the whole gradient right: a
//! tiny U-Net block (conv, batch norm, ReLU, pool, conv, transposed conv and
//! bilinear upsampling, two concatenations that reuse a tensor, a 1x1 head)
//! runs on the GPU through `Step`, and the gradient of `sum(r * y)` w.r.t.
//! every input and parameter is checked against central finite differences of
//! the same network built from the f64 references.

use unet_wgpu::ops::batchnorm2d::{batchnorm2d, reference as bn_ref};
use unet_wgpu::ops::concat::{concat, reference as cat_ref};
use unet_wgpu::ops::conv2d::{conv2d, reference as conv_ref, Conv2d, Epilogue};
use unet_wgpu::ops::conv_transpose2d::{conv_transpose2d, reference as convt_ref};
use unet_wgpu::ops::maxpool2d::{maxpool2d, reference as pool_ref};
use unet_wgpu::ops::relu::{reference as relu_ref, relu};
use unet_wgpu::ops::upsample::{reference as up_ref, upsample, Upsample};
use unet_wgpu::testing::{assert_close_f32, dot, gpu, numeric_grad, random_vec, to_f64};
use unet_wgpu::Step;

const N: usize = 2;
const H: usize = 6;
const W: usize = 10;

/// Names and shapes of the network's inputs, in the order `forward` takes them.
const INPUTS: [(&str, &[usize]); 11] = [
    ("x", &[N, 3, H, W]),
    ("w1", &[4, 3, 3, 3]),
    ("b1", &[4]),
    ("gamma", &[4]),
    ("beta", &[4]),
    ("w2", &[5, 4, 3, 3]),
    ("b2", &[5]),
    ("wt", &[5, 4, 2, 2]),
    ("bt", &[4]),
    ("w3", &[2, 13, 1, 1]),
    ("b3", &[2]),
];

/// The network in f64 from the references: returns y [N,2,H,W].
fn reference_forward(v: &[Vec<f64>]) -> Vec<f64> {
    let same = Conv2d::new(1, 1);
    let h1 = conv_ref::conv2d_forward(&v[0], [N, 3, H, W], &v[1], [4, 3, 3, 3], Some(&v[2]), &same);
    let h1 = bn_ref::batchnorm2d_forward_train(&h1, &v[3], &v[4], [N, 4, H, W], Epilogue::Identity);
    let h1 = relu_ref::relu_forward(&h1);
    let (p, _) = pool_ref::maxpool2d_forward(&h1, [N, 4, H, W]);
    let h2 = conv_ref::conv2d_forward(&p, [N, 4, H / 2, W / 2], &v[5], [5, 4, 3, 3], Some(&v[6]), &same);
    let up = convt_ref::conv_transpose2d_forward(&h2, &v[7], Some(&v[8]), [N, 5, H / 2, W / 2], 4);
    let bil = up_ref::upsample_forward(Upsample::Bilinear, &h2, [N, 5, H / 2, W / 2]);
    let c = cat_ref::concat_forward(&up, &h1, N, 4, 4, H * W);
    let c = cat_ref::concat_forward(&c, &bil, N, 8, 5, H * W);
    conv_ref::conv2d_forward(&c, [N, 13, H, W], &v[9], [2, 13, 1, 1], Some(&v[10]), &Conv2d::new(1, 0))
}

#[test]
fn a_small_unet_block_has_the_gradient_of_finite_differences() {
    let gpu = gpu();
    let mut values: Vec<Vec<f32>> =
        INPUTS.iter().enumerate().map(|(k, (_, s))| random_vec(k as u64 + 1, s.iter().product())).collect();
    values[3].iter_mut().for_each(|g| *g += 1.5); // batch-norm scales away from zero
    let r = random_vec(99, N * 2 * H * W);

    let tensors: Vec<_> = INPUTS.iter().zip(&values).map(|((_, s), v)| gpu.upload(v, s).with_grad()).collect();
    let (mean, var) = (gpu.upload(&[0.0; 4], &[4]), gpu.upload(&[1.0; 4], &[4]));
    let t = &tensors;
    let mut step = Step::train(gpu);
    let same = Conv2d::new(1, 1);
    let h1 = conv2d(&mut step, &t[0], &t[1], Some(&t[2]), same, Epilogue::Identity);
    let h1 = batchnorm2d(&mut step, &h1, &t[3], &t[4], &mean, &var, Epilogue::Identity);
    let h1 = relu(&mut step, &h1);
    let p = maxpool2d(&mut step, &h1);
    let h2 = conv2d(&mut step, &p, &t[5], Some(&t[6]), same, Epilogue::Identity);
    let up = conv_transpose2d(&mut step, &h2, &t[7], Some(&t[8]));
    let bil = upsample(&mut step, &h2, Upsample::Bilinear);
    let c = concat(&mut step, &up, &h1);
    let c = concat(&mut step, &c, &bil);
    let y = conv2d(&mut step, &c, &t[9], Some(&t[10]), Conv2d::new(1, 0), Epilogue::Identity);
    assert_eq!(step.tape_len(), 10);
    let seed = gpu.upload(&r, y.shape());
    let grads = step.backward(vec![(y.clone(), seed)]);
    let got: Vec<_> = t.iter().map(|x| grads.get(x).expect("every input gets a gradient").clone()).collect();
    step.submit();

    let v64: Vec<Vec<f64>> = values.iter().map(|v| to_f64(v)).collect();
    assert_close_f32("y", &gpu.read(&y), &reference_forward(&v64), 1e-4);
    let r64 = to_f64(&r);
    let numeric: Vec<Vec<f64>> = (0..INPUTS.len())
        .map(|k| {
            let loss = |xk: &[f64]| {
                let mut v = v64.clone();
                v[k] = xk.to_vec();
                dot(&r64, &reference_forward(&v))
            };
            numeric_grad(loss, &v64[k], 1e-6)
        })
        .collect();
    for (k, (name, _)) in INPUTS.iter().enumerate() {
        let gpu_grad = gpu.read(&got[k]);
        if *name == "b1" {
            // Batch norm subtracts the channel mean, so the bias before it has
            // an exact gradient of zero; the GPU's is rounding noise, which must
            // be small next to the gradient of the weights beside it.
            let rms_w1 = (numeric[1].iter().map(|g| g * g).sum::<f64>() / numeric[1].len() as f64).sqrt();
            assert!(numeric[k].iter().all(|g| g.abs() < 1e-6 * rms_w1), "db1 should vanish: {:?}", numeric[k]);
            assert!(gpu_grad.iter().all(|g| (*g as f64).abs() < 1e-4 * rms_w1), "db1 on the GPU: {gpu_grad:?}");
            continue;
        }
        assert_close_f32(&format!("d{name}"), &gpu_grad, &numeric[k], 1e-3);
    }
}
