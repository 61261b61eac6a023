//! The runtime: adapter and device selection, the limits the device was granted, the pipeline
//! cache, the buffer pool, command encoders with their timing, and readback. It knows nothing
//! of tensors or ops: a dispatch binds [`Binding`]s, ranges of pooled buffers.
//!
//! The life of one step:
//! 1. [`Gpu::encoder`] opens an [`Encoder`];
//! 2. ops call [`Gpu::dispatch`], which writes the op's small parameter struct
//!    into the uniform arena, makes a bind group and records one compute pass;
//! 3. [`Gpu::submit`] uploads the arena, submits the whole step at once, and
//!    hands the buffers that tensors released during the step back to the pool.

pub mod compilation;
mod encoder;
mod gpu;
mod options;
mod pipeline;
mod pool;
mod readback;
mod wgsl;

pub use encoder::{Encoder, Timings, MAX_TIMED_DISPATCHES};
pub use gpu::{groups_1d, Counters, Gpu};
pub use options::{Backend, GpuError, GpuOptions, Kernels, Limits};
pub use pipeline::{Kernel, Shader};
pub(crate) use pool::BufferPool;
pub use pool::{Binding, PoolStats};
pub use readback::Readback;
pub use wgsl::{compose_wgsl, validate_wgsl};
