//! The device: adapter choice (best first, or as [`GpuOptions`] asks), the limits it was granted,
//! the tuning and the kernel set the default op wrappers read, and the counters of what a run
//! cost.
//!
//! The runtime is async at its two edges, so that it runs in a web page, which cannot block:
//! opening the device ([`Gpu::open`]) and reading data back (`Gpu::read_async`). Native programs
//! call the blocking wrappers ([`Gpu::new`], `Gpu::read`), which drive the same futures with
//! `pollster::block_on`; a page awaits them.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::encoder::UniformArena;
use super::options::{Backend, GpuError, GpuOptions, Kernels, Limits, NEEDED_LIMITS};
use super::pipeline::{CompiledShader, Kernel, KernelKey};
use super::pool::BufferPool;
use crate::tune::cache::TuningSource;
use crate::tune::tiling::Tuning;

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
    pub(super) id: u64,
    pub(super) modules: RefCell<HashMap<&'static str, CompiledShader>>,
    pub(super) kernels: RefCell<HashMap<KernelKey, Rc<Kernel>>>,
    pub(crate) pool: Rc<RefCell<BufferPool>>,
    pub(super) arena: RefCell<UniformArena>,
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
    /// Readbacks: `Gpu::read`, `Gpu::read_u32` (and their async forms), and the timestamp
    /// read of [`Gpu::submit_timed`] (each submits, then waits for the GPU to finish).
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
#[cfg(not(target_arch = "wasm32"))]
fn from_env<T: std::str::FromStr>(name: &str) -> Result<Option<T>, GpuError>
where
    GpuError: From<T::Err>,
{
    match std::env::var(name) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.parse()?)),
        _ => Ok(None),
    }
}

/// A web page has no environment: [`GpuOptions`] alone decides.
#[cfg(target_arch = "wasm32")]
fn from_env<T>(_name: &str) -> Result<Option<T>, GpuError> {
    Ok(None)
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
    /// Blocks until the device is open: [`Gpu::open`] driven by `pollster`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(options: &GpuOptions) -> Result<Gpu, GpuError> {
        pollster::block_on(Gpu::open(options))
    }

    /// [`Gpu::new`] as a future, for callers that cannot block (a web page, where the
    /// adapter is the browser's WebGPU one and `backend` plays no part).
    pub async fn open(options: &GpuOptions) -> Result<Gpu, GpuError> {
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
        let tiling = match options.tiling {
            Some(t) => Some(t),
            None => from_env("UNET_WGPU_TILING")?,
        };
        let backends = backend.map_or(wgpu::Backends::all(), Backend::to_wgpu);
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapters = instance.enumerate_adapters(backends).await;
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
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("unet-wgpu"),
                required_features,
                required_limits,
                ..Default::default()
            })
            .await
            .map_err(|source| GpuError::RequestDevice { adapter: info.name.clone(), source })?;

        // From here on, only what the device was granted counts: the adapter may offer more.
        let granted = device.limits();
        let align = granted.min_uniform_buffer_offset_alignment as u64;
        let (tuning, tuning_source) = crate::tune::cache::initial(&info, &granted, &options.tuning, tiling);
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

    /// A number that tells two `Gpu`s in one process apart (tensors remember it).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Submits, blocking readbacks and pipeline compilations since the start (a training step
    /// should make one submit and no blocking readback).
    pub fn counters(&self) -> Counters {
        self.counters.get()
    }

    pub(super) fn count(&self, f: impl FnOnce(&mut Counters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
    }
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
