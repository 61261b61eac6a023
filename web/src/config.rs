//! The page's choices, read from a plain JS object, as the training options that
//! `unet-wgpu train` builds from the same flags on the built-in synthetic tiles (so that
//! a page run and a native run of one configuration train the same numbers).

use js_sys::Reflect;
use unet_wgpu::nn::UNetConfig;
use unet_wgpu::optim::{Method, OptimConfig, Schedule};
use unet_wgpu::train::{DataSource, LossName, TrainOptions};
use unet_wgpu::Kernels;
use wasm_bindgen::{JsError, JsValue};

/// A run as the page asks for it.
pub struct Config {
    /// The options of `unet-wgpu train` with the same flags.
    pub options: TrainOptions,
    /// `--kernels`.
    pub kernels: Kernels,
    /// `--synthetic-tiles` and `--synthetic-size`.
    tiles: (usize, usize),
}

/// The number `name` of `object`; `default` when the field is absent, null or empty.
fn number(object: &JsValue, name: &str, default: f64) -> Result<f64, JsError> {
    let value =
        Reflect::get(object, &JsValue::from_str(name)).map_err(|_| JsError::new("the options are no object"))?;
    if value.is_undefined() || value.is_null() || value.as_string().is_some_and(|s| s.trim().is_empty()) {
        return Ok(default);
    }
    let parsed = value.as_f64().or_else(|| value.as_string().and_then(|s| s.trim().parse().ok()));
    parsed.filter(|v| v.is_finite()).ok_or_else(|| JsError::new(&format!("{name} must be a number, not {value:?}")))
}

/// A whole number of at least `least`.
fn count(object: &JsValue, name: &str, default: usize, least: usize) -> Result<usize, JsError> {
    let v = number(object, name, default as f64)?;
    if v.fract() != 0.0 || v < least as f64 {
        return Err(JsError::new(&format!("{name} must be a whole number of at least {least}, not {v}")));
    }
    Ok(v as usize)
}

/// The string `name` of `object`, or `default`.
fn text(object: &JsValue, name: &str, default: &str) -> String {
    Reflect::get(object, &JsValue::from_str(name)).ok().and_then(|v| v.as_string()).unwrap_or_else(|| default.into())
}

impl Config {
    /// Read `{loss, epochs, batch, lr, seed, tiles, tileSize, patch, base, depth, maxSteps,
    /// kernels}`; absent fields take the page's defaults. Each error names the field, the
    /// value and what it must be.
    pub fn from_js(object: &JsValue) -> Result<Config, JsError> {
        let loss: LossName = text(object, "loss", "dice+ce").parse().map_err(|e: String| JsError::new(&e))?;
        let kernels: Kernels =
            text(object, "kernels", "reference").parse().map_err(|e| JsError::new(&format!("{e}")))?;
        let epochs = count(object, "epochs", 5, 1)?;
        let batch = count(object, "batch", 4, 1)?;
        let seed = count(object, "seed", 0, 0)? as u64;
        let (tiles, tile_size) = (count(object, "tiles", 16, 2)?, count(object, "tileSize", 256, 8)?);
        let (patch, base, depth) =
            (count(object, "patch", 128, 8)?, count(object, "base", 16, 1)?, count(object, "depth", 4, 1)?);
        let max_steps = count(object, "maxSteps", 0, 0)?;
        let lr = number(object, "lr", 2e-3)? as f32;
        if lr <= 0.0 {
            return Err(JsError::new(&format!("lr must be positive, not {lr}")));
        }
        if !patch.is_multiple_of(1 << depth) || patch > tile_size {
            return Err(JsError::new(&format!(
                "patch {patch} must be a multiple of 2^depth = {} and at most the tile size {tile_size}",
                1 << depth
            )));
        }
        // As `unet-wgpu train` builds them: the default dropout list cut to the depth, the
        // model seeded with --seed, a cosine schedule down to lr/100.
        let mut dropout = UNetConfig::default().dropout;
        dropout.truncate(depth + 1);
        dropout.resize(depth + 1, *dropout.last().expect("a default dropout list"));
        let options = TrainOptions {
            data: DataSource::Synthetic { tiles, size: tile_size },
            loss,
            epochs,
            batch,
            patch,
            lr,
            optimizer: OptimConfig::new(Method::Adam),
            schedule: Schedule::Cosine { epochs, min_lr: lr * 0.01 },
            seed,
            model: UNetConfig { depth, base, batch_norm: true, dropout, seed, ..UNetConfig::default() },
            max_steps: (max_steps > 0).then_some(max_steps),
            progress: false,
            ..TrainOptions::default()
        };
        Ok(Config { options, kernels, tiles: (tiles, tile_size) })
    }

    /// The same run as a command line, to repeat it natively.
    pub fn command_line(&self) -> String {
        let (o, m, (tiles, size)) = (&self.options, &self.options.model, self.tiles);
        let mut line = format!(
            "unet-wgpu train --synthetic-tiles {tiles} --synthetic-size {size} --loss {} --epochs {} --batch {} \
             --patch {} --lr {} --seed {} --base {} --depth {} --kernels {}",
            o.loss.as_str(),
            o.epochs,
            o.batch,
            o.patch,
            o.lr,
            o.seed,
            m.base,
            m.depth,
            self.kernels
        );
        if let Some(steps) = o.max_steps {
            line += &format!(" --max-steps {steps}");
        }
        line
    }
}
