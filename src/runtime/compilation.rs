//! How a compute pipeline is compiled on each backend ([`options`]), and the log of what a run
//! compiled ([`record`]).
//!
//! `UNET_WGPU_PIPELINE_LOG=FILE`: a line appended to FILE for each compute pipeline a
//! [`crate::Gpu`] compiles, so that a run can say what it compiled on which backend (CI's GL step
//! counts the shaders and entry points its tests reached this way). Five fields, separated by
//! tabs: the backend, the shader (its path in `shaders/`, without `.wgsl`), the entry point, the override
//! constants (`-` for none), and the seconds `create_compute_pipeline` took:
//!
//! ```text
//! Gl  conv2d/shared  conv2d_forward_shared  TX=16,TY=16,SM=4,SN=4,BK=8,KH=3,KW=3,SH=1,SW=1  0.022
//! ```
//!
//! Drivers differ in when they compile: a GPU driver mostly at creation; Mesa's software drivers
//! (lavapipe, llvmpipe) at the first dispatch, so there the figure is small and the cost shows in
//! the first submit instead.

#[cfg(not(target_arch = "wasm32"))]
use {std::fs::OpenOptions, std::io::Write, std::sync::Once};

/// The compilation options of a pipeline on `backend`: its override constants, and whether wgpu
/// zeroes its workgroup memory before it runs (WGSL's rule). Not on GL: there naga zeroes each
/// workgroup array with one constructor of all its elements (`float[2048](0.0, 0.0, ...)` for the
/// shared tiles), and llvmpipe's GL driver spends minutes of LLVM time compiling each such kernel
/// (`docs/performance.md`, "On the GL backend"). No kernel needs the zeroes: each writes every
/// workgroup cell it reads before the barrier that precedes the read (the GL tests check every
/// such kernel against its reference). Elsewhere the zeroing stays (Vulkan 1.3 drivers do it
/// themselves, at no compile cost).
pub(crate) fn options<'a>(
    backend: wgpu::Backend,
    constants: &'a [(&'a str, f64)],
) -> wgpu::PipelineCompilationOptions<'a> {
    wgpu::PipelineCompilationOptions { constants, zero_initialize_workgroup_memory: backend != wgpu::Backend::Gl }
}

/// The environment variable that names the log file.
pub const VAR: &str = "UNET_WGPU_PIPELINE_LOG";

/// Appends one pipeline's line to the file `UNET_WGPU_PIPELINE_LOG` names; nothing when it is
/// unset. A file that cannot be written gets one warning per process, and the run goes on.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn record(backend: wgpu::Backend, shader: &str, entry: &str, constants: &[(&str, f64)], seconds: f64) {
    let Some(path) = std::env::var_os(VAR).filter(|p| !p.is_empty()) else { return };
    let constants = if constants.is_empty() {
        "-".to_string()
    } else {
        constants.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    };
    let line = format!("{backend:?}\t{shader}\t{entry}\t{constants}\t{seconds:.3}\n");
    // One write of one short line to a file opened for appending: lines from test threads that
    // compile at the same time do not interleave.
    let written =
        OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        static WARNED: Once = Once::new();
        WARNED.call_once(|| {
            eprintln!("warning: cannot append to {} ({VAR}): {e}; pipelines go unlogged", path.display())
        });
    }
}

/// A web page has no files to log to.
#[cfg(target_arch = "wasm32")]
pub(crate) fn record(_backend: wgpu::Backend, _shader: &str, _entry: &str, _constants: &[(&str, f64)], _seconds: f64) {}
