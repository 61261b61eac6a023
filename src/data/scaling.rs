//! How pixel bytes become the network's inputs.
//!
//! Pixels become `f32` in [0, 1] (`/255`, [`Scaling::Unit`]).
//! [`Scaling::Standardize`] (the default) further subtracts a per-channel mean and
//! divides by a standard deviation, both measured on the *training* patches only
//! ([`Patches::channel_stats`]) so no validation pixel leaks into training.
//! [`Scaling::MinMaxPerPatch`] is the Keras tutorial's: each patch min-max scaled on its
//! own, per channel. The fixed mappings keep a dark patch dark, which is information,
//! and give training, validation and inference the very same mapping; per-patch scaling
//! stretches a hazy or dark patch to the full range, and at prediction each window is
//! stretched by its own extremes.
//!
//! A checkpoint records its scaling ([`Scaling::to_metadata`]) so that prediction
//! applies the same one.

use std::collections::BTreeMap;
use std::fmt;

use super::patches::Patches;

/// Per-channel mean and standard deviation of pixels scaled to [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChannelStats {
    /// Mean of R, G, B.
    pub mean: [f32; 3],
    /// Standard deviation of R, G, B.
    pub std: [f32; 3],
}

/// How bytes become the network's input values.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Scaling {
    /// `v / 255`, in [0, 1].
    #[default]
    Unit,
    /// `(v / 255 - mean) / std` per channel, with the training set's stats.
    Standardize(ChannelStats),
    /// Each patch (or prediction window) on its own, each channel to [0, 1] by that
    /// patch's own minimum and maximum of the channel: scikit-learn's `MinMaxScaler`
    /// fitted and applied to the patch's pixels as `(H*W, 3)`, as the Keras tutorial
    /// does. A constant channel maps to 0, as in sklearn.
    MinMaxPerPatch,
}

/// Which [`Scaling`] to use, before any statistics are measured (`--scaling`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InputScaling {
    /// [`Scaling::Standardize`] with the training patches' statistics (the default).
    #[default]
    Standardize,
    /// [`Scaling::Unit`]: `v / 255`.
    Unit,
    /// [`Scaling::MinMaxPerPatch`]: the Keras tutorial's scaling.
    MinMaxPerPatch,
}

impl InputScaling {
    /// Every choice, in the order `--help` lists them.
    pub const ALL: [InputScaling; 3] = [InputScaling::Standardize, InputScaling::Unit, InputScaling::MinMaxPerPatch];

    /// The command-line name: `standardize`, `unit` or `minmax-per-patch`.
    pub fn as_str(&self) -> &'static str {
        match self {
            InputScaling::Standardize => "standardize",
            InputScaling::Unit => "unit",
            InputScaling::MinMaxPerPatch => "minmax-per-patch",
        }
    }

    /// The scaling for a model trained on `train`: the statistics of
    /// [`InputScaling::Standardize`] are measured on the training patches only, so no
    /// validation pixel leaks into training.
    pub fn fit(&self, train: &Patches) -> Scaling {
        match self {
            InputScaling::Standardize => Scaling::Standardize(train.channel_stats()),
            InputScaling::Unit => Scaling::Unit,
            InputScaling::MinMaxPerPatch => Scaling::MinMaxPerPatch,
        }
    }
}

impl fmt::Display for InputScaling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for InputScaling {
    type Err = String;
    fn from_str(s: &str) -> Result<InputScaling, String> {
        InputScaling::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown scaling {s:?}; choose standardize, unit or minmax-per-patch"))
    }
}

impl Scaling {
    /// The checkpoint metadata key that records the scaling a model was trained with.
    pub const METADATA_KEY: &'static str = "data.scaling";

    /// Which kind of scaling this is.
    pub fn kind(&self) -> InputScaling {
        match self {
            Scaling::Unit => InputScaling::Unit,
            Scaling::Standardize(_) => InputScaling::Standardize,
            Scaling::MinMaxPerPatch => InputScaling::MinMaxPerPatch,
        }
    }

