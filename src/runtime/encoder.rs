//! Recording a step: the [`Encoder`], dispatches with their uniforms (the per-step arena),
//! timestamp queries, and the submit.

use super::gpu::Gpu;
use super::pipeline::Kernel;
use super::pool::Binding;

/// Bytes in one uniform arena chunk; a step that needs more gets more chunks.
const ARENA_CHUNK: u64 = 64 << 10;

/// Per-step storage for the small parameter structs of each dispatch. Written
/// on the CPU during recording and uploaded once, just before the submit.
pub(super) struct UniformArena {
    pub(super) chunks: Vec<(wgpu::Buffer, Vec<u8>)>,
    /// Chunk being filled.
    pub(super) current: usize,
    pub(super) align: u64,
}

impl UniformArena {
    /// Append `data`, 16-byte padded, at an aligned offset; returns (chunk, offset, size).
    pub(super) fn push(&mut self, device: &wgpu::Device, data: &[u8]) -> (usize, u64, u64) {
        let size = (data.len() as u64).div_ceil(16).max(1) * 16;
        assert!(size <= ARENA_CHUNK, "a uniform of {size} bytes is larger than the arena chunk");
        loop {
            if self.current == self.chunks.len() {
                let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("uniform arena"),
                    size: ARENA_CHUNK,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.chunks.push((buffer, Vec::with_capacity(ARENA_CHUNK as usize)));
            }
            let bytes = &mut self.chunks[self.current].1;
            let offset = (bytes.len() as u64).div_ceil(self.align) * self.align;
            if offset + size <= ARENA_CHUNK {
                bytes.resize(offset as usize, 0);
                bytes.extend_from_slice(data);
                bytes.resize((offset + size) as usize, 0);
                return (self.current, offset, size);
            }
            self.current += 1;
        }
    }

    /// Upload what this step wrote and start over.
    pub(super) fn flush(&mut self, queue: &wgpu::Queue) {
        for (buffer, bytes) in &mut self.chunks {
            if !bytes.is_empty() {
                queue.write_buffer(buffer, 0, bytes);
                bytes.clear();
            }
        }
        self.current = 0;
    }
}

/// Timestamp queries of one encoder: two per dispatch (named by the kernel), or per buffer
/// copy or clear (named `copy_buffer`, `clear_buffer`).
struct Timer {
    queries: wgpu::QuerySet,
    capacity: u32,
    labels: Vec<String>,
}

impl Timer {
    /// The first of the two query indices of the next timed command, named `label`; `None`
    /// once `capacity` commands are timed.
    fn next(&mut self, label: &str) -> Option<u32> {
        let i = self.labels.len() as u32;
        (i < self.capacity).then(|| {
            self.labels.push(label.to_string());
            2 * i
        })
    }
}

/// A command encoder for one step: every dispatch of a step is recorded here
/// and submitted at once by [`Gpu::submit`].
pub struct Encoder {
    pub(super) raw: wgpu::CommandEncoder,
    timer: Option<Timer>,
}

impl Encoder {
    /// Zero a tensor's buffer, in order with the dispatches around it (and timed like one in a
    /// timed encoder).
    pub fn clear(&mut self, t: &impl Binding) {
        let slot = self.timestamp_before("clear_buffer");
        self.raw.clear_buffer(t.buffer(), t.offset(), Some(t.bytes()));
        self.timestamp_after(slot);
    }

    /// Copy all of `src` into `dst` (same byte size), in order with the dispatches (and timed
    /// like one in a timed encoder).
    pub fn copy(&mut self, src: &impl Binding, dst: &impl Binding) {
        assert_eq!(src.bytes(), dst.bytes(), "copy of {} bytes into {} bytes", src.bytes(), dst.bytes());
        let slot = self.timestamp_before("copy_buffer");
        self.raw.copy_buffer_to_buffer(src.buffer(), src.offset(), dst.buffer(), dst.offset(), src.bytes());
        self.timestamp_after(slot);
    }

    /// In a timed encoder with room left: the first timestamp of a transfer named `label`. Core
    /// wgpu writes timestamps only at the edges of passes, so it closes an empty compute pass.
    fn timestamp_before(&mut self, label: &str) -> Option<u32> {
        let timer = self.timer.as_mut()?;
        let i = timer.next(label)?;
        self.empty_pass(Some(i), None);
        Some(i)
    }

    /// The second timestamp of the transfer that [`Encoder::timestamp_before`] began.
    fn timestamp_after(&mut self, slot: Option<u32>) {
        if let Some(i) = slot {
            self.empty_pass(None, Some(i + 1));
        }
    }

    fn empty_pass(&mut self, beginning: Option<u32>, end: Option<u32>) {
        let queries = &self.timer.as_ref().expect("a timed encoder").queries;
        let timestamp_writes = wgpu::ComputePassTimestampWrites {
            query_set: queries,
            beginning_of_pass_write_index: beginning,
            end_of_pass_write_index: end,
        };
        self.raw.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("transfer timestamp"),
            timestamp_writes: Some(timestamp_writes),
        });
    }
}

/// GPU time of each dispatch (and buffer copy or clear) of a timed encoder, in submission order.
#[derive(Clone, Debug)]
pub struct Timings {
    /// `(kernel name, seconds)` per dispatch; `copy_buffer` or `clear_buffer` for a transfer.
    pub dispatches: Vec<(String, f64)>,
}

