//! Where the tuning comes from: the cache file's entry for this adapter, else the builtin.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;

use super::tiling::gemm::TilingFamily;
use super::tiling::Tuning;
// The cache file (files, environment, JSON): native only. A web page uses the builtin.
#[cfg(not(target_arch = "wasm32"))]
use {
    super::tiling::conv2d,
    super::tiling::conv_transpose2d::Workgroups,
    super::tiling::gemm::{ConvGemm, Gemm},
    super::tiling::matmul::{self, SharedTiling, Tiles},
    serde_json::{json, Map, Value},
    std::ffi::OsString,
    std::path::Path,
};

/// Where [`Gpu::new`](crate::runtime::Gpu::new) should take the tuning from ([`crate::GpuOptions::tuning`]).
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
    /// The builtin of a family named by `--tiling` (or `UNET_WGPU_TILING`); no cache is read.
    Family(TilingFamily),
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
            TuningSource::Family(family) => write!(f, "builtin of the {family} family (--tiling {family})"),
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

    #[cfg(not(target_arch = "wasm32"))]
    const FIELDS: [&'static str; 4] = ["name", "driver", "driver_info", "backend"];

    #[cfg(not(target_arch = "wasm32"))]
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
/// convolutions' tilings have `rows` (version 1's sizes were measured with 2-row tiles). 3:
/// `conv_gemm` (version 2 was tuned without the GEMM convolutions among the candidates).
pub const CACHE_VERSION: u64 = 3;
/// The `format` field of a cache file.
#[cfg(not(target_arch = "wasm32"))]
const CACHE_FORMAT: &str = "unet-wgpu tuning cache";

/// `$UNET_WGPU_CACHE`, else `$XDG_CACHE_HOME/unet-wgpu/tuning.json`, else
/// `$HOME/.cache/unet-wgpu/tuning.json` (empty variables count as unset); `None` without any.
#[cfg(not(target_arch = "wasm32"))]
pub fn default_cache_path() -> Option<PathBuf> {
    cache_path_from(std::env::var_os("UNET_WGPU_CACHE"), std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

/// [`default_cache_path`] from the values of its three variables.
#[cfg(not(target_arch = "wasm32"))]
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
#[cfg(not(target_arch = "wasm32"))]
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

/// A web page has no files: [`Tuning::builtin`] (within the device's limits), no cache read.
#[cfg(target_arch = "wasm32")]
pub fn resolve(info: &wgpu::AdapterInfo, limits: &wgpu::Limits, _from: &TuningFrom) -> Resolved {
    let (tuning, warning) = builtin_within(info, limits);
    Resolved { tuning, source: TuningSource::Builtin { cache: None }, warning }
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

/// [`resolve`], or the builtin of `family` when one is named, printing its warning to stderr
/// once per process.
pub(crate) fn initial(
    info: &wgpu::AdapterInfo,
    limits: &wgpu::Limits,
    from: &TuningFrom,
    family: Option<TilingFamily>,
) -> (Tuning, TuningSource) {
    static WARNED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let r = match family {
        None => resolve(info, limits, from),
        Some(family) => match Tuning::of_family(family).check(limits) {
            Ok(()) => Resolved { tuning: Tuning::of_family(family), source: TuningSource::Family(family), warning: None },
            Err(why) => Resolved {
                tuning: Tuning::cpu(),
                source: TuningSource::Family(TilingFamily::Cpu),
                warning: Some(format!(
                    "warning: the {family} family's tile sizes do not fit the device's limits ({why}); using the cpu family's"
                )),
            },
        },
    };
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
#[cfg(not(target_arch = "wasm32"))]
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
#[cfg(not(target_arch = "wasm32"))]
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
    crate::files::write_atomically(path, (text + "\n").as_bytes()).map_err(|e| io(format!("{}: {e}", path.display())))
}

/// The adapter entries of a cache file; `None` when the file does not exist.
#[cfg(not(target_arch = "wasm32"))]
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
#[cfg(not(target_arch = "wasm32"))]
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

#[cfg(not(target_arch = "wasm32"))]
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
        "conv_gemm": gemm_to_json(&t.conv_gemm),
    })
}

#[cfg(not(target_arch = "wasm32"))]
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
        conv_gemm: gemm_from_json(v.get("conv_gemm"))?,
    })
}

/// `null`, or `{"conv2d_forward": {"bm": .., "bn": .., "bk": .., "tm": .., "tn": ..}, ...}`.
#[cfg(not(target_arch = "wasm32"))]
fn gemm_to_json(g: &Option<ConvGemm>) -> Value {
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

/// The inverse of [`gemm_to_json`].
#[cfg(not(target_arch = "wasm32"))]
fn gemm_from_json(v: Option<&Value>) -> Result<Option<ConvGemm>, String> {
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
