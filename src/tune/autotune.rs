//! Tile sizes per adapter: which tiling the default op wrappers use, where it comes from, the
//! autotune that measures it (`unet-wgpu tune`), and the cache file that keeps the result.
//!
//! The kernels with tile sizes take them as WGSL override constants, fixed when a pipeline is
//! compiled: the workgroup size, how many channels a thread owns, how many threads a weight
//! gradient spreads over. What is fastest depends on the adapter: a CPU driver (lavapipe) wants
//! few, fat threads and no workgroup memory; a GPU wants many threads and shared tiles. A
//! [`Tuning`] holds one choice per kernel family, and [`Gpu::new`] picks it once:
//!
//! 1. the cache file's entry for this adapter, if the file has one and it is valid;
//! 2. else [`Tuning::builtin`]: the sizes measured on lavapipe for CPU drivers, and unmeasured
//!    guesses for hardware GPUs.
//!
//! A corrupt cache, or one written by another version of the format, is never fatal: a warning
//! names the file and what to do, and the builtin tiling is used. Nothing is measured at
//! startup: `unet-wgpu tune` runs [`Tuning::autotune`] (seconds, within a time budget) and
//! writes the cache; later runs of `train`, `predict` and the benches read it.
//!
//! The cache lives at `$UNET_WGPU_CACHE` if set, else `$XDG_CACHE_HOME/unet-wgpu/tuning.json`,
//! else `$HOME/.cache/unet-wgpu/tuning.json` ([`default_cache_path`]): one JSON file with an
//! entry per adapter, keyed by its name, driver, driver info and backend ([`AdapterKey`]), so a
//! machine with two GPUs (or a GPU and lavapipe) keeps one tuning for each.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::ops::conv2d::{
    self, conv2d_backward_data_tiled, conv2d_backward_weight_tiled, conv2d_forward_tiled, Conv2d, Epilogue,
};
use crate::ops::conv_transpose2d::{
    self, conv_transpose2d_backward_data_tiled, conv_transpose2d_backward_weight_tiled, conv_transpose2d_forward_tiled,
    Workgroups,
};
use crate::ops::matmul::{self, matmul_forward_tiled, SharedTiling, Tiles};
use crate::runtime::{Encoder, Gpu};
use crate::testing::{max_rel_error, random_vec, to_f64};

/// The tile sizes the default op wrappers use: one choice per kernel family. Each is passed to
/// the shaders as override constants; `Gpu::tuning()` returns the active one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// `conv2d_forward` and `conv2d_forward_fused`. `wg`: threads a workgroup, each computing a
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
}

impl Tuning {
    /// The tiling for an adapter before anything is measured. CPU drivers (lavapipe, llvmpipe,
    /// SwiftShader, WARP: [`is_software`]) get the defaults of the ops, each measured on
    /// lavapipe. Hardware GPUs get larger workgroups, many more weight-gradient threads and the
    /// workgroup-memory GEMM.
    pub fn builtin(info: &wgpu::AdapterInfo) -> Tuning {
        if is_software(info) {
            return Tuning::cpu();
        }
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
        }
    }

    /// The defaults of the ops, measured on lavapipe (2 cores): see the README's performance
    /// section and the sweeps in `benches/kernels/`.
    fn cpu() -> Tuning {
        Tuning {
            conv2d_forward: conv2d::Tiling::default(),
            conv2d_backward_data: conv2d::Tiling::default(),
            conv2d_backward_weight: conv2d::Tiling::default(),
            conv_transpose2d: Workgroups::default(),
            matmul: Tiles::default(),
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
            "conv2d forward {}; backward data {}; backward weight {}; conv_transpose2d {}; matmul {}",
            label_forward(&self.conv2d_forward),
            label_data(&self.conv2d_backward_data),
            label_weight(&self.conv2d_backward_weight),
            label_workgroups(&self.conv_transpose2d),
            label_tiles(&self.matmul)
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

fn label_forward(t: &conv2d::Tiling) -> String {
    format!("wg {} rows {}", t.wg, t.rows)
}

fn label_data(t: &conv2d::Tiling) -> String {
    format!("wg {} rows {} tm {}", t.wg, t.rows, t.tm)
}

fn label_weight(t: &conv2d::Tiling) -> String {
    format!("wg {} threads {}", t.wg, t.bw_threads)
}

fn label_workgroups(w: &Workgroups) -> String {
    format!("wg {} quads {}", w.general, w.quads)
}

fn label_tiles(t: &Tiles) -> String {
    t.to_string()
}

/// Where [`Gpu::new`] should take the tuning from ([`crate::GpuOptions::tuning`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TuningFrom {
    /// The cache at [`default_cache_path`], if it has an entry for the adapter; else builtin.
    #[default]
    DefaultCache,
    /// The cache file at this path, if it has an entry for the adapter; else builtin.
    Cache(PathBuf),
    /// [`Tuning::builtin`], without reading any cache (the tests use this, so that they do not
    /// depend on what `unet-wgpu tune` left on the machine).
    Builtin,
}

/// Where the active tuning came from (`Gpu::tuning_source()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TuningSource {
    /// [`Tuning::builtin`]; `cache` names the cache file that was looked at, if one was.
    Builtin {
        /// The cache that had no usable entry for the adapter (`None`: none was read).
        cache: Option<PathBuf>,
    },
    /// The entry for the adapter in this cache file.
    Cache(PathBuf),
    /// `Gpu::set_tuning` (a benchmark or test chose it).
    Set,
}

impl fmt::Display for TuningSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TuningSource::Builtin { cache: Some(path) } => {
                write!(
                    f,
                    "builtin (no usable entry for this adapter in {}; `unet-wgpu tune` measures them)",
                    path.display()
                )
            }
            TuningSource::Builtin { cache: None } => write!(f, "builtin"),
            TuningSource::Cache(path) => write!(f, "measured, from {}", path.display()),
            TuningSource::Set => write!(f, "set by the program"),
        }
    }
}

/// What identifies an adapter in the cache: a tuning measured on one driver version is not
/// reused on another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterKey {
    /// `AdapterInfo::name`, e.g. `"llvmpipe (LLVM 15.0.6, 256 bits)"`.
    pub name: String,
    /// `AdapterInfo::driver`, e.g. `"llvmpipe"`.
    pub driver: String,
    /// `AdapterInfo::driver_info`, e.g. `"Mesa 22.3.6 (LLVM 15.0.6)"`.
    pub driver_info: String,
    /// The backend as wgpu spells it, e.g. `"Vulkan"`.
    pub backend: String,
}

impl AdapterKey {
    /// The key of `info`.
    pub fn of(info: &wgpu::AdapterInfo) -> AdapterKey {
        AdapterKey {
            name: info.name.clone(),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            backend: format!("{:?}", info.backend),
        }
    }

