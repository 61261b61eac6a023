//! The GPU runtime: adapter choice, device limits, the pipeline cache, the
//! buffer pool, the per-step uniform arena, timestamp queries and readback.
//!
//! Everything above this module speaks in [`Tensor`]s and [`Kernel`]s; this is
//! the only place that creates wgpu devices, pipelines and buffers.
//!
//! The life of one step:
//! 1. [`Gpu::encoder`] opens an [`Encoder`];
//! 2. ops call [`Gpu::dispatch`], which writes the op's small parameter struct
//!    into the uniform arena, makes a bind group and records one compute pass;
//! 3. [`Gpu::submit`] uploads the arena, submits the whole step at once, and
//!    hands the buffers that tensors released during the step back to the pool.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::tensor::Tensor;
use crate::tuning::{Tuning, TuningFrom, TuningSource};

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
    fn to_wgpu(self) -> wgpu::Backends {
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
    /// adapter (written by `unet-wgpu tune`), else [`Tuning::builtin`]. See [`crate::tuning`].
    pub tuning: TuningFrom,
    /// Which limits to ask the device for. When `None`, the `UNET_WGPU_LIMITS` environment
    /// variable is read (`adapter` or `webgpu`), and if that is unset too, [`Limits::Adapter`].
    pub limits: Option<Limits>,
    /// Which kernels the default op wrappers dispatch. When `None`, the `UNET_WGPU_KERNELS`
    /// environment variable is read (`tuned` or `reference`), and if that is unset too,
    /// [`Kernels::Tuned`].
    pub kernels: Option<Kernels>,
}

/// Which kernels the default op wrappers (`conv2d_forward`, `matmul_forward`,
/// `batchnorm2d_stats`, ...) dispatch, for the whole program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernels {
    /// The tiled kernels, with the tile sizes of [`Gpu::tuning`] (the default).
    #[default]
    Tuned,
    /// The textbook kernels (`shaders/*_textbook.wgsl`): one invocation per output element,
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
type NeededLimit = (&'static str, fn(&wgpu::Limits) -> u64, u64);

const NEEDED_LIMITS: [NeededLimit; 5] = [
    ("max_storage_buffers_per_shader_stage", |l| l.max_storage_buffers_per_shader_stage as u64, 8),
    ("max_storage_buffer_binding_size", |l| l.max_storage_buffer_binding_size, 128 << 20),
    ("max_compute_invocations_per_workgroup", |l| l.max_compute_invocations_per_workgroup as u64, 256),
    ("max_compute_workgroup_size_x", |l| l.max_compute_workgroup_size_x as u64, 256),
    ("max_compute_workgroup_storage_size", |l| l.max_compute_workgroup_storage_size as u64, 16384),
];

/// A WGSL source file from `shaders/`, compiled at most once per [`Gpu`].
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    /// File stem, e.g. `"relu"`: the cache key and the label in traces.
    pub name: &'static str,
    /// The WGSL text.
    pub source: &'static str,
}

/// `shader!("relu")` embeds `shaders/relu.wgsl` into the binary as a [`Shader`].
#[macro_export]
macro_rules! shader {
    ($name:literal) => {
        $crate::gpu::Shader {
            name: $name,
            source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $name, ".wgsl")),
        }
    };
}

/// One compiled entry point: its pipeline, and the bindings it uses (read from
/// the shader by naga, so that a dispatch with a missing or extra buffer fails
/// with the names of both sides instead of a driver error).
pub struct Kernel {
    /// `"<shader>::<entry point>"`.
    pub name: String,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    /// Group-0 binding numbers the entry point uses, sorted.
    bindings: Vec<u32>,
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kernel({}, bindings {:?})", self.name, self.bindings)
    }
}

/// A shader compiled by the driver, and naga's view of it (for binding checks).
type CompiledShader = (wgpu::ShaderModule, Rc<naga::Module>, Rc<naga::valid::ModuleInfo>);

