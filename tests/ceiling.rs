//! The copy kernel that the benches read memory-bound kernels against (`benches/common/ceiling.rs`)
//! equals its input: its test runs here, since the benches run without a test harness.

#[path = "../benches/common/ceiling.rs"]
mod ceiling;

use ceiling::{copy, copy_tiled};
use unet_wgpu::testing::{gpu, random_vec};

#[test]
fn copy_equals_its_input_on_odd_lengths() {
    let gpu = gpu();
    // 4 * 4 * 65536 + 7 elements in groups of 4 threads need more than 65535 groups.
    for (seed, n) in [1usize, 3, 4, 5, 255, 1023, 4 * 256 * 3 + 2, 4 * 4 * 65536 + 7].into_iter().enumerate() {
        // (256, 4): the sizes `copy` uses.
        for (wg, vpt) in [(256, 4), (256, 1), (64, 4), (4, 1)] {
            let x = random_vec(seed as u64, n);
            let (xt, y) = (gpu.upload(&x, &[n]), gpu.upload(&vec![f32::NAN; n], &[n]));
            let mut enc = gpu.encoder();
            if (wg, vpt) == (256, 4) {
                copy(gpu, &mut enc, &xt, &y);
            } else {
                copy_tiled(gpu, &mut enc, &xt, &y, wg, vpt);
            }
            gpu.submit(enc);
            assert!(gpu.read(&y) == x, "copy of {n} elements ({vpt} vec4s a thread) differs from its input (wg {wg})");
        }
    }
}