    const FIELDS: [&'static str; 4] = ["name", "driver", "driver_info", "backend"];

    fn values(&self) -> [&str; 4] {
        [&self.name, &self.driver, &self.driver_info, &self.backend]
    }
}

/// Problems with the cache file.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Reading or writing failed.
    #[error("tuning cache {path}: {reason}")]
    Io {
        /// The cache file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The file is not a cache this build can read (corrupt, or another version of the format).
    #[error("tuning cache {path}: {reason}")]
    Format {
        /// The cache file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No environment variable says where the cache goes.
    #[error("no place for the tuning cache: set UNET_WGPU_CACHE (a file path), XDG_CACHE_HOME or HOME")]
    NoPath,
}

/// Version of the cache format; a file with another one is ignored (with a warning). 2: the
/// convolutions' tilings have `rows` (version 1's sizes were measured with 2-row tiles).
pub const CACHE_VERSION: u64 = 2;
/// The `format` field of a cache file.
const CACHE_FORMAT: &str = "unet-wgpu tuning cache";

/// `$UNET_WGPU_CACHE`, else `$XDG_CACHE_HOME/unet-wgpu/tuning.json`, else
/// `$HOME/.cache/unet-wgpu/tuning.json` (empty variables count as unset); `None` without any.
pub fn default_cache_path() -> Option<PathBuf> {
    cache_path_from(std::env::var_os("UNET_WGPU_CACHE"), std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

/// [`default_cache_path`] from the values of its three variables.
pub fn cache_path_from(cache: Option<OsString>, xdg: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    set(cache)
        .or_else(|| set(xdg).map(|d| d.join("unet-wgpu/tuning.json")))
        .or_else(|| set(home).map(|h| h.join(".cache/unet-wgpu/tuning.json")))
}

/// The tuning, where it came from, and the warning to print when the cache was unusable.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The tuning to use.
    pub tuning: Tuning,
    /// Where it came from.
    pub source: TuningSource,
    /// Set when a cache file exists but could not be used (its entry was ignored).
    pub warning: Option<String>,
}

/// The tuning for an adapter, following `from` (see the module doc); never fails.
pub fn resolve(info: &wgpu::AdapterInfo, limits: &wgpu::Limits, from: &TuningFrom) -> Resolved {
    let (builtin, unfit) = builtin_within(info, limits);
    let path = match from {
        TuningFrom::Builtin => None,
        TuningFrom::Cache(path) => Some(path.clone()),
        TuningFrom::DefaultCache => default_cache_path(),
    };
    let Some(path) = path else {
        return Resolved { tuning: builtin, source: TuningSource::Builtin { cache: None }, warning: unfit };
    };
    match load_cache(&path, &AdapterKey::of(info), limits) {
        Ok(Some(tuning)) => Resolved { tuning, source: TuningSource::Cache(path), warning: None },
        Ok(None) => Resolved { tuning: builtin, source: TuningSource::Builtin { cache: Some(path) }, warning: unfit },
        Err(e) => Resolved {
            tuning: builtin,
            source: TuningSource::Builtin { cache: Some(path.clone()) },
            warning: Some(format!(
                "warning: {e}. Using the builtin tile sizes; delete {}, or run `unet-wgpu tune` to measure \
                 them again and rewrite it",
                path.display()
            )),
        },
    }
}

/// [`Tuning::builtin`] when it fits the device's `limits`; else the CPU drivers' tiling (the
/// smallest workgroups), with the warning that says why.
fn builtin_within(info: &wgpu::AdapterInfo, limits: &wgpu::Limits) -> (Tuning, Option<String>) {
    let builtin = Tuning::builtin(info);
    match builtin.check(limits) {
        Ok(()) => (builtin, None),
        Err(why) => (
            Tuning::cpu(),
            Some(format!(
                "warning: the builtin tile sizes for {} do not fit the device's limits ({why}); using the \
                 smaller ones of CPU drivers",
                info.name
            )),
        ),
    }
}

/// [`resolve`], printing its warning to stderr once per process.
pub(crate) fn initial(info: &wgpu::AdapterInfo, limits: &wgpu::Limits, from: &TuningFrom) -> (Tuning, TuningSource) {
    static WARNED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let r = resolve(info, limits, from);
    if let Some(warning) = &r.warning {
        let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
        if warned.get_or_insert_with(HashSet::new).insert(warning.clone()) {
            eprintln!("{warning}");
        }
    }
    (r.tuning, r.source)
}

/// The entry for `key` in the cache at `path`, checked against the adapter's `limits`.
/// `Ok(None)` when the file does not exist or has no entry for `key`; `Err` when it cannot be
/// read, is not a cache of this version, or the entry is malformed or does not fit `limits`.
pub fn load_cache(path: &Path, key: &AdapterKey, limits: &wgpu::Limits) -> Result<Option<Tuning>, CacheError> {
    let Some(entries) = read_entries(path)? else { return Ok(None) };
    let format_error = |reason: String| CacheError::Format { path: path.to_path_buf(), reason };
    for entry in &entries {
        if entry_key(entry).map_err(format_error)? == key.values() {
            let tuning = tuning_from_json(entry.get("tuning").unwrap_or(&Value::Null))
                .map_err(|e| format_error(format!("the entry for {:?}: {e}", key.name)))?;
            tuning.check(limits).map_err(|e| format_error(format!("the entry for {:?}: {e}", key.name)))?;
            return Ok(Some(tuning));
        }
    }
    Ok(None)
}

/// Write `tuning` as the entry for `key` into the cache at `path`, keeping the entries of other
/// adapters; a file that cannot be read as a cache is replaced. The parent folders are created;
/// the file is written to a temporary file and renamed over the old one (never half-written).
/// `note` is stored beside the entry for people reading the file.
pub fn save_cache(path: &Path, key: &AdapterKey, tuning: &Tuning, note: &str) -> Result<(), CacheError> {
    let mut entries = read_entries(path).ok().flatten().unwrap_or_default();
    entries.retain(|e| entry_key(e).map(|k| k != key.values()).unwrap_or(false));
    let adapter: Map<String, Value> =
        AdapterKey::FIELDS.iter().zip(key.values()).map(|(field, value)| (field.to_string(), json!(value))).collect();
    let entry = json!({ "adapter": adapter, "note": note, "tuning": tuning_to_json(tuning) });
    entries.push(entry);
    let file = json!({ "format": CACHE_FORMAT, "version": CACHE_VERSION, "adapters": entries });
    let text = serde_json::to_string_pretty(&file).expect("a JSON value always serialises");
    let io = |reason: String| CacheError::Io { path: path.to_path_buf(), reason };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io(format!("creating {}: {e}", dir.display())))?;
    }
    crate::checkpoint::write_atomically(path, (text + "\n").as_bytes()).map_err(|e| io(e.to_string()))
}

/// The adapter entries of a cache file; `None` when the file does not exist.
fn read_entries(path: &Path) -> Result<Option<Vec<Value>>, CacheError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CacheError::Io { path: path.to_path_buf(), reason: e.to_string() }),
    };
    let format_error = |reason: String| CacheError::Format { path: path.to_path_buf(), reason };
    let file: Value = serde_json::from_str(&text).map_err(|e| format_error(format!("not valid JSON ({e})")))?;
    if file.get("format").and_then(Value::as_str) != Some(CACHE_FORMAT) {
        return Err(format_error(format!("not a unet-wgpu tuning cache (no \"format\": {CACHE_FORMAT:?})")));
    }
    match file.get("version").and_then(Value::as_u64) {
        Some(CACHE_VERSION) => {}
        other => {
            return Err(format_error(format!(
                "format version {}, this build reads version {CACHE_VERSION}",
                other.map_or("missing".to_string(), |v| v.to_string())
            )))
        }
    }
    match file.get("adapters") {
        Some(Value::Array(entries)) => Ok(Some(entries.clone())),
        _ => Err(format_error("no \"adapters\" list".into())),
    }
}

/// The four key strings of an entry (`"adapter": {"name": ..., ...}`).
fn entry_key(entry: &Value) -> Result<[&str; 4], String> {
    let field = |name: &str| {
        entry
            .get("adapter")
            .and_then(|a| a.get(name))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("an entry without a string \"adapter\".{name:?}"))
    };
    Ok([field("name")?, field("driver")?, field("driver_info")?, field("backend")?])
}

fn tuning_to_json(t: &Tuning) -> Value {
    let conv = |t: &conv2d::Tiling| json!({ "wg": t.wg, "rows": t.rows, "tm": t.tm, "bw_threads": t.bw_threads });
    let matmul = match t.matmul {
        Tiles::Register(r) => json!({ "register": { "wg": r.wg, "tm": r.tm, "tn": r.tn } }),
        Tiles::Shared(s) => json!({ "shared": { "tx": s.tx, "ty": s.ty, "sm": s.sm, "sn": s.sn, "bk": s.bk } }),
    };
    json!({
        "conv2d_forward": conv(&t.conv2d_forward),
        "conv2d_backward_data": conv(&t.conv2d_backward_data),
        "conv2d_backward_weight": conv(&t.conv2d_backward_weight),
        "conv_transpose2d": { "general": t.conv_transpose2d.general, "quads": t.conv_transpose2d.quads },
        "matmul": matmul,
    })
}

