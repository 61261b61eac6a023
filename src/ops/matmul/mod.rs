//! Dense matrix product, row-major f32: a `[M,K]`, b `[K,N]`, c `[M,N]`.
//!
//! ```text
//! forward:  c[m,n]  = sum_k a[m,k] * b[k,n]          C = A . B
//! backward: da[m,k] += sum_n dc[m,n] * b[k,n]        dA += dC . B^T
//!           db[k,n] += sum_m a[m,k] * dc[m,n]        dB += A^T . dC
//! ```
//!
//! Not a layer of the U-Net: it is the *ceiling* the convolutions are measured against (the
//! best GEMM rate this GPU reaches with our kind of shader; see `benches/kernels/matmul.rs`).
//! One shader runs all three products: the backward ones are the forward kernel reading an
//! operand transposed (pipeline constants `TRANS_A`, `TRANS_B`) and adding into the output
//! (`ACCUMULATE`). Two tilings (see `shaders/matmul/tiled.wgsl`): register tiles ([`Tiling`], the
//! default; vec4 loads when M, N and K are multiples of 4, scalar loads otherwise), and the
//! classic workgroup-memory tiles ([`SharedTiling`]) a real GPU wants. [`textbook`] holds the
//! direct kernels (one invocation per element of the product, one loop over its sum), the oracle
//! the tiled ones are tested against, which the default wrappers dispatch under
//! [`Kernels::Reference`].

use crate::autograd::tape::Step;
use crate::autograd::tensor::Tensor;
use crate::runtime::{Encoder, Gpu, Kernels, Shader};
use crate::shader;

pub mod textbook;

pub use crate::tune::tiling::matmul::{SharedTiling, Tiles, Tiling};

const SHADER: Shader = shader!("matmul/tiled");

/// Lavapipe ends a shader's loops silently once they have run 65,535 iterations in all. The
/// register kernels have one loop, over K in steps of 4; the shared kernel's loops run
/// `1 + BK + (copy trips)` times per K slice of BK.
const LOOP_GUARD: usize = 65_535;

/// Mirrors `Params` in `shaders/matmul/tiled.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    col_blocks: u32,
    _pad0: u32,
    _pad1: u32,
}

/// One product `c (=|+=) opA . opB` as the shader sees it: opA `[m,k]`, opB `[k,n]`; with
/// `trans_a` the tensor `a` is stored `[k,m]`, with `trans_b` the tensor `b` is stored `[n,k]`.
#[derive(Clone, Copy, Debug)]
struct Gemm {
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
}

/// Record one product. The caller has checked the shapes; this checks the kernel's limits.
fn gemm(gpu: &Gpu, enc: &mut Encoder, a: &Tensor, b: &Tensor, c: &Tensor, g: Gemm, tiles: &Tiles) {
    let (m, n, k) = (g.m as u32, g.n as u32, g.k as u32);
    if g.m == 0 || g.n == 0 {
        return;
    }
    if g.k == 0 {
        // An empty sum: C = 0 (or C += 0).
        if !g.accumulate {
            enc.clear(c);
        }
        return;
    }
    let params =
        Params { m, n, k, lda: if g.trans_a { m } else { k }, ldb: if g.trans_b { k } else { n }, ..Params::default() };
    if let Err(e) = tiles.check() {
        panic!("matmul: {e}");
    }
    let flags = [
        ("TRANS_A", g.trans_a as u32 as f64),
        ("TRANS_B", g.trans_b as u32 as f64),
        ("ACCUMULATE", g.accumulate as u32 as f64),
    ];
    match tiles {
        Tiles::Register(t) => {
            let vec4 = g.m.is_multiple_of(4) && g.n.is_multiple_of(4) && g.k.is_multiple_of(4);
            assert!(g.k.div_ceil(4) < LOOP_GUARD, "matmul: K = {} is past the loop guard of CPU drivers", g.k);
            let params = Params { col_blocks: n.div_ceil(t.tn), ..params };
            let entry = if vec4 { "matmul_forward" } else { "matmul_forward_scalar" };
            let constants: Vec<_> =
                [("WG", t.wg as f64), ("TM", t.tm as f64), ("TN", t.tn as f64)].into_iter().chain(flags).collect();
            let kernel = gpu.kernel(&SHADER, entry, &constants);
            let groups = [m.div_ceil(t.tm), params.col_blocks.div_ceil(t.wg), 1];
            gpu.dispatch(enc, &kernel, &params, &[(1, a), (2, b), (3, c)], groups);
        }
        Tiles::Shared(t) => {
            let (bm, bn, threads) = (t.ty * t.sm, t.tx * t.sn, t.tx * t.ty);
            let per_slice = 1 + t.bk + (t.bk * bm + t.bk * bn) / threads;
            assert!(
                g.k.div_ceil(t.bk as usize) * (per_slice as usize) < LOOP_GUARD,
                "matmul: K = {} is past the loop guard of CPU drivers with {t:?}",
                g.k
            );
            let constants: Vec<_> = [
                ("TX", t.tx as f64),
                ("TY", t.ty as f64),
                ("SM", t.sm as f64),
                ("SN", t.sn as f64),
                ("BK", t.bk as f64),
            ]
            .into_iter()
            .chain(flags)
            .collect();
            let kernel = gpu.kernel(&SHADER, "matmul_forward_shared", &constants);
            gpu.dispatch(enc, &kernel, &params, &[(1, a), (2, b), (3, c)], [n.div_ceil(bn), m.div_ceil(bm), 1]);
        }
    }
}

