//! The train/validation split: by image (the default) or by patch (the Keras tutorial's).

use super::patches::Patches;
use super::DataError;
use crate::rng::Rng;

/// Which unit the train/validation split assigns to one side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SplitLevel {
    /// Whole images go to one side (the default). Neighbouring patches of one
    /// image share lighting, texture and objects cut in two by the patch
    /// border; splitting patches would put such near-duplicates on both
    /// sides and make validation scores look better than they are.
    #[default]
    Image,
    /// Patches are assigned one by one, as the Keras tutorial's
    /// `train_test_split(test_size=0.2, random_state=42)` does, with its sizes
    /// (see [`Patches::split`]): exact proportions, optimistic validation.
    Patch,
}

/// How to split patches into training and validation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SplitOptions {
    /// Seed of the assignment: the same seed gives the same split.
    pub seed: u64,
    /// Share of patches for validation, in [0, 1); 0.2 by default.
    pub validation: f64,
    /// Split by image or by patch.
    pub level: SplitLevel,
}

impl Default for SplitOptions {
    /// 80/20 by image, seed 0.
    fn default() -> SplitOptions {
        SplitOptions { seed: 0, validation: 0.2, level: SplitLevel::Image }
    }
}

impl SplitLevel {
    /// Both levels, in the order `--help` lists them.
    pub const ALL: [SplitLevel; 2] = [SplitLevel::Image, SplitLevel::Patch];

    /// The command-line name: `image` or `patch`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SplitLevel::Image => "image",
            SplitLevel::Patch => "patch",
        }
    }
}

impl std::fmt::Display for SplitLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SplitLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<SplitLevel, String> {
        SplitLevel::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("unknown split {s:?}; choose image or patch"))
    }
}

/// The validation size of scikit-learn's `train_test_split(test_size=validation)` for `n`
/// samples: `ceil(validation * n)`, the product in f64 as in sklearn's
/// `_validate_shuffle_split` (so 0.2 of 11 is 3, where rounding gives 2); the training
/// side gets the other `n - ceil(validation * n)`.
pub fn sklearn_test_size(n: usize, validation: f64) -> usize {
    (validation * n as f64).ceil() as usize
}

/// Fisher-Yates shuffle with our seeded generator.
pub fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

