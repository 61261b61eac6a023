//! One op per file, each paired with `shaders/<op>.wgsl`. Every file reads in
//! the same order: a doc comment with shapes and math; the GPU wrappers
//! `<op>_forward` / `<op>_backward` (dispatch only, on an [`Encoder`](crate::runtime::Encoder));
//! the tape-level function that records the backward on a
//! [`Step`](crate::autograd::tape::Step); `mod reference` in plain Rust (f64); tests.

pub mod batchnorm2d;
pub mod bias_add;
pub mod concat;
pub mod conv2d;
pub mod conv_transpose2d;
pub mod dropout;
pub mod elementwise;
pub mod matmul;
pub mod maxpool2d;
pub mod reduce;
pub mod relu;
pub mod softmax;
pub mod upsample;
