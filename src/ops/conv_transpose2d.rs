//! 2x2 transposed convolution with stride 2: the U-Net decoder's up-convolution, which
//! doubles height and width and (usually) halves the channels.
//!
//! x: [N,I,H,W], w: [I,O,2,2] (PyTorch `ConvTranspose2d` layout), b: [O] (optional),
//! y: [N,O,2H,2W]:
//! ```text
//! y[n,o,2i+a,2j+b] = b[o] + sum_c x[n,c,i,j] w[c,o,a,b]
//! dx[n,c,i,j]  += sum_{o,a,b} dy[n,o,2i+a,2j+b] w[c,o,a,b]
//! dw[c,o,a,b]  += sum_{n,i,j} x[n,c,i,j] dy[n,o,2i+a,2j+b]
//! db[o]        += sum_{n,Y,X} dy[n,o,Y,X]
//! ```
//! With stride = kernel size the 2x2 windows do not overlap, so all three are GEMMs over
//! the pixels; `shaders/conv_transpose2d.wgsl` explains the register tiling. The weight
//! gradient reduces over all N*H*W pixels: it is split into slices whose partial sums go
//! to a pooled scratch buffer, then summed in slice order by a second pass (deterministic).

use crate::gpu::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;
use crate::tape::Step;
use crate::tensor::Tensor;

const SHADER: Shader = shader!("conv_transpose2d");
const WG: u32 = 64;
/// Register tile of the shader (its `PX`, `TO`, `TC` constants; keep in step).
const PX: u32 = 4;
const TO: u32 = 4;
const TC: u32 = 4;
/// The weight gradient uses about this many threads (blocks x slices), fewer when a slice
/// would cover less than [`MIN_SLICE`] pixels.
const TARGET_THREADS: u32 = 16384;
const MIN_SLICE: u32 = 64;

/// Mirrors `Params` in `shaders/conv_transpose2d.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    ci: u32,
    co: u32,
    h: u32,
    w: u32,
    has_bias: u32,
    slices: u32,
    step_n: u32,
    step_i: u32,
    step_j: u32,
    len: u32,
}

impl Params {
    fn new([n, ci, h, w]: [usize; 4], co: usize) -> Params {
        Params { n: n as u32, ci: ci as u32, co: co as u32, h: h as u32, w: w as u32, ..Default::default() }
    }

    /// Split the N*H*W pixels of the weight gradient into `slices` interleaved slices,
    /// for `blocks` thread blocks of output.
    fn with_slices(mut self, blocks: u32) -> Params {
        let pixels = self.n * self.h * self.w;
        let slices = TARGET_THREADS.div_ceil(blocks).min(pixels / MIN_SLICE).max(1);
        let hw = self.h * self.w;
        self.slices = slices;
        self.step_n = slices / hw;
        self.step_i = slices % hw / self.w;
        self.step_j = slices % self.w;
        self
    }
}

/// Check x [N,I,H,W], w [I,O,2,2] and the [N,O,2H,2W] tensor `big` agree; returns x's dims and O.
fn check(what: &str, x: &Tensor, w: &Tensor, big: &Tensor) -> ([usize; 4], usize) {
    let [n, ci, h, wd] = x.dims4(what);
    let [wi, co, kh, kw] = w.dims4(what);
    assert!(
        wi == ci && kh == 2 && kw == 2,
        "{what}: w {:?} must be [I,O,2,2] with I from x {:?}",
        w.shape(),
        x.shape()
    );
    assert_eq!(
        big.shape(),
        [n, co, 2 * h, 2 * wd],
        "{what}: x {:?} and w {:?} need y/dy of shape [N,O,2H,2W], got {:?}",
        x.shape(),
        w.shape(),
        big.shape()
    );
    ([n, ci, h, wd], co)
}

/// `y = conv_transpose2d(x, w) + b`. x: [N,I,H,W], w: [I,O,2,2], b: [O], y: [N,O,2H,2W].
pub fn conv_transpose2d_forward(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, w: &Tensor, b: Option<&Tensor>, y: &Tensor) {
    let (dims, co) = check("conv_transpose2d", x, w, y);
    let [n, _, h, wd] = dims;
    if let Some(b) = b {
        assert_eq!(b.shape(), [co], "conv_transpose2d: b {:?} vs w {:?}", b.shape(), w.shape());
    }
    let params = Params { has_bias: b.is_some() as u32, ..Params::new(dims, co) };
    let kernel = gpu.kernel(&SHADER, "conv_transpose2d_forward", &[("WG", WG as f64)]);
    // Without a bias the shader never reads binding 3; w stands in for it.
    let groups = [((h * wd) as u32).div_ceil(WG * PX), (co as u32).div_ceil(TO), n as u32];
    gpu.dispatch(enc, &kernel, &params, &[(1, x), (2, w), (3, b.unwrap_or(w)), (4, y)], groups);
}

