//! The runtime: adapter and device selection, the limits the device was granted, the pipeline
//! cache, the buffer pool, command encoders with their timing, and readback. It knows nothing
//! of tensors or ops.

mod gpu;
mod wgsl;

pub use gpu::*;
pub use wgsl::{compose_wgsl, validate_wgsl};