type KernelKey = (&'static str, &'static str, Vec<(&'static str, u64)>);

/// Counters of the buffer pool, for tests and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// GPU buffers created since the start (never decreases).
    pub allocations: u64,
    /// Bytes in all buffers created (the pool never frees: this is the peak).
    pub bytes: u64,
    /// Bytes held by live tensors right now.
    pub bytes_in_use: u64,
}

/// Storage buffers grouped by exact size. A released buffer waits in `pending`
/// until the step that last used it is submitted: reusing it earlier would let
/// a `queue.write_buffer` (which runs at the start of the next submit) overwrite
/// data that commands recorded before it still have to read.
#[derive(Default)]
pub(crate) struct BufferPool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    pending: Vec<(u64, wgpu::Buffer)>,
    stats: PoolStats,
}

impl BufferPool {
    pub(crate) fn release(&mut self, bytes: u64, buffer: wgpu::Buffer) {
        self.stats.bytes_in_use -= bytes;
        self.pending.push((bytes, buffer));
    }
}

/// Bytes in one uniform arena chunk; a step that needs more gets more chunks.
const ARENA_CHUNK: u64 = 64 << 10;

/// Per-step storage for the small parameter structs of each dispatch. Written
/// on the CPU during recording and uploaded once, just before the submit.
struct UniformArena {
    chunks: Vec<(wgpu::Buffer, Vec<u8>)>,
    /// Chunk being filled.
    current: usize,
    align: u64,
}

/// Timestamp queries of one encoder: two per dispatch (named by the kernel), or per buffer
/// copy or clear (named `copy_buffer`, `clear_buffer`).
struct Timer {
    queries: wgpu::QuerySet,
    capacity: u32,
    labels: Vec<String>,
}

impl Timer {
    /// The first of the two query indices of the next timed command, named `label`; `None`
    /// once `capacity` commands are timed.
    fn next(&mut self, label: &str) -> Option<u32> {
        let i = self.labels.len() as u32;
        (i < self.capacity).then(|| {
            self.labels.push(label.to_string());
            2 * i
        })
    }
}

/// A command encoder for one step: every dispatch of a step is recorded here
/// and submitted at once by [`Gpu::submit`].
pub struct Encoder {
    raw: wgpu::CommandEncoder,
    timer: Option<Timer>,
}

impl Encoder {
    /// Zero a tensor's buffer, in order with the dispatches around it (and timed like one in a
    /// timed encoder).
    pub fn clear(&mut self, t: &Tensor) {
        let slot = self.timestamp_before("clear_buffer");
        self.raw.clear_buffer(t.buffer(), t.offset(), Some(t.bytes()));
        self.timestamp_after(slot);
    }

    /// Copy all of `src` into `dst` (same byte size), in order with the dispatches (and timed
    /// like one in a timed encoder).
    pub fn copy(&mut self, src: &Tensor, dst: &Tensor) {
        assert_eq!(src.bytes(), dst.bytes(), "copy of {:?} into {:?}", src.shape(), dst.shape());
        let slot = self.timestamp_before("copy_buffer");
        self.raw.copy_buffer_to_buffer(src.buffer(), src.offset(), dst.buffer(), dst.offset(), src.bytes());
        self.timestamp_after(slot);
    }

    /// In a timed encoder with room left: the first timestamp of a transfer named `label`. Core
    /// wgpu writes timestamps only at the edges of passes, so it closes an empty compute pass.
    fn timestamp_before(&mut self, label: &str) -> Option<u32> {
        let timer = self.timer.as_mut()?;
        let i = timer.next(label)?;
        self.empty_pass(Some(i), None);
        Some(i)
    }

    /// The second timestamp of the transfer that [`Encoder::timestamp_before`] began.
    fn timestamp_after(&mut self, slot: Option<u32>) {
        if let Some(i) = slot {
            self.empty_pass(None, Some(i + 1));
        }
    }

    fn empty_pass(&mut self, beginning: Option<u32>, end: Option<u32>) {
        let queries = &self.timer.as_ref().expect("a timed encoder").queries;
        let timestamp_writes = wgpu::ComputePassTimestampWrites {
            query_set: queries,
            beginning_of_pass_write_index: beginning,
            end_of_pass_write_index: end,
        };
        self.raw.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("transfer timestamp"),
            timestamp_writes: Some(timestamp_writes),
        });
    }
}

/// GPU time of each dispatch (and buffer copy or clear) of a timed encoder, in submission order.
#[derive(Clone, Debug)]
pub struct Timings {
    /// `(kernel name, seconds)` per dispatch; `copy_buffer` or `clear_buffer` for a transfer.
    pub dispatches: Vec<(String, f64)>,
}

