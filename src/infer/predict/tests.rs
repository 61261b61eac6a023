use super::*;
use crate::data::test_dir::TempDir;
use crate::data::ChannelStats;
use crate::nn::unet::UNetConfig;
use crate::rng::Rng;
use crate::testing::gpu;

fn tiny_model(seed: u64, classes: usize) -> UNet {
    let config = UNetConfig { base: 4, depth: 2, classes, dropout: vec![0.0; 3], seed, ..UNetConfig::default() };
    UNet::new(gpu(), config)
}

fn random_rgb(seed: u64, w: usize, h: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..w * h * 3).map(|_| rng.below(256) as u8).collect()
}

/// Argmax of the logits of one forward pass over `x` `[1,3,p,p]` (channel-first f32).
fn forward_labels(model: &UNet, x: &[f32], h: usize, w: usize) -> Vec<u8> {
    let gpu = gpu();
    let t = gpu.upload(x, &[1, 3, h, w]);
    let mut step = Step::eval(gpu);
    let y = model.forward(&mut step, &t, 0);
    step.submit();
    let logits = gpu.read(&y);
    let k = model.config.classes;
    (0..h * w)
        .map(|i| (1..k).fold(0, |b, c| if logits[c * h * w + i] > logits[b * h * w + i] { c } else { b }) as u8)
        .collect()
}

#[test]
fn reflection_mirrors_without_repeating_the_edge() {
    let got: Vec<usize> = (-5..9).map(|i| reflect(i, 4)).collect();
    // numpy.pad(range(4), 5, 'reflect')[:14]
    assert_eq!(got, [1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]);
    assert_eq!(reflect(-3, 1), 0);
    assert_eq!(reflect(7, 2), 1);
}

#[test]
fn windows_cover_the_image_with_reflection_margins() {
    assert_eq!(Axis::new(256, 256, 0), Axis { count: 1, margin: 0, padded: 256 });
    assert_eq!(Axis::new(20, 16, 0), Axis { count: 2, margin: 0, padded: 32 });
    assert_eq!(Axis::new(5, 16, 4), Axis { count: 1, margin: 2, padded: 16 });
    // 37 + 2*2 = 41 pixels, stride 12: windows at 0, 12, 24, 36 reach 52.
    assert_eq!(Axis::new(37, 16, 4), Axis { count: 4, margin: 2, padded: 52 });
    for len in 1..80 {
        for (p, o) in [(16, 0), (16, 4), (16, 15), (8, 3)] {
            let a = Axis::new(len, p, o);
            assert!(a.padded >= len + 2 * a.margin, "{len} {p} {o}: {a:?}");
            assert!(a.count == 1 || a.padded - (p - o) < len + 2 * a.margin, "{len} {p} {o}: one window too many");
        }
    }
}

#[test]
fn blending_weights_sum_over_the_covering_windows_and_normalise() {
    // One band over a 37-pixel-wide padded row of windows; every window
    // predicts the same probabilities p, so the blend must give p back.
    let (p, overlap, k) = (16, 4, 3);
    let axis = Axis::new(37, p, overlap);
    let stride = p - overlap;
    let win = window(p);
    assert!(win.iter().all(|&w| w > 0.0), "every pixel needs weight");
    assert!((win[p / 2] - 1.0).abs() < 0.01 && win[0] < 0.02, "centre heavy, borders light: {win:?}");
    let probs: Vec<f32> = [0.2f32, 0.5, 0.3].iter().flat_map(|&v| vec![v; p * p]).collect();
    let mut acc = Accumulator::new(axis.padded, k);
    acc.extend_to(p + stride);
    for y0 in [0, stride] {
        for c in 0..axis.count {
            acc.add(y0, c * stride, &probs, &win);
        }
    }
    for y in 0..p + stride {
        for x in 0..axis.padded {
            let covering = |pos: usize, count: usize| -> f32 {
                (0..count).filter(|&i| (i * stride..i * stride + p).contains(&pos)).map(|i| win[pos - i * stride]).sum()
            };
            let want = covering(y, 2) * covering(x, axis.count);
            let weight = acc.weights[y * axis.padded + x];
            assert!((weight - want).abs() <= 1e-5 * want, "({y},{x}): weight {weight}, want {want}");
            for (c, &pc) in [0.2f32, 0.5, 0.3].iter().enumerate() {
                let blended = acc.sums[(y * axis.padded + x) * k + c] / weight;
                assert!((blended - pc).abs() < 1e-5, "({y},{x}) class {c}: {blended}");
            }
        }
    }
}

#[test]
fn without_overlap_windows_are_independent_padded_forwards() {
    let model = tiny_model(11, 6);
    let opts = PredictOptions { patch: 16, overlap: Some(0), batch: 3, ..PredictOptions::default() };
    // 20x13 is not a multiple of 16 (two windows across, one down); 11x9
    // is smaller than one window.
    for (w, h, seed) in [(20, 13, 1), (11, 9, 2)] {
        let rgb = random_rgb(seed, w, h);
        let got = predict_image(gpu(), &model, &rgb, w, h, &opts).unwrap();
        // Reference: pad by reflection to whole windows, one forward per window.
        let (pw, ph) = (w.div_ceil(16) * 16, 16);
        let mirror = |i: usize, n: usize| if i < n { i } else { 2 * (n - 1) - i };
        let mut want = vec![0u8; w * h];
        for x0 in (0..pw).step_by(16) {
            let mut x = vec![0.0f32; 3 * 16 * 16];
            for c in 0..3 {
                for y in 0..ph {
                    for xx in 0..16 {
                        let (sy, sx) = (mirror(y, h), mirror(x0 + xx, w));
                        x[(c * 16 + y) * 16 + xx] = rgb[(sy * w + sx) * 3 + c] as f32 / 255.0;
                    }
                }
            }
            let labels = forward_labels(&model, &x, 16, 16);
            for y in 0..h {
                for xx in 0..16.min(w.saturating_sub(x0)) {
                    want[y * w + x0 + xx] = labels[y * 16 + xx];
                }
            }
        }
        assert_eq!(got, want, "{w}x{h}");
    }
}

