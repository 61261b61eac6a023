//! How to open the GPU: the options, their parsing from flags and environment variables, the
//! limits the kernels need, and the errors at the edge with the drivers.

use std::fmt;

use crate::tune::cache::TuningFrom;
use crate::tune::tiling::gemm::{TilingFamily, UnknownTiling};

/// Errors at the edge between the program and the machine's GPU drivers.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter at all (or none for the requested backend).
    #[error(
        "no GPU adapter found for backend(s) {backends}. On a machine without a GPU install a \
         software Vulkan driver (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers`), or try \
         another backend with --backend vulkan|metal|dx12|gl (or the WGPU_BACKEND variable)"
    )]
    NoAdapter {
        /// The backends that were searched, as wgpu names them.
        backends: String,
    },
    /// `--backend` or `WGPU_BACKEND` named something we do not know.
    #[error("unknown backend {0:?}: expected one of vulkan, metal, dx12, gl")]
    UnknownBackend(String),
    /// `--limits` or `UNET_WGPU_LIMITS` named something we do not know.
    #[error("unknown limits {0:?}: expected adapter (everything the adapter offers) or webgpu (WebGPU's defaults)")]
    UnknownLimits(String),
    /// `--kernels` or `UNET_WGPU_KERNELS` named something we do not know.
    #[error("unknown kernels {0:?}: expected tuned (the tiled kernels) or reference (the textbook kernels)")]
    UnknownKernels(String),
    /// `--tiling` or `UNET_WGPU_TILING` named something we do not know.
    #[error(transparent)]
    UnknownTiling(#[from] UnknownTiling),
    /// The adapter cannot give a limit the kernels rely on.
    #[error(
        "adapter {adapter:?} offers {limit} = {have}, but unet-wgpu needs at least {need}; \
         choose another adapter or backend (--backend, WGPU_BACKEND)"
    )]
    MissingLimit {
        /// Adapter name.
        adapter: String,
        /// Name of the `wgpu::Limits` field.
        limit: &'static str,
        /// What the adapter offers.
        have: u64,
        /// What we need.
        need: u64,
    },
    /// The driver refused to open the device.
    #[error("could not open a device on adapter {adapter:?}: {source}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// The driver's reason.
        source: wgpu::RequestDeviceError,
    },
}

/// Which graphics API to run on. `None` in [`GpuOptions`] means: all of them,
/// best adapter first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Vulkan (Linux, Windows, Android; lavapipe when there is no GPU).
    Vulkan,
    /// Metal (macOS, iOS).
    Metal,
    /// Direct3D 12 (Windows).
    Dx12,
    /// OpenGL / GLES through EGL (llvmpipe when there is no GPU).
    Gl,
}

impl std::str::FromStr for Backend {
    type Err = GpuError;
    fn from_str(s: &str) -> Result<Self, GpuError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "vulkan" | "vk" => Ok(Backend::Vulkan),
            "metal" | "mtl" => Ok(Backend::Metal),
            "dx12" | "d3d12" => Ok(Backend::Dx12),
            "gl" | "gles" | "opengl" => Ok(Backend::Gl),
            _ => Err(GpuError::UnknownBackend(s.to_string())),
        }
    }
}

impl Backend {
    pub(super) fn to_wgpu(self) -> wgpu::Backends {
        match self {
            Backend::Vulkan => wgpu::Backends::VULKAN,
            Backend::Metal => wgpu::Backends::METAL,
            Backend::Dx12 => wgpu::Backends::DX12,
            Backend::Gl => wgpu::Backends::GL,
        }
    }
}

