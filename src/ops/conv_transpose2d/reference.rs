//! Plain-Rust transposed convolution on `f64`, the contract the shaders are tested against.
//! x `[N,I,H,W]` (`dims`), w `[I,O,2,2]`, y and dy `[N,O,2H,2W]`.

/// `y[n,o,2i+a,2j+b] = b[o] + sum_c x[n,c,i,j] w[c,o,a,b]`.
pub fn conv_transpose2d_forward(
    x: &[f64],
    w: &[f64],
    b: Option<&[f64]>,
    [n, ci, h, wd]: [usize; 4],
    co: usize,
) -> Vec<f64> {
    let (oh, ow) = (2 * h, 2 * wd);
    let mut y = vec![0.0; n * co * oh * ow];
    for img in 0..n {
        for o in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (i, a, j, bb) = (oy / 2, oy % 2, ox / 2, ox % 2);
                    let mut sum = b.map_or(0.0, |b| b[o]);
                    for c in 0..ci {
                        sum += x[((img * ci + c) * h + i) * wd + j] * w[((c * co + o) * 2 + a) * 2 + bb];
                    }
                    y[((img * co + o) * oh + oy) * ow + ox] = sum;
                }
            }
        }
    }
    y
}

/// `dx[n,c,i,j] = sum_{o,a,b} dy[n,o,2i+a,2j+b] w[c,o,a,b]` (not accumulated).
pub fn conv_transpose2d_backward_data(dy: &[f64], w: &[f64], [n, ci, h, wd]: [usize; 4], co: usize) -> Vec<f64> {
    let (oh, ow) = (2 * h, 2 * wd);
    let mut dx = vec![0.0; n * ci * h * wd];
    for img in 0..n {
        for c in 0..ci {
            for i in 0..h {
                for j in 0..wd {
                    let mut sum = 0.0;
                    for o in 0..co {
                        for a in 0..2 {
                            for bb in 0..2 {
                                let g = dy[((img * co + o) * oh + 2 * i + a) * ow + 2 * j + bb];
                                sum += g * w[((c * co + o) * 2 + a) * 2 + bb];
                            }
                        }
                    }
                    dx[((img * ci + c) * h + i) * wd + j] = sum;
                }
            }
        }
    }
    dx
}

/// `(dw, db)`: `dw[c,o,a,b] = sum_{n,i,j} x[n,c,i,j] dy[n,o,2i+a,2j+b]`,
/// `db[o] = sum dy[n,o,..]` (not accumulated).
pub fn conv_transpose2d_backward_weight(
    x: &[f64],
    dy: &[f64],
    [n, ci, h, wd]: [usize; 4],
    co: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (oh, ow) = (2 * h, 2 * wd);
    let mut dw = vec![0.0; ci * co * 4];
    let mut db = vec![0.0; co];
    for img in 0..n {
        for o in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let g = dy[((img * co + o) * oh + oy) * ow + ox];
                    db[o] += g;
                    let (i, a, j, bb) = (oy / 2, oy % 2, ox / 2, ox % 2);
                    for c in 0..ci {
                        dw[((c * co + o) * 2 + a) * 2 + bb] += x[((img * ci + c) * h + i) * wd + j] * g;
                    }
                }
            }
        }
    }
    (dw, db)
}
