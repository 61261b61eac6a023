//! The convolutions as implicit GEMMs tiled through workgroup memory (`shaders/conv2d_gemm.wgsl`):
//! the GPU-shaped kernels, which the default wrappers dispatch when [`Gpu::tuning`] has
//! [`ConvGemm`] tilings (hardware adapters, or `--tiling gpu`). Same contracts as the wrappers in
//! [`super`]: forward with bias and [`Epilogue`], backward data added or overwritten, backward
//! weight with the bias gradient.
//!
//! A [`Gemm`] is plain data, passed to the shader as pipeline constants: a workgroup computes a
//! `bm x bn` tile of the GEMM's output, stepping through K in slices of `bk`, each of its
//! `(bm/tm) * (bn/tn)` threads a `tm x tn` register tile. [`ConvGemm`] holds one per direction of
//! both convolutions (conv2d and the 2x2 transposed one, `conv_transpose2d::gemm`).

use std::fmt;

use super::{dims, Conv2d, Epilogue};
use crate::gpu::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;
use crate::tape::Accumulate;
use crate::tensor::Tensor;

const SHADER: Shader = shader!("conv2d_gemm");
/// Threads a workgroup of the split-K reduction (the shader's literal 256).
const REDUCE_WG: u32 = 256;
/// The weight gradient splits K (the pixels) into chunks until there are about this many
/// workgroups: enough to fill a large GPU, few enough partial sums to add.
const TARGET_GROUPS: u32 = 1024;
/// A chunk has at least this many slices of `bk` pixels (fewer, longer chunks write less) and at
/// most [`MAX_SLICES`]: CPU drivers stop an invocation's loops after 65,535 iterations in all.
const MIN_SLICES: u32 = 8;
const MAX_SLICES: u32 = 512;

/// One workgroup-memory GEMM tiling (the shader's `BM`, `BN`, `BK`, `TM`, `TN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    /// Rows of the output tile a workgroup computes.
    pub bm: u32,
    /// Columns of the output tile a workgroup computes.
    pub bn: u32,
    /// Length of the K slice staged in workgroup memory a step.
    pub bk: u32,
    /// Rows of a thread's register tile (a divisor of `bm`, at most 8).
    pub tm: u32,
    /// Columns of a thread's register tile (a divisor of `bn`, at most 8).
    pub tn: u32,
}

impl Gemm {
    /// Threads a workgroup: `(bm / tm) * (bn / tn)`.
    pub fn threads(&self) -> u32 {
        (self.bm / self.tm.max(1)) * (self.bn / self.tn.max(1))
    }

    /// Accumulators a thread: `tm * tn`.
    pub fn accumulators(&self) -> u32 {
        self.tm * self.tn
    }

    /// Workgroup memory of the kernel that uses the most: the A and B tiles (`4 * bk * (bm + bn)`
    /// bytes) and the decoded pixels (16 bytes each: `bn` of them in the forward and backward data,
    /// `2 * bk` in the weight gradient).
    pub fn workgroup_bytes(&self) -> u32 {
        4 * self.bk * (self.bm + self.bn) + 16 * self.bn.max(2 * self.bk)
    }

    /// `Err(why)` when the shader cannot run this tiling, or the device's `limits` cannot.
    pub fn check(&self, limits: &wgpu::Limits) -> Result<(), String> {
        let shape = (1..=8).contains(&self.tm)
            && (1..=8).contains(&self.tn)
            && self.bk > 0
            && self.bm > 0
            && self.bn > 0
            && self.bm.is_multiple_of(self.tm)
            && self.bn.is_multiple_of(self.tn);
        if !shape {
            return Err(format!("GEMM tiling {self} out of range (tm and tn 1..=8, dividing bm and bn; bk > 0)"));
        }
        let max = limits.max_compute_invocations_per_workgroup.min(limits.max_compute_workgroup_size_x);
        if self.threads() > max {
            return Err(format!(
                "GEMM tiling {self}: {} threads a workgroup (the device allows {max})",
                self.threads()
            ));
        }
        let bytes = self.workgroup_bytes();
        let allowed = limits.max_compute_workgroup_storage_size;
        if bytes > allowed {
            return Err(format!("GEMM tiling {self}: {bytes} bytes of workgroup memory (the device allows {allowed})"));
        }
        Ok(())
    }