/// Dispatches one timed encoder can time (wgpu allows 4096 queries a set).
pub const MAX_TIMED_DISPATCHES: u32 = wgpu::QUERY_SET_MAX_QUERIES / 2;

static NEXT_GPU_ID: AtomicU64 = AtomicU64::new(0);

/// The device, its queue, and the caches that make steps cheap.
pub struct Gpu {
    /// The wgpu device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// Name, backend, driver of the adapter in use.
    pub info: wgpu::AdapterInfo,
    /// Limits granted to the device.
    pub limits: wgpu::Limits,
    /// Whether GPU timestamp queries are available (else benches use wall clock).
    pub has_timestamps: bool,
    id: u64,
    modules: RefCell<HashMap<&'static str, CompiledShader>>,
    kernels: RefCell<HashMap<KernelKey, Rc<Kernel>>>,
    pub(crate) pool: Rc<RefCell<BufferPool>>,
    arena: RefCell<UniformArena>,
    /// `queue.submit` calls and blocking readbacks so far (see [`Gpu::counters`]).
    counters: Cell<Counters>,
    /// The tile sizes the default op wrappers use, and where they came from.
    tuning: Cell<Tuning>,
    tuning_source: RefCell<TuningSource>,
    /// Tuned or textbook kernels for the default op wrappers.
    kernel_set: Cell<Kernels>,
}

/// How often the CPU handed work to the GPU and waited for data from it, and what compiling
/// the pipelines cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// [`Gpu::submit`] calls (including those inside reads and timed submits).
    pub submits: u64,
    /// Blocking readbacks: [`Gpu::read`], [`Gpu::read_u32`], and the timestamp read of
    /// [`Gpu::submit_timed`] (each submits, then waits for the GPU to finish).
    pub readbacks: u64,
    /// Compute pipelines created ([`Gpu::kernel`] compiles each entry point and set of
    /// constants once).
    pub pipelines: u64,
    /// Nanoseconds spent creating them (the driver's compilation: most of a first step's
    /// extra cost on a CPU driver).
    pub pipeline_nanos: u64,
}

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gpu({})", self.describe())
    }
}

/// The value of the environment variable `name`, parsed, or `None` when it is unset or blank.
fn from_env<T: std::str::FromStr<Err = GpuError>>(name: &str) -> Result<Option<T>, GpuError> {
    match std::env::var(name) {
        Ok(s) if !s.trim().is_empty() => s.parse().map(Some),
        _ => Ok(None),
    }
}

/// Higher is better: hardware before software, native APIs before GL.
fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 1,
        wgpu::DeviceType::Cpu => 0,
    };
    let api = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 1,
        _ => 0,
    };
    (kind, api)
}