/// Dispatches one timed encoder can time (wgpu allows 4096 queries a set).
pub const MAX_TIMED_DISPATCHES: u32 = wgpu::QUERY_SET_MAX_QUERIES / 2;

impl Gpu {
    /// Open an encoder for one step.
    pub fn encoder(&self) -> Encoder {
        Encoder { raw: self.device.create_command_encoder(&Default::default()), timer: None }
    }

    /// Open an encoder that records a GPU timestamp pair around each of its
    /// first `capacity` dispatches and buffer copies or clears, at most
    /// [`MAX_TIMED_DISPATCHES`] (when the adapter supports timestamps; see
    /// [`Gpu::submit_timed`]).
    pub fn timed_encoder(&self, capacity: u32) -> Encoder {
        let capacity = capacity.min(MAX_TIMED_DISPATCHES);
        let mut enc = self.encoder();
        if self.has_timestamps {
            let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("dispatch timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * capacity,
            });
            enc.timer = Some(Timer { queries, capacity, labels: Vec::new() });
        }
        enc
    }

    /// Record one compute dispatch.
    ///
    /// `params` goes to binding 0 as a uniform (a `#[repr(C)]` struct mirroring
    /// the shader's); `buffers` names each other binding by number, as in the
    /// binding table of the shader's header. `groups` is the workgroup count;
    /// callers round up (`div_ceil`) and the shader bounds-checks.
    pub fn dispatch<P: bytemuck::Pod, B: Binding>(
        &self,
        enc: &mut Encoder,
        kernel: &Kernel,
        params: &P,
        buffers: &[(u32, &B)],
        groups: [u32; 3],
    ) {
        let mut given: Vec<u32> = std::iter::once(0).chain(buffers.iter().map(|(b, _)| *b)).collect();
        given.sort_unstable();
        let wanted: Vec<u32> = if kernel.bindings.first() == Some(&0) {
            kernel.bindings.clone()
        } else {
            std::iter::once(0).chain(kernel.bindings.iter().copied()).collect()
        };
        assert_eq!(
            given, wanted,
            "{}: bindings given (with the uniform at 0) differ from those the shader uses",
            kernel.name
        );
        let max = self.limits.max_compute_workgroups_per_dimension;
        assert!(
            groups.iter().all(|&g| g <= max),
            "{}: {groups:?} workgroups exceed the limit of {max} per dimension",
            kernel.name
        );
        for (_, t) in buffers {
            assert_eq!(t.gpu_id(), self.id, "{}: a buffer from another Gpu was bound", kernel.name);
        }

        let (chunk, offset, size) = self.arena.borrow_mut().push(&self.device, bytemuck::bytes_of(params));
        let arena = self.arena.borrow();
        let mut entries = Vec::with_capacity(buffers.len() + 1);
        if kernel.bindings.first() == Some(&0) {
            entries.push(wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &arena.chunks[chunk].0,
                    offset,
                    size: wgpu::BufferSize::new(size),
                }),
            });
        }
        for (binding, t) in buffers {
            entries
                .push(wgpu::BindGroupEntry { binding: *binding, resource: wgpu::BindingResource::Buffer(t.binding()) });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&kernel.name),
            layout: &kernel.layout,
            entries: &entries,
        });

        let timestamp_writes = enc.timer.as_mut().and_then(|t| {
            let i = t.next(&kernel.name)?;
            Some(wgpu::ComputePassTimestampWrites {
                query_set: &t.queries,
                beginning_of_pass_write_index: Some(i),
                end_of_pass_write_index: Some(i + 1),
            })
        });
        let mut pass =
            enc.raw.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(&kernel.name), timestamp_writes });
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }

    /// Submit a step: upload the uniform arena, submit the encoder, and return
    /// the buffers released during the step to the pool. Does not wait.
    pub fn submit(&self, enc: Encoder) -> wgpu::SubmissionIndex {
        self.count(|c| c.submits += 1);
        self.arena.borrow_mut().flush(&self.queue);
        let index = self.queue.submit([enc.raw.finish()]);
        let mut pool = self.pool.borrow_mut();
        let pending = std::mem::take(&mut pool.pending);
        for (bytes, buffer) in pending {
            pool.free.entry(bytes).or_default().push(buffer);
        }
        index
    }

    /// Block until all submitted work is done.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self) {
        self.device.poll(wgpu::PollType::wait_indefinitely()).expect("device lost while waiting for the GPU");
    }

    /// Submit a timed encoder, wait, and return each dispatch's GPU time.
    /// `None` when the adapter has no timestamp queries (the caller then
    /// measures wall-clock time around [`Gpu::submit`] and [`Gpu::wait`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn submit_timed(&self, mut enc: Encoder) -> Option<Timings> {
        let Some(timer) = enc.timer.take() else {
            self.submit(enc);
            self.wait();
            return None;
        };
        let n = 2 * timer.labels.len() as u64;
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp resolve"),
            size: (n * 8).max(8),
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        if n > 0 {
            enc.raw.resolve_query_set(&timer.queries, 0..n as u32, &resolve, 0);
        }
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&self.read_buffer(enc, &resolve, 0, n * 8));
        let period = self.queue.get_timestamp_period() as f64 * 1e-9;
        let dispatches = timer
            .labels
            .into_iter()
            .enumerate()
            .map(|(i, name)| (name, ticks[2 * i + 1].wrapping_sub(ticks[2 * i]) as f64 * period))
            .collect();
        Some(Timings { dispatches })
    }
}