fn tuning_from_json(v: &Value) -> Result<Tuning, String> {
    fn object<'a>(v: &'a Value, name: &str) -> Result<&'a Value, String> {
        v.get(name).filter(|o| o.is_object()).ok_or_else(|| format!("no object {name:?}"))
    }
    fn int(v: &Value, within: &str, name: &str) -> Result<u32, String> {
        v.get(name)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("{within}.{name} is missing or not a 32-bit unsigned integer"))
    }
    let conv = |name: &str| -> Result<conv2d::Tiling, String> {
        let o = object(v, name)?;
        Ok(conv2d::Tiling {
            wg: int(o, name, "wg")?,
            rows: int(o, name, "rows")?,
            tm: int(o, name, "tm")?,
            bw_threads: int(o, name, "bw_threads")?,
        })
    };
    let ct = object(v, "conv_transpose2d")?;
    let mm = object(v, "matmul")?;
    let matmul = match (mm.get("register"), mm.get("shared")) {
        (Some(r), None) => Tiles::Register(matmul::Tiling {
            wg: int(r, "matmul.register", "wg")?,
            tm: int(r, "matmul.register", "tm")?,
            tn: int(r, "matmul.register", "tn")?,
        }),
        (None, Some(s)) => {
            let f = |n| int(s, "matmul.shared", n);
            Tiles::Shared(SharedTiling { tx: f("tx")?, ty: f("ty")?, sm: f("sm")?, sn: f("sn")?, bk: f("bk")? })
        }
        _ => return Err("\"matmul\" needs exactly one of \"register\", \"shared\"".into()),
    };
    Ok(Tuning {
        conv2d_forward: conv("conv2d_forward")?,
        conv2d_backward_data: conv("conv2d_backward_data")?,
        conv2d_backward_weight: conv("conv2d_backward_weight")?,
        conv_transpose2d: Workgroups {
            general: int(ct, "conv_transpose2d", "general")?,
            quads: int(ct, "conv_transpose2d", "quads")?,
        },
        matmul,
    })
}

/// The candidates [`Tuning::autotune`] tries for each family, the builtin first.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidates {
    /// For [`Tuning::conv2d_forward`].
    pub conv2d_forward: Vec<conv2d::Tiling>,
    /// For [`Tuning::conv2d_backward_data`].
    pub conv2d_backward_data: Vec<conv2d::Tiling>,
    /// For [`Tuning::conv2d_backward_weight`].
    pub conv2d_backward_weight: Vec<conv2d::Tiling>,
    /// For [`Tuning::conv_transpose2d`].
    pub conv_transpose2d: Vec<Workgroups>,
    /// For [`Tuning::matmul`].
    pub matmul: Vec<Tiles>,
}

impl Candidates {
    /// A short list per family around both builtin choices (CPU and GPU), `builtin`'s first,
    /// without duplicates and without what the adapter's `limits` forbid.
    pub fn new(builtin: &Tuning, limits: &wgpu::Limits) -> Candidates {
        // Each candidate is checked as part of a whole tuning (the builtin with one field swapped).
        fn keep<T: PartialEq + Copy>(first: T, rest: &[T], ok: impl Fn(T) -> bool) -> Vec<T> {
            let mut list = vec![first];
            for &c in rest {
                if !list.contains(&c) && ok(c) {
                    list.push(c);
                }
            }
            list
        }
        let with = |f: &dyn Fn(&mut Tuning)| {
            let mut t = *builtin;
            f(&mut t);
            t.check(limits).is_ok()
        };
        let conv = |wg, rows| conv2d::Tiling { wg, rows, ..builtin.conv2d_forward };
        let data = |wg, rows| conv2d::Tiling { wg, rows, ..builtin.conv2d_backward_data };
        let weight = |wg, bw_threads| conv2d::Tiling { wg, bw_threads, ..builtin.conv2d_backward_weight };
        let groups = |general, quads| Workgroups { general, quads };
        let register = |wg, tm, tn| Tiles::Register(matmul::Tiling { wg, tm, tn });
        let shared = |tx, ty, sm, sn, bk| Tiles::Shared(SharedTiling { tx, ty, sm, sn, bk });
        Candidates {
            conv2d_forward: keep(
                builtin.conv2d_forward,
                &[conv(32, 4), conv(64, 4), conv(64, 2), conv(128, 2), conv(256, 2)],
                |c| with(&|t| t.conv2d_forward = c),
            ),
            conv2d_backward_data: keep(
                builtin.conv2d_backward_data,
                &[data(32, 4), data(64, 4), data(64, 2), data(128, 2), data(256, 2)],
                |c| with(&|t| t.conv2d_backward_data = c),
            ),
            conv2d_backward_weight: keep(
                builtin.conv2d_backward_weight,
                &[weight(64, 128), weight(64, 512), weight(64, 2048), weight(128, 8192), weight(256, 65536)],
                |c| with(&|t| t.conv2d_backward_weight = c),
            ),
            conv_transpose2d: keep(
                builtin.conv_transpose2d,
                &[groups(64, 16), groups(64, 32), groups(64, 64), groups(128, 64), groups(256, 128)],
                |c| with(&|t| t.conv_transpose2d = c),
            ),
            matmul: keep(
                builtin.matmul,
                &[
                    register(16, 16, 16),
                    register(16, 8, 8),
                    register(64, 8, 8),
                    shared(16, 16, 4, 4, 8),
                    shared(8, 8, 4, 4, 16),
                ],
                |c| with(&|t| t.matmul = c),
            ),
        }
    }
}

/// The shapes [`Tuning::autotune_on`] times each candidate on; its choice is the candidate
/// fastest over all of them together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TuneShapes {
    /// Activations `[N, C, H, W]` of 3x3 "same" convolutions from C to C channels (conv2d).
    pub conv2d: Vec<[usize; 4]>,
    /// Inputs `[N, C, H, W]` of up-convolutions to `max(C/2, 1)` channels at `2H x 2W`.
    pub conv_transpose2d: Vec<[usize; 4]>,
    /// Products `[M, K, N]` (matmul).
    pub matmul: Vec<[usize; 3]>,
}

impl TuneShapes {
    /// Layers of the default U-Net at batch 4 (see `UNET_LEVELS` in `benches/kernels/main.rs`),
    /// the first level at 128² rather than 256² to keep the measurement short; the GEMMs of
    /// the ceiling (512³) and of a 64-channel 3x3 conv at 32² (M = O, K = 9 I, N = pixels).
    pub fn unet() -> TuneShapes {
        TuneShapes {
            conv2d: vec![[4, 16, 128, 128], [4, 64, 64, 64], [4, 256, 16, 16]],
            conv_transpose2d: vec![[4, 32, 128, 128], [4, 128, 32, 32], [4, 256, 16, 16]],
            matmul: vec![[512, 512, 512], [64, 576, 4096]],
        }
    }
}

/// One line of the autotune's table.
#[derive(Clone, Debug, PartialEq)]
pub struct TuneRow {
    /// Kernel family, e.g. `"conv2d_forward"`.
    pub kernel: &'static str,
    /// The shape timed, `"all shapes"` for a candidate's total, `"-"` where nothing was timed.
    pub shape: String,
    /// The candidate, as in [`Tuning`]'s `Display` (`"wg 64"`), `" (builtin)"` appended for it.
    pub candidate: String,
    /// Fastest of the repetitions in milliseconds (the sum over shapes on total rows); `None`
    /// where not timed.
    pub ms: Option<f64>,
    /// Why a candidate was not timed or not considered: `"wrong output: ..."`, `"budget spent"`.
    pub note: String,
    /// On the total row of the candidate kept for this family.
    pub chosen: bool,
}

/// What [`Tuning::autotune`] measured.
#[derive(Clone, Debug)]
pub struct TuneReport {
    /// Every candidate's rows, in the order measured.
    pub rows: Vec<TuneRow>,
    /// `"GPU timestamps"` or `"wall clock"`.
    pub clock: &'static str,
    /// Time spent, compilation and checks included.
    pub elapsed: Duration,
    /// The budget it was given.
    pub budget: Duration,
    /// Whether every candidate (but those with wrong output) had all its runs within the budget.
    pub complete: bool,
}

/// Rounds of timed runs (each candidate once on each shape per round); the fastest run counts.
pub const REPS: usize = 2;
/// A candidate replaces the builtin only if this much faster over all shapes: smaller gains
/// are within the noise of a shared machine.
pub const MARGIN: f64 = 0.03;

