//! Reverse-mode autodiff over GPU buffers: the [`Tensor`](tensor::Tensor), the tape that
//! records each op's backward ([`tape::Step`]) and the flat parameter arena
//! ([`params::ParamArena`]). Knows nothing of which ops exist.

pub mod params;
pub mod tape;
pub mod tensor;
