//! Reading data back from the GPU: reads that wait (outside steps; async at the edge, blocking
//! natively), and a ring of buffers that returns the newest copy without waiting.

use super::encoder::Encoder;
use super::gpu::Gpu;
use super::pool::Binding;

/// A ring of mappable buffers for reading small tensors back without waiting:
/// [`Readback::copy`] records a copy at the end of a step, [`Readback::submitted`]
/// asks for the mapping after the submit, and [`Readback::latest`] returns the
/// newest copy that has arrived, never blocking. A slot still in flight is
/// skipped rather than waited for, so a slow GPU costs readings, not time.
pub struct Readback {
    slots: Vec<ReadbackSlot>,
    next: usize,
    bytes: u64,
}

struct ReadbackSlot {
    buffer: wgpu::Buffer,
    /// Set by the map callback: 1 mapped, 2 failed.
    state: std::sync::Arc<std::sync::atomic::AtomicU8>,
    /// A copy was recorded and not yet consumed.
    busy: bool,
    /// The copy is recorded but the step not submitted yet.
    unsubmitted: bool,
}

impl Readback {
    /// Record a copy of `t` (at most the ring's size) into a free slot, if
    /// there is one. Call [`Readback::submitted`] after submitting `enc`.
    pub fn copy(&mut self, enc: &mut Encoder, t: &impl Binding) -> bool {
        let slot = &mut self.slots[self.next];
        if slot.busy {
            return false;
        }
        let bytes = t.bytes().min(self.bytes);
        enc.raw.copy_buffer_to_buffer(t.buffer(), t.offset(), &slot.buffer, 0, bytes);
        slot.busy = true;
        slot.unsubmitted = true;
        self.next = (self.next + 1) % self.slots.len();
        true
    }

    /// Ask for the mapping of the copies recorded before the last submit.
    pub fn submitted(&mut self) {
        for slot in self.slots.iter_mut().filter(|s| s.unsubmitted) {
            slot.unsubmitted = false;
            let state = slot.state.clone();
            slot.buffer.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                state.store(if r.is_ok() { 1 } else { 2 }, std::sync::atomic::Ordering::Release);
            });
        }
    }

    /// The newest copy that has arrived (as f32), freeing every arrived slot.
    /// Never waits: callbacks run when the device is polled (e.g. by a wait on
    /// an earlier step).
    pub fn latest(&mut self, gpu: &Gpu) -> Option<Vec<f32>> {
        let _ = gpu.device.poll(wgpu::PollType::Poll);
        let mut newest = None;
        // Visit slots from oldest to newest so the last one read is the newest.
        let n = self.slots.len();
        for k in 0..n {
            let slot = &mut self.slots[(self.next + k) % n];
            if !slot.busy || slot.unsubmitted {
                continue;
            }
            match slot.state.load(std::sync::atomic::Ordering::Acquire) {
                0 => continue,
                1 => {
                    newest = Some(bytemuck::pod_collect_to_vec(
                        &slot.buffer.slice(..).get_mapped_range().expect("mapped")[..],
                    ))
                }
                _ => {}
            }
            if slot.state.load(std::sync::atomic::Ordering::Acquire) == 1 {
                slot.buffer.unmap();
            }
            slot.state.store(0, std::sync::atomic::Ordering::Release);
            slot.busy = false;
        }
        newest
    }
}

impl Gpu {
    /// [`Gpu::read_buffer_async`], blocking.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn read_buffer(&self, enc: Encoder, src: &wgpu::Buffer, offset: u64, bytes: u64) -> Vec<u8> {
        pollster::block_on(self.read_buffer_async(enc, src, offset, bytes))
    }

    /// Copy `bytes` of `src` from `offset` to a mappable buffer at the end of
    /// `enc`, submit, and return them once mapped. Natively the device is polled
    /// until the copy is done (so the future is ready when first polled); in a
    /// browser the mapping resolves by itself while the page awaits.
    pub(crate) async fn read_buffer_async(
        &self,
        mut enc: Encoder,
        src: &wgpu::Buffer,
        offset: u64,
        bytes: u64,
    ) -> Vec<u8> {
        self.count(|c| c.readbacks += 1);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if bytes > 0 {
            enc.raw.copy_buffer_to_buffer(src, offset, &staging, 0, bytes);
        }
        self.submit(enc);
        let slice = staging.slice(..);
        let (tx, rx) = futures_channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.wait();
        rx.await.expect("map callback dropped").expect("mapping a readback buffer failed");
        let data = slice.get_mapped_range().expect("readback range")[..bytes as usize].to_vec();
        staging.unmap();
        data
    }

    /// A [`Readback`] ring of `slots` buffers of `len` f32 values each.
    pub fn readback(&self, len: usize, slots: usize) -> Readback {
        let bytes = (4 * len as u64).max(4);
        let slots = (0..slots.max(1))
            .map(|_| ReadbackSlot {
                buffer: self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback ring"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                state: Default::default(),
                busy: false,
                unsubmitted: false,
            })
            .collect();
        Readback { slots, next: 0, bytes }
    }
}