/// How to choose the adapter.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Restrict to one backend. When `None`, the `WGPU_BACKEND` environment
    /// variable is read, and if that is unset too every backend is considered.
    pub backend: Option<Backend>,
    /// Print the chosen adapter (and where its tile sizes came from) to stderr.
    pub verbose: bool,
    /// Where the kernels' tile sizes come from: by default the tuning cache's entry for the
    /// adapter (written by `unet-wgpu tune`), else [`Tuning::builtin`](crate::tune::Tuning::builtin). See [`crate::tune`].
    pub tuning: TuningFrom,
    /// Which limits to ask the device for. When `None`, the `UNET_WGPU_LIMITS` environment
    /// variable is read (`adapter` or `webgpu`), and if that is unset too, [`Limits::Adapter`].
    pub limits: Option<Limits>,
    /// Which kernels the default op wrappers dispatch. When `None`, the `UNET_WGPU_KERNELS`
    /// environment variable is read (`tuned` or `reference`), and if that is unset too,
    /// [`Kernels::Tuned`].
    pub kernels: Option<Kernels>,
    /// Which family of tile sizes to use whatever the adapter: the GPU one (convolutions as
    /// workgroup-memory GEMMs) or the CPU one (register tiles); no tuning cache is read then. When
    /// `None`, the `UNET_WGPU_TILING` environment variable is read (`gpu` or `cpu`), and if that is
    /// unset too, the cache or the adapter's type decides ([`Tuning::builtin`](crate::tune::Tuning::builtin)).
    pub tiling: Option<TilingFamily>,
}

/// Which kernels the default op wrappers (`conv2d_forward`, `matmul_forward`,
/// `batchnorm2d_stats`, ...) dispatch, for the whole program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernels {
    /// The tiled kernels, with the tile sizes of [`Gpu::tuning`](crate::runtime::Gpu::tuning) (the default).
    #[default]
    Tuned,
    /// The textbook kernels (`shaders/<op>/textbook.wgsl`): one invocation per output element,
    /// the formula's loops, no tiling. Slower; the oracle the tuned kernels are tested against.
    Reference,
}

impl std::str::FromStr for Kernels {
    type Err = GpuError;
    fn from_str(s: &str) -> Result<Self, GpuError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tuned" | "tiled" => Ok(Kernels::Tuned),
            "reference" | "textbook" => Ok(Kernels::Reference),
            _ => Err(GpuError::UnknownKernels(s.to_string())),
        }
    }
}

impl fmt::Display for Kernels {
    /// `tuned` or `reference`, as `--kernels` takes them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kernels::Tuned => "tuned",
            Kernels::Reference => "reference",
        })
    }
}

/// Which limits the device is requested with. Every alignment and size the program uses comes
/// from what the device was granted, so a program that passes its tests with
/// [`Limits::WebGpu`] runs on any WebGPU implementation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Limits {
    /// Everything the adapter offers (the default: larger buffers, finer uniform alignment).
    #[default]
    Adapter,
    /// WebGPU's defaults (`wgpu::Limits::default()`): what every WebGPU implementation grants.
    WebGpu,
}

impl std::str::FromStr for Limits {
    type Err = GpuError;
    fn from_str(s: &str) -> Result<Self, GpuError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "adapter" => Ok(Limits::Adapter),
            "webgpu" | "default" => Ok(Limits::WebGpu),
            _ => Err(GpuError::UnknownLimits(s.to_string())),
        }
    }
}

/// The limits our kernels rely on: we refuse to start (with a clear error) below these. Each is
/// at most WebGPU's default, so every WebGPU implementation grants them.
/// A limit we check: its name, how to read it, and the least we accept.
pub(super) type NeededLimit = (&'static str, fn(&wgpu::Limits) -> u64, u64);

pub(super) const NEEDED_LIMITS: [NeededLimit; 5] = [
    ("max_storage_buffers_per_shader_stage", |l| l.max_storage_buffers_per_shader_stage as u64, 8),
    ("max_storage_buffer_binding_size", |l| l.max_storage_buffer_binding_size, 128 << 20),
    ("max_compute_invocations_per_workgroup", |l| l.max_compute_invocations_per_workgroup as u64, 256),
    ("max_compute_workgroup_size_x", |l| l.max_compute_workgroup_size_x as u64, 256),
    ("max_compute_workgroup_storage_size", |l| l.max_compute_workgroup_storage_size as u64, 16384),
];