    /// The pipeline constants (THREADS and the loads per thread follow from these in the shader).
    pub(crate) fn constants(&self, limits: &wgpu::Limits) -> [(&'static str, f64); 5] {
        if let Err(e) = self.check(limits) {
            panic!("conv gemm: {e}");
        }
        [
            ("BM", self.bm as f64),
            ("BN", self.bn as f64),
            ("BK", self.bk as f64),
            ("TM", self.tm as f64),
            ("TN", self.tn as f64),
        ]
    }

    /// Split `k_len` (the pixels of a weight gradient) into chunks for `tiles` output tiles:
    /// `(chunk length, chunks)`, the length a multiple of `bk`.
    pub(crate) fn split_k(&self, k_len: u32, tiles: u32) -> (u32, u32) {
        let slices = k_len.div_ceil(self.bk).max(1);
        let wanted = TARGET_GROUPS.div_ceil(tiles.max(1)).min(slices.div_ceil(MIN_SLICES));
        let chunks = wanted.max(slices.div_ceil(MAX_SLICES)).max(1);
        let chunk = slices.div_ceil(chunks) * self.bk;
        (chunk, k_len.div_ceil(chunk).max(1))
    }
}

impl fmt::Display for Gemm {
    /// `64x64x8 tile 4x4`: bm x bn x bk, then the thread's tile.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{} tile {}x{}", self.bm, self.bn, self.bk, self.tm, self.tn)
    }
}

/// The GEMM tilings of every convolution direction: what the default wrappers of conv2d and
/// conv_transpose2d dispatch when [`crate::tuning::Tuning::conv_gemm`] holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGemm {
    /// conv2d forward: M = O, N = output pixels, K = I*KH*KW.
    pub conv2d_forward: Gemm,
    /// conv2d backward data: M = I, N = input pixels, K = O*KH*KW.
    pub conv2d_backward_data: Gemm,
    /// conv2d backward weight: M = O, N = I*KH*KW (+1 for db), K = output pixels (split).
    pub conv2d_backward_weight: Gemm,
    /// conv_transpose2d forward: M = 4*O, N = input pixels, K = I.
    pub conv_transpose2d_forward: Gemm,
    /// conv_transpose2d backward data: M = I, N = input pixels, K = 4*O.
    pub conv_transpose2d_backward_data: Gemm,
    /// conv_transpose2d backward weight: M = I (+1 for db), N = 4*O, K = input pixels (split).
    pub conv_transpose2d_backward_weight: Gemm,
}

impl ConvGemm {
    /// The same tiling for every direction.
    pub fn uniform(g: Gemm) -> ConvGemm {
        ConvGemm {
            conv2d_forward: g,
            conv2d_backward_data: g,
            conv2d_backward_weight: g,
            conv_transpose2d_forward: g,
            conv_transpose2d_backward_data: g,
            conv_transpose2d_backward_weight: g,
        }
    }

    /// The directions with their names, in the order of the fields.
    pub fn named(&self) -> [(&'static str, Gemm); 6] {
        [
            ("conv2d_forward", self.conv2d_forward),
            ("conv2d_backward_data", self.conv2d_backward_data),
            ("conv2d_backward_weight", self.conv2d_backward_weight),
            ("conv_transpose2d_forward", self.conv_transpose2d_forward),
            ("conv_transpose2d_backward_data", self.conv_transpose2d_backward_data),
            ("conv_transpose2d_backward_weight", self.conv_transpose2d_backward_weight),
        ]
    }

    /// `Err(why)` naming the first direction whose tiling does not fit.
    pub fn check(&self, limits: &wgpu::Limits) -> Result<(), String> {
        self.named().iter().try_for_each(|(name, g)| g.check(limits).map_err(|e| format!("{name}: {e}")))
    }
}

impl Default for ConvGemm {
    /// Not measured (no GPU was at hand): the usual shape of a GPU GEMM within WebGPU's default
    /// limits. 256 threads of 4x8 tiles (32 accumulators) over 64 x 128 outputs, slices of 8
    /// (8 KiB of workgroup memory); the weight gradients, whose M and N are small, 64 x 64 tiles
    /// of 4x4 with slices of 16. `unet-wgpu tune` measures the alternatives.
    fn default() -> ConvGemm {
        let wide = Gemm { bm: 64, bn: 128, bk: 8, tm: 4, tn: 8 };
        let square = Gemm { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 };
        ConvGemm { conv2d_backward_weight: square, conv_transpose2d_backward_weight: square, ..ConvGemm::uniform(wide) }
    }
}

impl fmt::Display for ConvGemm {
    /// `gemm forward 64x128x8 tile 4x8, data ..., weight ...; transposed ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gemm forward {}, data {}, weight {}; transposed forward {}, data {}, weight {}",
            self.conv2d_forward,
            self.conv2d_backward_data,
            self.conv2d_backward_weight,
            self.conv_transpose2d_forward,
            self.conv_transpose2d_backward_data,
            self.conv_transpose2d_backward_weight
        )
    }
}

