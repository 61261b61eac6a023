use super::*;
use crate::rng::Rng;
use crate::testing::{assert_close, assert_close_f32, assert_close_floor, gpu, numeric_grad, to_f64};

/// Every configuration the tests sweep: each term alone, the sums people
/// train with, and the options that change which pixels and classes count.
fn configs(c: usize) -> Vec<(&'static str, LossConfig)> {
    let weights: Vec<f32> = (0..c).map(|k| 0.5 + k as f32 * 0.25).collect();
    let with = |mut cfg: LossConfig, f: &dyn Fn(&mut LossConfig)| {
        f(&mut cfg);
        cfg
    };
    vec![
        ("ce", LossConfig::new(Term::CrossEntropy)),
        ("ce weighted", with(LossConfig::new(Term::CrossEntropy), &|c| c.class_weights = Some(weights.clone()))),
        ("dice", LossConfig::new(Term::Dice { pooled: false })),
        (
            "dice weighted",
            with(LossConfig::new(Term::Dice { pooled: false }), &|c| c.class_weights = Some(weights.clone())),
        ),
        ("dice pooled", LossConfig::new(Term::Dice { pooled: true })),
        ("dice skip absent", with(LossConfig::new(Term::Dice { pooled: false }), &|c| c.skip_absent = true)),
        ("dice small smooth", with(LossConfig::new(Term::Dice { pooled: false }), &|c| c.smooth = 1e-3)),
        ("focal", LossConfig::new(Term::FOCAL)),
        ("focal gamma 0.5", LossConfig::new(Term::Focal { alpha: 0.7, gamma: 0.5 })),
        ("tversky", LossConfig::new(Term::TVERSKY)),
        ("focal tversky", LossConfig::new(Term::FOCAL_TVERSKY)),
        ("unified focal", LossConfig::new(Term::UNIFIED_FOCAL)),
        (
            "unified focal asymmetric",
            LossConfig::new(Term::UnifiedFocal {
                lambda: 0.4,
                delta: 0.7,
                gamma: 0.5,
                asymmetric: true,
                background: Some(1),
            }),
        ),
        ("dice + ce", LossConfig::sum(&[(1.0, Term::Dice { pooled: false }), (1.0, Term::CrossEntropy)])),
        ("dice + focal", LossConfig::sum(&[(1.0, Term::Dice { pooled: false }), (1.0, Term::FOCAL)])),
        (
            "everything, ignore label",
            with(
                LossConfig::sum(&[
                    (0.5, Term::CrossEntropy),
                    (1.0, Term::Dice { pooled: false }),
                    (0.25, Term::FOCAL),
                    (0.5, Term::FOCAL_TVERSKY),
                    (0.75, Term::UNIFIED_FOCAL),
                ]),
                &|cfg| {
                    cfg.ignore_index = Some(0);
                    cfg.class_weights = Some(weights.clone());
                },
            ),
        ),
    ]
}

/// Random logits (scale `spread`) and labels in `0..c`, a few set to `c`
/// (out of range: ignored) unless `all_valid`.
fn problem(seed: u64, dims: [usize; 4], spread: f64) -> (Vec<f64>, Vec<u32>) {
    let [n, c, h, w] = dims;
    let mut rng = Rng::new(seed);
    let logits = (0..n * c * h * w).map(|_| rng.range(-spread, spread)).collect();
    let labels = (0..n * h * w).map(|_| if rng.uniform() < 0.1 { c as u32 } else { rng.below(c) as u32 }).collect();
    (logits, labels)
}

fn run_gpu(cfg: &LossConfig, logits: &[f64], labels: &[u32], dims: [usize; 4]) -> (Vec<f32>, Vec<f32>) {
    let gpu = gpu();
    let [n, _, h, w] = dims;
    let z: Vec<f32> = logits.iter().map(|&v| v as f32).collect();
    let (zt, yt) = (gpu.upload(&z, &dims), gpu.upload_u32(labels, &[n, h, w]));
    let mut enc = gpu.encoder();
    let out = loss(gpu, &mut enc, cfg, &zt, &yt);
    gpu.submit(enc);
    (gpu.read(&out.values), gpu.read(&out.dlogits))
}

