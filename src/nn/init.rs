//! Weight initialisation of the U-Net, on the CPU, from a seeded [`Rng`].
//!
//! Two recipes, chosen by [`Init`] (`UNetConfig::init`, `--init`); biases are zero in both.
//!
//! [`Init::Default`], this project's own (what every run before `--init` existed used):
//! each weight is `sqrt(2 / fan_in) * z` with `z` drawn from a standard normal and drawn
//! again while `|z| > 2`, i.e. a normal of standard deviation `sqrt(2 / fan_in)` truncated
//! at 2 of them, whose actual standard deviation is 0.88 times that (no correction for the
//! truncation). Every layer gets it: the 3x3 convolutions (`fan_in = in * 3 * 3`), the 2x2
//! transposed convolutions (`fan_in = in`: an output pixel sees one tap per input channel),
//! the 1x1 convolutions after bilinear upsampling and the 1x1 head (`fan_in = in`).
//!
//! [`Init::Keras`], the Keras tutorial's model exactly:
//! - 3x3 convolutions (`kernel_initializer='he_normal'`): Keras' `he_normal`, a
//!   `VarianceScaling(scale=2, mode='fan_in', distribution='truncated_normal')`: a normal
//!   of standard deviation `sqrt(2 / fan_in) / 0.87962566103423978` truncated at 2 of
//!   them (redrawn beyond), so that the truncated draws have standard deviation
//!   `sqrt(2 / fan_in)`; `fan_in = in * 3 * 3`.
//! - 2x2 transposed convolutions and the 1x1 convolutions (head, and the 1x1 after
//!   bilinear upsampling), which the tutorial builds without an initializer: Keras' default
//!   `glorot_uniform`, uniform in `[-limit, limit)` with
//!   `limit = sqrt(6 / (fan_in + fan_out))`, `fan_in = in * kh * kw`,
//!   `fan_out = out * kh * kw` (Keras' fans of a convolution kernel; for a transposed one
//!   Keras swaps in and out, which leaves the sum, and so the limit, unchanged).

use crate::rng::Rng;

/// Keras' correction of the truncated normal: the standard deviation of a standard
/// normal truncated to [-2, 2] (`VarianceScaling` divides by it; Keras writes
/// `.87962566103423978`, which is this f64).
pub const KERAS_TRUNCATION: f64 = 0.879_625_661_034_239_8;

/// How the weights are drawn (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Init {
    /// This project's He-normal, truncated at 2 standard deviations without correction, for
    /// every layer.
    #[default]
    Default,
    /// The Keras tutorial's: `he_normal` for the 3x3 convolutions, `glorot_uniform` for the
    /// transposed and 1x1 convolutions.
    Keras,
}

impl Init {
    /// Every choice, in the order `--help` lists them.
    pub const ALL: [Init; 2] = [Init::Default, Init::Keras];

    /// The command-line and checkpoint-metadata name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Init::Default => "default",
            Init::Keras => "keras",
        }
    }
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Init {
    type Err = String;
    fn from_str(s: &str) -> Result<Init, String> {
        Init::ALL
            .into_iter()
            .find(|i| i.as_str() == s)
            .ok_or_else(|| format!("unknown initialisation {s:?}; choose default or keras"))
    }
}

/// The kind of layer a weight belongs to: the recipes differ by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// A 3x3 convolution of an encoder, bottleneck or decoder block.
    Conv3x3,
    /// A 2x2 stride-2 transposed convolution (the decoder's upsampling).
    Transposed,
    /// A 1x1 convolution: the head, or the upsampling after bilinear interpolation.
    Pointwise,
}

/// Fans of a convolution kernel with `input` and `output` channels and `kh` x `kw` taps:
/// Keras' `(in * kh * kw, out * kh * kw)`.
pub fn keras_fans(input: usize, output: usize, kh: usize, kw: usize) -> (usize, usize) {
    (input * kh * kw, output * kh * kw)
}

/// `len` draws of a normal with standard deviation `std` truncated at `2 * std`:
/// standard normals redrawn while beyond 2, then scaled.
pub fn truncated_normal(rng: &mut Rng, len: usize, std: f64) -> Vec<f32> {
    (0..len)
        .map(|_| loop {
            let z = rng.normal();
            if z.abs() <= 2.0 {
                break (z * std) as f32;
            }
        })
        .collect()
}

/// Keras' `he_normal`: [`truncated_normal`] with `std = sqrt(2 / fan_in) / KERAS_TRUNCATION`.
pub fn keras_he_normal(rng: &mut Rng, len: usize, fan_in: usize) -> Vec<f32> {
    truncated_normal(rng, len, (2.0 / fan_in as f64).sqrt() / KERAS_TRUNCATION)
}

/// Keras' `glorot_uniform`: uniform in `[-limit, limit)`, `limit = sqrt(6 / (fan_in + fan_out))`.
pub fn glorot_uniform(rng: &mut Rng, len: usize, fan_in: usize, fan_out: usize) -> Vec<f32> {
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
    (0..len).map(|_| rng.range(-limit, limit) as f32).collect()
}

