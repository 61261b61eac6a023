//! Ceilings: the fastest this GPU runs the two kinds of work our kernels do, measured with
//! shaders written like ours, so that a kernel's rate can be read as a share of what is
//! reachable. Compute-bound kernels are compared with a register-tiled GEMM
//! ([`crate::ops::matmul`]); memory-bound kernels with [`copy`], `y = x` in vec4 loads and
//! stores, which moves `8 * len` bytes and computes nothing. Not part of the model.
//! [`crate::bench::Bench::measure_ceilings`] times both.

use crate::gpu::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;
use crate::tensor::Tensor;

const SHADER: Shader = shader!("copy");
/// Threads a workgroup and vec4s a thread of `copy_forward`.
const WG: u32 = 256;
const VPT: u32 = 4;

/// Mirrors `Params` in `shaders/copy.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    n4: u32,
}

/// `y = x`. x, y: the same number of elements (any shapes).
pub fn copy(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, y: &Tensor) {
    copy_tiled(gpu, enc, x, y, WG, VPT);
}

/// [`copy`] with `wg` threads a workgroup and `vpt` vec4s a thread (benchmarks sweep them).
pub fn copy_tiled(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, y: &Tensor, wg: u32, vpt: u32) {
    assert_eq!(x.len(), y.len(), "copy: x {:?} into y {:?}", x.shape(), y.shape());
    assert!(vpt > 0 && (4..=256).contains(&wg), "copy: wg {wg} (4..=256), vpt {vpt} (> 0)");
    let n = x.len();
    let params = Params { n: n as u32, n4: (n / 4) as u32 };
    let constants = [("WG", wg as f64), ("VPT", vpt as f64)];
    if n >= 4 {
        let kernel = gpu.kernel(&SHADER, "copy_forward", &constants);
        let threads = (n / 4).div_ceil(vpt as usize);
        gpu.dispatch(enc, &kernel, &params, &[(1, x), (2, y)], groups_1d(threads, wg));
    }
    if !n.is_multiple_of(4) {
        let kernel = gpu.kernel(&SHADER, "copy_tail", &constants);
        gpu.dispatch(enc, &kernel, &params, &[(1, x), (2, y)], [1, 1, 1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{gpu, random_vec};

    #[test]
    fn copy_equals_its_input_on_odd_lengths() {
        let gpu = gpu();
        // 4 * 4 * 65536 + 7 elements in groups of 4 threads need more than 65535 groups.
        for (seed, n) in [1usize, 3, 4, 5, 255, 1023, 4 * 256 * 3 + 2, 4 * 4 * 65536 + 7].into_iter().enumerate() {
            for (wg, vpt) in [(256, 1), (64, 4), (4, 1)] {
                let x = random_vec(seed as u64, n);
                let (xt, y) = (gpu.upload(&x, &[n]), gpu.upload(&vec![f32::NAN; n], &[n]));
                let mut enc = gpu.encoder();
                copy_tiled(gpu, &mut enc, &xt, &y, wg, vpt);
                gpu.submit(enc);
                assert!(
                    gpu.read(&y) == x,
                    "copy of {n} elements ({vpt} vec4s a thread) differs from its input (wg {wg})"
                );
            }
        }
    }
}