fn values_vec(v: &LossValues) -> Vec<f64> {
    [v.total, v.ce, v.dice, v.focal, v.tversky, v.unified_focal, v.soft_jaccard, v.accuracy, v.valid_pixels]
        .iter()
        .map(|&x| x as f64)
        .collect()
}

#[test]
fn reference_gradients_match_finite_differences() {
    let dims = [2, 4, 3, 5];
    for (name, cfg) in configs(4) {
        let (logits, labels) = problem(7, dims, 3.0);
        let analytic = reference::loss(&cfg, &logits, &labels, dims).grad;
        let numeric = numeric_grad(|z| reference::total(&cfg, z, &labels, dims), &logits, 1e-6);
        assert_close(&format!("{name}: dlogits"), &analytic, &numeric, 1e-5);
    }
}

#[test]
fn gpu_matches_reference_on_odd_shapes() {
    for (seed, dims) in [(1, [1, 6, 1, 1]), (2, [2, 6, 7, 9]), (3, [1, 3, 33, 17]), (4, [3, 5, 64, 61])] {
        for (name, cfg) in configs(dims[1]) {
            let (logits, labels) = problem(seed, dims, 4.0);
            let want = reference::loss(&cfg, &logits, &labels, dims);
            let (values, dlogits) = run_gpu(&cfg, &logits, &labels, dims);
            assert_close_f32(&format!("{name} {dims:?}: values"), &values[..9], &values_vec(&want.values), 1e-4);
            assert_close_f32(&format!("{name} {dims:?}: dlogits"), &dlogits, &want.grad, 1e-3);
        }
    }
}

#[test]
fn the_unfused_baseline_computes_the_same_loss() {
    let gpu = gpu();
    let dims = [2, 6, 19, 23];
    let (logits, labels) = problem(12, dims, 3.0);
    for (name, cfg) in
        configs(6).into_iter().filter(|(n, _)| ["ce weighted", "dice", "dice + ce", "tversky"].contains(n))
    {
        let want = reference::loss(&cfg, &logits, &labels, dims);
        let z: Vec<f32> = logits.iter().map(|&v| v as f32).collect();
        let (zt, yt) = (gpu.upload(&z, &dims), gpu.upload_u32(&labels, &[2, 19, 23]));
        let weights = gpu.upload(&class_weights(&cfg, 6), &[6]);
        let out = LossOutput { values: gpu.empty(&[VALUES_LEN]), dlogits: gpu.empty(&dims) };
        let mut enc = gpu.encoder();
        loss_unfused(gpu, &mut enc, &cfg, &zt, &yt, &weights, &out);
        gpu.submit(enc);
        assert_close_f32(
            &format!("unfused {name}: values"),
            &gpu.read(&out.values)[..9],
            &values_vec(&want.values),
            1e-4,
        );
        assert_close_f32(&format!("unfused {name}: dlogits"), &gpu.read(&out.dlogits), &want.grad, 1e-3);
    }
}

#[test]
fn results_are_bit_for_bit_repeatable() {
    let dims = [2, 6, 40, 37];
    let (logits, labels) = problem(5, dims, 4.0);
    let cfg = &configs(6)[15].1;
    assert_eq!(run_gpu(cfg, &logits, &labels, dims), run_gpu(cfg, &logits, &labels, dims));
}

