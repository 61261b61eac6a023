//! The GPU family of tilings: every convolution direction as a workgroup-memory implicit GEMM
//! (`shaders/conv2d/gemm.wgsl`, `shaders/conv_transpose2d/gemm.wgsl`), as plain data. A [`Gemm`]
//! is passed to the shader as pipeline constants: a workgroup computes a `bm x bn` tile of the
//! GEMM's output, stepping through K in slices of `bk`, each of its `(bm/tm) * (bn/tn)` threads a
//! `tm x tn` register tile. [`ConvGemm`] holds one per direction of both convolutions (conv2d and
//! the 2x2 transposed one). [`TilingFamily`] (`--tiling gpu|cpu`) forces either family on any
//! adapter.

use std::fmt;

use super::Tuning;

/// The weight gradient splits K (the pixels) into chunks until there are about this many
/// workgroups: enough to fill a large GPU, few enough partial sums to add.
const TARGET_GROUPS: u32 = 1024;
/// A chunk has at least this many slices of `bk` pixels (fewer, longer chunks write less) and at
/// most [`MAX_SLICES`]: CPU drivers stop an invocation's loops after 65,535 iterations in all.
const MIN_SLICES: u32 = 8;
pub(crate) const MAX_SLICES: u32 = 512;

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
/// conv_transpose2d dispatch when [`Tuning::conv_gemm`] holds them.
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

/// A `--tiling` (or `UNET_WGPU_TILING`) value that names no family.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown tiling {0:?}: expected gpu (convolutions as workgroup-memory GEMMs) or cpu (register tiles)")]
pub struct UnknownTiling(pub String);

impl std::str::FromStr for TilingFamily {
    type Err = UnknownTiling;
    fn from_str(s: &str) -> Result<Self, UnknownTiling> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gpu" => Ok(TilingFamily::Gpu),
            "cpu" => Ok(TilingFamily::Cpu),
            _ => Err(UnknownTiling(s.to_string())),
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