/// `[rows, cols]` of a 2-D tensor; panics naming `what` otherwise.
fn dims2(t: &Tensor, what: &str) -> [usize; 2] {
    t.shape().try_into().unwrap_or_else(|_| panic!("matmul: {what} must be 2-D, got {:?}", t.shape()))
}

/// `(M, K, N)` of a product a `[M,K]` . b `[K,N]`, checked.
fn dims(a: &Tensor, b: &Tensor) -> (usize, usize, usize) {
    let ([m, k], [kb, n]) = (dims2(a, "a"), dims2(b, "b"));
    assert_eq!(k, kb, "matmul: a {:?} times b {:?}: inner dimensions differ", a.shape(), b.shape());
    (m, k, n)
}

/// The operands of a forward: c `[M,N]` `= a . b`, a `[M,K]`, b `[K,N]`.
#[derive(Clone, Copy, Debug)]
pub struct Forward<'a> {
    /// `[M,K]`.
    pub a: &'a Tensor,
    /// `[K,N]`.
    pub b: &'a Tensor,
    /// `[M,N]`, written.
    pub c: &'a Tensor,
    /// A kernel and tiling that override the tuned dispatch (benchmarks sweep it); `None`: the
    /// one `gpu.tuning().matmul` names, or the [`textbook`] kernel under [`Kernels::Reference`].
    pub tiles: Option<Tiles>,
}

/// `c = a . b`, the operands and options in `f`. a `[M,K]`, b `[K,N]`, c `[M,N]`. Tiled as
/// `f.tiles` or else `gpu.tuning().matmul` says, or the [`textbook`] kernel under
/// [`Kernels::Reference`] (without `f.tiles`).
pub fn matmul_forward(gpu: &Gpu, enc: &mut Encoder, f: &Forward) {
    let Forward { a, b, c, tiles } = *f;
    let tiles = match (tiles, gpu.kernels()) {
        (Some(t), _) => t,
        (None, Kernels::Tuned) => gpu.tuning().matmul,
        (None, Kernels::Reference) => return textbook::matmul_forward(gpu, enc, a, b, c),
    };
    let (m, k, n) = dims(a, b);
    assert_eq!(c.shape(), [m, n], "matmul: c {:?} for a {:?} times b {:?}", c.shape(), a.shape(), b.shape());
    gemm(gpu, enc, a, b, c, Gemm { m, n, k, trans_a: false, trans_b: false, accumulate: false }, &tiles);
}

/// The operands of a backward: a `[M,K]`, b `[K,N]`, dc `[M,N]`, and the gradients to add
/// into, each when given: da `[M,K]`, db `[K,N]`.
#[derive(Clone, Copy, Debug)]
pub struct Backward<'a> {
    /// `[M,K]`.
    pub a: &'a Tensor,
    /// `[K,N]`.
    pub b: &'a Tensor,
    /// `[M,N]`.
    pub dc: &'a Tensor,
    /// `[M,K]`, added into; none to skip.
    pub da: Option<&'a Tensor>,
    /// `[K,N]`, added into; none to skip.
    pub db: Option<&'a Tensor>,
    /// A kernel and tiling that override the tuned dispatch, as [`Forward::tiles`].
    pub tiles: Option<Tiles>,
}

