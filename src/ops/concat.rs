//! Channel concatenation, for U-Net skip connections:
//! a `[N,C1,H,W]`, b `[N,C2,H,W]` -> y `[N,C1+C2,H,W]`, `y[:, :C1] = a`, `y[:, C1:] = b`.
//! Backward splits dy: `da += dy[:, :C1]`, `db += dy[:, C1:]`.
//!
//! The forward copies both inputs into a fresh concat buffer (buffer copies: per
//! image, each part is one contiguous run of both tensors). So does the backward
//! when a gradient is fresh ([`Accumulate::Overwrite`]); adding into one takes a
//! kernel. The U-Net's
//! up-convolution skips one of them: the fused
//! [`conv_transpose2d_concat`](crate::ops::conv_transpose2d::conv_transpose2d_concat)
//! writes its output straight into channels `0..O` of the buffer and copies only
//! the skip tensor, with [`concat_forward_part`].

use crate::autograd::tape::{Accumulate, Step};
use crate::autograd::tensor::Tensor;
use crate::runtime::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("concat");
const WG: u32 = 256;

/// Mirrors `Params` in `shaders/concat.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    part: u32,
    total: u32,
    plane: u32,
    offset: u32,
}

/// Params for moving `part` `[N,Cp,H,W]` to or from channels `offset..offset+Cp`
/// of `whole` `[N,Ct,H,W]`; `len` is one image's part, `Cp*H*W`.
fn part_params(what: &str, part: &Tensor, whole: &Tensor, offset: usize) -> Params {
    let [n, cp, h, w] = part.dims4(what);
    let [nt, ct, ht, wt] = whole.dims4(what);
    assert!(
        n == nt && h == ht && w == wt && offset + cp <= ct,
        "{what}: part {:?} does not fit at channel {offset} of {:?}",
        part.shape(),
        whole.shape()
    );
    Params { len: (cp * h * w) as u32, part: cp as u32, total: ct as u32, plane: (h * w) as u32, offset: offset as u32 }
}

/// `y = [a, b]` along channels. a: `[N,C1,H,W]`; b: `[N,C2,H,W]`; y: `[N,C1+C2,H,W]`.
pub fn concat_forward(gpu: &Gpu, enc: &mut Encoder, a: &Tensor, b: &Tensor, y: &Tensor) {
    let [_, c1, _, _] = a.dims4("concat a");
    let [_, c2, _, _] = b.dims4("concat b");
    assert_eq!(y.dims4("concat y")[1], c1 + c2, "concat: a {:?} b {:?} y {:?}", a.shape(), b.shape(), y.shape());
    concat_forward_part(gpu, enc, a, y, 0);
    concat_forward_part(gpu, enc, b, y, c1);
}

/// `y[:, offset..offset+Cp] = part`, the other channels of y untouched. part: `[N,Cp,H,W]`;
/// y: `[N,Ct,H,W]` with `offset + Cp <= Ct`.
///
/// Per image the part is one contiguous run in both tensors, so this records N buffer copies
/// (a memcpy each, about 20x faster than a copy kernel on lavapipe); no kernel, so `_gpu` is
/// unused (kept so that every wrapper takes the same leading arguments).
pub fn concat_forward_part(_gpu: &Gpu, enc: &mut Encoder, part: &Tensor, y: &Tensor, offset: usize) {
    let p = part_params("concat", part, y, offset);
    copy_runs(enc, part, y, &p, Direction::IntoWhole);
}

/// Which way [`copy_runs`] copies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// part -> its channels of whole (the forward).
    IntoWhole,
    /// whole's channels -> part (the backward into a fresh gradient).
    OutOfWhole,
}

