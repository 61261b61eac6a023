//! Parameters live in one flat arena: all values in one buffer, all gradients
//! in another, at the same offsets. Each parameter is a [`Tensor`] view into
//! the arena, so ops use it like any tensor, while the optimizer updates every
//! parameter in one dispatch and zeroing all gradients is one clear.

use crate::autograd::tape::Grads;
use crate::autograd::tensor::Tensor;
use crate::runtime::{Encoder, Gpu};

/// A parameter to create: its name (PyTorch `state_dict` style, e.g.
/// `"enc1.conv1.weight"`), shape and initial values.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    /// Name as in a PyTorch `state_dict`.
    pub name: String,
    /// Shape (OIHW for conv weights).
    pub shape: Vec<usize>,
    /// Initial values, `shape.product()` of them.
    pub init: Vec<f32>,
}

/// One parameter: views of its values and its gradient.
#[derive(Clone, Debug)]
pub struct Param {
    /// Name as in a PyTorch `state_dict`.
    pub name: String,
    /// The values (requires a gradient).
    pub value: Tensor,
    /// Its gradient, accumulated by the backward walk.
    pub grad: Tensor,
}

/// All parameters of a model in two flat buffers.
pub struct ParamArena {
    /// Every value, padded so each parameter starts at an aligned offset.
    pub values: Tensor,
    /// Every gradient, at the same offsets.
    pub grads: Tensor,
    /// The parameters, in creation order.
    pub params: Vec<Param>,
}

impl ParamArena {
    /// Lay out and upload `specs`. Each parameter starts at a multiple of the
    /// device's storage-offset alignment; the padding holds zeros, which every
    /// optimizer leaves at zero.
    pub fn new(gpu: &Gpu, specs: &[ParamSpec]) -> ParamArena {
        let align = (gpu.limits.min_storage_buffer_offset_alignment as usize / 4).max(1);
        let mut offsets = Vec::with_capacity(specs.len());
        let mut total = 0;
        for spec in specs {
            let len: usize = spec.shape.iter().product();
            assert_eq!(
                spec.init.len(),
                len,
                "{}: {} initial values for shape {:?}",
                spec.name,
                spec.init.len(),
                spec.shape
            );
            offsets.push(total);
            total += len.div_ceil(align) * align;
        }
        let mut data = vec![0.0f32; total.max(1)];
        for (spec, &off) in specs.iter().zip(&offsets) {
            data[off..off + spec.init.len()].copy_from_slice(&spec.init);
        }
        let values = gpu.upload(&data, &[data.len()]);
        let grads = gpu.upload(&vec![0.0; data.len()], &[data.len()]);
        let params = specs
            .iter()
            .zip(&offsets)
            .map(|(spec, &off)| Param {
                name: spec.name.clone(),
                value: values.view(4 * off as u64, &spec.shape).with_grad(),
                grad: grads.view(4 * off as u64, &spec.shape),
            })
            .collect();
        ParamArena { values, grads, params }
    }

    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Number of parameter values (without padding).
    pub fn count(&self) -> usize {
        self.params.iter().map(|p| p.value.len()).sum()
    }

    /// Zero every gradient (one clear; the backward walk adds into them).
    pub fn zero_grads(&self, enc: &mut Encoder) {
        enc.clear(&self.grads);
    }

    /// A gradient map in which each parameter's gradient is its arena view,
    /// for [`Step::backward_into`](crate::autograd::tape::Step::backward_into).
    pub fn grads(&self) -> Grads {
        let mut grads = Grads::default();
        for p in &self.params {
            grads.insert(&p.value, p.grad.clone());
        }
        grads
    }
}
