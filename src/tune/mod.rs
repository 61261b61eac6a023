//! Tile sizes per adapter: the tilings as plain data ([`tiling`]), the cache file that keeps
//! them ([`cache`]), and the autotune that measures them ([`autotune`]).
//!
//! The kernels with tile sizes take them as WGSL override constants, fixed when a pipeline is
//! compiled: the workgroup size, how many channels a thread owns, how many threads a weight
//! gradient spreads over. What is fastest depends on the adapter: a CPU driver (lavapipe) wants
//! few, fat threads and no workgroup memory; a GPU wants many threads and shared tiles. A
//! [`Tuning`] holds one choice per kernel family, and [`Gpu::new`](crate::runtime::Gpu::new) picks it once:
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

// The autotune measures with blocking waits and wall-clock time: native only.
#[cfg(not(target_arch = "wasm32"))]
pub mod autotune;
pub mod cache;
#[cfg(not(target_arch = "wasm32"))]
mod families;
#[cfg(not(target_arch = "wasm32"))]
mod gemm;
pub mod tiling;

#[cfg(test)]
mod tests;

#[cfg(not(target_arch = "wasm32"))]
pub use autotune::*;
pub use cache::*;
pub use tiling::gemm::TilingFamily;
pub use tiling::{builds_register_convolutions, is_software, Tuning};
