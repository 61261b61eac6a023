//! The confusion matrix that training and validation accumulate every step:
//! memory-bound (GB/s over the logits and labels it reads).

use crate::common::bench::Bench;
use unet_wgpu::metrics::{confusion_update, reference, Confusion};
use unet_wgpu::rng::Rng;
use unet_wgpu::testing::random_vec;

use crate::shape_str;

pub fn run(b: &mut Bench) {
    if !b.wants("confusion") {
        return;
    }
    let gpu = b.gpu;
    // The U-Net's logits at batch 2 (what `train` runs) and 4; 6 classes, some labels ignored.
    for (seed, dims) in [(1u64, [2, 6, 256, 256]), (2, [4, 6, 256, 256])] {
        let [n, c, h, w] = dims;
        let logits = random_vec(seed, n * c * h * w);
        let mut rng = Rng::new(seed);
        let labels: Vec<u32> = (0..n * h * w).map(|_| rng.below(c + 1) as u32).collect();
        let (lt, yt) = (gpu.upload(&logits, &dims), gpu.upload_u32(&labels, &[n, h, w]));
        let confusion = gpu.empty(&[c, c]);
        let mut enc = gpu.encoder();
        enc.clear(&confusion);
        confusion_update(gpu, &mut enc, &lt, &yt, Some(c as u32), &confusion);
        gpu.submit(enc);
        let want = reference::confusion(&logits, &labels, dims, Some(c as u32));
        assert_eq!(Confusion::read(gpu, &confusion), want, "confusion {dims:?}");

        let bytes = 4.0 * (n * h * w * (c + 1)) as f64;
        b.case("confusion_update", &shape_str(&dims), None, Some(bytes), |gpu, enc| {
            confusion_update(gpu, enc, &lt, &yt, Some(c as u32), &confusion)
        });
    }
}