    /// The scaling as checkpoint metadata: `data.scaling` = `unit`,
    /// `minmax-per-patch`, or `standardize:<m0>,<m1>,<m2>:<s0>,<s1>,<s2>` (means,
    /// then standard deviations of R, G, B; written so that they read back exactly).
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let value = match self {
            Scaling::Unit => "unit".to_string(),
            Scaling::MinMaxPerPatch => "minmax-per-patch".to_string(),
            Scaling::Standardize(s) => {
                let list = |v: &[f32; 3]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
                format!("standardize:{}:{}", list(&s.mean), list(&s.std))
            }
        };
        BTreeMap::from([(Scaling::METADATA_KEY.to_string(), value)])
    }

    /// Read the scaling back from checkpoint metadata. A checkpoint without
    /// the key was trained on [`Scaling::Unit`] inputs (the default); an
    /// unreadable value is an error naming it.
    pub fn from_metadata(meta: &BTreeMap<String, String>) -> Result<Scaling, String> {
        let Some(value) = meta.get(Scaling::METADATA_KEY) else {
            return Ok(Scaling::Unit);
        };
        let bad = |why: &str| {
            format!(
                "{} = {value:?} {why}: expected `unit`, `minmax-per-patch` or `standardize:<m0>,<m1>,<m2>:<s0>,<s1>,<s2>`",
                Scaling::METADATA_KEY
            )
        };
        match value.as_str() {
            "unit" => return Ok(Scaling::Unit),
            "minmax-per-patch" => return Ok(Scaling::MinMaxPerPatch),
            _ => {}
        }
        let parts: Vec<&str> = value.split(':').collect();
        let ["standardize", mean, std] = parts[..] else {
            return Err(bad("is not a known scaling"));
        };
        let three = |list: &str| -> Result<[f32; 3], String> {
            let values: Vec<f32> = list
                .split(',')
                .map(|x| x.trim().parse::<f32>().ok().filter(|v| v.is_finite()))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("has a value that is not a finite number"))?;
            values.try_into().map_err(|_| bad("needs three values per list"))
        };
        Ok(Scaling::Standardize(ChannelStats { mean: three(mean)?, std: three(std)? }))
    }

    /// The input value of each byte of one patch, per channel: a lookup table,
    /// because there are only 256 inputs and a patch converts many thousand bytes.
    /// `table[c][v]` is the network input for byte `v` of channel `c`. `rgb` is the
    /// patch's interleaved RGB bytes (`[P,P,3]`), read only by
    /// [`Scaling::MinMaxPerPatch`]; the other scalings give the same table for every patch.
    pub(crate) fn table(&self, rgb: &[u8]) -> [[f32; 256]; 3] {
        let ranges = match self {
            Scaling::MinMaxPerPatch => channel_ranges(rgb),
            _ => [(0, 0); 3],
        };
        let mut table = [[0.0; 256]; 3];
        for (c, row) in table.iter_mut().enumerate() {
            for (v, out) in row.iter_mut().enumerate() {
                let unit = v as f32 / 255.0;
                *out = match self {
                    Scaling::Unit => unit,
                    // A flat channel has std 0: dividing by a floor keeps the
                    // value finite (and 0) instead of NaN.
                    Scaling::Standardize(s) => (unit - s.mean[c]) / s.std[c].max(1e-6),
                    Scaling::MinMaxPerPatch => sklearn_min_max(v as u8, ranges[c]),
                };
            }
        }
        table
    }
}

/// The smallest and largest byte of each channel of interleaved RGB bytes; `(0, 0)`
/// for no pixel.
fn channel_ranges(rgb: &[u8]) -> [(u8, u8); 3] {
    let mut ranges = [(u8::MAX, u8::MIN); 3];
    for px in rgb.chunks_exact(3) {
        for (c, (lo, hi)) in ranges.iter_mut().enumerate() {
            (*lo, *hi) = ((*lo).min(px[c]), (*hi).max(px[c]));
        }
    }
    ranges.map(|(lo, hi)| if lo > hi { (0, 0) } else { (lo, hi) })
}

/// `v` scaled to [0, 1] by the channel's `(min, max)` exactly as sklearn's
/// `MinMaxScaler().fit_transform` does in f64: `scale = 1 / (max - min)` (1 where
/// `max == min`, sklearn's `_handle_zeros_in_scale`), `min_ = 0 - min * scale`, then
/// `v * scale + min_`; rounded to f32 as the network's input.
fn sklearn_min_max(v: u8, (min, max): (u8, u8)) -> f32 {
    let range = (max - min) as f64;
    let scale = 1.0 / if range == 0.0 { 1.0 } else { range };
    let offset = 0.0 - min as f64 * scale;
    (v as f64 * scale + offset) as f32
}