/// `dx += conv_transpose2d^T(dy)`. w: [I,O,2,2], dy: [N,O,2H,2W], dx: [N,I,H,W].
pub fn conv_transpose2d_backward_data(gpu: &Gpu, enc: &mut Encoder, w: &Tensor, dy: &Tensor, dx: &Tensor) {
    let (dims, co) = check("conv_transpose2d backward_data", dx, w, dy);
    let [n, ci, h, wd] = dims;
    let kernel = gpu.kernel(&SHADER, "conv_transpose2d_backward_data", &[("WG", WG as f64)]);
    let groups = [((h * wd) as u32).div_ceil(WG * PX), (ci as u32).div_ceil(TC), n as u32];
    gpu.dispatch(enc, &kernel, &Params::new(dims, co), &[(2, w), (5, dy), (6, dx)], groups);
}

/// `dw += x (*) dy` and, when given, `db += sum dy`. x: [N,I,H,W], dy: [N,O,2H,2W],
/// dw: [I,O,2,2], db: [O].
pub fn conv_transpose2d_backward_weight(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    db: Option<&Tensor>,
) {
    let (dims, co) = check("conv_transpose2d backward_weight", x, dw, dy);
    let ci = dims[1];
    let blocks = (ci as u32).div_ceil(TC) * (co as u32).div_ceil(TO);
    let params = Params::new(dims, co).with_slices(blocks);
    let partial = gpu.empty(&[params.slices as usize, ci * co * 4]);
    let kernel = gpu.kernel(&SHADER, "conv_transpose2d_backward_weight_partial", &[("WG", WG as f64)]);
    let threads = (params.slices * blocks) as usize;
    gpu.dispatch(enc, &kernel, &params, &[(1, x), (5, dy), (7, &partial)], groups_1d(threads, WG));
    sum_partials(gpu, enc, params, &partial, dw);
    if let Some(db) = db {
        bias(gpu, enc, params, dy, db);
    }
}

/// `db += sum dy` over batch and pixels. dy: [N,O,2H,2W], db: [O].
pub fn conv_transpose2d_backward_bias(gpu: &Gpu, enc: &mut Encoder, dy: &Tensor, db: &Tensor) {
    let [n, co, h2, w2] = dy.dims4("conv_transpose2d backward_bias dy");
    assert!(h2 % 2 == 0 && w2 % 2 == 0, "conv_transpose2d backward_bias: dy {:?} must have even H, W", dy.shape());
    let params = Params::new([n, 0, h2 / 2, w2 / 2], co).with_slices((co as u32).div_ceil(TO));
    bias(gpu, enc, params, dy, db);
}

fn bias(gpu: &Gpu, enc: &mut Encoder, params: Params, dy: &Tensor, db: &Tensor) {
    let co = params.co as usize;
    assert_eq!(db.shape(), [co], "conv_transpose2d: db {:?} vs dy {:?}", db.shape(), dy.shape());
    let partial = gpu.empty(&[params.slices as usize, co]);
    let kernel = gpu.kernel(&SHADER, "conv_transpose2d_backward_bias_partial", &[("WG", WG as f64)]);
    let threads = params.slices as usize * co;
    gpu.dispatch(enc, &kernel, &params, &[(5, dy), (7, &partial)], groups_1d(threads, WG));
    sum_partials(gpu, enc, params, &partial, db);
}

/// `dst += sum over slices of partial` ([slices, len] -> [len]), in slice order.
fn sum_partials(gpu: &Gpu, enc: &mut Encoder, params: Params, partial: &Tensor, dst: &Tensor) {
    let params = Params { len: dst.len() as u32, ..params };
    let kernel = gpu.kernel(&SHADER, "conv_transpose2d_sum_partials", &[("WG", WG as f64)]);
    gpu.dispatch(enc, &kernel, &params, &[(7, partial), (8, dst)], groups_1d(dst.len(), WG));
}