impl Gpu {
    /// Open the best adapter: a hardware GPU if there is one, else a software
    /// driver (lavapipe, llvmpipe). See [`GpuOptions`] for the overrides.
    pub fn new(options: &GpuOptions) -> Result<Gpu, GpuError> {
        let backend = match options.backend {
            Some(b) => Some(b),
            None => from_env("WGPU_BACKEND")?,
        };
        let limits = match options.limits {
            Some(l) => l,
            None => from_env("UNET_WGPU_LIMITS")?.unwrap_or_default(),
        };
        let kernels = match options.kernels {
            Some(k) => k,
            None => from_env("UNET_WGPU_KERNELS")?.unwrap_or_default(),
        };
        let backends = backend.map_or(wgpu::Backends::all(), Backend::to_wgpu);
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let adapter = adapters
            .into_iter()
            .max_by_key(|a| adapter_rank(&a.get_info()))
            .ok_or_else(|| GpuError::NoAdapter { backends: format!("{backends:?}") })?;
        let info = adapter.get_info();

        let offered = adapter.limits();
        for (limit, get, need) in NEEDED_LIMITS {
            let have = get(&offered);
            if have < need {
                return Err(GpuError::MissingLimit { adapter: info.name.clone(), limit, have, need });
            }
        }
        let has_timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let required_features = if has_timestamps { wgpu::Features::TIMESTAMP_QUERY } else { wgpu::Features::empty() };
        let required_limits = match limits {
            Limits::Adapter => offered,
            Limits::WebGpu => wgpu::Limits::default(),
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("unet-wgpu"),
            required_features,
            required_limits,
            ..Default::default()
        }))
        .map_err(|source| GpuError::RequestDevice { adapter: info.name.clone(), source })?;

        // From here on, only what the device was granted counts: the adapter may offer more.
        let granted = device.limits();
        let align = granted.min_uniform_buffer_offset_alignment as u64;
        let (tuning, tuning_source) = crate::tuning::initial(&info, &granted, &options.tuning);
        let gpu = Gpu {
            device,
            queue,
            info,
            limits: granted,
            has_timestamps,
            id: NEXT_GPU_ID.fetch_add(1, Ordering::Relaxed),
            modules: RefCell::default(),
            kernels: RefCell::default(),
            pool: Rc::default(),
            arena: RefCell::new(UniformArena { chunks: Vec::new(), current: 0, align }),
            counters: Default::default(),
            tuning: Cell::new(tuning),
            tuning_source: RefCell::new(tuning_source),
            kernel_set: Cell::new(kernels),
        };
        if options.verbose {
            match kernels {
                Kernels::Tuned => eprintln!("adapter: {}; tile sizes: {}", gpu.describe(), gpu.tuning_source()),
                Kernels::Reference => eprintln!("adapter: {}; kernels: reference (textbook)", gpu.describe()),
            }
        }
        Ok(gpu)
    }

    /// `"<name> (<backend>, <device type>, driver <driver> <info>)"`.
    pub fn describe(&self) -> String {
        let i = &self.info;
        format!("{} ({:?}, {:?}, driver {} {})", i.name, i.backend, i.device_type, i.driver, i.driver_info)
    }

    /// The tile sizes the default op wrappers (`conv2d_forward`, `matmul_forward`, ...) use.
    pub fn tuning(&self) -> Tuning {
        self.tuning.get()
    }

    /// Where [`Gpu::tuning`] came from: the builtin choice, a cache file, or [`Gpu::set_tuning`].
    pub fn tuning_source(&self) -> TuningSource {
        self.tuning_source.borrow().clone()
    }

    /// Replace the tile sizes of the default wrappers (benchmarks, tests). Pipelines compiled
    /// with the old ones stay cached; dispatches recorded from now on use the new ones.
    pub fn set_tuning(&self, tuning: Tuning) {
        self.tuning.set(tuning);
        *self.tuning_source.borrow_mut() = TuningSource::Set;
    }

    /// Which kernels the default op wrappers dispatch: tuned (tiled) or reference (textbook).
    pub fn kernels(&self) -> Kernels {
        self.kernel_set.get()
    }

    /// Switch the default op wrappers between the tuned and the textbook kernels (tests that run
    /// one step both ways, the step bench). Dispatches recorded from now on use the new choice.
    pub fn set_kernels(&self, kernels: Kernels) {
        self.kernel_set.set(kernels);
    }

    /// The override constants of every pipeline compiled so far for `entry` of the shader
    /// named `shader` (tests use it to see which tiling a wrapper dispatched).
    pub fn compiled_constants(&self, shader: &str, entry: &str) -> Vec<Vec<(&'static str, f64)>> {
        self.kernels
            .borrow()
            .keys()
            .filter(|(s, e, _)| *s == shader && *e == entry)
            .map(|(_, _, c)| c.iter().map(|&(k, bits)| (k, f64::from_bits(bits))).collect())
            .collect()
    }

    /// A number that tells two `Gpu`s in one process apart (tensors remember it).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The pipeline for `entry` in `shader`, with override constants set
    /// (e.g. `[("WG", 64.0)]`). Compiled on first use, cached afterwards.
    pub fn kernel(&self, shader: &Shader, entry: &'static str, constants: &[(&'static str, f64)]) -> Rc<Kernel> {
        let key = (shader.name, entry, constants.iter().map(|&(k, v)| (k, v.to_bits())).collect::<Vec<_>>());
        if let Some(k) = self.kernels.borrow().get(&key) {
            return k.clone();
        }
        let (module, naga_module, naga_info) = self.module(shader);
        let entry_index = naga_module
            .entry_points
            .iter()
            .position(|e| e.name == entry)
            .unwrap_or_else(|| panic!("shaders/{}.wgsl has no entry point {entry}", shader.name));
        let uses = naga_info.get_entry_point(entry_index);
        let mut bindings: Vec<u32> = naga_module
            .global_variables
            .iter()
            .filter(|(handle, _)| !uses[*handle].is_empty())
            .filter_map(|(_, var)| var.binding.as_ref())
            .map(|b| {
                assert_eq!(b.group, 0, "shaders/{}.wgsl: only bind group 0 is used", shader.name);
                b.binding
            })
            .collect();
        bindings.sort_unstable();

        let started = std::time::Instant::now();
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None, // derived from the entry point's own bindings
            module: &module,
            entry_point: Some(entry),
            compilation_options: crate::compilation::options(self.info.backend, constants),
            cache: None,
        });
        let nanos = started.elapsed().as_nanos() as u64;
        self.count(|c| (c.pipelines, c.pipeline_nanos) = (c.pipelines + 1, c.pipeline_nanos + nanos));
        crate::compilation::record(self.info.backend, shader.name, entry, constants, nanos as f64 * 1e-9);
        let layout = pipeline.get_bind_group_layout(0);
        let kernel = Rc::new(Kernel { name: format!("{}::{entry}", shader.name), pipeline, layout, bindings });
        self.kernels.borrow_mut().insert(key, kernel.clone());
        kernel
    }

    fn module(&self, shader: &Shader) -> CompiledShader {
        if let Some(m) = self.modules.borrow().get(shader.name) {
            return m.clone();
        }
        let (naga_module, naga_info) = validate_wgsl(shader.name, shader.source).unwrap_or_else(|e| panic!("{e}"));
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shader.name),
            source: wgpu::ShaderSource::Wgsl(shader.source.into()),
        });
        let entry = (module, Rc::new(naga_module), Rc::new(naga_info));
        self.modules.borrow_mut().insert(shader.name, entry.clone());
        entry
    }

    /// Open an encoder for one step.
    pub fn encoder(&self) -> Encoder {
        Encoder { raw: self.device.create_command_encoder(&Default::default()), timer: None }
    }

    /// Open an encoder that records a GPU timestamp pair around each of its
    /// first `capacity` dispatches and buffer copies or clears, at most
    /// [`MAX_TIMED_DISPATCHES`] (when the adapter supports timestamps; see
    /// [`Gpu::submit_timed`]).
    pub fn timed_encoder(&self, capacity: u32) -> Encoder {
        let capacity = capacity.min(MAX_TIMED_DISPATCHES);
        let mut enc = self.encoder();
        if self.has_timestamps {
            let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("dispatch timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * capacity,
            });
            enc.timer = Some(Timer { queries, capacity, labels: Vec::new() });
        }
        enc
    }

    /// Record one compute dispatch.
    ///
    /// `params` goes to binding 0 as a uniform (a `#[repr(C)]` struct mirroring
    /// the shader's); `buffers` names each other binding by number, as in the
    /// binding table of the shader's header. `groups` is the workgroup count;
    /// callers round up (`div_ceil`) and the shader bounds-checks.
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        enc: &mut Encoder,
        kernel: &Kernel,
        params: &P,
        buffers: &[(u32, &Tensor)],
        groups: [u32; 3],
    ) {
        let mut given: Vec<u32> = std::iter::once(0).chain(buffers.iter().map(|(b, _)| *b)).collect();
        given.sort_unstable();
        let wanted: Vec<u32> = if kernel.bindings.first() == Some(&0) {
            kernel.bindings.clone()
        } else {
            std::iter::once(0).chain(kernel.bindings.iter().copied()).collect()
        };
        assert_eq!(
            given, wanted,
            "{}: bindings given (with the uniform at 0) differ from those the shader uses",
            kernel.name
        );
        let max = self.limits.max_compute_workgroups_per_dimension;
        assert!(
            groups.iter().all(|&g| g <= max),
            "{}: {groups:?} workgroups exceed the limit of {max} per dimension",
            kernel.name
        );
        for (_, t) in buffers {
            assert_eq!(t.gpu_id(), self.id, "{}: a tensor from another Gpu was bound", kernel.name);
        }

        let (chunk, offset, size) = self.arena.borrow_mut().push(&self.device, bytemuck::bytes_of(params));
        let arena = self.arena.borrow();
        let mut entries = Vec::with_capacity(buffers.len() + 1);
        if kernel.bindings.first() == Some(&0) {
            entries.push(wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &arena.chunks[chunk].0,
                    offset,
                    size: wgpu::BufferSize::new(size),
                }),
            });
        }
        for (binding, t) in buffers {
            entries
                .push(wgpu::BindGroupEntry { binding: *binding, resource: wgpu::BindingResource::Buffer(t.binding()) });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&kernel.name),
            layout: &kernel.layout,
            entries: &entries,
        });

        let timestamp_writes = enc.timer.as_mut().and_then(|t| {
            let i = t.next(&kernel.name)?;
            Some(wgpu::ComputePassTimestampWrites {
                query_set: &t.queries,
                beginning_of_pass_write_index: Some(i),
                end_of_pass_write_index: Some(i + 1),
            })
        });
        let mut pass =
            enc.raw.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(&kernel.name), timestamp_writes });
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }

    /// Submit a step: upload the uniform arena, submit the encoder, and return
    /// the buffers released during the step to the pool. Does not wait.
    pub fn submit(&self, enc: Encoder) -> wgpu::SubmissionIndex {
        self.count(|c| c.submits += 1);
        self.arena.borrow_mut().flush(&self.queue);
        let index = self.queue.submit([enc.raw.finish()]);
        let mut pool = self.pool.borrow_mut();
        let pending = std::mem::take(&mut pool.pending);
        for (bytes, buffer) in pending {
            pool.free.entry(bytes).or_default().push(buffer);
        }
        index
    }

    /// Block until all submitted work is done.
    pub fn wait(&self) {
        self.device.poll(wgpu::PollType::wait_indefinitely()).expect("device lost while waiting for the GPU");
    }

    /// Submit a timed encoder, wait, and return each dispatch's GPU time.
    /// `None` when the adapter has no timestamp queries (the caller then
    /// measures wall-clock time around [`Gpu::submit`] and [`Gpu::wait`]).
    pub fn submit_timed(&self, mut enc: Encoder) -> Option<Timings> {
        let Some(timer) = enc.timer.take() else {
            self.submit(enc);
            self.wait();
            return None;
        };
        let n = 2 * timer.labels.len() as u64;
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp resolve"),
            size: (n * 8).max(8),
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        if n > 0 {
            enc.raw.resolve_query_set(&timer.queries, 0..n as u32, &resolve, 0);
        }
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&self.read_buffer(enc, &resolve, 0, n * 8));
        let period = self.queue.get_timestamp_period() as f64 * 1e-9;
        let dispatches = timer
            .labels
            .into_iter()
            .enumerate()
            .map(|(i, name)| (name, ticks[2 * i + 1].wrapping_sub(ticks[2 * i]) as f64 * period))
            .collect();
        Some(Timings { dispatches })
    }

    /// Allocate a tensor from the pool. Its contents are undefined until
    /// written; use [`Gpu::zeros`] or an op's output.
    pub fn empty(&self, shape: &[usize]) -> Tensor {
        let bytes = (shape.iter().product::<usize>() as u64 * 4).max(16);
        let mut pool = self.pool.borrow_mut();
        let buffer = match pool.free.get_mut(&bytes).and_then(Vec::pop) {
            Some(b) => b,
            None => {
                pool.stats.allocations += 1;
                pool.stats.bytes += bytes;
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: bytes,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            }
        };
        pool.stats.bytes_in_use += bytes;
        drop(pool);
        Tensor::from_pooled(shape, buffer, bytes, self.id, self.pool.clone())
    }

    /// A tensor of zeros (the clear is recorded in `enc`, in order).
    pub fn zeros(&self, enc: &mut Encoder, shape: &[usize]) -> Tensor {
        let t = self.empty(shape);
        enc.clear(&t);
        t
    }

    /// Upload `f32` data. The write lands at the start of the next submit.
    pub fn upload(&self, data: &[f32], shape: &[usize]) -> Tensor {
        self.upload_bytes(bytemuck::cast_slice(data), data.len(), shape)
    }

    /// Upload `u32` data (labels, indices). The write lands at the start of the next submit.
    pub fn upload_u32(&self, data: &[u32], shape: &[usize]) -> Tensor {
        self.upload_bytes(bytemuck::cast_slice(data), data.len(), shape)
    }

    fn upload_bytes(&self, bytes: &[u8], len: usize, shape: &[usize]) -> Tensor {
        assert_eq!(len, shape.iter().product::<usize>(), "upload of {len} values into shape {shape:?}");
        let t = self.empty(shape);
        self.write(&t, bytes);
        t
    }

    /// Overwrite a tensor's contents with `bytes` (f32 or u32 data). The write
    /// lands at the start of the next submit, before any dispatch recorded in
    /// the encoder being built.
    pub fn write(&self, t: &Tensor, bytes: &[u8]) {
        assert_eq!(bytes.len(), 4 * t.len(), "write of {} bytes into a tensor of shape {:?}", bytes.len(), t.shape());
        if !bytes.is_empty() {
            self.queue.write_buffer(t.buffer(), t.offset(), bytes);
        }
    }

    /// Read a tensor back as `f32` (submits and waits: never inside a step).
    pub fn read(&self, t: &Tensor) -> Vec<f32> {
        bytemuck::pod_collect_to_vec(&self.read_tensor_bytes(t))
    }

    /// Read a tensor back as `u32` (submits and waits: never inside a step).
    pub fn read_u32(&self, t: &Tensor) -> Vec<u32> {
        bytemuck::pod_collect_to_vec(&self.read_tensor_bytes(t))
    }

    fn read_tensor_bytes(&self, t: &Tensor) -> Vec<u8> {
        let bytes = 4 * t.len() as u64;
        if bytes == 0 {
            return Vec::new();
        }
        self.read_buffer(self.encoder(), t.buffer(), t.offset(), bytes)
    }

    /// Copy `bytes` of `src` from `offset` to a mappable buffer at the end of
    /// `enc`, submit, wait, and return them.
    fn read_buffer(&self, mut enc: Encoder, src: &wgpu::Buffer, offset: u64, bytes: u64) -> Vec<u8> {
        self.count(|c| c.readbacks += 1);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if bytes > 0 {
            enc.raw.copy_buffer_to_buffer(src, offset, &staging, 0, bytes);
        }
        self.submit(enc);
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait();
        rx.recv().expect("map callback dropped").expect("mapping a readback buffer failed");
        let data = slice.get_mapped_range().expect("readback range")[..bytes as usize].to_vec();
        staging.unmap();
        data
    }

    /// A [`Readback`] ring of `slots` buffers of `len` f32 values each.
    pub fn readback(&self, len: usize, slots: usize) -> Readback {
        let bytes = (4 * len as u64).max(4);
        let slots = (0..slots.max(1))
            .map(|_| ReadbackSlot {
                buffer: self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback ring"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                state: Default::default(),
                busy: false,
                unsubmitted: false,
            })
            .collect();
        Readback { slots, next: 0, bytes }
    }

    /// Submits, blocking readbacks and pipeline compilations since the start (a training step
    /// should make one submit and no blocking readback).
    pub fn counters(&self) -> Counters {
        self.counters.get()
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
    }

    /// Counters of the buffer pool.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.borrow().stats
    }
}

