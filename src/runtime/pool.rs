//! The buffer pool: storage buffers are created once and reused by exact size, so that after the
//! first step a step allocates nothing. What a dispatch binds is a [`Binding`]: a range of such a
//! buffer (the autograd layer's tensors are one).

use std::collections::HashMap;

use super::gpu::Gpu;

/// A range of a pooled storage buffer that a dispatch binds, a copy reads or a clear zeroes.
pub trait Binding {
    /// The buffer.
    fn buffer(&self) -> &wgpu::Buffer;
    /// Byte offset of the range in the buffer.
    fn offset(&self) -> u64;
    /// Bytes in the range.
    fn bytes(&self) -> u64;
    /// The [`Gpu::id`] of the device that made the buffer.
    fn gpu_id(&self) -> u64;
    /// The range as a bind-group resource.
    fn binding(&self) -> wgpu::BufferBinding<'_> {
        wgpu::BufferBinding { buffer: self.buffer(), offset: self.offset(), size: wgpu::BufferSize::new(self.bytes()) }
    }
}

/// Counters of the buffer pool, for tests and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// GPU buffers created since the start (never decreases).
    pub allocations: u64,
    /// Bytes in all buffers created (the pool never frees: this is the peak).
    pub bytes: u64,
    /// Bytes held by live tensors right now.
    pub bytes_in_use: u64,
}

/// Storage buffers grouped by exact size. A released buffer waits in `pending`
/// until the step that last used it is submitted: reusing it earlier would let
/// a `queue.write_buffer` (which runs at the start of the next submit) overwrite
/// data that commands recorded before it still have to read.
#[derive(Default)]
pub(crate) struct BufferPool {
    pub(super) free: HashMap<u64, Vec<wgpu::Buffer>>,
    pub(super) pending: Vec<(u64, wgpu::Buffer)>,
    pub(super) stats: PoolStats,
}

impl BufferPool {
    pub(crate) fn release(&mut self, bytes: u64, buffer: wgpu::Buffer) {
        self.stats.bytes_in_use -= bytes;
        self.pending.push((bytes, buffer));
    }
}

impl Gpu {
    /// A storage buffer of `bytes` from the pool (a new one when none of that size is free),
    /// counted as in use until [`BufferPool::release`].
    pub(crate) fn alloc(&self, bytes: u64) -> wgpu::Buffer {
        let mut pool = self.pool.borrow_mut();
        let buffer = match pool.free.get_mut(&bytes).and_then(Vec::pop) {
            Some(b) => b,
            None => {
                pool.stats.allocations += 1;
                pool.stats.bytes += bytes;
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: bytes,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            }
        };
        pool.stats.bytes_in_use += bytes;
        buffer
    }

    /// Counters of the buffer pool.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.borrow().stats
    }
}
