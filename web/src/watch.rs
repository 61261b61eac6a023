//! The page's [`Watch`]: every step and epoch of a run goes to a JS callback as a plain
//! object, and the callback's answer (`false`: stop) goes back to the run.

use js_sys::{Array, Function, Object, Reflect, Uint8ClampedArray};
use unet_wgpu::train::live::{EpochReport, Prediction, RunInfo, StepReport, Watch};
use wasm_bindgen::{JsCast, JsValue};

/// Calls `onStart(info)`, `onStep(step)` and `onEpoch(epoch)` of a JS object.
pub struct JsWatch {
    callbacks: JsValue,
    /// Steps an epoch (for the Keras-style line).
    steps: usize,
    colours: Vec<[u8; 3]>,
    classes: Vec<String>,
}

/// A JS object with these fields.
fn object(fields: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (name, value) in fields {
        Reflect::set(&o, &JsValue::from_str(name), value).expect("setting a field of a fresh object");
    }
    o.into()
}

fn num(v: impl Into<f64>) -> JsValue {
    JsValue::from_f64(v.into())
}

/// `null` for `None`.
fn opt(v: Option<f64>) -> JsValue {
    v.map_or(JsValue::NULL, JsValue::from_f64)
}

/// `#rrggbb`.
fn hex([r, g, b]: [u8; 3]) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

impl JsWatch {
    /// Callbacks from `callbacks` (an object with `onStart`, `onStep` and `onEpoch`).
    pub fn new(callbacks: JsValue) -> JsWatch {
        JsWatch { callbacks, steps: 0, colours: Vec::new(), classes: Vec::new() }
    }

    /// Call `name(argument)`; whether the run goes on (anything but `false` says yes). An
    /// exception in the callback is logged and stops the run.
    fn call(&self, name: &str, argument: JsValue) -> bool {
        let Ok(f) = Reflect::get(&self.callbacks, &JsValue::from_str(name)) else { return true };
        let Some(f) = f.dyn_ref::<Function>() else { return true };
        match f.call1(&JsValue::NULL, &argument) {
            Ok(answer) => answer != JsValue::FALSE,
            Err(e) => {
                web_sys::console::error_2(&JsValue::from_str(&format!("{name} threw; stopping the run:")), &e);
                false
            }
        }
    }

    /// RGBA pixels `[size, 3*size]`: the image, its true mask and the predicted mask side by
    /// side; pixels of no class are black.
    fn picture(&self, p: &Prediction) -> Uint8ClampedArray {
        let s = p.size;
        let colour = |k: u8| self.colours.get(k as usize).copied().unwrap_or([0, 0, 0]);
        let mut rgba = Vec::with_capacity(s * 3 * s * 4);
        for y in 0..s {
            for x in 0..s {
                let i = y * s + x;
                rgba.extend_from_slice(&[p.rgb[3 * i], p.rgb[3 * i + 1], p.rgb[3 * i + 2], 255]);
            }
            for labels in [&p.truth, &p.predicted] {
                for x in 0..s {
                    let [r, g, b] = colour(labels[y * s + x]);
                    rgba.extend_from_slice(&[r, g, b, 255]);
                }
            }
        }
        Uint8ClampedArray::from(rgba.as_slice())
    }
}

impl Watch for JsWatch {
    fn start(&mut self, info: &RunInfo) {
        self.steps = info.steps_per_epoch;
        self.colours = info.colours.clone();
        self.classes = info.classes.clone();
        let names: Array = info.classes.iter().map(|c| JsValue::from_str(c)).collect();
        let colours: Array = info.colours.iter().map(|c| JsValue::from_str(&hex(*c))).collect();
        self.call(
            "onStart",
            object(&[
                ("trainPatches", num(info.train_patches as f64)),
                ("valPatches", num(info.val_patches as f64)),
                ("stepsPerEpoch", num(info.steps_per_epoch as f64)),
                ("parameters", num(info.parameters as f64)),
                ("classes", names.into()),
                ("colours", colours.into()),
            ]),
        );
    }

    fn step(&mut self, r: &StepReport) -> bool {
        self.call(
            "onStep",
            object(&[
                ("epoch", num(r.epoch as f64)),
                ("step", num(r.step as f64)),
                ("globalStep", num(r.global_step as f64)),
                ("lr", num(r.lr)),
                ("loss", num(r.loss)),
                ("seconds", num(r.seconds)),
            ]),
        )
    }

    fn epoch(&mut self, r: &EpochReport) -> bool {
        let m = &r.metrics;
        let per_class: Array = match &r.val_confusion {
            Some(c) => (0..self.classes.len())
                .map(|k| {
                    object(&[
                        ("name", JsValue::from_str(&self.classes[k])),
                        ("colour", JsValue::from_str(&hex(self.colours[k]))),
                        ("iou", opt(c.iou(k))),
                        ("dice", opt(c.dice(k))),
                    ])
                })
                .collect(),
            None => Array::new(),
        };
        let pictures: Array = r
            .predictions
            .iter()
            .map(|p| {
                object(&[
                    ("width", num(3 * p.size as u32)),
                    ("height", num(p.size as u32)),
                    ("rgba", self.picture(p).into()),
                ])
            })
            .collect();
        self.call(
            "onEpoch",
            object(&[
                ("epoch", num(m.epoch as f64)),
                ("loss", num(m.loss)),
                ("accuracy", num(m.accuracy)),
                ("meanIou", num(m.mean_iou)),
                ("valLoss", opt(m.val_loss)),
                ("valAccuracy", opt(m.val_accuracy)),
                ("valMeanIou", opt(m.val_mean_iou)),
                ("lr", num(m.lr)),
                ("seconds", num(m.seconds)),
                ("kerasLine", JsValue::from_str(&m.keras_line(self.steps))),
                ("perClass", per_class.into()),
                ("predictions", pictures.into()),
            ]),
        )
    }
}