/// Transposed 2x2 stride-2 convolution on the tape. x: [N,I,H,W], w: [I,O,2,2],
/// b: [O] or `None`; returns y: [N,O,2H,2W].
pub fn conv_transpose2d(step: &mut Step, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    let [n, _, h, wd] = x.dims4("conv_transpose2d x");
    let co = w.dims4("conv_transpose2d w")[1];
    let inputs: Vec<&Tensor> = [Some(x), Some(w), b].into_iter().flatten().collect();
    let y = step.output(&[n, co, 2 * h, 2 * wd], &inputs);
    conv_transpose2d_forward(step.gpu, &mut step.enc, x, w, b, &y);
    let (x, w, b) = (x.clone(), w.clone(), b.cloned());
    step.record("conv_transpose2d", &y, move |ctx, dy| {
        if let Some(dx) = ctx.grad(&x) {
            conv_transpose2d_backward_data(ctx.gpu, ctx.enc, &w, dy, &dx);
        }
        let db = b.as_ref().and_then(|b| ctx.grad(b));
        match ctx.grad(&w) {
            Some(dw) => conv_transpose2d_backward_weight(ctx.gpu, ctx.enc, &x, dy, &dw, db.as_ref()),
            None => {
                if let Some(db) = db {
                    conv_transpose2d_backward_bias(ctx.gpu, ctx.enc, dy, &db);
                }
            }
        }
    });
    y
}