#[test]
fn edge_cases_stay_finite_and_match_the_reference() {
    let dims = [1, 4, 5, 7];
    let (mut logits, labels) = problem(9, dims, 1.0);
    let one_class = vec![2u32; 35];
    let absent = labels.iter().map(|&y| if y == 3 { 0 } else { y }).collect::<Vec<_>>();
    // extreme logits: +-80, including pixels whose true class gets -80
    for (i, z) in logits.iter_mut().enumerate() {
        *z = if i % 3 == 0 { 80.0 } else { -80.0 };
    }
    for (what, labels) in [("one class", &one_class), ("class 3 absent", &absent), ("extreme", &labels)] {
        for (name, cfg) in configs(4) {
            let want = reference::loss(&cfg, &logits, labels, dims);
            let (values, dlogits) = run_gpu(&cfg, &logits, labels, dims);
            assert!(values.iter().chain(&dlogits).all(|v| v.is_finite()), "{what}, {name}: NaN or Inf");
            assert_close_f32(&format!("{what}, {name}: values"), &values[..9], &values_vec(&want.values), 1e-4);
            // With +-80 logits most exact gradients are below 1e-30, which f32's
            // exp flushes to 0: judge errors against the scale of a visible gradient.
            assert_close_floor(&format!("{what}, {name}: dlogits"), &to_f64(&dlogits), &want.grad, 1e-3, 1e-6);
        }
    }
}

#[test]
fn all_pixels_ignored_gives_a_defined_zero() {
    let dims = [2, 3, 4, 4];
    let (logits, _) = problem(11, dims, 2.0);
    let labels = vec![255u32; 32];
    for (name, mut cfg) in configs(3) {
        cfg.ignore_index = Some(255);
        let (values, dlogits) = run_gpu(&cfg, &logits, &labels, dims);
        assert_eq!(values[0], 0.0, "{name}: total");
        assert_eq!(values[8], 0.0, "{name}: valid pixels");
        assert!(dlogits.iter().all(|&g| g == 0.0), "{name}: gradient");
    }
}

#[test]
fn one_wrong_pixel_moves_dice_for_a_small_object_and_not_for_a_large_one() {
    // Two 32x32 scenes of background (class 0) with one object (class 1):
    // 16x16 pixels in one, 2x2 in the other. Predictions are confident and
    // right, except one object pixel predicted as background.
    let side = 32;
    let scene = |object: usize, wrong: bool| {
        let mut labels = vec![0u32; side * side];
        for r in 0..object {
            for c in 0..object {
                labels[r * side + c] = 1;
            }
        }
        let mut logits = vec![0.0; 2 * side * side];
        for (i, &y) in labels.iter().enumerate() {
            let predicted = if wrong && i == 0 { 0 } else { y as usize };
            logits[predicted * side * side + i] = 8.0;
        }
        (logits, labels)
    };
    let dims = [1, 2, side, side];
    let eval = |cfg: &LossConfig, object: usize, wrong: bool| {
        let (logits, labels) = scene(object, wrong);
        let values = run_gpu(cfg, &logits, &labels, dims).0;
        let want = reference::loss(cfg, &logits, &labels, dims).values;
        assert_close_f32("values", &values[..9], &values_vec(&want), 1e-4);
        values
    };
    // Dice of the object class alone: class weights (0, 1).
    let mut dice = LossConfig::new(Term::Dice { pooled: false });
    (dice.class_weights, dice.smooth) = (Some(vec![0.0, 1.0]), 1e-3);
    let ce = LossConfig::new(Term::CrossEntropy);
    let moved = |cfg: &LossConfig, object| (eval(cfg, object, true)[0] - eval(cfg, object, false)[0]).abs();
    let (dice_small, dice_large) = (moved(&dice, 2), moved(&dice, 16));
    let (ce_small, ce_large) = (moved(&ce, 2), moved(&ce, 16));
    // One of 4 object pixels lost: Dice drops by about 1/7; one of 256: by about 1/511.
    assert!(dice_small > 0.1 && dice_large < 0.003, "dice moved {dice_small} (small) and {dice_large} (large)");
    assert!(dice_small > 50.0 * dice_large);
    // CE is a mean over all 1024 pixels: the same one pixel moves it the same.
    assert!((ce_small - ce_large).abs() < 1e-3 * ce_small, "ce moved {ce_small} and {ce_large}");
}