impl TuneReport {
    /// The table: kernel, shape, candidate, ms, chosen (`*`), then a line on how it was timed.
    pub fn table(&self) -> String {
        let mut out = format!("{:<22} {:<20} {:<40} {:>9}  chosen\n", "kernel", "shape", "candidate", "ms");
        for r in &self.rows {
            let ms = r.ms.map_or("-".to_string(), |v| format!("{v:.3}"));
            let mut line = format!(
                "{:<22} {:<20} {:<40} {:>9}  {}",
                r.kernel,
                r.shape,
                r.candidate,
                ms,
                if r.chosen { "*" } else { "" }
            );
            if !r.note.is_empty() {
                line += &format!("{}({})", if r.chosen { " " } else { "" }, r.note);
            }
            out += line.trim_end();
            out.push('\n');
        }
        out += &format!(
            "timed with {}, fastest of {REPS} runs a shape (fewer where noted); a candidate replaces the builtin only when {:.0}% faster \
             over all shapes; {:.1} s of a {:.1} s budget{}",
            self.clock,
            100.0 * MARGIN,
            self.elapsed.as_secs_f64(),
            self.budget.as_secs_f64(),
            if self.complete { "" } else { " (spent before every candidate had all its runs)" }
        );
        out
    }
}

/// Runs a candidate on small shapes against the reference: `Err(what differs)`.
type Check<'a, C> = Box<dyn Fn(&Gpu, &C) -> Result<(), String> + 'a>;
/// Records one run of a candidate on one timing shape.
type Record<'a, C> = Box<dyn Fn(&Gpu, &mut Encoder, &C) + 'a>;

/// One kernel family under test: its candidates, how to check one, and how to run it on each
/// timing shape.
struct Family<'a, C> {
    kernel: &'static str,
    candidates: Vec<C>,
    label: fn(&C) -> String,
    check: Check<'a, C>,
    /// `(shape label, record one run)` per timing shape.
    shapes: Vec<(String, Record<'a, C>)>,
}

impl Tuning {
    /// Measure the candidates of each kernel family ([`Candidates::new`] around this adapter's
    /// builtin) on the U-Net's layer shapes ([`TuneShapes::unet`]) and keep the fastest, within
    /// `budget` of wall-clock time. See [`Tuning::autotune_on`].
    pub fn autotune(gpu: &Gpu, budget: Duration) -> (Tuning, TuneReport) {
        Tuning::autotune_on(gpu, budget, &TuneShapes::unet())
    }

    /// [`Tuning::autotune`] on chosen shapes. Per family (conv2d forward, backward data,
    /// backward weight, conv_transpose2d, matmul), each candidate is first run on small shapes
    /// and compared with the reference (a candidate that gives other numbers is dropped), then
    /// timed on every shape in up to [`REPS`] rounds (each candidate once a round, so that a slow
    /// spell of a shared machine spreads over all of them), with GPU timestamps where the adapter
    /// has them; the fastest run counts, and the candidate with the least total wins if it beats the builtin
    /// by [`MARGIN`]. Each family gets an equal share of the budget left when it starts; once a
    /// share is spent (or the rest of it would not fit another candidate as quick as the quickest
    /// so far) the family stops measuring and keeps the best complete candidate (the builtin
    /// when none). Pipelines compiled here stay in `gpu`'s cache; its active tuning
    /// is not changed (see `Gpu::set_tuning`).
    pub fn autotune_on(gpu: &Gpu, budget: Duration, shapes: &TuneShapes) -> (Tuning, TuneReport) {
        let start = Instant::now();
        let deadline = start + budget;
        let builtin = Tuning::builtin(&gpu.info);
        let candidates = Candidates::new(&builtin, &gpu.limits);
        let mut rows = Vec::new();
        let mut complete = true;
        let mut tuning = builtin;
        const FAMILIES: u32 = 5;
        let share = |done: u32| {
            let now = Instant::now();
            now + deadline.saturating_duration_since(now) / (FAMILIES - done)
        };
        // With any budget at all, each family's builtin is timed once however slow the machine:
        // the report then has a baseline, and a candidate that won has beaten a measured time.
        let timed_builtin = !budget.is_zero();
        let mut run = |family: Family<'_, _>, done: u32| {
            tune_family(gpu, family, (share(done), timed_builtin), &mut rows, &mut complete)
        };
        tuning.conv2d_forward = run(conv2d_family(gpu, "conv2d_forward", candidates.conv2d_forward, &shapes.conv2d), 0);
        tuning.conv2d_backward_data =
            run(conv2d_family(gpu, "conv2d_backward_data", candidates.conv2d_backward_data, &shapes.conv2d), 1);
        tuning.conv2d_backward_weight =
            run(conv2d_family(gpu, "conv2d_backward_weight", candidates.conv2d_backward_weight, &shapes.conv2d), 2);
        let family = conv_transpose2d_family(gpu, candidates.conv_transpose2d, &shapes.conv_transpose2d);
        tuning.conv_transpose2d = tune_family(gpu, family, (share(3), timed_builtin), &mut rows, &mut complete);
        let family = matmul_family(gpu, candidates.matmul, &shapes.matmul);
        tuning.matmul = tune_family(gpu, family, (share(4), timed_builtin), &mut rows, &mut complete);
        let clock = if gpu.has_timestamps { "GPU timestamps" } else { "wall clock" };
        (tuning, TuneReport { rows, clock, elapsed: start.elapsed(), budget, complete })
    }
}

/// Check, time and choose among one family's candidates until `deadline`; returns the choice.
/// With `timed_builtin`, the builtin (the first candidate) gets its first round even past the
/// deadline. The runs go in rounds (every candidate once on every shape, then again), so that a
/// slow spell of a shared machine does not fall on one candidate's runs only.
fn tune_family<C: Copy>(
    gpu: &Gpu,
    f: Family<'_, C>,
    (deadline, timed_builtin): (Instant, bool),
    rows: &mut Vec<TuneRow>,
    complete: &mut bool,
) -> C {
    let n = f.candidates.len();
    // best[i][s]: the fastest run of candidate i on shape s so far.
    let mut best = vec![vec![None::<f64>; f.shapes.len()]; n];
    let mut wrong: Vec<Option<String>> = vec![None; n];
    let mut checked = vec![false; n];
    let mut rounds = vec![0; n];
    // Wall time of the quickest candidate round so far (check and compilation included): one
    // that would not end before the deadline is not started, leaving the time to later families.
    let mut quickest: Option<Duration> = None;
    'rounds: for _ in 0..REPS {
        for (i, c) in f.candidates.iter().enumerate() {
            let started = Instant::now();
            let owed = timed_builtin && i == 0 && rounds[0] == 0;
            if !owed && (started >= deadline || quickest.is_some_and(|q| started + q > deadline)) {
                break 'rounds;
            }
            if wrong[i].is_some() {
                continue;
            }
            if !checked[i] {
                if let Err(e) = (f.check)(gpu, c) {
                    wrong[i] = Some(e);
                    continue;
                }
                checked[i] = true;
                if i == 0 {
                    // One untimed run of the builtin on each shape first: the first touches of
                    // the shapes' buffers should not count against the first candidate.
                    for (_, record) in &f.shapes {
                        let mut enc = gpu.encoder();
                        record(gpu, &mut enc, c);
                        gpu.submit(enc);
                        gpu.wait();
                    }
                }
            }
            let mut timed_all = true;
            for (s, (_, record)) in f.shapes.iter().enumerate() {
                if !owed && Instant::now() >= deadline {
                    timed_all = false;
                    break;
                }
                let t = time(gpu, &|gpu, enc| record(gpu, enc, c));
                best[i][s] = Some(best[i][s].map_or(t, |b: f64| b.min(t)));
            }
            if timed_all {
                rounds[i] += 1;
                quickest = Some(quickest.map_or(started.elapsed(), |q| q.min(started.elapsed())));
            }
        }
    }

    let label = |i: usize| (f.label)(&f.candidates[i]) + if i == 0 { " (builtin)" } else { "" };
    let row = |i: usize, shape: &str, ms: Option<f64>, note: &str| TuneRow {
        kernel: f.kernel,
        shape: shape.to_string(),
        candidate: label(i),
        ms,
        note: note.to_string(),
        chosen: false,
    };
    // (candidate index, total seconds, index of its total row)
    let mut totals: Vec<(usize, f64, usize)> = Vec::new();
    for i in 0..n {
        if let Some(e) = &wrong[i] {
            rows.push(row(i, "-", None, &format!("wrong output: {e}")));
            continue;
        }
        if rounds[i] < REPS {
            *complete = false;
        }
        if best[i].iter().all(Option::is_none) {
            rows.push(row(i, "-", None, "budget spent"));
            continue;
        }
        for ((shape, _), t) in f.shapes.iter().zip(&best[i]) {
            rows.push(row(i, shape, t.map(|t| t * 1e3), if t.is_none() { "budget spent" } else { "" }));
        }
        if let Some(total) = best[i].iter().copied().sum::<Option<f64>>() {
            let note = match rounds[i] {
                r if r >= REPS => String::new(),
                1 => "1 run".to_string(),
                r => format!("{r} runs"),
            };
            rows.push(row(i, "all shapes", Some(total * 1e3), &note));
            totals.push((i, total, rows.len() - 1));
        }
    }
    let builtin = totals.iter().find(|t| t.0 == 0).copied();
    let fastest = totals.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1));
    let chosen = match (builtin, fastest) {
        (Some(b), Some(f)) if f.1 < b.1 * (1.0 - MARGIN) => Some(f),
        (Some(b), _) => Some(b),
        _ => None, // the builtin itself was not timed: keep it
    };
    match chosen {
        Some((i, _, r)) => {
            rows[r].chosen = true;
            f.candidates[i]
        }
        None => {
            rows.push(TuneRow { chosen: true, ..row(0, "-", None, "kept: not timed within the budget") });
            f.candidates[0]
        }
    }
}

