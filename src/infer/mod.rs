//! Inference: tiled prediction with blended overlaps ([`predict`]) and scoring a model on a
//! dataset ([`score`]).

pub mod predict;
pub mod score;