/// `da += dc . b^T` and `db += a^T . dc`, each when given. a `[M,K]`, b `[K,N]`, dc `[M,N]`,
/// da `[M,K]`, db `[K,N]`. Tiled as `op.tiles` or else `gpu.tuning().matmul` says, or textbook
/// (as [`matmul_forward`]).
pub fn matmul_backward(gpu: &Gpu, enc: &mut Encoder, op: &Backward) {
    let Backward { a, b, dc, da, db, tiles } = *op;
    let tiles = match (tiles, gpu.kernels()) {
        (Some(t), _) => t,
        (None, Kernels::Tuned) => gpu.tuning().matmul,
        (None, Kernels::Reference) => return textbook::matmul_backward(gpu, enc, a, b, dc, da, db),
    };
    let tiles = &tiles;
    let (m, k, n) = dims(a, b);
    assert_eq!(
        dc.shape(),
        [m, n],
        "matmul backward: dc {:?} for a {:?} times b {:?}",
        dc.shape(),
        a.shape(),
        b.shape()
    );
    if let Some(da) = da {
        assert_eq!(da.shape(), a.shape(), "matmul backward: da {:?} for a {:?}", da.shape(), a.shape());
        // forward: c[m,n] = sum_k a[m,k] b[k,n]  =>  da[m,k] += sum_n dc[m,n] b[k,n]  (b read as [N,K]^T)
        gemm(gpu, enc, dc, b, da, Gemm { m, n: k, k: n, trans_a: false, trans_b: true, accumulate: true }, tiles);
    }
    if let Some(db) = db {
        assert_eq!(db.shape(), b.shape(), "matmul backward: db {:?} for b {:?}", db.shape(), b.shape());
        // forward: c[m,n] = sum_k a[m,k] b[k,n]  =>  db[k,n] += sum_m a[m,k] dc[m,n]  (a read as [M,K]^T)
        gemm(gpu, enc, a, dc, db, Gemm { m: k, n, k: m, trans_a: true, trans_b: false, accumulate: true }, tiles);
    }
}

/// Matrix product on the tape: a `[M,K]` . b `[K,N]` -> `[M,N]`.
pub fn matmul(step: &mut Step, a: &Tensor, b: &Tensor) -> Tensor {
    let (m, _, n) = dims(a, b);
    let c = step.output(&[m, n], &[a, b]);
    matmul_forward(step.gpu, &mut step.enc, &Forward { a, b, c: &c, tiles: None });
    let (a, b) = (a.clone(), b.clone());
    step.record("matmul", &c, move |ctx, dc| {
        let da = ctx.grad(&a);
        let db = ctx.grad(&b);
        matmul_backward(
            ctx.gpu,
            ctx.enc,
            &Backward { a: &a, b: &b, dc, da: da.as_ref(), db: db.as_ref(), tiles: None },
        );
    });
    c
}

