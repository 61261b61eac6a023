// conv_transpose2d/tiled_common.wgsl: what the tiled transposed-convolution kernels share
// (conv_transpose2d/tiled.wgsl and conv_transpose2d/tiled_quads.wgsl include it): the pipeline
// constants, the uniform Params and the bindings. The math and the tiling are in the header of
// conv_transpose2d/tiled.wgsl.
override WG: u32 = 64u;
// The backward data's dx: added into (dx += ..., the default), or overwritten (dx = ...) when the
// tape hands over a fresh, unzeroed gradient buffer (every element is written).
override ACCUMULATE: bool = true;
const PX: u32 = 4u; // pixels per thread (general forward, data)
const TO: u32 = 4u; // output channels per thread (general forward, weight)
const TC: u32 = 4u; // input channels per thread (general data, weight)

struct Params {
    n: u32, ci: u32, co: u32, h: u32, w: u32,
    // Channels of y / dy: O, or more when they are a concatenation buffer (channel stride).
    yc: u32,
    has_bias: u32,
    // Split-K of the weight gradient: `slices` partial sums. Quads: slice s reduces rows (n, i)
    // s * rows_per_slice .. (s + 1) * rows_per_slice. General: the pixel index k of a slice
    // advances by `slices` = step_n images + step_i rows + step_j columns each iteration.
    slices: u32, rows_per_slice: u32, step_n: u32, step_i: u32, step_j: u32,
    // sum_partials: elements of dst, and where the partial sums start in `partial`.
    len: u32, base: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read> dy: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;
@group(0) @binding(7) var<storage, read_write> partial: array<f32>;
@group(0) @binding(8) var<storage, read_write> dst: array<f32>;
@group(0) @binding(9) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> dx4: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read_write> partial4: array<vec4<f32>>; // binding 7's buffer, as vec4s
