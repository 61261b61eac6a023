//! The tile sizes the default op wrappers use, one choice per kernel family, as plain data:
//! what [`Tuning::builtin`] picks for an adapter before anything is measured, and the bounds a
//! tiling must keep. The families' own types live beside it, one file per op.

use std::fmt;

pub mod conv2d;
pub mod conv_transpose2d;
pub mod gemm;
pub mod matmul;

use conv_transpose2d::Workgroups;
use gemm::ConvGemm;
use matmul::{SharedTiling, Tiles};

/// The tile sizes the default op wrappers use: one choice per kernel family. Each is passed to
/// the shaders as override constants; `Gpu::tuning()` returns the active one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// `conv2d_forward` (every epilogue). `wg`: threads a workgroup, each computing a
    /// register tile of `rows` rows x 8 columns x 8 output channels (and the weight-packing pass's
    /// group size). `tm` and `bw_threads` play no part in the forward.
    pub conv2d_forward: conv2d::Tiling,
    /// `conv2d_backward_data`. At stride 1 (every 3x3 conv of the U-Net) it runs the forward's
    /// tile on the flipped weights, so only `wg` and `rows` matter; at stride > 1 the gather
    /// kernel uses `wg` and `tm`, the input channels of a block (a thread owns 2 blocks).
    pub conv2d_backward_data: conv2d::Tiling,
    /// `conv2d_backward_weight`. `wg`: threads a workgroup of the first pass and of the two
    /// reductions; `bw_threads`: how many threads the first pass aims for (the `N*OH` rows of dy
    /// are split into chunks until there are about that many; more threads fill a wider GPU,
    /// fewer leave fewer partial sums to add). `tm` plays no part.
    pub conv2d_backward_weight: conv2d::Tiling,
    /// `conv_transpose2d_*` (and the fused up-convolution + concatenation): workgroup sizes of
    /// the quad kernels (W a multiple of 4) and of the general and partial-sum kernels.
    pub conv_transpose2d: Workgroups,
    /// `matmul_forward` / `matmul_backward` (the GEMM ceiling of the benches): register tiles
    /// or workgroup-memory tiles, and their sizes.
    pub matmul: Tiles,
    /// Every convolution direction (conv2d and conv_transpose2d) as a workgroup-memory GEMM with
    /// these tilings (`shaders/*/gemm.wgsl`, the GPU family); `None`: the register tiles above.
    pub conv_gemm: Option<ConvGemm>,
}

impl Tuning {
    /// The tiling for an adapter before anything is measured. CPU drivers (lavapipe, llvmpipe,
    /// WARP: [`is_software`]) get the defaults of the ops, each measured on lavapipe; SwiftShader
    /// the same, but with every convolution a workgroup-memory GEMM, since it cannot compile the
    /// register-tile convolutions ([`builds_register_convolutions`]). Hardware GPUs get larger
    /// workgroups, many more weight-gradient threads and the workgroup-memory GEMM.
    pub fn builtin(info: &wgpu::AdapterInfo) -> Tuning {
        if !builds_register_convolutions(info) {
            return Tuning { conv_gemm: Some(ConvGemm::default()), ..Tuning::cpu() };
        }
        if is_software(info) {
            return Tuning::cpu();
        }
        Tuning::gpu()
    }

    /// The GPU family (`--tiling gpu`): every convolution a workgroup-memory GEMM
    /// ([`ConvGemm::default`]); the register tilings kept beside them are the autotune's baseline.
    pub fn gpu() -> Tuning {
        // Not measured: no GPU was at hand when these were chosen. They follow the usual shape
        // of GPU kernels (groups of 128-256 threads, tens of thousands of threads in flight,
        // tiles in workgroup memory); `unet-wgpu tune` measures them on the actual GPU.
        // 2-row forward tiles: 4 rows would hold 256 sums a thread, more than a GPU's registers.
        let conv = conv2d::Tiling { wg: 128, rows: 2, ..conv2d::Tiling::default() };
        Tuning {
            conv2d_forward: conv,
            conv2d_backward_data: conv,
            conv2d_backward_weight: conv2d::Tiling { wg: 256, bw_threads: 65536, ..conv },
            conv_transpose2d: Workgroups { general: 256, quads: 64 },
            matmul: Tiles::Shared(SharedTiling::default()),
            conv_gemm: Some(ConvGemm::default()),
        }
    }

    /// The CPU family (`--tiling cpu`): the defaults of the ops, measured on lavapipe (2 cores):
    /// see the README's performance section and the sweeps in `benches/kernels/`.
    pub fn cpu() -> Tuning {
        Tuning {
            conv2d_forward: conv2d::Tiling::default(),
            conv2d_backward_data: conv2d::Tiling::default(),
            conv2d_backward_weight: conv2d::Tiling::default(),
            conv_transpose2d: Workgroups::default(),
            matmul: Tiles::default(),
            conv_gemm: None,
        }
    }