impl Patches {
    /// Split into `(train, validation)`, deterministically from the seed
    /// (see [`SplitLevel`] for why whole images is the default). Both keep
    /// the original patch order.
    ///
    /// By patch, the patches are shuffled and the first [`sklearn_test_size`] of them
    /// go to validation, the rest to training: the sizes of scikit-learn's
    /// `train_test_split(test_size=validation)`, the Keras tutorial's split (its
    /// `random_state=42` permutation is numpy's, which this generator does not
    /// reproduce). A split that would leave no training patch is an error, as in
    /// sklearn.
    ///
    /// By image, the images are shuffled and each, in turn, joins validation
    /// when that brings its patch count closer to the target share (and the
    /// first always does), so the share is near, not exactly, `validation`.
    pub fn split(&self, options: &SplitOptions) -> Result<(Patches, Patches), DataError> {
        if !(0.0..1.0).contains(&options.validation) {
            return Err(DataError::Option {
                name: "validation share",
                value: options.validation.to_string(),
                reason: "it must be in [0, 1), e.g. 0.2 for an 80/20 split".into(),
            });
        }
        let mut rng = Rng::new(options.seed);
        let mut in_validation = vec![false; self.len()];
        if options.validation > 0.0 {
            match options.level {
                SplitLevel::Patch => {
                    let mut order: Vec<usize> = (0..self.len()).collect();
                    shuffle(&mut order, &mut rng);
                    let count = sklearn_test_size(self.len(), options.validation);
                    if count >= self.len() {
                        return Err(DataError::Option {
                            name: "validation share",
                            value: options.validation.to_string(),
                            reason: format!(
                                "{count} of {} patches would go to validation and none to training: use a smaller share or more patches",
                                self.len()
                            ),
                        });
                    }
                    for &i in &order[..count] {
                        in_validation[i] = true;
                    }
                }
                SplitLevel::Image => {
                    let mut images: Vec<usize> = self.origins.iter().map(|o| o.tile).collect();
                    images.sort_unstable();
                    images.dedup();
                    if images.len() < 2 {
                        return Err(DataError::Option {
                            name: "split level",
                            value: "Image".into(),
                            reason: format!(
                                "the patches come from {} image(s), and a split by image needs at least 2: split by patch (SplitLevel::Patch, --split patch) or add images",
                                images.len()
                            ),
                        });
                    }
                    let mut per_image = vec![0usize; images[images.len() - 1] + 1];
                    for o in &self.origins {
                        per_image[o.tile] += 1;
                    }
                    shuffle(&mut images, &mut rng);
                    let target = self.len() as f64 * options.validation;
                    let mut chosen = vec![false; per_image.len()];
                    let mut count = 0usize;
                    // The last image always stays in training.
                    for &image in &images[..images.len() - 1] {
                        let with = (count + per_image[image]) as f64;
                        if count == 0 || (with - target).abs() < (count as f64 - target).abs() {
                            chosen[image] = true;
                            count += per_image[image];
                        }
                    }
                    for (i, o) in self.origins.iter().enumerate() {
                        in_validation[i] = chosen[o.tile];
                    }
                }
            }
        }
        let (val, train): (Vec<usize>, Vec<usize>) = (0..self.len()).partition(|&i| in_validation[i]);
        Ok((self.select(&train), self.select(&val)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::patches::patchify;
    use crate::data::patches::tests::{names, tile};
    use crate::data::Tile;

    #[test]
    fn split_by_image_keeps_images_whole_and_is_deterministic() {
        let tiles: Vec<Tile> = (0..10).map(|i| tile(i, 4 + 2 * (i as usize % 3), 4)).collect();
        let p = patchify(&tiles, 2, &names()).unwrap();
        let options = SplitOptions { seed: 11, ..Default::default() };
        let (train, val) = p.split(&options).unwrap();
        assert_eq!(train.len() + val.len(), p.len());
        let share = val.len() as f64 / p.len() as f64;
        assert!((0.1..0.3).contains(&share), "validation share {share}");
        for o in &val.origins {
            assert!(train.origins.iter().all(|t| t.tile != o.tile), "image {} on both sides", o.tile);
        }
        assert_eq!(p.split(&options).unwrap(), (train.clone(), val.clone()));
        let (_, other) = p.split(&SplitOptions { seed: 12, ..options }).unwrap();
        assert_ne!(other.origins, val.origins, "another seed, another split");
    }

    #[test]
    fn split_by_patch_has_exact_proportions_and_edge_cases() {
        let p = patchify(&[tile(0, 10, 10)], 2, &names()).unwrap();
        let (train, val) = p.split(&SplitOptions { level: SplitLevel::Patch, ..Default::default() }).unwrap();
        assert_eq!((train.len(), val.len()), (20, 5));
        let (train, val) = p.split(&SplitOptions { validation: 0.0, ..Default::default() }).unwrap();
        assert_eq!((train.len(), val.len()), (25, 0));
        let msg = p.split(&SplitOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("1 image(s)") && msg.contains("SplitLevel::Patch"), "{msg}");
        assert!(p.split(&SplitOptions { validation: 1.0, ..Default::default() }).is_err());
        let one = p.select(&[3]);
        let msg = one.split(&SplitOptions { level: SplitLevel::Patch, ..Default::default() }).unwrap_err();
        assert!(msg.to_string().contains("1 of 1 patches would go to validation"), "{msg}");
    }

    #[test]
    fn split_by_patch_sizes_follow_sklearn_train_test_split() {
        // sklearn: n_test = ceil(test_size * n) in float64, n_train = n - n_test.
        // train_test_split(range(n), test_size=0.2) gives these test sizes.
        let sizes =
            [(1, 1), (4, 1), (5, 1), (6, 2), (10, 2), (11, 3), (25, 5), (35, 7), (36, 8), (100, 20), (1234, 247)];
        for (n, test) in sizes {
            assert_eq!(sklearn_test_size(n, 0.2), test, "n = {n}");
        }
        let tiles: Vec<Tile> = (0..3).map(|i| tile(i, 10, 14)).collect();
        let p = patchify(&tiles, 2, &names()).unwrap(); // 3 x 35 patches
        let (train, val) = p.split(&SplitOptions { level: SplitLevel::Patch, seed: 42, ..Default::default() }).unwrap();
        assert_eq!((train.len(), val.len()), (105 - 21, 21));
        let (train, val) = p
            .select(&(0..36).collect::<Vec<_>>())
            .split(&SplitOptions { level: SplitLevel::Patch, ..Default::default() })
            .unwrap();
        assert_eq!((train.len(), val.len()), (28, 8));
        assert!(train.origins.iter().all(|o| !val.origins.contains(o)), "a patch on both sides");
    }

    #[test]
    fn split_names_parse_and_errors_list_the_choices() {
        assert_eq!("patch".parse::<SplitLevel>(), Ok(SplitLevel::Patch));
        assert_eq!(SplitLevel::default().to_string(), "image");
        let err = "tile".parse::<SplitLevel>().unwrap_err();
        assert!(err.contains("\"tile\"") && err.contains("image or patch"), "{err}");
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut a: Vec<usize> = (0..50).collect();
        let mut b = a.clone();
        shuffle(&mut a, &mut Rng::new(4));
        shuffle(&mut b, &mut Rng::new(4));
        assert_eq!(a, b);
        assert_ne!(a, (0..50).collect::<Vec<_>>());
        a.sort();
        assert_eq!(a, (0..50).collect::<Vec<_>>());
        shuffle::<u8>(&mut [], &mut Rng::new(4)); // no panic on empty input
    }
}