/// Plain-Rust matrix products on `f64`, row-major, the contract the shader is tested against.
pub mod reference {
    /// `c[m,n] = sum_k a[m,k] * b[k,n]`. a `[m,k]`, b `[k,n]`.
    pub fn matmul_forward(a: &[f64], b: &[f64], [m, k, n]: [usize; 3]) -> Vec<f64> {
        assert_eq!((a.len(), b.len()), (m * k, k * n), "matmul reference: a, b lengths for {m}x{k}x{n}");
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for kk in 0..k {
                let av = a[i * k + kk];
                for j in 0..n {
                    c[i * n + j] += av * b[kk * n + j];
                }
            }
        }
        c
    }

    /// `(da, db)` (not accumulated): `da[m,k] = sum_n dc[m,n] * b[k,n]`,
    /// `db[k,n] = sum_m a[m,k] * dc[m,n]`.
    pub fn matmul_backward(a: &[f64], b: &[f64], dc: &[f64], [m, k, n]: [usize; 3]) -> (Vec<f64>, Vec<f64>) {
        assert_eq!(dc.len(), m * n, "matmul reference: dc length for {m}x{k}x{n}");
        let mut da = vec![0.0; m * k];
        let mut db = vec![0.0; k * n];
        for i in 0..m {
            for kk in 0..k {
                for j in 0..n {
                    da[i * k + kk] += dc[i * n + j] * b[kk * n + j];
                    db[kk * n + j] += a[i * k + kk] * dc[i * n + j];
                }
            }
        }
        (da, db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, assert_close_f32, dot, gpu, numeric_grad, random_vec, to_f64};

    #[test]
    fn reference_backward_matches_finite_differences() {
        let [m, k, n] = [3, 5, 4];
        let (a, b) = (to_f64(&random_vec(1, m * k)), to_f64(&random_vec(2, k * n)));
        let r = to_f64(&random_vec(3, m * n));
        let (da, db) = reference::matmul_backward(&a, &b, &r, [m, k, n]);
        let loss_a = |a: &[f64]| dot(&r, &reference::matmul_forward(a, &b, [m, k, n]));
        let loss_b = |b: &[f64]| dot(&r, &reference::matmul_forward(&a, b, [m, k, n]));
        assert_close("matmul da", &da, &numeric_grad(loss_a, &a, 1e-6), 1e-6);
        assert_close("matmul db", &db, &numeric_grad(loss_b, &b, 1e-6), 1e-6);
    }

    /// Forward and backward of `tiles` on a `[m,k] . [k,n]` product against the reference; the
    /// gradient buffers start at random values (the backward adds into them).
    fn check(seed: u64, [m, k, n]: [usize; 3], tiles: &Tiles) {
        let gpu = gpu();
        let (a, b, dc) = (random_vec(seed, m * k), random_vec(seed + 1, k * n), random_vec(seed + 2, m * n));
        let (da0, db0) = (random_vec(seed + 3, m * k), random_vec(seed + 4, k * n));
        let (at, bt, dct) = (gpu.upload(&a, &[m, k]), gpu.upload(&b, &[k, n]), gpu.upload(&dc, &[m, n]));
        let (dat, dbt, c) = (gpu.upload(&da0, &[m, k]), gpu.upload(&db0, &[k, n]), gpu.empty(&[m, n]));
        let mut enc = gpu.encoder();
        matmul_forward(gpu, &mut enc, &Forward { a: &at, b: &bt, c: &c, tiles: Some(*tiles) });
        matmul_backward(
            gpu,
            &mut enc,
            &Backward { a: &at, b: &bt, dc: &dct, da: Some(&dat), db: Some(&dbt), tiles: Some(*tiles) },
        );
        gpu.submit(enc);

        let (af, bf, dcf) = (to_f64(&a), to_f64(&b), to_f64(&dc));
        let what = format!("{m}x{k}x{n} {tiles:?}");
        assert_close_f32(
            &format!("matmul c {what}"),
            &gpu.read(&c),
            &reference::matmul_forward(&af, &bf, [m, k, n]),
            1e-4,
        );
        let (da, db) = reference::matmul_backward(&af, &bf, &dcf, [m, k, n]);
        let plus =
            |g: Vec<f64>, start: &[f32]| -> Vec<f64> { g.iter().zip(start).map(|(g, &s)| g + s as f64).collect() };
        assert_close_f32(&format!("matmul da {what}"), &gpu.read(&dat), &plus(da, &da0), 1e-3);
        assert_close_f32(&format!("matmul db {what}"), &gpu.read(&dbt), &plus(db, &db0), 1e-3);
    }

    /// Shapes not multiples of any tile (scalar kernel), multiples of 4 but not of the tiles
    /// (vec4 kernel with partial blocks), tiny ones, and one long K.
    const SHAPES: [[usize; 3]; 9] =
        [[1, 1, 1], [1, 7, 1], [3, 5, 7], [17, 33, 9], [4, 4, 4], [12, 20, 36], [36, 8, 68], [8, 300, 4], [64, 64, 64]];

    #[test]
    fn register_tiles_match_reference() {
        for (s, shape) in SHAPES.iter().enumerate() {
            check(10 * s as u64, *shape, &Tiles::default());
        }
    }

    #[test]
    fn other_register_tilings_match_reference() {
        for (t, tiling) in [Tiling { wg: 8, tm: 4, tn: 4 }, Tiling { wg: 4, tm: 32, tn: 12 }].iter().enumerate() {
            for shape in [[3, 5, 7], [12, 20, 36], [20, 12, 44]] {
                check(100 + t as u64, shape, &Tiles::Register(*tiling));
            }
        }
    }

    #[test]
    fn shared_tiles_match_reference() {
        for (s, shape) in SHAPES.iter().enumerate() {
            check(200 + 10 * s as u64, *shape, &Tiles::Shared(SharedTiling::default()));
        }
        let odd = SharedTiling { tx: 8, ty: 4, sm: 3, sn: 2, bk: 16 };
        check(300, [13, 37, 21], &Tiles::Shared(odd));
    }

    #[test]
    fn tape_gives_the_wrappers_gradients() {
        let gpu = gpu();
        let [m, k, n] = [5, 6, 7];
        let (a, b, dc) = (random_vec(40, m * k), random_vec(41, k * n), random_vec(42, m * n));
        let at = gpu.upload(&a, &[m, k]).with_grad();
        let bt = gpu.upload(&b, &[k, n]).with_grad();
        let mut step = Step::train(gpu);
        let c = matmul(&mut step, &at, &bt);
        let dct = gpu.upload(&dc, &[m, n]);
        let grads = step.backward(vec![(c.clone(), dct)]);
        let (da, db) = (grads.get(&at).expect("da").clone(), grads.get(&bt).expect("db").clone());
        step.submit();
        let (af, bf) = (to_f64(&a), to_f64(&b));
        assert_close_f32("tape c", &gpu.read(&c), &reference::matmul_forward(&af, &bf, [m, k, n]), 1e-4);
        let (want_da, want_db) = reference::matmul_backward(&af, &bf, &to_f64(&dc), [m, k, n]);
        assert_close_f32("tape da", &gpu.read(&da), &want_da, 1e-3);
        assert_close_f32("tape db", &gpu.read(&db), &want_db, 1e-3);
    }
}