/// A ring of mappable buffers for reading small tensors back without waiting:
/// [`Readback::copy`] records a copy at the end of a step, [`Readback::submitted`]
/// asks for the mapping after the submit, and [`Readback::latest`] returns the
/// newest copy that has arrived, never blocking. A slot still in flight is
/// skipped rather than waited for, so a slow GPU costs readings, not time.
pub struct Readback {
    slots: Vec<ReadbackSlot>,
    next: usize,
    bytes: u64,
}

struct ReadbackSlot {
    buffer: wgpu::Buffer,
    /// Set by the map callback: 1 mapped, 2 failed.
    state: std::sync::Arc<std::sync::atomic::AtomicU8>,
    /// A copy was recorded and not yet consumed.
    busy: bool,
    /// The copy is recorded but the step not submitted yet.
    unsubmitted: bool,
}

impl Readback {
    /// Record a copy of `t` (at most the ring's size) into a free slot, if
    /// there is one. Call [`Readback::submitted`] after submitting `enc`.
    pub fn copy(&mut self, enc: &mut Encoder, t: &Tensor) -> bool {
        let slot = &mut self.slots[self.next];
        if slot.busy {
            return false;
        }
        let bytes = t.bytes().min(self.bytes);
        enc.raw.copy_buffer_to_buffer(t.buffer(), t.offset(), &slot.buffer, 0, bytes);
        slot.busy = true;
        slot.unsubmitted = true;
        self.next = (self.next + 1) % self.slots.len();
        true
    }

