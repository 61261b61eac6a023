//! Plain-Rust convolution on `f64`, the contract the shaders are tested against. Shapes are
//! passed as `[N,I,H,W]` for x and `[O,I,KH,KW]` for w.

use super::{Conv2d, Epilogue};
use crate::ops::{dropout, relu};

/// `epilogue(z)`, elementwise over a flat tensor: ReLU, then dropout with the mask of
/// [`dropout::reference`] (which indexes the flat tensor, as the shader does).
pub fn epilogue_forward(z: &[f64], e: Epilogue) -> Vec<f64> {
    match e {
        Epilogue::Identity => z.to_vec(),
        Epilogue::Relu => relu::reference::relu_forward(z),
        Epilogue::ReluDropout { p, seed } => {
            dropout::reference::dropout_forward(&relu::reference::relu_forward(z), p, seed)
        }
    }
}

/// `dz` given the pre-activation z and dy (not accumulated): the chain rule through dropout, then ReLU.
pub fn epilogue_backward(z: &[f64], dy: &[f64], e: Epilogue) -> Vec<f64> {
    match e {
        Epilogue::Identity => dy.to_vec(),
        Epilogue::Relu => relu::reference::relu_backward(z, dy),
        Epilogue::ReluDropout { p, seed } => {
            relu::reference::relu_backward(z, &dropout::reference::dropout_backward(dy, p, seed))
        }
    }
}

/// Input pixel `(ih, iw)` under output pixel `(oh, ow)` and tap `(kh, kw)`, if not padding.
fn input_pixel(p: &Conv2d, [h, w]: [usize; 2], [oh, ow, kh, kw]: [usize; 4]) -> Option<(usize, usize)> {
    let ih = (oh * p.stride[0] + kh).checked_sub(p.pad[0])?;
    let iw = (ow * p.stride[1] + kw).checked_sub(p.pad[1])?;
    (ih < h && iw < w).then_some((ih, iw))
}

/// Calls `f(n, o, oh, ow, i, kh, kw, x index)` for every product of the convolution.
#[allow(clippy::type_complexity)]
fn for_each_product(xd: [usize; 4], wd: [usize; 4], p: &Conv2d, mut f: impl FnMut([usize; 7], usize)) -> [usize; 4] {
    let [n, ci, h, w] = xd;
    let [co, _, kh, kw] = wd;
    let [oh, ow] = p.out_size([h, w], [kh, kw]);
    for b in 0..n {
        for o in 0..co {
            for r in 0..oh {
                for c in 0..ow {
                    for i in 0..ci {
                        for u in 0..kh {
                            for v in 0..kw {
                                if let Some((ih, iw)) = input_pixel(p, [h, w], [r, c, u, v]) {
                                    f([b, o, r, c, i, u, v], ((b * ci + i) * h + ih) * w + iw);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    [n, co, oh, ow]
}

/// `y = conv(x, w) + b`; returns y `[N,O,OH,OW]` flattened.
pub fn conv2d_forward(x: &[f64], xd: [usize; 4], w: &[f64], wd: [usize; 4], b: Option<&[f64]>, p: &Conv2d) -> Vec<f64> {
    let [n, co, kh, kw] = [xd[0], wd[0], wd[2], wd[3]];
    let [oh, ow] = p.out_size([xd[2], xd[3]], [kh, kw]);
    let mut y = vec![0.0; n * co * oh * ow];
    for_each_product(xd, wd, p, |[b, o, r, c, i, u, v], xi| {
        y[((b * co + o) * oh + r) * ow + c] += w[((o * wd[1] + i) * kh + u) * kw + v] * x[xi];
    });
    if let Some(bias) = b {
        for (j, yv) in y.iter_mut().enumerate() {
            *yv += bias[(j / (oh * ow)) % co];
        }
    }
    y
}

/// `dx = dL/dx` given `dy = dL/dy` (not accumulated): each product `w * x` sends `w * dy` to x.
pub fn conv2d_backward_data(dy: &[f64], w: &[f64], xd: [usize; 4], wd: [usize; 4], p: &Conv2d) -> Vec<f64> {
    let mut dx = vec![0.0; xd.iter().product()];
    let [co, kh, kw] = [wd[0], wd[2], wd[3]];
    let [oh, ow] = p.out_size([xd[2], xd[3]], [kh, kw]);
    for_each_product(xd, wd, p, |[b, o, r, c, i, u, v], xi| {
        dx[xi] += w[((o * wd[1] + i) * kh + u) * kw + v] * dy[((b * co + o) * oh + r) * ow + c];
    });
    dx
}

/// `(dw, db)` given dy (not accumulated): each product sends `x * dy` to its weight.
pub fn conv2d_backward_weight(
    x: &[f64],
    dy: &[f64],
    xd: [usize; 4],
    wd: [usize; 4],
    p: &Conv2d,
) -> (Vec<f64>, Vec<f64>) {
    let mut dw = vec![0.0; wd.iter().product()];
    let [co, kh, kw] = [wd[0], wd[2], wd[3]];
    let [oh, ow] = p.out_size([xd[2], xd[3]], [kh, kw]);
    for_each_product(xd, wd, p, |[b, o, r, c, i, u, v], xi| {
        dw[((o * wd[1] + i) * kh + u) * kw + v] += x[xi] * dy[((b * co + o) * oh + r) * ow + c];
    });
    let mut db = vec![0.0; co];
    for (j, g) in dy.iter().enumerate() {
        db[(j / (oh * ow)) % co] += g;
    }
    (dw, db)
}
