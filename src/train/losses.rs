//! The losses the command line offers by name, and the loss each name trains with.

use crate::data::IGNORE;
use crate::loss::{LossConfig, Term};

/// The losses the command line offers by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossName {
    /// Categorical cross-entropy.
    Ce,
    /// Soft Dice (per class, averaged).
    Dice,
    /// Focal loss (alpha 0.25, gamma 2).
    Focal,
    /// Dice + cross-entropy.
    DiceCe,
    /// Dice + focal (the Keras tutorial's `total_loss`).
    DiceFocal,
    /// Tversky (alpha 0.3, beta 0.7).
    Tversky,
    /// Focal Tversky (alpha 0.3, beta 0.7, gamma 4/3).
    FocalTversky,
    /// Symmetric Unified Focal loss (lambda 0.5, delta 0.6, gamma 0.5).
    UnifiedFocal,
}

impl LossName {
    /// Every loss, in the order `compare-losses` runs them.
    pub const ALL: [LossName; 8] = [
        LossName::Ce,
        LossName::Dice,
        LossName::Focal,
        LossName::DiceCe,
        LossName::DiceFocal,
        LossName::Tversky,
        LossName::FocalTversky,
        LossName::UnifiedFocal,
    ];

    /// The command-line name (`dice+ce`).
    pub fn as_str(&self) -> &'static str {
        match self {
            LossName::Ce => "ce",
            LossName::Dice => "dice",
            LossName::Focal => "focal",
            LossName::DiceCe => "dice+ce",
            LossName::DiceFocal => "dice+focal",
            LossName::Tversky => "tversky",
            LossName::FocalTversky => "focal-tversky",
            LossName::UnifiedFocal => "unified-focal",
        }
    }

    /// The loss to train with: ignored pixels skipped, classes absent from a
    /// batch's target and prediction left out of Dice-type class means (a
    /// 256x256 patch often lacks some classes), smoothing 1.
    pub fn config(&self, class_weights: Option<Vec<f32>>) -> LossConfig {
        let dice = Term::Dice { pooled: false };
        let terms = match self {
            LossName::Ce => vec![(1.0, Term::CrossEntropy)],
            LossName::Dice => vec![(1.0, dice)],
            LossName::Focal => vec![(1.0, Term::FOCAL)],
            LossName::DiceCe => vec![(1.0, dice), (1.0, Term::CrossEntropy)],
            LossName::DiceFocal => vec![(1.0, dice), (1.0, Term::FOCAL)],
            LossName::Tversky => vec![(1.0, Term::TVERSKY)],
            LossName::FocalTversky => vec![(1.0, Term::FOCAL_TVERSKY)],
            LossName::UnifiedFocal => vec![(1.0, Term::UNIFIED_FOCAL)],
        };
        LossConfig { terms, class_weights, ignore_index: Some(IGNORE), smooth: 1.0, skip_absent: true }
    }
}

impl std::str::FromStr for LossName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        LossName::ALL.into_iter().find(|l| l.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = LossName::ALL.iter().map(|l| l.as_str()).collect();
            format!("unknown loss {s:?}; choose one of {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_names_parse_and_errors_list_the_choices() {
        assert_eq!("dice+ce".parse::<LossName>(), Ok(LossName::DiceCe));
        let err = "dice-ce".parse::<LossName>().unwrap_err();
        assert!(err.contains("dice+ce") && err.contains("unified-focal"), "{err}");
    }
}