/// Mirrors `Params` in `shaders/conv2d_gemm.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    ci: u32,
    h: u32,
    w: u32,
    co: u32,
    oh: u32,
    ow: u32,
    ph: u32,
    pw: u32,
    has_bias: u32,
    chunk: u32,
    chunks: u32,
    cols: u32,
    drop_threshold: u32,
    drop_seed_lo: u32,
    drop_seed_hi: u32,
    drop_scale: f32,
}

impl Params {
    /// x (or dx) `[N,I,H,W]`, y (or dy) `[N,O,OH,OW]`.
    fn new(x: [usize; 4], y: [usize; 4], p: &Conv2d) -> Params {
        let u = |v: usize| v as u32;
        Params {
            n: u(x[0]),
            ci: u(x[1]),
            h: u(x[2]),
            w: u(x[3]),
            co: u(y[1]),
            oh: u(y[2]),
            ow: u(y[3]),
            ph: u(p.pad[0]),
            pw: u(p.pad[1]),
            ..Params::default()
        }
    }
}

/// KH, KW, SH, SW.
fn geometry(w: [usize; 4], p: &Conv2d) -> [(&'static str, f64); 4] {
    [("KH", w[2] as f64), ("KW", w[3] as f64), ("SH", p.stride[0] as f64), ("SW", p.stride[1] as f64)]
}

/// The operands of a forward: y `[N,O,OH,OW]` `= epilogue(conv(x, w) + b)`, x `[N,I,H,W]`,
/// w `[O,I,KH,KW]`, b `[O]` or none.
#[derive(Clone, Copy, Debug)]
pub struct Forward<'a> {
    /// `[N,I,H,W]`.
    pub x: &'a Tensor,
    /// `[O,I,KH,KW]`.
    pub w: &'a Tensor,
    /// `[O]`, or none.
    pub b: Option<&'a Tensor>,
    /// `[N,O,OH,OW]`, written.
    pub y: &'a Tensor,
    /// Stride and padding.
    pub p: Conv2d,
    /// What is applied to each output as it is stored.
    pub epilogue: Epilogue,
}

/// `y = epilogue(conv(x, w) + b)` by the GEMM kernel with tiling `g`.
pub fn conv2d_forward_gemm(gpu: &Gpu, enc: &mut Encoder, f: &Forward, g: &Gemm) {
    let d = dims("conv2d forward (gemm)", f.x, f.w, f.y, &f.p);
    let mut params = Params::new(d.x, d.y, &f.p);
    if let Some(b) = f.b {
        assert_eq!(b.shape(), [d.w[0]], "conv2d forward: b {:?} for w {:?}", b.shape(), d.w);
        params.has_bias = 1;
    }
    let ([threshold, lo, hi], scale) = f.epilogue.dropout_uniforms();
    (params.drop_threshold, params.drop_seed_lo, params.drop_seed_hi, params.drop_scale) = (threshold, lo, hi, scale);
    let constants: Vec<_> =
        g.constants(&gpu.limits).into_iter().chain(geometry(d.w, &f.p)).chain(f.epilogue.constants()).collect();
    let kernel = gpu.kernel(&SHADER, "conv2d_gemm_forward", &constants);
    let pixels = (d.y[0] * d.y[2] * d.y[3]) as u32;
    let groups = [pixels.div_ceil(g.bn).max(1), params.co.div_ceil(g.bm).max(1), 1];
    // Without a bias the shader never reads binding 3: w stands in.
    let b = f.b.unwrap_or(f.w);
    gpu.dispatch(enc, &kernel, &params, &[(1, f.x), (2, f.w), (3, b), (4, f.y)], groups);
}

