//! The two families of convolution kernels, and what the tuning does with the GPU one: the
//! workgroup-memory GEMMs of [`ConvGemm`] (`shaders/*_gemm.wgsl`), which [`Tuning::builtin`] gives
//! hardware adapters, against the register tiles of CPU drivers. `--tiling gpu|cpu`
//! ([`TilingFamily`]) forces either on any adapter; the autotune times both.

use std::fmt;

use super::Tuning;
use crate::gpu::GpuError;
use crate::ops::conv2d::gemm::{ConvGemm, Gemm};
// The cache (JSON) and the autotune's candidates and checks: native only, as the cache and the
// autotune themselves.
#[cfg(not(target_arch = "wasm32"))]
use {
    super::{close, plus, shape_label, Family, Record},
    crate::gpu::{Encoder, Gpu},
    crate::ops::conv2d::gemm::{
        conv2d_backward_data_gemm, conv2d_backward_weight_gemm, conv2d_forward_gemm, BackwardData, BackwardWeight,
        Forward,
    },
    crate::ops::conv2d::{self, Conv2d, Epilogue},
    crate::ops::conv_transpose2d::gemm::{
        conv_transpose2d_backward_data_gemm, conv_transpose2d_backward_weight_gemm, conv_transpose2d_forward_gemm,
    },
    crate::ops::conv_transpose2d::{self, reference as ct_reference},
    crate::tape::Accumulate,
    crate::testing::{random_vec, to_f64},
    serde_json::{json, Value},
};

/// Which family of tile sizes to use, whatever the adapter (`--tiling`, `UNET_WGPU_TILING`,
/// [`crate::GpuOptions::tiling`]); when none is named, the adapter's type decides
/// ([`Tuning::builtin`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TilingFamily {
    /// The GPU-shaped kernels: convolutions as workgroup-memory GEMMs ([`Tuning::gpu`]).
    Gpu,
    /// The CPU drivers' register tiles, measured on lavapipe ([`Tuning::cpu`]).
    Cpu,
}

impl std::str::FromStr for TilingFamily {
    type Err = GpuError;
    fn from_str(s: &str) -> Result<Self, GpuError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gpu" => Ok(TilingFamily::Gpu),
            "cpu" => Ok(TilingFamily::Cpu),
            _ => Err(GpuError::UnknownTiling(s.to_string())),
        }
    }
}

impl fmt::Display for TilingFamily {
    /// `gpu` or `cpu`, as `--tiling` takes them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TilingFamily::Gpu => "gpu",
            TilingFamily::Cpu => "cpu",
        })
    }
}

impl Tuning {
    /// The builtin tiling of `family`.
    pub fn of_family(family: TilingFamily) -> Tuning {
        match family {
            TilingFamily::Gpu => Tuning::gpu(),
            TilingFamily::Cpu => Tuning::cpu(),
        }
    }
}