/// Seconds of one run of `record`: the sum of its dispatches' GPU times where the adapter has
/// timestamps, else the wall clock around submit and wait.
fn time(gpu: &Gpu, record: &dyn Fn(&Gpu, &mut Encoder)) -> f64 {
    if gpu.has_timestamps {
        let mut enc = gpu.timed_encoder(64);
        record(gpu, &mut enc);
        if let Some(t) = gpu.submit_timed(enc) {
            return t.dispatches.iter().map(|d| d.1).sum();
        }
    }
    let start = Instant::now();
    let mut enc = gpu.encoder();
    record(gpu, &mut enc);
    gpu.submit(enc);
    gpu.wait();
    start.elapsed().as_secs_f64()
}

/// `Err` naming `what` when `got` is not within `tol` of `want` (the tests' closeness rule).
fn close(what: &str, got: &[f32], want: &[f64], tol: f64) -> Result<(), String> {
    let (err, i) = max_rel_error(&to_f64(got), want);
    (err <= tol).then_some(()).ok_or_else(|| format!("{what}: relative error {err:.1e} at {i}"))
}

/// `start + g`, what a backward kernel that adds `g` into `start` should leave.
fn plus(g: &[f64], start: &[f32]) -> Vec<f64> {
    g.iter().zip(start).map(|(g, &s)| g + s as f64).collect()
}

fn shape_label(s: &[usize]) -> String {
    s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

/// The three conv2d families: `kernel` says which of the three kernels a candidate tiles.
fn conv2d_family<'a>(
    gpu: &'a Gpu,
    kernel: &'static str,
    candidates: Vec<conv2d::Tiling>,
    shapes: &[[usize; 4]],
) -> Family<'a, conv2d::Tiling> {
    let label: fn(&conv2d::Tiling) -> String = match kernel {
        "conv2d_forward" => label_forward,
        "conv2d_backward_data" => label_data,
        _ => label_weight,
    };
    let p = Conv2d::new(1, 1);
    // The check: W a multiple of 4 (the vec4 paths the U-Net takes) and 7 output channels (a
    // partly empty block of 8).
    let (xd, wd) = ([2, 5, 6, 12], [7, 5, 3, 3]);
    let (x, w, b) = (random_vec(1, 2 * 5 * 6 * 12), random_vec(2, 7 * 5 * 9), random_vec(3, 7));
    let (dy, start) = (random_vec(4, 2 * 7 * 6 * 12), random_vec(5, 2 * 5 * 6 * 12));
    let check = move |gpu: &Gpu, t: &conv2d::Tiling| -> Result<(), String> {
        let yd = [2, 7, 6, 12];
        let (xf, wf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&dy));
        let (xt, wt, bt, dyt) = (gpu.upload(&x, &xd), gpu.upload(&w, &wd), gpu.upload(&b, &[7]), gpu.upload(&dy, &yd));
        let mut enc = gpu.encoder();
        match kernel {
            "conv2d_forward" => {
                let y = gpu.empty(&yd);
                conv2d_forward_tiled(gpu, &mut enc, &xt, &wt, Some(&bt), &y, p, Epilogue::Identity, t);
                gpu.submit(enc);
                let want = conv2d::reference::conv2d_forward(&xf, xd, &wf, wd, Some(&to_f64(&b)), &p);
                close("y", &gpu.read(&y), &want, 1e-4)
            }
            "conv2d_backward_data" => {
                let dx = gpu.upload(&start, &xd);
                conv2d_backward_data_tiled(gpu, &mut enc, &dyt, &wt, &dx, p, t);
                gpu.submit(enc);
                let want = plus(&conv2d::reference::conv2d_backward_data(&dyf, &wf, xd, wd, &p), &start);
                close("dx", &gpu.read(&dx), &want, 1e-3)
            }
            _ => {
                let (dw, db) = (gpu.upload(&start[..w.len()], &wd), gpu.upload(&start[..7], &[7]));
                conv2d_backward_weight_tiled(gpu, &mut enc, &xt, &dyt, &dw, Some(&db), p, t);
                gpu.submit(enc);
                let (want_dw, want_db) = conv2d::reference::conv2d_backward_weight(&xf, &dyf, xd, wd, &p);
                close("dw", &gpu.read(&dw), &plus(&want_dw, &start), 1e-3)?;
                close("db", &gpu.read(&db), &plus(&want_db, &start), 1e-3)
            }
        }
    };
    let shapes = shapes
        .iter()
        .map(|&xd| {
            let [n, c, h, wd] = xd;
            let (x, w) =
                (gpu.upload(&random_vec(6, n * c * h * wd), &xd), gpu.upload(&random_vec(7, c * c * 9), &[c, c, 3, 3]));
            let (b, y, dy) =
                (gpu.upload(&random_vec(8, c), &[c]), gpu.empty(&xd), gpu.upload(&random_vec(9, x.len()), &xd));
            let (dx, dw, db) = (
                gpu.upload(&random_vec(10, x.len()), &xd),
                gpu.upload(&random_vec(11, w.len()), &[c, c, 3, 3]),
                gpu.upload(&random_vec(12, c), &[c]),
            );
            let record: Record<conv2d::Tiling> = match kernel {
                "conv2d_forward" => Box::new(move |gpu, enc, t| {
                    conv2d_forward_tiled(gpu, enc, &x, &w, Some(&b), &y, p, Epilogue::Relu, t)
                }),
                "conv2d_backward_data" => {
                    Box::new(move |gpu, enc, t| conv2d_backward_data_tiled(gpu, enc, &dy, &w, &dx, p, t))
                }
                _ => Box::new(move |gpu, enc, t| conv2d_backward_weight_tiled(gpu, enc, &x, &dy, &dw, Some(&db), p, t)),
            };
            (shape_label(&xd), record)
        })
        .collect();
    Family { kernel, candidates, label, check: Box::new(check), shapes }
}

