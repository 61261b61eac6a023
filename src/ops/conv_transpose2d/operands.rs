//! The operands and options of the transposed convolution's three directions, one struct each,
//! for [`super::conv_transpose2d_forward`], [`super::conv_transpose2d_backward_data`] and
//! [`super::conv_transpose2d_backward_weight`].

use super::Workgroups;
use crate::autograd::tape::Accumulate;
use crate::autograd::tensor::Tensor;

/// The operands of a forward: y `[N,O,2H,2W]` `= conv_transpose2d(x, w) + b`, x `[N,I,H,W]`,
/// w `[I,O,2,2]`, b `[O]` or none.
#[derive(Clone, Copy, Debug)]
pub struct Forward<'a> {
    /// `[N,I,H,W]`.
    pub x: &'a Tensor,
    /// `[I,O,2,2]`.
    pub w: &'a Tensor,
    /// `[O]`, or none.
    pub b: Option<&'a Tensor>,
    /// `[N,O,2H,2W]`, written.
    pub y: &'a Tensor,
    /// Workgroup sizes of the register-tiled kernels that override the tuned dispatch
    /// (benchmarks and the autotuner sweep them); `None`: the kernels [`crate::Gpu::tuning`] and
    /// [`crate::Gpu::kernels`] choose.
    pub workgroups: Option<Workgroups>,
}

/// The operands of a backward data: dx `[N,I,H,W]` (+)= the data gradient of dy `[N,O,2H,2W]`
/// through w `[I,O,2,2]`.
#[derive(Clone, Copy, Debug)]
pub struct BackwardData<'a> {
    /// `[I,O,2,2]`.
    pub w: &'a Tensor,
    /// `[N,O,2H,2W]`.
    pub dy: &'a Tensor,
    /// `[N,I,H,W]`, added into or overwritten (every element written) as `acc` says.
    pub dx: &'a Tensor,
    /// `+=` or `=`.
    pub acc: Accumulate,
    /// Workgroup sizes that override the tuned dispatch, as [`Forward::workgroups`].
    pub workgroups: Option<Workgroups>,
}

/// The operands of a backward weight: `dw += x (*) dy` and, when db is given, `db += sum dy`.
#[derive(Clone, Copy, Debug)]
pub struct BackwardWeight<'a> {
    /// `[N,I,H,W]`.
    pub x: &'a Tensor,
    /// `[N,O,2H,2W]`.
    pub dy: &'a Tensor,
    /// `[I,O,2,2]`, added into.
    pub dw: &'a Tensor,
    /// `[O]`, added into, or none.
    pub db: Option<&'a Tensor>,
    /// Workgroup sizes that override the tuned dispatch, as [`Forward::workgroups`].
    pub workgroups: Option<Workgroups>,
}