/// `null`, or `{"conv2d_forward": {"bm": .., "bn": .., "bk": .., "tm": .., "tn": ..}, ...}`.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn to_json(g: &Option<ConvGemm>) -> Value {
    match g {
        None => Value::Null,
        Some(g) => g
            .named()
            .iter()
            .map(|(name, t)| (name.to_string(), json!({ "bm": t.bm, "bn": t.bn, "bk": t.bk, "tm": t.tm, "tn": t.tn })))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

/// The inverse of [`to_json`].
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn from_json(v: Option<&Value>) -> Result<Option<ConvGemm>, String> {
    let v = match v {
        None => return Err("no \"conv_gemm\" (null for the register tiles)".into()),
        Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let gemm = |name: &str| -> Result<Gemm, String> {
        let o = v.get(name).ok_or_else(|| format!("conv_gemm has no {name:?}"))?;
        let int = |field: &str| {
            o.get(field)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("conv_gemm.{name}.{field} is missing or not a 32-bit unsigned integer"))
        };
        Ok(Gemm { bm: int("bm")?, bn: int("bn")?, bk: int("bk")?, tm: int("tm")?, tn: int("tn")? })
    };
    Ok(Some(ConvGemm {
        conv2d_forward: gemm("conv2d_forward")?,
        conv2d_backward_data: gemm("conv2d_backward_data")?,
        conv2d_backward_weight: gemm("conv2d_backward_weight")?,
        conv_transpose2d_forward: gemm("conv_transpose2d_forward")?,
        conv_transpose2d_backward_data: gemm("conv_transpose2d_backward_data")?,
        conv_transpose2d_backward_weight: gemm("conv_transpose2d_backward_weight")?,
    }))
}

/// `register tiles` or the GEMM tilings.
pub(super) fn label(g: &Option<ConvGemm>) -> String {
    g.map_or("register tiles".to_string(), |g| g.to_string())
}

/// The candidates of the autotune besides the builtin: the register tiles, the default GEMM
/// tilings, and a few others (every one within WebGPU's default limits).
pub(super) fn candidates() -> Vec<Option<ConvGemm>> {
    let g = |bm, bn, bk, tm, tn| Gemm { bm, bn, bk, tm, tn };
    vec![
        None,
        Some(ConvGemm::default()),
        Some(ConvGemm::uniform(g(64, 64, 16, 4, 4))),
        Some(ConvGemm::uniform(g(32, 128, 8, 4, 4))),
        Some(ConvGemm { conv2d_backward_weight: g(64, 64, 8, 8, 8), ..ConvGemm::uniform(g(128, 128, 8, 8, 8)) }),
        Some(ConvGemm::uniform(g(32, 64, 16, 2, 4))),
    ]
}

/// The whole-convolution family: each candidate (register tiles with `registers`' sizes, or GEMM
/// tilings) runs all three directions of conv2d on `conv2d` shapes and of the transposed
/// convolution on `transposed` shapes.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn family<'a>(
    gpu: &'a Gpu,
    registers: Tuning,
    candidates: Vec<Option<ConvGemm>>,
    (conv2d, transposed): (&[[usize; 4]], &[[usize; 4]]),
) -> Family<'a, Option<ConvGemm>> {
    let mut shapes: Vec<(String, Record<Option<ConvGemm>>)> = Vec::new();
    for &xd in conv2d {
        let [n, c, h, wd] = xd;
        let p = Conv2d::new(1, 1);
        let (x, w) =
            (gpu.upload(&random_vec(6, n * c * h * wd), &xd), gpu.upload(&random_vec(7, c * c * 9), &[c, c, 3, 3]));
        let (b, y, dy) =
            (gpu.upload(&random_vec(8, c), &[c]), gpu.empty(&xd), gpu.upload(&random_vec(9, x.len()), &xd));
        let (dx, dw, db) = (gpu.empty(&xd), gpu.empty(&[c, c, 3, 3]), gpu.empty(&[c]));
        let record: Record<Option<ConvGemm>> = Box::new(move |gpu, enc, g| match g {
            Some(g) => {
                let f = Forward { x: &x, w: &w, b: Some(&b), y: &y, p, epilogue: Epilogue::Relu };
                conv2d_forward_gemm(gpu, enc, &f, &g.conv2d_forward);
                let a = BackwardData { dy: &dy, w: &w, dx: &dx, p, acc: Accumulate::Overwrite };
                conv2d_backward_data_gemm(gpu, enc, &a, &g.conv2d_backward_data);
                let a = BackwardWeight { x: &x, dy: &dy, dw: &dw, db: Some(&db), p };
                conv2d_backward_weight_gemm(gpu, enc, &a, &g.conv2d_backward_weight);
            }
            None => {
                let t = &registers;
                conv2d::conv2d_forward_tiled(gpu, enc, &x, &w, Some(&b), &y, p, Epilogue::Relu, &t.conv2d_forward);
                conv2d::conv2d_backward_data_tiled(gpu, enc, &dy, &w, &dx, p, &t.conv2d_backward_data);
                conv2d::conv2d_backward_weight_tiled(gpu, enc, &x, &dy, &dw, Some(&db), p, &t.conv2d_backward_weight);
            }
        });
        shapes.push((format!("conv2d {} fwd+bwd", shape_label(&xd)), record));
    }
    for &xd in transposed {
        let [n, c, h, wd] = xd;
        let co = (c / 2).max(1);
        let big = [n, co, 2 * h, 2 * wd];
        let (x, w) = (
            gpu.upload(&random_vec(21, xd.iter().product()), &xd),
            gpu.upload(&random_vec(22, c * co * 4), &[c, co, 2, 2]),
        );
        let (b, y) = (gpu.upload(&random_vec(23, co), &[co]), gpu.empty(&big));
        let dy = gpu.upload(&random_vec(24, big.iter().product()), &big);
        let (dx, dw, db) = (gpu.empty(&xd), gpu.empty(&[c, co, 2, 2]), gpu.empty(&[co]));
        let record: Record<Option<ConvGemm>> = Box::new(move |gpu, enc, g| match g {
            Some(g) => transposed_gemm(gpu, enc, [&x, &w, &b, &y, &dy, &dx, &dw, &db], g),
            None => {
                let t = &registers.conv_transpose2d;
                conv_transpose2d::conv_transpose2d_forward_tiled(gpu, enc, &x, &w, Some(&b), &y, t);
                conv_transpose2d::conv_transpose2d_backward_data_tiled(gpu, enc, &w, &dy, &dx, t);
                conv_transpose2d::conv_transpose2d_backward_weight_tiled(gpu, enc, &x, &dy, &dw, Some(&db), t);
            }
        });
        shapes.push((format!("transposed {} fwd+bwd", shape_label(&xd)), record));
    }
    Family { kernel: "conv_gemm", candidates, label, check: Box::new(check), shapes }
}

