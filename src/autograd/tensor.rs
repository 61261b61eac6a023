//! `Tensor`: a shape and a pooled GPU buffer of 4-byte elements (f32 for
//! activations and weights, u32 for labels and argmax indices), row-major.
//!
//! Cloning a tensor is cheap and shares the buffer (and the identity that the
//! tape keys gradients by). When the last clone is dropped the buffer goes
//! back to the pool of the [`Gpu`] that made it.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::runtime::{Binding, BufferPool, Encoder, Gpu};

/// Identity of a tensor (shared by its clones), used to key gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

struct Storage {
    buffer: wgpu::Buffer,
    bytes: u64,
    gpu_id: u64,
    pool: Rc<RefCell<BufferPool>>,
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.pool.borrow_mut().release(self.bytes, self.buffer.clone());
    }
}

/// An n-dimensional array on the GPU: `shape.product()` elements from byte
/// `offset` of a buffer (0 for tensors of their own; parameters are views
/// into one shared arena, see [`crate::autograd::params`]).
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    id: TensorId,
    storage: Rc<Storage>,
    offset: u64,
    requires_grad: bool,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor{:?}", self.shape)?;
        if self.requires_grad {
            write!(f, " (grad)")?;
        }
        Ok(())
    }
}

impl Tensor {
    pub(crate) fn from_pooled(
        shape: &[usize],
        buffer: wgpu::Buffer,
        bytes: u64,
        gpu_id: u64,
        pool: Rc<RefCell<BufferPool>>,
    ) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            id: TensorId(NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            storage: Rc::new(Storage { buffer, bytes, gpu_id, pool }),
            offset: 0,
            requires_grad: false,
        }
    }

    /// A new tensor (its own identity) viewing `shape` elements of `self`'s
    /// buffer from byte `offset` on, relative to `self`'s own start. The caller
    /// keeps `offset` aligned to the device's `min_storage_buffer_offset_alignment`.
    pub(crate) fn view(&self, offset: u64, shape: &[usize]) -> Tensor {
        let len: usize = shape.iter().product();
        assert!(
            offset + 4 * len as u64 <= self.bytes(),
            "view of {shape:?} at byte {offset} overruns a tensor of {} bytes",
            self.bytes()
        );
        Tensor {
            shape: shape.to_vec(),
            id: TensorId(NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            storage: self.storage.clone(),
            offset: self.offset + offset,
            requires_grad: false,
        }
    }

    /// The dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape as `[n, c, h, w]`; panics (naming `what`) if it is not 4-D.
    pub fn dims4(&self, what: &str) -> [usize; 4] {
        self.shape
            .as_slice()
            .try_into()
            .unwrap_or_else(|_| panic!("{what} must be 4-D [N,C,H,W], got {:?}", self.shape))
    }

    /// Identity shared by clones; gradients are keyed by it.
    pub fn id(&self) -> TensorId {
        self.id
    }

    /// Whether the tape computes a gradient for this tensor.
    pub fn requires_grad(&self) -> bool {
        self.requires_grad
    }

    /// The same tensor, marked as a leaf whose gradient the tape computes
    /// (parameters; or inputs, in gradient checks).
    pub fn with_grad(mut self) -> Tensor {
        self.requires_grad = true;
        self
    }

    pub(crate) fn set_requires_grad(&mut self, on: bool) {
        self.requires_grad = on;
    }

    /// The wgpu buffer this tensor lives in (from [`Tensor::offset`] on).
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.storage.buffer
    }

    /// Byte offset of the first element in [`Tensor::buffer`].
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes of the elements (4 per element). A tensor of its own may sit in
    /// a larger buffer (at least 16 bytes).
    pub fn bytes(&self) -> u64 {
        4 * self.len() as u64
    }

    /// The range of the buffer to bind (never empty: an empty tensor binds 4 bytes).
    pub fn binding(&self) -> wgpu::BufferBinding<'_> {
        wgpu::BufferBinding {
            buffer: &self.storage.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.bytes().max(4)),
        }
    }

    pub(crate) fn gpu_id(&self) -> u64 {
        self.storage.gpu_id
    }

    /// Same buffer and identity, another shape with the same element count
    /// (a view, like `reshape` on a contiguous array).
    pub fn reshaped(&self, shape: &[usize]) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.len(),
            "reshape of {:?} to {shape:?} changes the element count",
            self.shape
        );
        Tensor { shape: shape.to_vec(), ..self.clone() }
    }
}

