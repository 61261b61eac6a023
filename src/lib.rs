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

pub mod bench;
pub mod ceiling;
pub mod checkpoint;
pub mod compare;
pub mod compilation;
pub mod data;
pub mod gpu;
pub mod history;
pub mod loss;
pub mod metrics;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod params;
pub mod predict;
pub mod progress;
pub mod report;
pub mod rng;
pub mod score;
pub mod tape;
pub mod tensor;
pub mod testing;
pub mod train;
pub mod tuning;

pub use gpu::{Backend, Encoder, Gpu, GpuError, GpuOptions, Kernels, Limits};
pub use tape::{Accumulate, Grads, Mode, Step};
pub use tensor::Tensor;
pub use tuning::{Tuning, TuningFrom, TuningSource};
