//! Models built from the ops: the U-Net, its configuration, and how its weights are
//! initialised.

pub mod config;
pub mod init;
pub mod unet;

pub use config::{UNetConfig, Upsampling};
pub use init::Init;
pub use unet::UNet;
