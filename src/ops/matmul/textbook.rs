//! The textbook matrix products: `shaders/matmul/textbook.wgsl`, one invocation per output
//! element running the one loop of its sum, no tiling and no workgroup memory. The oracle the
//! tiled kernels are tested against, and what [`super::matmul_forward`] and
//! [`super::matmul_backward`] dispatch under [`Kernels::Reference`](crate::runtime::Kernels).

use super::dims;
use crate::autograd::tensor::Tensor;
use crate::runtime::{Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("matmul/textbook");
/// Threads a workgroup along each of x (columns) and y (rows): the shader's `WG`.
const WG: u32 = 8;
/// Lavapipe ends a shader's loops once an invocation has run 65,535 iterations in all: the most
/// terms one sum may have.
const LOOP_GUARD: usize = 65_535;

/// Mirrors `Dims` in `shaders/matmul/textbook.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Dims {
    m: u32,
    k: u32,
    n: u32,
}

/// One product of `rows x cols` outputs, each a sum of `terms` terms.
fn dispatch(
    gpu: &Gpu,
    enc: &mut Encoder,
    entry: &'static str,
    d: Dims,
    [rows, cols, terms]: [usize; 3],
    buffers: &[(u32, &Tensor)],
) {
    assert!(terms < LOOP_GUARD, "matmul {entry}: a sum of {terms} terms is past the loop guard of CPU drivers");
    let kernel = gpu.kernel(&SHADER, entry, &[]);
    let groups = [(cols as u32).div_ceil(WG).max(1), (rows as u32).div_ceil(WG).max(1), 1];
    gpu.dispatch(enc, &kernel, &d, buffers, groups);
}

/// `c = a . b`. a `[M,K]`, b `[K,N]`, c `[M,N]`.
pub fn matmul_forward(gpu: &Gpu, enc: &mut Encoder, a: &Tensor, b: &Tensor, c: &Tensor) {
    let (m, k, n) = dims(a, b);
    assert_eq!(c.shape(), [m, n], "matmul: c {:?} for a {:?} times b {:?}", c.shape(), a.shape(), b.shape());
    let d = Dims { m: m as u32, k: k as u32, n: n as u32 };
    dispatch(gpu, enc, "matmul_forward", d, [m, n, k], &[(1, a), (2, b), (3, c)]);
}