/// Plain-Rust transposed convolution, the contract the shader is tested against.
/// Dimensions: `[n, ci, h, w]` of x, and `co` output channels.
pub mod reference {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, assert_close_f32, dot, gpu, numeric_grad, random_vec, to_f64};

    #[test]
    fn reference_backward_matches_finite_differences() {
        let (dims, co) = ([2, 3, 2, 3], 5);
        let [n, ci, h, wd] = dims;
        let x = to_f64(&random_vec(1, n * ci * h * wd));
        let w = to_f64(&random_vec(2, ci * co * 4));
        let b = to_f64(&random_vec(3, co));
        let r = to_f64(&random_vec(4, n * co * 4 * h * wd));
        let fwd = |x: &[f64], w: &[f64], b: &[f64]| reference::conv_transpose2d_forward(x, w, Some(b), dims, co);
        let (dw, db) = reference::conv_transpose2d_backward_weight(&x, &r, dims, co);
        let dx = reference::conv_transpose2d_backward_data(&r, &w, dims, co);
        assert_close("dx", &dx, &numeric_grad(|x| dot(&r, &fwd(x, &w, &b)), &x, 1e-6), 1e-6);
        assert_close("dw", &dw, &numeric_grad(|w| dot(&r, &fwd(&x, w, &b)), &w, 1e-6), 1e-6);
        assert_close("db", &db, &numeric_grad(|b| dot(&r, &fwd(&x, &w, b)), &b, 1e-6), 1e-6);
    }

    /// Runs forward (with and without bias) and all backward kernels on one shape and
    /// compares with the reference; gradients start at random values.
    fn check_shape(seed: u64, dims: [usize; 4], co: usize) {
        let gpu = gpu();
        let [n, ci, h, wd] = dims;
        let big = [n, co, 2 * h, 2 * wd];
        let x = random_vec(seed, n * ci * h * wd);
        let w = random_vec(seed + 1, ci * co * 4);
        let b = random_vec(seed + 2, co);
        let dy = random_vec(seed + 3, big.iter().product());
        let (dx0, dw0, db0) = (random_vec(seed + 4, x.len()), random_vec(seed + 5, w.len()), random_vec(seed + 6, co));
        let (xt, wt, bt) = (gpu.upload(&x, &dims), gpu.upload(&w, &[ci, co, 2, 2]), gpu.upload(&b, &[co]));
        let dyt = gpu.upload(&dy, &big);
        let (dxt, dwt, dbt) = (gpu.upload(&dx0, &dims), gpu.upload(&dw0, &[ci, co, 2, 2]), gpu.upload(&db0, &[co]));
        let (y, y_nobias) = (gpu.empty(&big), gpu.empty(&big));
        let mut enc = gpu.encoder();
        conv_transpose2d_forward(gpu, &mut enc, &xt, &wt, Some(&bt), &y);
        conv_transpose2d_forward(gpu, &mut enc, &xt, &wt, None, &y_nobias);
        conv_transpose2d_backward_data(gpu, &mut enc, &wt, &dyt, &dxt);
        conv_transpose2d_backward_weight(gpu, &mut enc, &xt, &dyt, &dwt, Some(&dbt));
        gpu.submit(enc);

        let (xf, wf, bf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dy));
        let plus =
            |g: Vec<f64>, start: &[f32]| -> Vec<f64> { g.iter().zip(start).map(|(g, &s)| g + s as f64).collect() };
        let (dw, db) = reference::conv_transpose2d_backward_weight(&xf, &dyf, dims, co);
        let what = format!("{dims:?} -> {co}");
        let want_y = reference::conv_transpose2d_forward(&xf, &wf, Some(&bf), dims, co);
        assert_close_f32(&format!("y {what}"), &gpu.read(&y), &want_y, 1e-4);
        let want_y = reference::conv_transpose2d_forward(&xf, &wf, None, dims, co);
        assert_close_f32(&format!("y (no bias) {what}"), &gpu.read(&y_nobias), &want_y, 1e-4);
        let want_dx = plus(reference::conv_transpose2d_backward_data(&dyf, &wf, dims, co), &dx0);
        assert_close_f32(&format!("dx {what}"), &gpu.read(&dxt), &want_dx, 1e-3);
        assert_close_f32(&format!("dw {what}"), &gpu.read(&dwt), &plus(dw, &dw0), 1e-3);
        assert_close_f32(&format!("db {what}"), &gpu.read(&dbt), &plus(db, &db0), 1e-3);
    }

    #[test]
    fn gpu_matches_reference_on_odd_shapes() {
        check_shape(10, [1, 1, 1, 1], 1);
        check_shape(20, [2, 3, 5, 7], 5);
        check_shape(30, [1, 7, 1, 9], 3);
        check_shape(40, [2, 5, 6, 1], 9);
        check_shape(50, [1, 6, 11, 13], 2);
    }

    #[test]
    fn gpu_matches_reference_with_many_slices() {
        // Enough pixels that the weight gradient splits its reduction into many slices,
        // with a slice step that carries across rows and images.
        check_shape(60, [3, 5, 23, 29], 6);
        check_shape(70, [2, 16, 16, 16], 8);
    }

    #[test]
    fn tape_gives_the_reference_gradients() {
        let gpu = gpu();
        let (dims, co) = ([2, 3, 5, 7], 4);
        let [n, ci, h, wd] = dims;
        let x = random_vec(80, n * ci * h * wd);
        let w = random_vec(81, ci * co * 4);
        let b = random_vec(82, co);
        let dy = random_vec(83, n * co * 4 * h * wd);
        for with_bias in [true, false] {
            let xt = gpu.upload(&x, &dims).with_grad();
            let wt = gpu.upload(&w, &[ci, co, 2, 2]).with_grad();
            let bt = gpu.upload(&b, &[co]).with_grad();
            let mut step = Step::train(gpu);
            let y = conv_transpose2d(&mut step, &xt, &wt, with_bias.then_some(&bt));
            assert_eq!(y.shape(), [n, co, 2 * h, 2 * wd]);
            let dyt = gpu.upload(&dy, y.shape());
            let grads = step.backward(vec![(y.clone(), dyt)]);
            step.submit();

            let (xf, wf, bf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dy));
            let bias = with_bias.then_some(bf.as_slice());
            let want_y = reference::conv_transpose2d_forward(&xf, &wf, bias, dims, co);
            assert_close_f32("tape y", &gpu.read(&y), &want_y, 1e-4);
            let want_dx = reference::conv_transpose2d_backward_data(&dyf, &wf, dims, co);
            assert_close_f32("tape dx", &gpu.read(grads.get(&xt).unwrap()), &want_dx, 1e-3);
            let (dw, db) = reference::conv_transpose2d_backward_weight(&xf, &dyf, dims, co);
            assert_close_f32("tape dw", &gpu.read(grads.get(&wt).unwrap()), &dw, 1e-3);
            match with_bias {
                true => assert_close_f32("tape db", &gpu.read(grads.get(&bt).unwrap()), &db, 1e-3),
                false => assert!(grads.get(&bt).is_none(), "an unused bias got a gradient"),
            }
        }
    }

    #[test]
    fn bias_gradient_alone() {
        // Only the bias needs a gradient: the tape takes the bias-only path.
        let gpu = gpu();
        let (dims, co) = ([2, 3, 4, 5], 3);
        let dy = random_vec(90, 2 * co * 8 * 10);
        let xt = gpu.upload(&random_vec(91, 2 * 3 * 4 * 5), &dims);
        let wt = gpu.upload(&random_vec(92, 3 * co * 4), &[3, co, 2, 2]);
        let bt = gpu.upload(&random_vec(93, co), &[co]).with_grad();
        let mut step = Step::train(gpu);
        let y = conv_transpose2d(&mut step, &xt, &wt, Some(&bt));
        let grads = step.backward(vec![(y.clone(), gpu.upload(&dy, y.shape()))]);
        step.submit();
        assert_eq!(grads.len(), 1, "only the bias should have a gradient");
        let (_, db) =
            reference::conv_transpose2d_backward_weight(&to_f64(&random_vec(91, 120)), &to_f64(&dy), dims, co);
        assert_close_f32("db", &gpu.read(grads.get(&bt).unwrap()), &db, 1e-3);
    }
}