fn conv_transpose2d_family<'a>(
    gpu: &'a Gpu,
    candidates: Vec<Workgroups>,
    shapes: &[[usize; 4]],
) -> Family<'a, Workgroups> {
    use conv_transpose2d::reference;
    let check = |gpu: &Gpu, wg: &Workgroups| -> Result<(), String> {
        // W = 8 takes the quad kernels, W = 5 the general ones; both need checking.
        for (seed, dims, co) in [(20, [2, 6, 3, 8], 5), (30, [1, 3, 3, 5], 4)] {
            let [n, ci, h, wd] = dims;
            let big = [n, co, 2 * h, 2 * wd];
            let (x, w, b) =
                (random_vec(seed, n * ci * h * wd), random_vec(seed + 1, ci * co * 4), random_vec(seed + 2, co));
            let dy = random_vec(seed + 3, big.iter().product());
            let start = random_vec(seed + 4, x.len().max(w.len()));
            let (xt, wt, bt, dyt) =
                (gpu.upload(&x, &dims), gpu.upload(&w, &[ci, co, 2, 2]), gpu.upload(&b, &[co]), gpu.upload(&dy, &big));
            let (y, dx) = (gpu.empty(&big), gpu.upload(&start[..x.len()], &dims));
            let (dw, db) = (gpu.upload(&start[..w.len()], &[ci, co, 2, 2]), gpu.upload(&start[..co], &[co]));
            let mut enc = gpu.encoder();
            conv_transpose2d_forward_tiled(gpu, &mut enc, &xt, &wt, Some(&bt), &y, wg);
            conv_transpose2d_backward_data_tiled(gpu, &mut enc, &wt, &dyt, &dx, wg);
            conv_transpose2d_backward_weight_tiled(gpu, &mut enc, &xt, &dyt, &dw, Some(&db), wg);
            gpu.submit(enc);
            let (xf, wf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&dy));
            let want_y = reference::conv_transpose2d_forward(&xf, &wf, Some(&to_f64(&b)), dims, co);
            close("y", &gpu.read(&y), &want_y, 1e-4)?;
            let want_dx = reference::conv_transpose2d_backward_data(&dyf, &wf, dims, co);
            close("dx", &gpu.read(&dx), &plus(&want_dx, &start), 1e-3)?;
            let (want_dw, want_db) = reference::conv_transpose2d_backward_weight(&xf, &dyf, dims, co);
            close("dw", &gpu.read(&dw), &plus(&want_dw, &start), 1e-3)?;
            close("db", &gpu.read(&db), &plus(&want_db, &start), 1e-3)?;
        }
        Ok(())
    };
    let shapes = shapes
        .iter()
        .map(|&xd| {
            let [n, c, h, wd] = xd;
            let co = (c / 2).max(1);
            let big = [n, co, 2 * h, 2 * wd];
            let (x, w) = (
                gpu.upload(&random_vec(21, n * c * h * wd), &xd),
                gpu.upload(&random_vec(22, c * co * 4), &[c, co, 2, 2]),
            );
            let (b, y) = (gpu.upload(&random_vec(23, co), &[co]), gpu.empty(&big));
            let dy = gpu.upload(&random_vec(24, big.iter().product()), &big);
            let (dx, dw, db) = (
                gpu.upload(&random_vec(25, x.len()), &xd),
                gpu.upload(&random_vec(26, w.len()), &[c, co, 2, 2]),
                gpu.upload(&random_vec(27, co), &[co]),
            );
            let record: Record<Workgroups> = Box::new(move |gpu, enc, wg| {
                conv_transpose2d_forward_tiled(gpu, enc, &x, &w, Some(&b), &y, wg);
                conv_transpose2d_backward_data_tiled(gpu, enc, &w, &dy, &dx, wg);
                conv_transpose2d_backward_weight_tiled(gpu, enc, &x, &dy, &dw, Some(&db), wg);
            });
            (format!("{} fwd+bwd", shape_label(&xd)), record)
        })
        .collect();
    Family { kernel: "conv_transpose2d", candidates, label: label_workgroups, check: Box::new(check), shapes }
}