    /// Ask for the mapping of the copies recorded before the last submit.
    pub fn submitted(&mut self) {
        for slot in self.slots.iter_mut().filter(|s| s.unsubmitted) {
            slot.unsubmitted = false;
            let state = slot.state.clone();
            slot.buffer.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                state.store(if r.is_ok() { 1 } else { 2 }, std::sync::atomic::Ordering::Release);
            });
        }
    }

    /// The newest copy that has arrived (as f32), freeing every arrived slot.
    /// Never waits: callbacks run when the device is polled (e.g. by a wait on
    /// an earlier step).
    pub fn latest(&mut self, gpu: &Gpu) -> Option<Vec<f32>> {
        let _ = gpu.device.poll(wgpu::PollType::Poll);
        let mut newest = None;
        // Visit slots from oldest to newest so the last one read is the newest.
        let n = self.slots.len();
        for k in 0..n {
            let slot = &mut self.slots[(self.next + k) % n];
            if !slot.busy || slot.unsubmitted {
                continue;
            }
            match slot.state.load(std::sync::atomic::Ordering::Acquire) {
                0 => continue,
                1 => {
                    newest = Some(bytemuck::pod_collect_to_vec(
                        &slot.buffer.slice(..).get_mapped_range().expect("mapped")[..],
                    ))
                }
                _ => {}
            }
            if slot.state.load(std::sync::atomic::Ordering::Acquire) == 1 {
                slot.buffer.unmap();
            }
            slot.state.store(0, std::sync::atomic::Ordering::Release);
            slot.busy = false;
        }
        newest
    }
}

