//! Ceilings: the fastest this GPU runs the two kinds of work our kernels do, measured with
//! shaders written like ours, so that a kernel's rate can be read as a share of what is
//! reachable. Compute-bound kernels are compared with a register-tiled GEMM
//! ([`unet_wgpu::ops::matmul`]); memory-bound kernels with [`copy`], `y = x` in vec4 loads and
//! stores, which moves `8 * len` bytes and computes nothing. Not part of the model.
//! [`super::bench::Bench::measure_ceilings`] times both.

use unet_wgpu::autograd::tensor::Tensor;
use unet_wgpu::runtime::{groups_1d, Encoder, Gpu, Shader};
use unet_wgpu::shader;

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