impl Binding for Tensor {
    fn buffer(&self) -> &wgpu::Buffer {
        Tensor::buffer(self)
    }
    fn offset(&self) -> u64 {
        Tensor::offset(self)
    }
    fn bytes(&self) -> u64 {
        Tensor::bytes(self)
    }
    fn gpu_id(&self) -> u64 {
        Tensor::gpu_id(self)
    }
}

/// Tensors made, filled and read by the device.
impl Gpu {
    /// Allocate a tensor from the pool. Its contents are undefined until
    /// written; use [`Gpu::zeros`] or an op's output.
    pub fn empty(&self, shape: &[usize]) -> Tensor {
        let bytes = (shape.iter().product::<usize>() as u64 * 4).max(16);
        let buffer = self.alloc(bytes);
        Tensor::from_pooled(shape, buffer, bytes, self.id(), self.pool.clone())
    }

    /// A tensor of zeros (the clear is recorded in `enc`, in order).
    pub fn zeros(&self, enc: &mut Encoder, shape: &[usize]) -> Tensor {
        let t = self.empty(shape);
        enc.clear(&t);
        t
    }

    /// Upload `f32` data. The write lands at the start of the next submit.
    pub fn upload(&self, data: &[f32], shape: &[usize]) -> Tensor {
        self.upload_bytes(bytemuck::cast_slice(data), data.len(), shape)
    }

    /// Upload `u32` data (labels, indices). The write lands at the start of the next submit.
    pub fn upload_u32(&self, data: &[u32], shape: &[usize]) -> Tensor {
        self.upload_bytes(bytemuck::cast_slice(data), data.len(), shape)
    }

    fn upload_bytes(&self, bytes: &[u8], len: usize, shape: &[usize]) -> Tensor {
        assert_eq!(len, shape.iter().product::<usize>(), "upload of {len} values into shape {shape:?}");
        let t = self.empty(shape);
        self.write(&t, bytes);
        t
    }

    /// Overwrite a tensor's contents with `bytes` (f32 or u32 data). The write
    /// lands at the start of the next submit, before any dispatch recorded in
    /// the encoder being built.
    pub fn write(&self, t: &Tensor, bytes: &[u8]) {
        assert_eq!(bytes.len(), 4 * t.len(), "write of {} bytes into a tensor of shape {:?}", bytes.len(), t.shape());
        if !bytes.is_empty() {
            self.queue.write_buffer(t.buffer(), t.offset(), bytes);
        }
    }

    /// Read a tensor back as `f32` (submits and waits: never inside a step).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, t: &Tensor) -> Vec<f32> {
        pollster::block_on(self.read_async(t))
    }

    /// Read a tensor back as `u32` (submits and waits: never inside a step).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_u32(&self, t: &Tensor) -> Vec<u32> {
        pollster::block_on(self.read_u32_async(t))
    }

    /// [`Gpu::read`] as a future: submits, and resolves once the data has arrived.
    pub async fn read_async(&self, t: &Tensor) -> Vec<f32> {
        bytemuck::pod_collect_to_vec(&self.read_tensor_bytes(t).await)
    }

    /// [`Gpu::read_u32`] as a future: submits, and resolves once the data has arrived.
    pub async fn read_u32_async(&self, t: &Tensor) -> Vec<u32> {
        bytemuck::pod_collect_to_vec(&self.read_tensor_bytes(t).await)
    }

    async fn read_tensor_bytes(&self, t: &Tensor) -> Vec<u8> {
        let bytes = 4 * t.len() as u64;
        if bytes == 0 {
            return Vec::new();
        }
        self.read_buffer_async(self.encoder(), t.buffer(), t.offset(), bytes).await
    }
}
