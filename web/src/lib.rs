//! unet-wgpu in a web page: the library's training loop ([`train_live`]) on the browser's
//! WebGPU adapter, driven from `static/main.js`. The page awaits every GPU readback, so the
//! browser stays responsive while the U-Net trains.

mod config;
mod watch;

use unet_wgpu::train::live::train_live;
use unet_wgpu::tune::TuningFrom;
use unet_wgpu::{Gpu, GpuOptions, Limits};
use wasm_bindgen::prelude::*;

use config::Config;
use watch::JsWatch;

/// Panics go to the browser console with their message (a wasm panic is otherwise an
/// opaque `unreachable`).
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| web_sys::console::error_1(&JsValue::from_str(&info.to_string()))));
}

/// The browser's WebGPU device, opened once for the page's lifetime.
#[wasm_bindgen]
pub struct Lab {
    gpu: &'static Gpu,
}

#[wasm_bindgen]
impl Lab {
    /// Open the browser's WebGPU adapter with WebGPU's default limits (what every
    /// implementation grants). Fails with a readable message where there is none.
    pub async fn open() -> Result<Lab, JsError> {
        let options = GpuOptions { limits: Some(Limits::WebGpu), tuning: TuningFrom::Builtin, ..GpuOptions::default() };
        let gpu = Gpu::open(&options).await.map_err(|e| match e {
            unet_wgpu::GpuError::NoAdapter { .. } => {
                JsError::new("this browser offers no WebGPU adapter (WebGPU is off, or the GPU is blocklisted)")
            }
            e => JsError::new(&e.to_string()),
        })?;
        // The device lives as long as the page: one per page load, never freed.
        Ok(Lab { gpu: Box::leak(Box::new(gpu)) })
    }

    /// The adapter as wgpu sees it: the browser's description (often empty) and the device
    /// type (`Cpu` for a fallback adapter such as SwiftShader).
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        let info = &self.gpu.info;
        format!("{} (WebGPU, {:?})", info.name, info.device_type).trim_start().to_string()
    }

    /// The tile sizes the tuned kernels use on this adapter ([`unet_wgpu::tune::Tuning::builtin`]
    /// within the device's limits), on one line.
    #[wasm_bindgen(getter)]
    pub fn tuning(&self) -> String {
        self.gpu.tuning().to_string()
    }

    /// The `unet-wgpu train` command line of the run `options` describe (see [`Config`]).
    #[wasm_bindgen(js_name = commandLine)]
    pub fn command_line(&self, options: JsValue) -> Result<String, JsError> {
        Ok(Config::from_js(&options)?.command_line())
    }

    /// Train a U-Net as `options` say, calling `callbacks.onStart(info)`,
    /// `callbacks.onStep(step)` after every step and `callbacks.onEpoch(epoch)` after every
    /// epoch; a callback that returns `false` stops the run. Resolves to the number of
    /// epochs completed.
    pub fn train(&self, options: JsValue, callbacks: JsValue) -> Result<js_sys::Promise, JsError> {
        let config = Config::from_js(&options)?;
        let gpu = self.gpu;
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            gpu.set_kernels(config.kernels);
            let mut watch = JsWatch::new(callbacks);
            let history = train_live(gpu, &config.options, &mut watch)
                .await
                .map_err(|e| JsValue::from(JsError::new(&format!("{e:#}"))))?;
            Ok(JsValue::from_f64(history.len() as f64))
        }))
    }
}