/// The operands of a backward data: dx `[N,I,H,W]` (+)= the data gradient of dy `[N,O,OH,OW]`
/// through w `[O,I,KH,KW]`.
#[derive(Clone, Copy, Debug)]
pub struct BackwardData<'a> {
    /// `[N,O,OH,OW]`.
    pub dy: &'a Tensor,
    /// `[O,I,KH,KW]`.
    pub w: &'a Tensor,
    /// `[N,I,H,W]`, added into or overwritten (every element written) as `acc` says.
    pub dx: &'a Tensor,
    /// Stride and padding of the forward.
    pub p: Conv2d,
    /// `+=` or `=`.
    pub acc: Accumulate,
}

/// `dx (+)= conv2d_backward_data(dy, w)` by the GEMM kernel with tiling `g` (any stride).
pub fn conv2d_backward_data_gemm(gpu: &Gpu, enc: &mut Encoder, a: &BackwardData, g: &Gemm) {
    let d = dims("conv2d backward data (gemm)", a.dx, a.w, a.dy, &a.p);
    let params = Params::new(d.x, d.y, &a.p);
    let constants: Vec<_> =
        g.constants(&gpu.limits).into_iter().chain(geometry(d.w, &a.p)).chain([a.acc.constant()]).collect();
    let kernel = gpu.kernel(&SHADER, "conv2d_gemm_backward_data", &constants);
    let pixels = (d.x[0] * d.x[2] * d.x[3]) as u32;
    let groups = [pixels.div_ceil(g.bn).max(1), params.ci.div_ceil(g.bm).max(1), 1];
    gpu.dispatch(enc, &kernel, &params, &[(1, a.dy), (2, a.w), (4, a.dx)], groups);
}

/// The operands of a backward weight: dw `[O,I,KH,KW]` += the weight gradient of x `[N,I,H,W]`
/// and dy `[N,O,OH,OW]`, db `[O]` += the sums of dy when given.
#[derive(Clone, Copy, Debug)]
pub struct BackwardWeight<'a> {
    /// `[N,I,H,W]`.
    pub x: &'a Tensor,
    /// `[N,O,OH,OW]`.
    pub dy: &'a Tensor,
    /// `[O,I,KH,KW]`, added into.
    pub dw: &'a Tensor,
    /// `[O]`, added into, or none.
    pub db: Option<&'a Tensor>,
    /// Stride and padding of the forward.
    pub p: Conv2d,
}

/// `dw += conv2d_backward_weight(x, dy)` (and `db += sum dy`) by the GEMM kernel with tiling `g`,
/// split over K into chunks whose partial sums a second pass adds in order.
pub fn conv2d_backward_weight_gemm(gpu: &Gpu, enc: &mut Encoder, a: &BackwardWeight, g: &Gemm) {
    let d = dims("conv2d backward weight (gemm)", a.x, a.dw, a.dy, &a.p);
    let mut params = Params::new(d.x, d.y, &a.p);
    let wcols = (d.w[1] * d.w[2] * d.w[3]) as u32;
    if let Some(db) = a.db {
        assert_eq!(db.shape(), [d.w[0]], "conv2d backward weight: db {:?} for dw {:?}", db.shape(), d.w);
        params.has_bias = 1;
    }
    params.cols = wcols + params.has_bias;
    let pixels = (d.y[0] * d.y[2] * d.y[3]) as u32;
    if pixels == 0 || params.co == 0 || params.cols == 0 {
        return; // empty sums: nothing to add
    }
    let tiles = [params.cols.div_ceil(g.bn), params.co.div_ceil(g.bm)];
    (params.chunk, params.chunks) = g.split_k(pixels, tiles[0] * tiles[1]);
    let part = gpu.empty(&[(params.chunks * params.co * params.cols) as usize]);
    let constants: Vec<_> = g.constants(&gpu.limits).into_iter().chain(geometry(d.w, &a.p)).collect();
    let kernel = gpu.kernel(&SHADER, "conv2d_gemm_backward_weight", &constants);
    let groups = [tiles[0], tiles[1], params.chunks];
    gpu.dispatch(enc, &kernel, &params, &[(1, a.x), (5, a.dy), (6, &part)], groups);
    let kernel = gpu.kernel(&SHADER, "conv2d_gemm_reduce", &geometry(d.w, &a.p)[..2]);
    // Without db the shader writes no element of binding 8 (no column of ones): dw stands in.
    let db = a.db.unwrap_or(a.dw);
    let len = (params.co * params.cols) as usize;
    gpu.dispatch(enc, &kernel, &params, &[(6, &part), (7, a.dw), (8, db)], groups_1d(len, REDUCE_WG));
}

#[cfg(test)]
mod tests;