impl UniformArena {
    /// Append `data`, 16-byte padded, at an aligned offset; returns (chunk, offset, size).
    fn push(&mut self, device: &wgpu::Device, data: &[u8]) -> (usize, u64, u64) {
        let size = (data.len() as u64).div_ceil(16).max(1) * 16;
        assert!(size <= ARENA_CHUNK, "a uniform of {size} bytes is larger than the arena chunk");
        loop {
            if self.current == self.chunks.len() {
                let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("uniform arena"),
                    size: ARENA_CHUNK,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.chunks.push((buffer, Vec::with_capacity(ARENA_CHUNK as usize)));
            }
            let bytes = &mut self.chunks[self.current].1;
            let offset = (bytes.len() as u64).div_ceil(self.align) * self.align;
            if offset + size <= ARENA_CHUNK {
                bytes.resize(offset as usize, 0);
                bytes.extend_from_slice(data);
                bytes.resize((offset + size) as usize, 0);
                return (self.current, offset, size);
            }
            self.current += 1;
        }
    }

    /// Upload what this step wrote and start over.
    fn flush(&mut self, queue: &wgpu::Queue) {
        for (buffer, bytes) in &mut self.chunks {
            if !bytes.is_empty() {
                queue.write_buffer(buffer, 0, bytes);
                bytes.clear();
            }
        }
        self.current = 0;
    }
}

/// Parse and validate WGSL with naga, as wgpu will; used by the pipeline cache
/// and by the test that checks every shader without a GPU. The error names the
/// file and carries naga's annotated message.
pub fn validate_wgsl(name: &str, source: &str) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
    let path = format!("shaders/{name}.wgsl");
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string_with_path(source, &path))?;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
        .validate(&module)
        .map_err(|e| e.emit_to_string_with_path(source, &path))?;
    Ok((module, info))
}

/// Workgroup counts for `n` threads in groups of `wg`, folded into x and y so
/// no dimension exceeds 65535 (the WebGPU minimum). Shaders rebuild the linear
/// index as `id.x + id.y * num_workgroups.x * WG` and bounds-check it.
pub fn groups_1d(n: usize, wg: u32) -> [u32; 3] {
    let groups = (n as u64).div_ceil(wg as u64).max(1);
    let x = groups.min(65535);
    let y = groups.div_ceil(x);
    assert!(y <= 65535, "{n} threads are too many for one dispatch");
    [x as u32, y as u32, 1]
}
