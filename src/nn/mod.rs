//! Models built from the ops: the U-Net.

pub mod unet;

pub use unet::{UNet, UNetConfig, Upsampling};
