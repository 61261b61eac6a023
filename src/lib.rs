//! # unet-wgpu
//!
//! A U-Net trainer for semantic segmentation written from scratch: every
//! number that trains the network is computed by a WGSL compute shader in
//! `shaders/`, dispatched through wgpu by a small reverse-mode tape.
//!
//! Reading order for a newcomer:
//! [`gpu`] (device, pipelines, buffers) → [`tensor`] → [`tape`] (the `Step`
//! that records forward and walks backward) → [`ops`] (one file per kernel,
//! each with its plain-Rust reference).
//!
//! The training core builds for every target, `wasm32-unknown-unknown` (a web
//! page on WebGPU) included. The modules that read or write files, print
//! progress bars, draw pictures or time with blocking waits are native only.

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod ceiling;
#[cfg(not(target_arch = "wasm32"))]
pub mod checkpoint;
#[cfg(not(target_arch = "wasm32"))]
pub mod compare;
pub mod data;
pub mod gpu;
#[cfg(not(target_arch = "wasm32"))]
pub mod history;
pub mod loss;
pub mod metrics;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod params;
#[cfg(not(target_arch = "wasm32"))]
pub mod predict;
#[cfg(not(target_arch = "wasm32"))]
pub mod progress;
#[cfg(not(target_arch = "wasm32"))]
pub mod report;
pub mod rng;
#[cfg(not(target_arch = "wasm32"))]
pub mod score;
pub mod tape;
pub mod tensor;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod train;
pub mod tuning;

pub use gpu::{Backend, Encoder, Gpu, GpuError, GpuOptions, Kernels, Limits};
pub use tape::{Accumulate, Grads, Mode, Step};
pub use tensor::Tensor;
pub use tuning::{TilingFamily, Tuning, TuningFrom, TuningSource};