impl Patches {
    /// Per-channel mean and standard deviation in [0, 1] units, for
    /// [`Scaling::Standardize`]. Compute it on the training patches only.
    pub fn channel_stats(&self) -> ChannelStats {
        // Exact integer sums: no f32 rounding drift over a billion pixels.
        let mut sum = [0u64; 3];
        let mut sum_sq = [0u64; 3];
        for px in self.rgb.chunks_exact(3) {
            for c in 0..3 {
                let v = px[c] as u64;
                sum[c] += v;
                sum_sq[c] += v * v;
            }
        }
        let n = (self.rgb.len() / 3).max(1) as f64;
        let mut stats = ChannelStats { mean: [0.0; 3], std: [0.0; 3] };
        for c in 0..3 {
            let mean = sum[c] as f64 / n;
            let var = (sum_sq[c] as f64 / n - mean * mean).max(0.0);
            stats.mean[c] = (mean / 255.0) as f32;
            stats.std[c] = (var.sqrt() / 255.0) as f32;
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::patches::tests::{names, tile};
    use crate::data::patches::{patchify, BatchOptions};

    #[test]
    fn scaling_round_trips_through_checkpoint_metadata() {
        let stats = ChannelStats { mean: [0.1, 0.2, 1.0 / 3.0], std: [0.25, 0.5, 0.123_456_79] };
        for scaling in [Scaling::Unit, Scaling::Standardize(stats), Scaling::MinMaxPerPatch] {
            assert_eq!(Scaling::from_metadata(&scaling.to_metadata()), Ok(scaling));
        }
        assert_eq!(
            Scaling::Standardize(stats).to_metadata()["data.scaling"],
            "standardize:0.1,0.2,0.33333334:0.25,0.5,0.12345679"
        );
        assert_eq!(Scaling::MinMaxPerPatch.to_metadata()["data.scaling"], "minmax-per-patch");
        assert_eq!(Scaling::from_metadata(&BTreeMap::new()), Ok(Scaling::Unit));
        for bad in [
            "minmax",
            "standardize:1,2:1,2,3",
            "standardize:1,2,x:1,2,3",
            "standardize:1,2,3",
            "standardize:1,2,3:1,2,inf",
        ] {
            let meta = BTreeMap::from([("data.scaling".to_string(), bad.to_string())]);
            let err = Scaling::from_metadata(&meta).unwrap_err();
            assert!(err.contains("data.scaling") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn min_max_per_patch_matches_a_hand_computation() {
        // Four pixels: R 10, 20, 30, 60 (min 10, max 60); G constant 7; B 0, 255, 51, 102.
        let rgb = [10, 7, 0, 20, 7, 255, 30, 7, 51, 60, 7, 102];
        let table = Scaling::MinMaxPerPatch.table(&rgb);
        let r: Vec<f32> = [10, 20, 30, 60].iter().map(|&v| table[0][v]).collect();
        assert_eq!(r, [0.0, 0.2, 0.4, 1.0], "(v - 10) / 50");
        assert_eq!(table[1][7], 0.0, "a constant channel maps to 0, as in sklearn");
        let b: Vec<f32> = [0, 255, 51, 102].iter().map(|&v| table[2][v]).collect();
        assert_eq!(b, [0.0, 1.0, 0.2, 0.4], "v / 255");
        // Another patch, other extremes: the scaling is per patch.
        let other = Scaling::MinMaxPerPatch.table(&[0, 0, 0, 100, 100, 100]);
        assert_eq!((other[0][10], other[0][100]), (0.1, 1.0));
        // The fixed scalings ignore the patch.
        assert_eq!(Scaling::Unit.table(&rgb), Scaling::Unit.table(&[]));
        assert_eq!(Scaling::Unit.table(&rgb)[0][51], 0.2);
    }

    #[test]
    fn min_max_batches_scale_every_patch_to_its_own_range() {
        // Tile 0 patches hold R = x in 0..4 or 4..8; each patch's R must span exactly [0, 1].
        let p = patchify(&[tile(0, 8, 8), tile(9, 8, 8)], 4, &names()).unwrap();
        let options = BatchOptions { batch_size: 8, scaling: Scaling::MinMaxPerPatch, ..Default::default() };
        let b = p.batches(&options).unwrap().next().unwrap();
        let plane = 16;
        for k in 0..b.n {
            let r = &b.images[k * 3 * plane..][..plane];
            let (lo, hi) = r.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            assert_eq!((lo, hi), (0.0, 1.0), "patch {k}");
            assert_eq!(r[1], 1.0 / 3.0, "x = 1 of 0..=3 in patch {k}");
            let blue = &b.images[(k * 3 + 2) * plane..][..plane];
            assert!(blue.iter().all(|&v| v == 0.0), "the tile id is constant in a patch: 0");
        }
    }

    #[test]
    fn scaling_names_parse_and_errors_list_the_choices() {
        assert_eq!("minmax-per-patch".parse::<InputScaling>(), Ok(InputScaling::MinMaxPerPatch));
        for kind in InputScaling::ALL {
            assert_eq!(kind.as_str().parse::<InputScaling>(), Ok(kind));
        }
        let err = "minmax".parse::<InputScaling>().unwrap_err();
        assert!(err.contains("\"minmax\"") && err.contains("standardize, unit or minmax-per-patch"), "{err}");
        assert_eq!(Scaling::MinMaxPerPatch.kind(), InputScaling::MinMaxPerPatch);
    }

    #[test]
    fn standardized_batches_have_zero_mean_and_unit_std() {
        let p = patchify(&[tile(0, 8, 8), tile(9, 8, 8)], 4, &names()).unwrap();
        let stats = p.channel_stats();
        assert!((stats.mean[0] - 3.5 / 255.0).abs() < 1e-6, "{stats:?}");
        assert!((stats.std[2] - 4.5 / 255.0).abs() < 1e-6, "{stats:?}");
        let options = BatchOptions { batch_size: 8, scaling: Scaling::Standardize(stats), ..Default::default() };
        let b = p.batches(&options).unwrap().next().unwrap();
        let plane = 16;
        for c in 0..3 {
            let v: Vec<f64> =
                (0..b.n).flat_map(|k| b.images[(k * 3 + c) * plane..][..plane].iter().map(|&v| v as f64)).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
            assert!(mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3, "channel {c}: mean {mean}, var {var}");
        }
    }
}