/// The N buffer copies between `part` and channels `offset..` of `whole`, as `p` places them:
/// per image one contiguous run in both tensors.
fn copy_runs(enc: &mut Encoder, part: &Tensor, whole: &Tensor, p: &Params, direction: Direction) {
    let run = p.len as usize;
    if run == 0 {
        return;
    }
    for n in 0..part.dims4("concat part")[0] {
        // Views used only by copies, which need 4-byte offsets (bindings would need more).
        let part_run = part.view(4 * (n * run) as u64, &[run]);
        let at = (n * p.total as usize + p.offset as usize) * p.plane as usize;
        let whole_run = whole.view(4 * at as u64, &[run]);
        match direction {
            Direction::IntoWhole => enc.copy(&part_run, &whole_run),
            Direction::OutOfWhole => enc.copy(&whole_run, &part_run),
        }
    }
}

/// `dpart += dy[:, offset..offset+Cp]`, or `=` as `acc` says. dy: `[N,Ct,H,W]`; dpart: `[N,Cp,H,W]`.
fn backward_part(gpu: &Gpu, enc: &mut Encoder, dy: &Tensor, dpart: &Tensor, offset: usize, acc: Accumulate) {
    let mut params = part_params("concat backward", dpart, dy, offset);
    if dpart.is_empty() {
        return;
    }
    if acc == Accumulate::Overwrite {
        // The forward's copies, the other way: no kernel, and no read of stale values.
        copy_runs(enc, dpart, dy, &params, Direction::OutOfWhole);
        return;
    }
    let n = dpart.dims4("concat dpart")[0] as u32;
    // Whole vec4s when every run starts on one (H*W % 4 == 0).
    let (entry, bindings) = if params.plane.is_multiple_of(4) {
        params.len /= 4;
        ("concat_backward_vec4", [(4, dpart), (5, dy)])
    } else {
        ("concat_backward", [(2, dpart), (3, dy)])
    };
    let kernel = gpu.kernel(&SHADER, entry, &[("WG", WG as f64)]);
    let [gx, gy, _] = groups_1d(params.len as usize, WG);
    gpu.dispatch(enc, &kernel, &params, &bindings, [gx, gy, n]);
}

/// `da += dy[:, :C1]`, or `da = dy[:, :C1]` when `acc` is [`Accumulate::Overwrite`] (a fresh
/// gradient buffer: see [`crate::autograd::tape::BackwardCtx::grad_to_fill`]). dy: `[N,C1+C2,H,W]`;
/// da: `[N,C1,H,W]`.
pub fn concat_backward_a(gpu: &Gpu, enc: &mut Encoder, dy: &Tensor, da: &Tensor, acc: Accumulate) {
    backward_part(gpu, enc, dy, da, 0, acc);
}

/// `db += dy[:, C1:]`, or `=` as `acc` says. dy: `[N,C1+C2,H,W]`; db: `[N,C2,H,W]` (C1 follows
/// from the two).
pub fn concat_backward_b(gpu: &Gpu, enc: &mut Encoder, dy: &Tensor, db: &Tensor, acc: Accumulate) {
    let (ct, c2) = (dy.dims4("concat dy")[1], db.dims4("concat db")[1]);
    assert!(c2 <= ct, "concat backward: db {:?} has more channels than dy {:?}", db.shape(), dy.shape());
    backward_part(gpu, enc, dy, db, ct - c2, acc);
}

/// Channel concatenation on the tape. a: `[N,C1,H,W]`; b: `[N,C2,H,W]` -> `[N,C1+C2,H,W]`.
pub fn concat(step: &mut Step, a: &Tensor, b: &Tensor) -> Tensor {
    let [n, c1, h, w] = a.dims4("concat a");
    let [_, c2, _, _] = b.dims4("concat b");
    let y = step.output(&[n, c1 + c2, h, w], &[a, b]);
    concat_forward(step.gpu, &mut step.enc, a, b, &y);
    let (a, b) = (a.clone(), b.clone());
    step.record("concat", &y, move |ctx, dy| {
        // One at a time: with a and b the same tensor, b's half then adds to a's.
        if let Some((da, acc)) = ctx.grad_to_fill(&a) {
            concat_backward_a(ctx.gpu, ctx.enc, dy, &da, acc);
        }
        if let Some((db, acc)) = ctx.grad_to_fill(&b) {
            concat_backward_b(ctx.gpu, ctx.enc, dy, &db, acc);
        }
    });
    y
}

