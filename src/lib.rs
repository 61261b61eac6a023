//! # unet-wgpu
//!
//! A U-Net trainer for semantic segmentation written from scratch: every
//! number that trains the network is computed by a WGSL compute shader in
//! `shaders/`, dispatched through wgpu by a small reverse-mode tape.
//!
//! Reading order for a newcomer:
//! [`runtime`] (device, pipelines, buffers) → [`autograd`] (the tensor, and the
//! tape's `Step` that records forward and walks backward) → [`ops`] (one
//! folder or file per kernel, each with its plain-Rust reference) → [`nn`]
//! → [`loss`] → [`train`]. Imports only go down these layers:
//! `tests/module_graph.rs` fails on a circle.
//!
//! The training core builds for every target, `wasm32-unknown-unknown` (a web
//! page on WebGPU) included. The modules that read or write files, print
//! progress bars, draw pictures or time with blocking waits are native only.

pub mod autograd;
#[cfg(not(target_arch = "wasm32"))]
pub mod checkpoint;
#[cfg(not(target_arch = "wasm32"))]
pub mod compare;
pub mod data;
#[cfg(not(target_arch = "wasm32"))]
pub mod files;
#[cfg(not(target_arch = "wasm32"))]
pub mod history;
#[cfg(not(target_arch = "wasm32"))]
pub mod infer;
pub mod loss;
pub mod metrics;
pub mod nn;
pub mod ops;
pub mod optim;
#[cfg(not(target_arch = "wasm32"))]
pub mod progress;
#[cfg(not(target_arch = "wasm32"))]
pub mod report;
pub mod rng;
pub mod runtime;
#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
pub mod testing;
pub mod train;
pub mod tune;

pub use autograd::tape::{Accumulate, Grads, Mode, Step};
pub use autograd::tensor::Tensor;
pub use runtime::{Backend, Encoder, Gpu, GpuError, GpuOptions, Kernels, Limits};
pub use tune::{TilingFamily, Tuning, TuningFrom, TuningSource};