/// The three transposed-convolution GEMMs: `[x, w, b, y, dy, dx, dw, db]`, dx overwritten.
#[cfg(not(target_arch = "wasm32"))]
fn transposed_gemm(gpu: &Gpu, enc: &mut Encoder, t: [&crate::Tensor; 8], g: &ConvGemm) {
    let [x, w, b, y, dy, dx, dw, db] = t;
    conv_transpose2d_forward_gemm(gpu, enc, x, w, Some(b), y, &g.conv_transpose2d_forward);
    let data = &g.conv_transpose2d_backward_data;
    conv_transpose2d_backward_data_gemm(gpu, enc, (w, dy, dx), Accumulate::Add, data);
    conv_transpose2d_backward_weight_gemm(gpu, enc, (x, dy), (dw, Some(db)), &g.conv_transpose2d_backward_weight);
}

/// A candidate's GEMMs against the references on small odd shapes (the register tiles were
/// checked by their own families).
#[cfg(not(target_arch = "wasm32"))]
fn check(gpu: &Gpu, g: &Option<ConvGemm>) -> Result<(), String> {
    let Some(g) = g else { return Ok(()) };
    let (xd, wd, p) = ([2, 5, 6, 11], [7, 5, 3, 3], Conv2d::new(1, 1));
    let (x, w, b) = (random_vec(1, 2 * 5 * 66), random_vec(2, 7 * 45), random_vec(3, 7));
    let (dy, start) = (random_vec(4, 2 * 7 * 66), random_vec(5, 2 * 7 * 66));
    let yd = [2, 7, 6, 11];
    let (xt, wt, bt, dyt) = (gpu.upload(&x, &xd), gpu.upload(&w, &wd), gpu.upload(&b, &[7]), gpu.upload(&dy, &yd));
    let (y, dx) = (gpu.empty(&yd), gpu.upload(&start[..x.len()], &xd));
    let (dw, db) = (gpu.upload(&start[..w.len()], &wd), gpu.upload(&start[..7], &[7]));
    let mut enc = gpu.encoder();
    let f = Forward { x: &xt, w: &wt, b: Some(&bt), y: &y, p, epilogue: Epilogue::Identity };
    conv2d_forward_gemm(gpu, &mut enc, &f, &g.conv2d_forward);
    let a = BackwardData { dy: &dyt, w: &wt, dx: &dx, p, acc: Accumulate::Add };
    conv2d_backward_data_gemm(gpu, &mut enc, &a, &g.conv2d_backward_data);
    let a = BackwardWeight { x: &xt, dy: &dyt, dw: &dw, db: Some(&db), p };
    conv2d_backward_weight_gemm(gpu, &mut enc, &a, &g.conv2d_backward_weight);
    // The transposed convolution: x [2,6,3,5] -> y [2,5,6,10].
    let (cd, co) = ([2, 6, 3, 5], 5);
    let big = [2, co, 6, 10];
    let (cx, cw, cdy) = (random_vec(20, 180), random_vec(21, 6 * co * 4), random_vec(22, 600));
    let ts = (gpu.upload(&cx, &cd), gpu.upload(&cw, &[6, co, 2, 2]), gpu.upload(&b[..co], &[co]));
    let (cy, cdyt) = (gpu.empty(&big), gpu.upload(&cdy, &big));
    let (cdx, cdw, cdb) = (
        gpu.upload(&start[..180], &cd),
        gpu.upload(&start[..6 * co * 4], &[6, co, 2, 2]),
        gpu.upload(&start[..co], &[co]),
    );
    transposed_gemm(gpu, &mut enc, [&ts.0, &ts.1, &ts.2, &cy, &cdyt, &cdx, &cdw, &cdb], g);
    gpu.submit(enc);

    let (xf, wf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&dy));
    close("y", &gpu.read(&y), &conv2d::reference::conv2d_forward(&xf, xd, &wf, wd, Some(&to_f64(&b)), &p), 1e-4)?;
    let want = plus(&conv2d::reference::conv2d_backward_data(&dyf, &wf, xd, wd, &p), &start);
    close("dx", &gpu.read(&dx), &want, 1e-3)?;
    let (want_dw, want_db) = conv2d::reference::conv2d_backward_weight(&xf, &dyf, xd, wd, &p);
    close("dw", &gpu.read(&dw), &plus(&want_dw, &start), 1e-3)?;
    close("db", &gpu.read(&db), &plus(&want_db, &start), 1e-3)?;
    let (cxf, cwf, cdyf) = (to_f64(&cx), to_f64(&cw), to_f64(&cdy));
    let want = ct_reference::conv_transpose2d_forward(&cxf, &cwf, Some(&to_f64(&b[..co])), cd, co);
    close("transposed y", &gpu.read(&cy), &want, 1e-4)?;
    let want = plus(&ct_reference::conv_transpose2d_backward_data(&cdyf, &cwf, cd, co), &start);
    close("transposed dx", &gpu.read(&cdx), &want, 1e-3)?;
    let (want_dw, want_db) = ct_reference::conv_transpose2d_backward_weight(&cxf, &cdyf, cd, co);
    close("transposed dw", &gpu.read(&cdw), &plus(&want_dw, &start), 1e-3)?;
    close("transposed db", &gpu.read(&cdb), &plus(&want_db, &start), 1e-3)
}