/// `da += dc . b^T` and `db += a^T . dc`, each when given. a `[M,K]`, b `[K,N]`, dc `[M,N]`,
/// da `[M,K]`, db `[K,N]`.
pub fn matmul_backward(
    gpu: &Gpu,
    enc: &mut Encoder,
    a: &Tensor,
    b: &Tensor,
    dc: &Tensor,
    da: Option<&Tensor>,
    db: Option<&Tensor>,
) {
    let (m, k, n) = dims(a, b);
    assert_eq!(
        dc.shape(),
        [m, n],
        "matmul backward: dc {:?} for a {:?} times b {:?}",
        dc.shape(),
        a.shape(),
        b.shape()
    );
    let d = Dims { m: m as u32, k: k as u32, n: n as u32 };
    if let Some(da) = da {
        assert_eq!(da.shape(), a.shape(), "matmul backward: da {:?} for a {:?}", da.shape(), a.shape());
        dispatch(gpu, enc, "matmul_backward_a", d, [m, k, n], &[(2, b), (4, dc), (5, da)]);
    }
    if let Some(db) = db {
        assert_eq!(db.shape(), b.shape(), "matmul backward: db {:?} for b {:?}", db.shape(), b.shape());
        dispatch(gpu, enc, "matmul_backward_b", d, [k, n, m], &[(1, a), (4, dc), (6, db)]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        matmul, matmul_backward as backward_default, matmul_forward as forward_default, reference, Backward, Forward,
        SharedTiling, Tiles, Tiling,
    };
    use super::*;
    use crate::autograd::tape::Step;
    use crate::runtime::Kernels;
    use crate::testing::{assert_close_f32, gpu, random_vec, to_f64, with_kernels};

    /// Shapes not multiples of any tile, multiples of 4 but not of the tiles, tiny ones, a long K.
    const SHAPES: [[usize; 3]; 9] =
        [[1, 1, 1], [1, 7, 1], [3, 5, 7], [17, 33, 9], [4, 4, 4], [12, 20, 36], [36, 8, 68], [8, 300, 4], [64, 64, 64]];

    /// `(c, da, db)` of `tiles` (`None`: the textbook kernels) on random inputs, da and db starting
    /// at random values (the backward adds into them).
    fn run(seed: u64, [m, k, n]: [usize; 3], tiles: Option<&Tiles>) -> [Vec<f32>; 3] {
        let gpu = gpu();
        let (a, b, dc) = (random_vec(seed, m * k), random_vec(seed + 1, k * n), random_vec(seed + 2, m * n));
        let (at, bt, dct) = (gpu.upload(&a, &[m, k]), gpu.upload(&b, &[k, n]), gpu.upload(&dc, &[m, n]));
        let (da, db, c) = (
            gpu.upload(&random_vec(seed + 3, m * k), &[m, k]),
            gpu.upload(&random_vec(seed + 4, k * n), &[k, n]),
            gpu.empty(&[m, n]),
        );
        let mut enc = gpu.encoder();
        match tiles {
            None => {
                matmul_forward(gpu, &mut enc, &at, &bt, &c);
                matmul_backward(gpu, &mut enc, &at, &bt, &dct, Some(&da), Some(&db));
            }
            Some(t) => {
                forward_default(gpu, &mut enc, &Forward { a: &at, b: &bt, c: &c, tiles: Some(*t) });
                backward_default(
                    gpu,
                    &mut enc,
                    &Backward { a: &at, b: &bt, dc: &dct, da: Some(&da), db: Some(&db), tiles: Some(*t) },
                );
            }
        }
        gpu.submit(enc);
        [&c, &da, &db].map(|t| gpu.read(t))
    }

    #[test]
    fn textbook_kernels_match_the_f64_reference() {
        for (s, &[m, k, n]) in SHAPES.iter().enumerate() {
            let seed = 3000 + 10 * s as u64;
            let [c, da, db] = run(seed, [m, k, n], None);
            let (a, b, dc) = (random_vec(seed, m * k), random_vec(seed + 1, k * n), random_vec(seed + 2, m * n));
            let (a, b, dc) = (to_f64(&a), to_f64(&b), to_f64(&dc));
            let what = format!("{m}x{k}x{n}");
            assert_close_f32(&format!("c {what}"), &c, &reference::matmul_forward(&a, &b, [m, k, n]), 1e-4);
            let (want_da, want_db) = reference::matmul_backward(&a, &b, &dc, [m, k, n]);
            let plus =
                |g: Vec<f64>, start: Vec<f32>| -> Vec<f64> { g.iter().zip(start).map(|(g, s)| g + s as f64).collect() };
            assert_close_f32(&format!("da {what}"), &da, &plus(want_da, random_vec(seed + 3, m * k)), 1e-3);
            assert_close_f32(&format!("db {what}"), &db, &plus(want_db, random_vec(seed + 4, k * n)), 1e-3);
        }
    }

    #[test]
    fn tiled_kernels_match_the_textbook_kernels() {
        let tilings = [
            Tiles::default(),
            Tiles::Register(Tiling { wg: 4, tm: 32, tn: 12 }),
            Tiles::Shared(SharedTiling::default()),
            Tiles::Shared(SharedTiling { tx: 8, ty: 4, sm: 3, sn: 2, bk: 16 }),
        ];
        for (s, &shape) in SHAPES.iter().chain(&[[13, 37, 21]]).enumerate() {
            let seed = 3100 + 10 * s as u64;
            let want = run(seed, shape, None);
            for t in &tilings {
                let got = run(seed, shape, Some(t));
                for (k, name) in ["c", "da", "db"].iter().enumerate() {
                    let tol = if k == 0 { 1e-4 } else { 1e-3 };
                    assert_close_f32(&format!("{name} {shape:?} {t:?}"), &got[k], &to_f64(&want[k]), tol);
                }
            }
        }
    }

    #[test]
    fn the_tape_on_the_textbook_kernels_gives_the_tuned_gradients() {
        let gpu = gpu();
        let [m, k, n] = [5, 6, 7];
        let a = gpu.upload(&random_vec(3200, m * k), &[m, k]).with_grad();
        let b = gpu.upload(&random_vec(3201, k * n), &[k, n]).with_grad();
        let dc = gpu.upload(&random_vec(3202, m * n), &[m, n]);
        let step = |kernels| {
            with_kernels(gpu, kernels, || {
                let mut step = Step::train(gpu);
                let c = matmul(&mut step, &a, &b);
                let grads = step.backward(vec![(c.clone(), dc.clone())]);
                step.submit();
                [&c, grads.get(&a).unwrap(), grads.get(&b).unwrap()].map(|t| gpu.read(t))
            })
        };
        let (tuned, textbook) = (step(Kernels::Tuned), step(Kernels::Reference));
        for (k, name) in ["c", "da", "db"].iter().enumerate() {
            assert_close_f32(name, &tuned[k], &to_f64(&textbook[k]), if k == 0 { 1e-4 } else { 1e-3 });
        }
        assert!(!gpu.compiled_constants("matmul/textbook", "matmul_backward_b").is_empty());
    }
}