/// The weights of a convolution of `layer` kind with `input` and `output` channels and
/// `kh` x `kw` taps, `len = input * output * kh * kw` values in the layer's layout (the
/// draws do not depend on the layout).
pub fn weights(init: Init, layer: Layer, rng: &mut Rng, [input, output, kh, kw]: [usize; 4]) -> Vec<f32> {
    let len = input * output * kh * kw;
    let (fan_in, fan_out) = keras_fans(input, output, kh, kw);
    match (init, layer) {
        // An output pixel of a 2x2 stride-2 transposed conv sees one tap of each input channel.
        (Init::Default, Layer::Transposed) => truncated_normal(rng, len, (2.0 / input as f64).sqrt()),
        (Init::Default, Layer::Conv3x3 | Layer::Pointwise) => truncated_normal(rng, len, (2.0 / fan_in as f64).sqrt()),
        (Init::Keras, Layer::Conv3x3) => keras_he_normal(rng, len, fan_in),
        (Init::Keras, Layer::Transposed | Layer::Pointwise) => glorot_uniform(rng, len, fan_in, fan_out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn std_of(w: &[f32]) -> f64 {
        let n = w.len() as f64;
        let mean = w.iter().map(|&v| v as f64).sum::<f64>() / n;
        (w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
    }

    fn max_abs(w: &[f32]) -> f64 {
        w.iter().map(|v| v.abs() as f64).fold(0.0, f64::max)
    }

    #[test]
    fn the_truncation_constant_is_the_std_of_a_normal_truncated_at_two() {
        // Var of N(0,1) truncated to [-a, a]: 1 - 2 a phi(a) / (2 Phi(a) - 1); a = 2.
        let phi = (-2.0f64).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let mass = 0.954_499_736_103_641_6; // erf(2 / sqrt 2)
        assert!(((1.0 - 4.0 * phi / mass).sqrt() - KERAS_TRUNCATION).abs() < 1e-12);
    }

    #[test]
    fn keras_he_normal_has_the_he_std_and_stays_within_two_of_its_sigma() {
        // A 3x3 convolution of 128 -> 256 channels: 294912 weights, fan_in 1152.
        let shape = [128, 256, 3, 3];
        let w = weights(Init::Keras, Layer::Conv3x3, &mut Rng::new(1), shape);
        assert_eq!(w.len(), 294_912);
        let target = (2.0 / 1152.0f64).sqrt();
        let std = std_of(&w);
        assert!((std / target - 1.0).abs() < 0.02, "std {std}, Keras' he_normal gives {target}");
        let sigma = target / KERAS_TRUNCATION;
        assert!(max_abs(&w) <= 2.0 * sigma + 1e-7, "max |w| {} beyond 2 sigma {}", max_abs(&w), 2.0 * sigma);
        assert!(max_abs(&w) > 1.9 * sigma, "the tails reach near the cut");
    }

    #[test]
    fn the_default_is_the_uncorrected_truncated_normal() {
        let shape = [128, 256, 3, 3];
        let w = weights(Init::Default, Layer::Conv3x3, &mut Rng::new(1), shape);
        let sigma = (2.0 / 1152.0f64).sqrt();
        assert!((std_of(&w) / (sigma * KERAS_TRUNCATION) - 1.0).abs() < 0.02, "std {}", std_of(&w));
        assert!(max_abs(&w) <= 2.0 * sigma + 1e-7);
        // The transposed convolutions' fan-in is the input channels alone.
        let up = weights(Init::Default, Layer::Transposed, &mut Rng::new(2), [256, 128, 2, 2]);
        let sigma = (2.0 / 256.0f64).sqrt();
        assert!((std_of(&up) / (sigma * KERAS_TRUNCATION) - 1.0).abs() < 0.02, "std {}", std_of(&up));
        assert!(max_abs(&up) <= 2.0 * sigma + 1e-7);
    }

    #[test]
    fn keras_glorot_uniform_fills_its_bounds_evenly() {
        // The tutorial's deepest transposed conv, 256 -> 128, 2x2: limit sqrt(6 / (1024 + 512)).
        let w = weights(Init::Keras, Layer::Transposed, &mut Rng::new(3), [256, 128, 2, 2]);
        let limit = (6.0 / 1536.0f64).sqrt();
        assert!(max_abs(&w) <= limit && max_abs(&w) > 0.999 * limit, "max |w| {}, limit {limit}", max_abs(&w));
        let uniform_std = limit / 3.0f64.sqrt();
        assert!((std_of(&w) / uniform_std - 1.0).abs() < 0.02, "std {}, want {uniform_std}", std_of(&w));
        // The head, 16 -> 6 classes, 1x1: limit sqrt(6 / 22).
        let head = weights(Init::Keras, Layer::Pointwise, &mut Rng::new(4), [16, 6, 1, 1]);
        assert_eq!(head.len(), 96);
        assert!(max_abs(&head) <= (6.0 / 22.0f64).sqrt());
        assert_eq!(keras_fans(16, 6, 3, 3), (144, 54));
    }

    #[test]
    fn init_names_parse_and_errors_list_the_choices() {
        assert_eq!("keras".parse::<Init>(), Ok(Init::Keras));
        assert_eq!(Init::Default.to_string(), "default");
        let err = "he".parse::<Init>().unwrap_err();
        assert!(err.contains("\"he\"") && err.contains("default or keras"), "{err}");
    }
}
