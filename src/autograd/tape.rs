//! The reverse-mode tape and the [`Step`] that owns it.
//!
//! A `Step` is everything recorded for one forward/backward pass: the command
//! encoder that collects every dispatch, and the tape of nodes. Ops (in
//! [`crate::ops`]) record their forward dispatches into the encoder right away
//! and push a [`Node`] whose closure knows how to dispatch the backward.
//!
//! Nodes are pushed in execution order, so walking them in reverse visits each
//! node after every node that consumed its output: by the time a node runs,
//! the gradient of its output is complete. Backward kernels *add* into the
//! gradient buffers (`dx += ...`); the buffers start at zero when first asked
//! for, so a tensor used twice receives the sum of both gradients. A kernel that
//! writes every element of a gradient may instead ask for it with
//! [`BackwardCtx::grad_to_fill`]: the first contribution then overwrites an
//! unzeroed buffer ([`Accumulate::Overwrite`]), saving the zeroing pass and the read
//! of zeros, and later ones add as usual.

use std::collections::HashMap;

use crate::autograd::tensor::{Tensor, TensorId};
use crate::runtime::{Encoder, Gpu};

type BackwardFn<'g> = Box<dyn FnOnce(&mut BackwardCtx<'_, 'g>, &Tensor) + 'g>;

/// One recorded op.
pub struct Node<'g> {
    /// Op name, shown in traces and errors (`"conv2d"`).
    pub name: &'static str,
    output: TensorId,
    backward: BackwardFn<'g>,
}

/// How a backward kernel writes a gradient buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accumulate {
    /// `dx += ...`: others have written (or the buffer was zeroed).
    Add,
    /// `dx = ...`: the first contribution, into a buffer of stale values; the kernel must
    /// write every element.
    Overwrite,
}

impl Accumulate {
    /// The `ACCUMULATE` pipeline constant of the shaders that take either (true: `+=`).
    pub(crate) fn constant(self) -> (&'static str, f64) {
        ("ACCUMULATE", if self == Accumulate::Add { 1.0 } else { 0.0 })
    }
}

/// Whether a step records gradients and runs layers in training mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Record the tape; batch norm uses batch statistics, dropout is active.
    Train,
    /// No tape (`no_grad`); batch norm uses running statistics, dropout is the identity.
    Eval,
}

/// One forward (and backward) pass: an encoder plus a tape.
pub struct Step<'g> {
    /// The GPU everything runs on.
    pub gpu: &'g Gpu,
    /// Collects every dispatch of the step; submitted once.
    pub enc: Encoder,
    /// Training or evaluation.
    pub mode: Mode,
    nodes: Vec<Node<'g>>,
}

/// Gradients by tensor identity, filled by [`Step::backward`].
#[derive(Default)]
pub struct Grads {
    map: HashMap<TensorId, Tensor>,
}

impl Grads {
    /// The gradient of `t`, if one reached it.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }

    /// Remove and return the gradient of `t`.
    pub fn take(&mut self, t: &Tensor) -> Option<Tensor> {
        self.map.remove(&t.id())
    }

    /// Set the buffer `t`'s gradient accumulates into (e.g. a view of the
    /// parameter arena's gradients, zeroed by the caller).
    pub fn insert(&mut self, t: &Tensor, grad: Tensor) {
        assert_eq!(t.len(), grad.len(), "gradient {:?} for tensor {:?}", grad.shape(), t.shape());
        self.map.insert(t.id(), grad);
    }

    /// Number of gradients held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no gradient is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What a node's backward closure gets: the GPU, the encoder, and access to
/// the gradient buffers of its inputs.
pub struct BackwardCtx<'a, 'g> {
    /// The GPU.
    pub gpu: &'g Gpu,
    /// The step's encoder.
    pub enc: &'a mut Encoder,
    grads: &'a mut Grads,
}

impl BackwardCtx<'_, '_> {
    /// The gradient buffer of `x`, to add into; zeroed when first asked for.
    /// `None` when `x` needs no gradient: the node then skips that kernel.
    pub fn grad(&mut self, x: &Tensor) -> Option<Tensor> {
        if !x.requires_grad() {
            return None;
        }
        let (gpu, enc) = (self.gpu, &mut *self.enc);
        Some(self.grads.map.entry(x.id()).or_insert_with(|| gpu.zeros(enc, x.shape())).clone())
    }