#[test]
fn bands_give_the_same_labels_as_one_pass_and_sizes_match() {
    let model = tiny_model(5, 4);
    let opts = PredictOptions { patch: 8, overlap: Some(3), batch: 2, ..PredictOptions::default() };
    let (w, h) = (23, 30);
    let rgb = random_rgb(3, w, h);
    let whole = predict_image(gpu(), &model, &rgb, w, h, &PredictOptions { max_band_bytes: 1 << 30, ..opts.clone() });
    let banded = predict_image(gpu(), &model, &rgb, w, h, &PredictOptions { max_band_bytes: 1, ..opts.clone() });
    let whole = whole.unwrap();
    assert_eq!(banded.unwrap(), whole);
    assert!(whole.iter().any(|&l| l != whole[0]), "a random model on noise predicts more than one class");
    for (w, h) in [(1, 1), (1, 9), (9, 2), (8, 8), (17, 5)] {
        let labels = predict_image(gpu(), &model, &random_rgb(9, w, h), w, h, &opts).unwrap();
        assert_eq!(labels.len(), w * h, "{w}x{h}");
        assert!(labels.iter().all(|&l| l < 4));
    }
    let bad = PredictOptions { patch: 10, ..opts.clone() };
    let err = predict_image(gpu(), &model, &rgb, w, h, &bad).unwrap_err().to_string();
    assert!(err.contains("patch = 10") && err.contains("multiple of 4"), "{err}");
    let bad = PredictOptions { overlap: Some(8), ..opts };
    assert!(predict_image(gpu(), &model, &rgb, w, h, &bad).unwrap_err().to_string().contains("overlap = 8"));
}

#[test]
fn files_get_masks_and_overlays_scaled_as_the_checkpoint_says() {
    let gpu = gpu();
    let tmp = TempDir::new("predict");
    let model = tiny_model(7, 6);
    let stats = ChannelStats { mean: [0.9, 0.1, 0.5], std: [0.05, 0.3, 0.01] };
    let scaling = Scaling::Standardize(stats);
    let mut meta = model.config.to_metadata();
    meta.extend(scaling.to_metadata());
    let ckpt = tmp.0.join("model.safetensors");
    checkpoint::save(gpu, &ckpt, &model.state(), &meta).unwrap();
    let images = tmp.0.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let (w, h) = (13, 10);
    let rgb = random_rgb(4, w, h);
    image::RgbImage::from_raw(w as u32, h as u32, rgb.clone()).unwrap().save(images.join("a.png")).unwrap();
    image::RgbImage::new(5, 4).save(images.join("b.png")).unwrap();
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();

    let out = tmp.0.join("out");
    let opts = PredictOptions { patch: 8, batch: 3, ..PredictOptions::default() };
    let done = predict_files(gpu, &ckpt, std::slice::from_ref(&images), &out, &opts).unwrap();
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].mask, out.join("a_mask.png"));
    assert_eq!((done[1].width, done[1].height), (5, 4));
    let mask = image::open(out.join("a_mask.png")).unwrap().into_rgb8();
    let overlay = image::open(out.join("a_overlay.png")).unwrap().into_rgb8();
    assert_eq!((mask.dimensions(), overlay.dimensions()), (((w as u32), (h as u32)), ((w as u32), (h as u32))));
    let palette = Palette::dubai();
    let labels = palette.rgb_to_labels(mask.as_raw(), crate::data::Unknown::Error, Path::new("mask")).unwrap();
    let standardized = predict_image(gpu, &model, &rgb, w, h, &PredictOptions { scaling, ..opts.clone() }).unwrap();
    let unit = predict_image(gpu, &model, &rgb, w, h, &opts).unwrap();
    assert_eq!(labels, standardized, "the checkpoint's scaling is used");
    assert_ne!(unit, standardized, "the test must tell the scalings apart");
    assert_eq!(overlay.as_raw(), &blend(&rgb, &labels, &palette, 0.5));

    // Errors: two inputs with one stem; a palette too small for the model.
    std::fs::create_dir_all(tmp.0.join("other")).unwrap();
    image::RgbImage::new(4, 4).save(tmp.0.join("other/a.jpg")).unwrap();
    let err = predict_files(gpu, &ckpt, &[images.join("a.png"), tmp.0.join("other/a.jpg")], &out, &opts);
    assert!(err.unwrap_err().to_string().contains("share the stem `a`"));
    let two = Palette::new(vec![("x".into(), [1, 1, 1]), ("y".into(), [2, 2, 2])], None).unwrap();
    let err = predict_files(gpu, &ckpt, &[images], &out, &PredictOptions { palette: two, ..opts }).unwrap_err();
    assert!(err.to_string().contains("6 classes but the palette has 2"), "{err}");
}