/// Plain-Rust concatenation, the contract the shader is tested against.
pub mod reference {
    /// `y = [a, b]` along channels; `c1`, `c2` the channels of a and b, `[n, h, w]` shared.
    pub fn concat_forward(a: &[f64], b: &[f64], n: usize, c1: usize, c2: usize, plane: usize) -> Vec<f64> {
        let mut y = Vec::with_capacity(a.len() + b.len());
        for i in 0..n {
            y.extend_from_slice(&a[i * c1 * plane..(i + 1) * c1 * plane]);
            y.extend_from_slice(&b[i * c2 * plane..(i + 1) * c2 * plane]);
        }
        y
    }

    /// `(da, db)`: dy split along channels (not accumulated).
    pub fn concat_backward(dy: &[f64], n: usize, c1: usize, c2: usize, plane: usize) -> (Vec<f64>, Vec<f64>) {
        let (mut da, mut db) = (Vec::new(), Vec::new());
        for image in dy.chunks(((c1 + c2) * plane).max(1)).take(n) {
            da.extend_from_slice(&image[..c1 * plane]);
            db.extend_from_slice(&image[c1 * plane..]);
        }
        (da, db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, assert_close_f32, dot, gpu, numeric_grad, random_vec, to_f64};

    fn plus(start: &[f32], grad: &[f64]) -> Vec<f64> {
        start.iter().zip(grad).map(|(&s, g)| s as f64 + g).collect()
    }

    #[test]
    fn reference_backward_matches_finite_differences() {
        let (n, c1, c2, plane) = (2, 3, 2, 5 * 7);
        let a = to_f64(&random_vec(1, n * c1 * plane));
        let b = to_f64(&random_vec(2, n * c2 * plane));
        let r = to_f64(&random_vec(3, n * (c1 + c2) * plane));
        let (da, db) = reference::concat_backward(&r, n, c1, c2, plane);
        let g = numeric_grad(|a| dot(&r, &reference::concat_forward(a, &b, n, c1, c2, plane)), &a, 1e-6);
        assert_close("concat da", &da, &g, 1e-6);
        let g = numeric_grad(|b| dot(&r, &reference::concat_forward(&a, b, n, c1, c2, plane)), &b, 1e-6);
        assert_close("concat db", &db, &g, 1e-6);
    }

    #[test]
    fn gpu_matches_reference_on_odd_shapes() {
        let gpu = gpu();
        // (n, c1, c2, h, w)
        for (seed, (n, c1, c2, h, w)) in
            // H*W % 4 == 0 in the last two: the vec4 backward.
            [
                (4, (1, 1, 1, 1, 1)),
                (5, (2, 3, 2, 5, 7)),
                (6, (2, 5, 3, 17, 15)),
                (7, (1, 1, 4, 3, 1)),
                (8, (3, 2, 5, 4, 6)),
                (9, (1, 3, 1, 2, 2)),
            ]
        {
            let plane = h * w;
            let (sa, sb, sy) = ([n, c1, h, w], [n, c2, h, w], [n, c1 + c2, h, w]);
            let (a, b) = (random_vec(seed, n * c1 * plane), random_vec(seed + 100, n * c2 * plane));
            let dy = random_vec(seed + 200, n * (c1 + c2) * plane);
            let (da0, db0) = (random_vec(seed + 300, a.len()), random_vec(seed + 400, b.len()));
            let (at, bt, dyt) = (gpu.upload(&a, &sa), gpu.upload(&b, &sb), gpu.upload(&dy, &sy));
            let (dat, dbt) = (gpu.upload(&da0, &sa), gpu.upload(&db0, &sb));
            // Overwritten: the stale values must go.
            let (da_fresh, db_fresh) = (gpu.upload(&da0, &sa), gpu.upload(&db0, &sb));
            let y = gpu.empty(&sy);
            let mut enc = gpu.encoder();
            concat_forward(gpu, &mut enc, &at, &bt, &y);
            concat_backward_a(gpu, &mut enc, &dyt, &dat, Accumulate::Add);
            concat_backward_b(gpu, &mut enc, &dyt, &dbt, Accumulate::Add);
            concat_backward_a(gpu, &mut enc, &dyt, &da_fresh, Accumulate::Overwrite);
            concat_backward_b(gpu, &mut enc, &dyt, &db_fresh, Accumulate::Overwrite);
            gpu.submit(enc);

            let want = reference::concat_forward(&to_f64(&a), &to_f64(&b), n, c1, c2, plane);
            assert_close_f32(&format!("concat y {sy:?}"), &gpu.read(&y), &want, 1e-4);
            let (da, db) = reference::concat_backward(&to_f64(&dy), n, c1, c2, plane);
            assert_close_f32(&format!("concat da {sa:?}"), &gpu.read(&dat), &plus(&da0, &da), 1e-3);
            assert_close_f32(&format!("concat db {sb:?}"), &gpu.read(&dbt), &plus(&db0, &db), 1e-3);
            assert_close_f32(&format!("concat da (overwritten) {sa:?}"), &gpu.read(&da_fresh), &da, 0.0);
            assert_close_f32(&format!("concat db (overwritten) {sb:?}"), &gpu.read(&db_fresh), &db, 0.0);
        }
    }

    #[test]
    fn tape_sums_both_halves_into_a_tensor_concatenated_with_itself() {
        // concat(x, x): x's first gradient overwrites, the second half adds to it.
        let gpu = gpu();
        let (n, c, h, w) = (2, 3, 4, 5);
        let plane = h * w;
        let x = random_vec(11, n * c * plane);
        let dy = random_vec(12, n * 2 * c * plane);
        let xt = gpu.upload(&x, &[n, c, h, w]).with_grad();
        let mut step = Step::train(gpu);
        let y = concat(&mut step, &xt, &xt);
        let grads = step.backward(vec![(y.clone(), gpu.upload(&dy, y.shape()))]);
        let dx = grads.get(&xt).unwrap().clone();
        step.submit();
        let (da, db) = reference::concat_backward(&to_f64(&dy), n, c, c, plane);
        let want: Vec<f64> = da.iter().zip(&db).map(|(a, b)| a + b).collect();
        assert_close_f32("tape dx of concat(x, x)", &gpu.read(&dx), &want, 1e-6);
    }

    #[test]
    fn tape_gradients_match_reference() {
        let gpu = gpu();
        let (n, c1, c2, h, w) = (2, 3, 2, 5, 7);
        let plane = h * w;
        let (a, b) = (random_vec(8, n * c1 * plane), random_vec(9, n * c2 * plane));
        let dy = random_vec(10, n * (c1 + c2) * plane);
        let at = gpu.upload(&a, &[n, c1, h, w]).with_grad();
        let bt = gpu.upload(&b, &[n, c2, h, w]).with_grad();
        let mut step = Step::train(gpu);
        let y = concat(&mut step, &at, &bt);
        assert_eq!(y.shape(), [n, c1 + c2, h, w]);
        let grads = step.backward(vec![(y.clone(), gpu.upload(&dy, y.shape()))]);
        let (da, db) = (grads.get(&at).unwrap().clone(), grads.get(&bt).unwrap().clone());
        step.submit();

        let want = reference::concat_forward(&to_f64(&a), &to_f64(&b), n, c1, c2, plane);
        assert_close_f32("tape y", &gpu.read(&y), &want, 1e-4);
        let (want_da, want_db) = reference::concat_backward(&to_f64(&dy), n, c1, c2, plane);
        assert_close_f32("tape da", &gpu.read(&da), &want_da, 1e-3);
        assert_close_f32("tape db", &gpu.read(&db), &want_db, 1e-3);
    }
}