fn matmul_family<'a>(gpu: &'a Gpu, candidates: Vec<Tiles>, shapes: &[[usize; 3]]) -> Family<'a, Tiles> {
    let check = |gpu: &Gpu, tiles: &Tiles| -> Result<(), String> {
        // Multiples of 4 (the vec4 kernel, partial tiles) and not (the scalar one).
        for (seed, [m, k, n]) in [(40, [20, 36, 44]), (50, [13, 37, 21])] {
            let (a, b) = (random_vec(seed, m * k), random_vec(seed + 1, k * n));
            let (at, bt, c) = (gpu.upload(&a, &[m, k]), gpu.upload(&b, &[k, n]), gpu.empty(&[m, n]));
            let mut enc = gpu.encoder();
            matmul_forward_tiled(gpu, &mut enc, &at, &bt, &c, tiles);
            gpu.submit(enc);
            let want = matmul::reference::matmul_forward(&to_f64(&a), &to_f64(&b), [m, k, n]);
            close(&format!("c {m}x{k}x{n}"), &gpu.read(&c), &want, 1e-4)?;
        }
        Ok(())
    };
    let shapes = shapes
        .iter()
        .map(|&[m, k, n]| {
            let (a, b, c) = (
                gpu.upload(&random_vec(41, m * k), &[m, k]),
                gpu.upload(&random_vec(42, k * n), &[k, n]),
                gpu.empty(&[m, n]),
            );
            let record: Record<Tiles> =
                Box::new(move |gpu, enc, tiles| matmul_forward_tiled(gpu, enc, &a, &b, &c, tiles));
            (format!("{m}x{k}x{n}"), record)
        })
        .collect();
    Family { kernel: "matmul", candidates, label: label_tiles, check: Box::new(check), shapes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv2d::{conv2d_backward_data, conv2d_backward_weight, conv2d_forward};
    use crate::ops::conv_transpose2d::conv_transpose2d_forward;
    use crate::ops::matmul::matmul_forward;
    use crate::runtime::GpuOptions;
    use crate::testing::{assert_close_f32, gpu};

    /// A fresh folder under the system's temp dir for one test.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("unet-wgpu-tuning-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn cpu_info() -> wgpu::AdapterInfo {
        let mut info = wgpu::AdapterInfo::new(wgpu::DeviceType::Cpu, wgpu::Backend::Vulkan);
        info.name = "llvmpipe (LLVM 15.0.6, 256 bits)".into();
        info.driver = "llvmpipe".into();
        info.driver_info = "Mesa 22.3.6 (LLVM 15.0.6)".into();
        info
    }

    /// A tuning that differs from the builtin in every field.
    fn unusual() -> Tuning {
        Tuning {
            conv2d_forward: conv2d::Tiling { wg: 32, rows: 2, tm: 4, bw_threads: 512 },
            conv2d_backward_data: conv2d::Tiling { wg: 128, rows: 4, tm: 2, bw_threads: 512 },
            conv2d_backward_weight: conv2d::Tiling { wg: 16, rows: 4, tm: 4, bw_threads: 96 },
            conv_transpose2d: Workgroups { general: 48, quads: 8 },
            matmul: Tiles::Shared(SharedTiling { tx: 8, ty: 4, sm: 3, sn: 2, bk: 16 }),
        }
    }

    #[test]
    fn builtin_keeps_the_measured_defaults_on_cpu_drivers() {
        let cpu = cpu_info();
        assert_eq!(Tuning::builtin(&cpu), Tuning::cpu());
        let gl = wgpu::AdapterInfo { device_type: wgpu::DeviceType::Other, backend: wgpu::Backend::Gl, ..cpu.clone() };
        assert_eq!(Tuning::builtin(&gl), Tuning::cpu(), "llvmpipe by name");
        let gpu = wgpu::AdapterInfo { name: "NVIDIA H100".into(), device_type: wgpu::DeviceType::DiscreteGpu, ..cpu };
        let t = Tuning::builtin(&gpu);
        assert!(t.conv2d_forward.wg > Tuning::cpu().conv2d_forward.wg && matches!(t.matmul, Tiles::Shared(_)));
        // 2-row convolution tiles where registers are scarce; 4 rows on the CPU driver.
        assert_eq!((t.conv2d_forward.rows, t.conv2d_backward_data.rows, Tuning::cpu().conv2d_forward.rows), (2, 2, 4));
        for info in [gpu, cpu_info()] {
            Tuning::builtin(&info).check(&wgpu::Limits::default()).unwrap();
        }
    }

    #[test]
    fn a_builtin_that_does_not_fit_the_limits_falls_back_with_a_warning() {
        let gpu =
            wgpu::AdapterInfo { name: "Small GPU".into(), device_type: wgpu::DeviceType::IntegratedGpu, ..cpu_info() };
        let small = wgpu::Limits { max_compute_invocations_per_workgroup: 64, ..wgpu::Limits::default() };
        let r = resolve(&gpu, &small, &TuningFrom::Builtin);
        assert_eq!(r.tuning, Tuning::cpu());
        r.tuning.check(&small).unwrap();
        let warning = r.warning.expect("a warning");
        assert!(warning.contains("Small GPU") && warning.contains("the adapter allows 64"), "{warning}");
        let fits = resolve(&gpu, &wgpu::Limits::default(), &TuningFrom::Builtin);
        assert_eq!((fits.tuning, fits.warning), (Tuning::builtin(&gpu), None));
    }

    #[test]
    fn cache_paths_follow_the_variables() {
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(cache_path_from(s("/c/t.json"), s("/x"), s("/h")), Some(PathBuf::from("/c/t.json")));
        assert_eq!(cache_path_from(s(""), s("/x"), s("/h")), Some(PathBuf::from("/x/unet-wgpu/tuning.json")));
        assert_eq!(cache_path_from(None, None, s("/h")), Some(PathBuf::from("/h/.cache/unet-wgpu/tuning.json")));
        assert_eq!(cache_path_from(None, s(""), None), None);
    }

    #[test]
    fn cache_round_trips_per_adapter() {
        let dir = temp_dir("round-trip");
        let path = dir.join("nested/tuning.json");
        let limits = wgpu::Limits::default();
        let key = AdapterKey::of(&cpu_info());
        let other = AdapterKey { driver_info: "Mesa 23.0.0".into(), ..key.clone() };
        assert_eq!(load_cache(&path, &key, &limits).unwrap(), None, "no file: no entry");
        save_cache(&path, &key, &unusual(), "test").unwrap();
        assert_eq!(load_cache(&path, &key, &limits).unwrap(), Some(unusual()));
        assert_eq!(load_cache(&path, &other, &limits).unwrap(), None, "another driver version must not match");
        // A second adapter's entry joins the first; rewriting the first replaces it.
        let register = Tuning { matmul: Tiles::Register(matmul::Tiling { wg: 8, tm: 4, tn: 12 }), ..unusual() };
        save_cache(&path, &other, &register, "test").unwrap();
        save_cache(&path, &key, &Tuning::cpu(), "test").unwrap();
        assert_eq!(load_cache(&path, &key, &limits).unwrap(), Some(Tuning::cpu()));
        assert_eq!(load_cache(&path, &other, &limits).unwrap(), Some(register));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("\"driver_info\"").count(), 2, "one entry per adapter:\n{text}");
        assert!(std::fs::read_dir(path.parent().unwrap()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp-")));
        // resolve() reads it for the matching adapter, reports where from.
        let r = resolve(&cpu_info(), &limits, &TuningFrom::Cache(path.clone()));
        assert_eq!((r.tuning, r.source, r.warning), (Tuning::cpu(), TuningSource::Cache(path.clone()), None));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unusable_caches_give_the_builtin_with_a_warning() {
        let dir = temp_dir("corrupt");
        let limits = wgpu::Limits::default();
        let key = AdapterKey::of(&cpu_info());
        let good = dir.join("good.json");
        save_cache(&good, &key, &unusual(), "test").unwrap();
        let text = std::fs::read_to_string(&good).unwrap();
        let too_big = text.replacen("\"wg\": 32", "\"wg\": 100000", 1);
        assert_ne!(too_big, text);
        let cases = [
            ("garbage", "{ not json".to_string()),
            ("truncated", text[..text.len() / 2].to_string()),
            ("foreign version", text.replace(&format!("\"version\": {CACHE_VERSION}"), "\"version\": 1")),
            ("not a cache", "{\"adapters\": []}".to_string()),
            ("missing field", text.replace("\"bw_threads\"", "\"threads\"")),
            ("rows out of range", text.replacen("\"rows\": 2", "\"rows\": 3", 1)),
            ("workgroup over the limit", too_big),
        ];
        for (what, contents) in cases {
            let path = dir.join(format!("{}.json", what.replace(' ', "-")));
            std::fs::write(&path, contents).unwrap();
            assert!(load_cache(&path, &key, &limits).is_err(), "{what}: load_cache should fail");
            let r = resolve(&cpu_info(), &limits, &TuningFrom::Cache(path.clone()));
            assert_eq!(r.tuning, Tuning::cpu(), "{what}");
            assert_eq!(r.source, TuningSource::Builtin { cache: Some(path.clone()) }, "{what}");
            let warning = r.warning.unwrap_or_else(|| panic!("{what}: no warning"));
            assert!(
                warning.contains(&path.display().to_string()) && warning.contains("unet-wgpu tune"),
                "{what}: {warning}"
            );
        }
        // A whole Gpu opens on a corrupt cache, with the builtin tuning; `tune` can overwrite it.
        let corrupt = dir.join("garbage.json");
        let gpu = Gpu::new(&GpuOptions { tuning: TuningFrom::Cache(corrupt.clone()), ..Default::default() }).unwrap();
        assert_eq!(gpu.tuning(), Tuning::builtin(&gpu.info));
        assert_eq!(gpu.tuning_source(), TuningSource::Builtin { cache: Some(corrupt.clone()) });
        save_cache(&corrupt, &AdapterKey::of(&gpu.info), &unusual(), "test").unwrap();
        assert_eq!(load_cache(&corrupt, &AdapterKey::of(&gpu.info), &gpu.limits).unwrap(), Some(unusual()));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn default_wrappers_use_the_gpus_tuning() {
        // A Gpu of its own: its pipeline cache holds only what this test compiles.
        let gpu = Gpu::new(&GpuOptions { tuning: TuningFrom::Builtin, ..Default::default() }).unwrap();
        let t = unusual();
        assert_ne!(t, gpu.tuning());
        gpu.set_tuning(t);
        assert_eq!((gpu.tuning(), gpu.tuning_source()), (t, TuningSource::Set));

        // Images of 128 output tiles (2 x 8 x 8 of 4 rows x 8 columns): the convolutions'
        // workgroups shrink to the tiles an image has, and these have enough for 128 threads.
        let p = Conv2d::new(1, 1);
        let (xd, wd, yd) = ([2, 3, 32, 64], [4, 3, 3, 3], [2, 4, 32, 64]);
        let (x, w, dy) = (random_vec(60, 2 * 3 * 2048), random_vec(61, 4 * 3 * 9), random_vec(62, 2 * 4 * 2048));
        let (xt, wt, dyt) = (gpu.upload(&x, &xd), gpu.upload(&w, &wd), gpu.upload(&dy, &yd));
        let (y, dx, dw) = (gpu.empty(&yd), gpu.empty(&xd), gpu.empty(&wd));
        let (ct_x, ct_w, ct_y) = (
            gpu.upload(&x[..240], &[2, 3, 5, 8]),
            gpu.upload(&w[..3 * 2 * 4], &[3, 2, 2, 2]),
            gpu.empty(&[2, 2, 10, 16]),
        );
        let (a, b, c) = (gpu.upload(&x[..12 * 8], &[12, 8]), gpu.upload(&w[..8 * 4], &[8, 4]), gpu.empty(&[12, 4]));
        let mut enc = gpu.encoder();
        enc.clear(&dx);
        enc.clear(&dw);
        conv2d_forward(&gpu, &mut enc, &xt, &wt, None, &y, p);
        conv2d_backward_data(&gpu, &mut enc, &dyt, &wt, &dx, p);
        conv2d_backward_weight(&gpu, &mut enc, &xt, &dyt, &dw, None, p);
        conv_transpose2d_forward(&gpu, &mut enc, &ct_x, &ct_w, None, &ct_y);
        matmul_forward(&gpu, &mut enc, &a, &b, &c);
        gpu.submit(enc);

        let (xf, wf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&dy));
        assert_close_f32("y", &gpu.read(&y), &conv2d::reference::conv2d_forward(&xf, xd, &wf, wd, None, &p), 1e-4);
        assert_close_f32("dx", &gpu.read(&dx), &conv2d::reference::conv2d_backward_data(&dyf, &wf, xd, wd, &p), 1e-3);
        assert_close_f32(
            "dw",
            &gpu.read(&dw),
            &conv2d::reference::conv2d_backward_weight(&xf, &dyf, xd, wd, &p).0,
            1e-3,
        );
        let want = conv_transpose2d::reference::conv_transpose2d_forward(&xf[..240], &wf[..24], None, [2, 3, 5, 8], 2);
        assert_close_f32("conv_transpose2d y", &gpu.read(&ct_y), &want, 1e-4);
        let want = matmul::reference::matmul_forward(&xf[..96], &wf[..32], [12, 8, 4]);
        assert_close_f32("matmul c", &gpu.read(&c), &want, 1e-4);

        // Each kernel was compiled with the tuning's constants, and only with those.
        let wg_of = |shader: &str, entry: &str, name: &str| -> Vec<f64> {
            let all = gpu.compiled_constants(shader, entry);
            assert!(!all.is_empty(), "{shader}::{entry} was not compiled");
            all.iter().map(|c| c.iter().find(|(k, _)| *k == name).expect("constant").1).collect()
        };
        assert_eq!(wg_of("conv2d", "conv2d_forward", "WG"), [32.0]);
        assert_eq!(wg_of("conv2d", "conv2d_forward", "ROWS"), [2.0]);
        assert_eq!(wg_of("conv2d", "conv2d_backward_data_stride1", "WG"), [128.0]);
        assert_eq!(wg_of("conv2d", "conv2d_backward_data_stride1", "ROWS"), [4.0]);
        assert_eq!(wg_of("conv2d", "conv2d_backward_data_stride1", "TM"), [2.0]);
        assert_eq!(wg_of("conv2d", "conv2d_backward_weight", "WG"), [16.0]);
        assert_eq!(wg_of("conv_transpose2d", "conv_transpose2d_forward_quads", "WG"), [8.0]);
        assert_eq!(wg_of("matmul", "matmul_forward_shared", "BK"), [16.0]);
        assert!(gpu.compiled_constants("matmul", "matmul_forward").is_empty(), "the register GEMM ran");
    }

    #[test]
    fn autotune_chooses_from_the_candidates_within_the_budget() {
        let gpu = gpu();
        let builtin = Tuning::builtin(&gpu.info);
        let candidates = Candidates::new(&builtin, &gpu.limits);
        let shapes =
            TuneShapes { conv2d: vec![[1, 8, 8, 8]], conv_transpose2d: vec![[1, 8, 4, 4]], matmul: vec![[16, 16, 16]] };

        // No budget: nothing is timed, the builtin stays.
        let (t, report) = Tuning::autotune_on(gpu, Duration::ZERO, &shapes);
        assert_eq!(t, builtin);
        assert!(!report.complete && report.rows.iter().all(|r| r.ms.is_none()), "{}", report.table());
        assert_eq!(report.rows.iter().filter(|r| r.chosen).count(), 5, "{}", report.table());

        // A small budget: every builtin is timed (however slow the machine: compiling a
        // candidate's pipelines counts against the budget, and a loaded machine once compiled
        // nothing else in 6 s), and every choice is one of the candidates.
        let budget = Duration::from_secs(6);
        let (t, report) = Tuning::autotune_on(gpu, budget, &shapes);
        let table = report.table();
        // A guard against a runaway, not a timing: the builtins' rounds may run past the budget.
        assert!(report.elapsed < budget + Duration::from_secs(120), "overran the budget:\n{table}");
        for family in ["conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight", "conv_transpose2d", "matmul"]
        {
            let builtin = report.rows.iter().find(|r| r.kernel == family).expect("a row per family");
            assert!(builtin.ms.is_some(), "the builtin of {family} was not timed:\n{table}");
        }
        assert_eq!(report.rows.iter().filter(|r| r.chosen).count(), 5, "one choice per family:\n{table}");
        assert!(candidates.conv2d_forward.contains(&t.conv2d_forward), "{t:?}");
        assert!(candidates.conv2d_backward_data.contains(&t.conv2d_backward_data), "{t:?}");
        assert!(candidates.conv2d_backward_weight.contains(&t.conv2d_backward_weight), "{t:?}");
        assert!(candidates.conv_transpose2d.contains(&t.conv_transpose2d), "{t:?}");
        assert!(candidates.matmul.contains(&t.matmul), "{t:?}");
        t.check(&gpu.limits).unwrap();
        for r in report.rows.iter().filter(|r| r.chosen) {
            let family = &t.to_string();
            assert!(family.contains(r.candidate.trim_end_matches(" (builtin)")), "{r:?} not in {family}");
        }

        // The chosen forward tiling computes the convolution.
        let (xd, wd, p) = ([2, 5, 7, 12], [6, 5, 3, 3], Conv2d::new(1, 1));
        let (x, w) = (random_vec(70, 2 * 5 * 84), random_vec(71, 6 * 5 * 9));
        let (xt, wt, y) = (gpu.upload(&x, &xd), gpu.upload(&w, &wd), gpu.empty(&[2, 6, 7, 12]));
        let mut enc = gpu.encoder();
        conv2d_forward_tiled(gpu, &mut enc, &xt, &wt, None, &y, p, Epilogue::Identity, &t.conv2d_forward);
        gpu.submit(enc);
        let want = conv2d::reference::conv2d_forward(&to_f64(&x), xd, &to_f64(&w), wd, None, &p);
        assert_close_f32("y with the chosen tiling", &gpu.read(&y), &want, 1e-4);
    }

    #[test]
    fn a_candidate_with_wrong_output_is_never_chosen() {
        // Candidates are GEMM sizes: the smaller, the faster. Size 8 is the fastest but fails
        // its check; 64 beats the builtin (256) by far more than the margin.
        let gpu = gpu();
        let [a, b, c] = [256, 8, 64].map(|n| {
            (
                gpu.upload(&random_vec(80, n * n), &[n, n]),
                gpu.upload(&random_vec(81, n * n), &[n, n]),
                gpu.empty(&[n, n]),
            )
        });
        let family = Family {
            kernel: "test",
            candidates: vec![0usize, 1, 2],
            label: |i: &usize| format!("candidate {i}"),
            check: Box::new(|_: &Gpu, i: &usize| if *i == 1 { Err("differs".into()) } else { Ok(()) }),
            shapes: vec![(
                "gemm".into(),
                Box::new(move |gpu: &Gpu, enc: &mut Encoder, i: &usize| {
                    let (x, y, z) = [&a, &b, &c][*i];
                    matmul_forward_tiled(gpu, enc, x, y, z, &Tiles::default());
                }),
            )],
        };
        let (mut rows, mut complete) = (Vec::new(), true);
        let chosen =
            tune_family(gpu, family, (Instant::now() + Duration::from_secs(60), false), &mut rows, &mut complete);
        let table: Vec<String> = rows.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(chosen, 2, "{table:#?}");
        assert!(complete, "{table:#?}");
        let wrong: Vec<_> = rows.iter().filter(|r| r.note.starts_with("wrong output")).collect();
        assert!(wrong.len() == 1 && wrong[0].candidate == "candidate 1" && wrong[0].ms.is_none(), "{table:#?}");
        let chosen_rows: Vec<_> = rows.iter().filter(|r| r.chosen).collect();
        assert!(chosen_rows.len() == 1 && chosen_rows[0].candidate == "candidate 2", "{table:#?}");
    }

    #[test]
    fn candidates_start_with_the_builtin_and_fit_the_adapter() {
        let limits = wgpu::Limits::default();
        for t in [
            Tuning::cpu(),
            Tuning::builtin(&wgpu::AdapterInfo {
                device_type: wgpu::DeviceType::DiscreteGpu,
                name: "gpu".into(),
                ..cpu_info()
            }),
        ] {
            let c = Candidates::new(&t, &limits);
            assert_eq!(
                (
                    c.conv2d_forward[0],
                    c.conv2d_backward_data[0],
                    c.conv2d_backward_weight[0],
                    c.conv_transpose2d[0],
                    c.matmul[0]
                ),
                (t.conv2d_forward, t.conv2d_backward_data, t.conv2d_backward_weight, t.conv_transpose2d, t.matmul)
            );
            assert!(c.conv2d_forward.len() > 1 && c.matmul.len() > 1);
            let small = wgpu::Limits {
                max_compute_invocations_per_workgroup: 64,
                max_compute_workgroup_size_x: 64,
                ..limits.clone()
            };
            let c = Candidates::new(&Tuning::cpu(), &small);
            assert!(c.conv2d_forward.iter().all(|t| t.wg <= 64), "{c:?}");
            assert!(!c.matmul.contains(&Tiles::Shared(SharedTiling::default())), "256 threads over the limit: {c:?}");
        }
    }
}
