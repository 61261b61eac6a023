//! The shape of a U-Net ([`UNetConfig`]) and how it is recorded in checkpoint metadata.

use std::collections::BTreeMap;

use super::init::Init;

/// How the decoder doubles the resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upsampling {
    /// 2x2 transposed convolution, stride 2 (the Keras tutorial, the original U-Net).
    Transposed,
    /// Bilinear 2x upsampling followed by a 1x1 convolution that halves the channels.
    Bilinear,
}

/// The shape of a U-Net.
#[derive(Clone, Debug, PartialEq)]
pub struct UNetConfig {
    /// Input channels (3 for RGB).
    pub in_channels: usize,
    /// Output classes.
    pub classes: usize,
    /// Number of downsamplings (4: 16-32-64-128-256 filters).
    pub depth: usize,
    /// Filters at the first level; doubled at each level down.
    pub base: usize,
    /// Batch norm after each 3x3 convolution.
    pub batch_norm: bool,
    /// Dropout probability per level, from the top level to the bottleneck
    /// (`depth + 1` values), mirrored on the way up.
    pub dropout: Vec<f32>,
    /// How the decoder upsamples.
    pub upsampling: Upsampling,
    /// How the weights are drawn ([`Init::Default`] unless asked).
    pub init: Init,
    /// Seed of the weight initialisation.
    pub seed: u64,
}

impl Default for UNetConfig {
    /// The Keras tutorial model: 3 -> 6 classes, depth 4, base 16, dropout
    /// 0.1, 0.1, 0.2, 0.2, 0.3, transposed convolutions, no batch norm.
    fn default() -> Self {
        UNetConfig {
            in_channels: 3,
            classes: 6,
            depth: 4,
            base: 16,
            batch_norm: false,
            dropout: vec![0.1, 0.1, 0.2, 0.2, 0.3],
            upsampling: Upsampling::Transposed,
            init: Init::Default,
            seed: 0,
        }
    }
}

impl UNetConfig {
    /// The configuration as checkpoint metadata (`model.<field>` keys).
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let dropout: Vec<String> = self.dropout.iter().map(|p| p.to_string()).collect();
        let upsampling = match self.upsampling {
            Upsampling::Transposed => "transposed",
            Upsampling::Bilinear => "bilinear",
        };
        [
            ("in_channels", self.in_channels.to_string()),
            ("classes", self.classes.to_string()),
            ("depth", self.depth.to_string()),
            ("base", self.base.to_string()),
            ("batch_norm", self.batch_norm.to_string()),
            ("dropout", dropout.join(",")),
            ("upsampling", upsampling.to_string()),
            ("init", self.init.to_string()),
            ("seed", self.seed.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("model.{k}"), v))
        .collect()
    }

    /// Read a configuration back from checkpoint metadata; the error names the
    /// missing or unreadable key. A checkpoint without `model.init` (written before it
    /// existed) was initialised with [`Init::Default`].
    pub fn from_metadata(meta: &BTreeMap<String, String>) -> Result<UNetConfig, String> {
        fn get<T: std::str::FromStr>(meta: &BTreeMap<String, String>, key: &str) -> Result<T, String> {
            let value = meta.get(&format!("model.{key}")).ok_or_else(|| format!("no model.{key} in the metadata"))?;
            value.parse().map_err(|_| format!("model.{key} = {value:?} is not readable"))
        }
        let dropout: String = get(meta, "dropout")?;
        let dropout = dropout
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|p| p.parse().map_err(|_| format!("model.dropout has {p:?}, not a number")))
            .collect::<Result<Vec<f32>, String>>()?;
        let upsampling = match get::<String>(meta, "upsampling")?.as_str() {
            "transposed" => Upsampling::Transposed,
            "bilinear" => Upsampling::Bilinear,
            other => return Err(format!("model.upsampling = {other:?}: expected transposed or bilinear")),
        };
        Ok(UNetConfig {
            in_channels: get(meta, "in_channels")?,
            classes: get(meta, "classes")?,
            depth: get(meta, "depth")?,
            base: get(meta, "base")?,
            batch_norm: get(meta, "batch_norm")?,
            dropout,
            upsampling,
            init: match meta.get("model.init") {
                None => Init::Default,
                Some(name) => name.parse().map_err(|e| format!("model.init: {e}"))?,
            },
            seed: get(meta, "seed")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_round_trips_through_checkpoint_metadata() {
        let cfg = UNetConfig {
            batch_norm: true,
            upsampling: Upsampling::Bilinear,
            init: Init::Keras,
            seed: 7,
            ..UNetConfig::default()
        };
        let mut meta = cfg.to_metadata();
        assert_eq!(UNetConfig::from_metadata(&meta), Ok(cfg.clone()));
        meta.remove("model.init");
        assert_eq!(UNetConfig::from_metadata(&meta), Ok(UNetConfig { init: Init::Default, ..cfg }));
        meta.remove("model.depth");
        assert_eq!(UNetConfig::from_metadata(&meta), Err("no model.depth in the metadata".to_string()));
    }
}