    /// The gradient buffer of `x` for a kernel that writes every element of it:
    /// unzeroed and [`Accumulate::Overwrite`] for the first contribution, else the buffer
    /// so far and [`Accumulate::Add`]. `None` when `x` needs no gradient.
    pub fn grad_to_fill(&mut self, x: &Tensor) -> Option<(Tensor, Accumulate)> {
        if !x.requires_grad() {
            return None;
        }
        if let Some(g) = self.grads.map.get(&x.id()) {
            return Some((g.clone(), Accumulate::Add));
        }
        let g = self.gpu.empty(x.shape());
        self.grads.map.insert(x.id(), g.clone());
        Some((g, Accumulate::Overwrite))
    }
}

impl<'g> Step<'g> {
    /// A training step: records the tape.
    pub fn train(gpu: &'g Gpu) -> Step<'g> {
        Step { gpu, enc: gpu.encoder(), mode: Mode::Train, nodes: Vec::new() }
    }

    /// An evaluation step: no tape, eval-mode layers.
    pub fn eval(gpu: &'g Gpu) -> Step<'g> {
        Step { gpu, enc: gpu.encoder(), mode: Mode::Eval, nodes: Vec::new() }
    }

    /// A step over a given encoder (e.g. a timed one from [`Gpu::timed_encoder`]).
    pub fn with_encoder(gpu: &'g Gpu, enc: Encoder, mode: Mode) -> Step<'g> {
        Step { gpu, enc, mode, nodes: Vec::new() }
    }

    /// True in training mode.
    pub fn is_train(&self) -> bool {
        self.mode == Mode::Train
    }

    /// Allocate an op's output. It requires a gradient when the step records
    /// and any of `inputs` does.
    pub fn output(&self, shape: &[usize], inputs: &[&Tensor]) -> Tensor {
        let mut y = self.gpu.empty(shape);
        y.set_requires_grad(self.is_train() && inputs.iter().any(|t| t.requires_grad()));
        y
    }

    /// Push a node for `output`. The closure receives the gradient of the
    /// output (`dy`) and adds into its inputs' gradients via
    /// [`BackwardCtx::grad`]. Nothing is recorded when `output` needs no
    /// gradient, so eval steps and constant branches cost nothing.
    pub fn record(
        &mut self,
        name: &'static str,
        output: &Tensor,
        backward: impl FnOnce(&mut BackwardCtx<'_, 'g>, &Tensor) + 'g,
    ) {
        if output.requires_grad() {
            self.nodes.push(Node { name, output: output.id(), backward: Box::new(backward) });
        }
    }

    /// Number of recorded nodes.
    pub fn tape_len(&self) -> usize {
        self.nodes.len()
    }

    /// Names of the recorded nodes, in execution order.
    pub fn tape_names(&self) -> Vec<&'static str> {
        self.nodes.iter().map(|n| n.name).collect()
    }

    /// Walk the tape backwards from `seeds` (`(tensor, its gradient)` pairs,
    /// e.g. the logits and the loss's gradient w.r.t. them). Returns the
    /// gradients of every leaf that requires one. The tape is consumed; the
    /// tensors it saved go back to the pool at the next submit.
    pub fn backward(&mut self, seeds: Vec<(Tensor, Tensor)>) -> Grads {
        self.backward_into(seeds, Grads::default())
    }

    /// [`Step::backward`], accumulating into the buffers already in `grads`
    /// (e.g. [`ParamArena::grads`](crate::autograd::params::ParamArena::grads)) where it names one.
    pub fn backward_into(&mut self, seeds: Vec<(Tensor, Tensor)>, mut grads: Grads) -> Grads {
        for (t, g) in seeds {
            grads.insert(&t, g);
        }
        let nodes = std::mem::take(&mut self.nodes);
        for node in nodes.into_iter().rev() {
            // The output's gradient is complete now (its consumers came later
            // on the tape, so they ran earlier in this walk): take it out.
            let Some(dy) = grads.map.remove(&node.output) else { continue };
            let mut ctx = BackwardCtx { gpu: self.gpu, enc: &mut self.enc, grads: &mut grads };
            (node.backward)(&mut ctx, &dy);
        }
        grads
    }

    /// Submit everything recorded (one `queue.submit`). Does not wait.
    pub fn submit(self) -> wgpu::SubmissionIndex {
        self.gpu.submit(self.enc)
    }
}
