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

pub mod autograd;
pub mod checkpoint;
pub mod compare;
pub mod data;
pub mod files;
pub mod history;
pub mod infer;
pub mod loss;
pub mod metrics;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod progress;
pub mod report;
pub mod rng;
pub mod runtime;
#[doc(hidden)]
pub mod testing;
pub mod train;
pub mod tune;

pub use autograd::tape::{Accumulate, Grads, Mode, Step};
pub use autograd::tensor::Tensor;
pub use runtime::{Backend, Encoder, Gpu, GpuError, GpuOptions, Kernels, Limits};
pub use tune::{Tuning, TuningFrom, TuningSource};