    /// `Err(why)` when a kernel could not run this tuning on an adapter with `limits`: a tile the
    /// shader's arrays cannot hold, or a workgroup larger than the adapter allows.
    pub fn check(&self, limits: &wgpu::Limits) -> Result<(), String> {
        let max = limits.max_compute_invocations_per_workgroup.min(limits.max_compute_workgroup_size_x);
        let group = |what: &str, wg: u32| {
            (wg <= max)
                .then_some(())
                .ok_or_else(|| format!("{what}: a workgroup of {wg} threads (the adapter allows {max})"))
        };
        for (what, t) in [
            ("conv2d forward", &self.conv2d_forward),
            ("conv2d backward data", &self.conv2d_backward_data),
            ("conv2d backward weight", &self.conv2d_backward_weight),
        ] {
            t.check().map_err(|e| format!("{what}: {e}"))?;
            group(what, t.wg)?;
        }
        self.conv_transpose2d.check().map_err(|e| format!("conv_transpose2d: {e}"))?;
        group("conv_transpose2d", self.conv_transpose2d.general)?;
        group("conv_transpose2d quads", self.conv_transpose2d.quads)?;
        self.matmul.check().map_err(|e| format!("matmul: {e}"))?;
        if let Some(g) = &self.conv_gemm {
            g.check(limits)?;
        }
        match self.matmul {
            Tiles::Register(t) => group("matmul", t.wg),
            Tiles::Shared(t) => {
                let fits = t.tx * t.ty <= limits.max_compute_invocations_per_workgroup
                    && t.tx <= limits.max_compute_workgroup_size_x
                    && t.ty <= limits.max_compute_workgroup_size_y;
                fits.then_some(())
                    .ok_or_else(|| format!("matmul: workgroup {}x{} too large for the adapter", t.tx, t.ty))
            }
        }
    }
}

impl fmt::Display for Tuning {
    /// One line: `conv2d forward wg 64 rows 4; backward data wg 64 rows 4 tm 4; ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conv2d forward {}; backward data {}; backward weight {}; conv_transpose2d {}; matmul {}; convolutions {}",
            label_forward(&self.conv2d_forward),
            label_data(&self.conv2d_backward_data),
            label_weight(&self.conv2d_backward_weight),
            label_workgroups(&self.conv_transpose2d),
            label_tiles(&self.matmul),
            label_gemm(&self.conv_gemm)
        )
    }
}

/// Whether an adapter is a driver that runs shaders on the CPU: wgpu says `DeviceType::Cpu`,
/// or the name is one of the known software rasterisers (some backends report them as `Other`).
pub fn is_software(info: &wgpu::AdapterInfo) -> bool {
    let name = info.name.to_ascii_lowercase();
    info.device_type == wgpu::DeviceType::Cpu
        || ["llvmpipe", "lavapipe", "softpipe", "swiftshader", "microsoft basic render"]
            .iter()
            .any(|s| name.contains(s))
}

/// Whether an adapter compiles the register-tile convolutions (`conv2d_forward` and
/// `conv2d_backward_data_stride1` of `shaders/conv2d/tiled.wgsl`, `conv2d_backward_data` of
/// `shaders/conv2d/tiled_backward.wgsl`) in reasonable time. SwiftShader does not: building any
/// one of them, its compiler grew past 13 GB in two minutes and Chromium lost the device
/// (docs/browser.md). A browser's fallback adapter, which wgpu reports as `Cpu` on
/// `BrowserWebGpu` with no name, is taken to be SwiftShader (Chromium's). On such an adapter
/// neither [`Tuning::builtin`] nor the autotune picks those kernels; `--tiling cpu` still does.
pub fn builds_register_convolutions(info: &wgpu::AdapterInfo) -> bool {
    let swiftshader = info.name.to_ascii_lowercase().contains("swiftshader");
    let browser_fallback = info.backend == wgpu::Backend::BrowserWebGpu && info.device_type == wgpu::DeviceType::Cpu;
    !swiftshader && !browser_fallback
}

pub(crate) fn label_forward(t: &conv2d::Tiling) -> String {
    format!("wg {} rows {}", t.wg, t.rows)
}

pub(crate) fn label_data(t: &conv2d::Tiling) -> String {
    format!("wg {} rows {} tm {}", t.wg, t.rows, t.tm)
}

pub(crate) fn label_weight(t: &conv2d::Tiling) -> String {
    format!("wg {} threads {}", t.wg, t.bw_threads)
}

pub(crate) fn label_workgroups(w: &Workgroups) -> String {
    format!("wg {} quads {}", w.general, w.quads)
}

pub(crate) fn label_tiles(t: &Tiles) -> String {
    t.to_string()
}

pub(crate) fn label_gemm(g: &Option<ConvGemm>) -> String {
    g.map_or("register tiles".to_string(), |g| g.to_string())
}
