//! Tilings of `shaders/conv2d/tiled.wgsl`, as plain data ([`crate::ops::conv2d`] dispatches them).

/// Register tiling of the default kernels (the override constants of `shaders/conv2d/tiled.wgsl`). The
/// wrappers take it from their operands' `tiling` field, or else from [`Gpu::tuning`](crate::runtime::Gpu::tuning) (one per
/// kernel: forward, backward data, backward weight); `Tiling::default()` is what lavapipe runs fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    /// Threads a workgroup.
    pub wg: u32,
    /// Rows of the forward tile (which backward data at stride 1 runs too): 4 or 2. A thread
    /// keeps 8 output channels x `rows` rows x 8 columns of sums, so 4 rows hold 256 accumulators:
    /// the fastest on lavapipe (where they live in the stack and loads cost most), more registers
    /// than a GPU thread has (255 on NVIDIA), where 2 rows (128) fit.
    pub rows: u32,
    /// Backward data at stride > 1 (the gather kernel): input channels a block; a thread owns 2
    /// blocks, each over 2 rows x 8 columns of pixels. At most 16; above 4 lavapipe stops
    /// unrolling the channel loop and slows down 3x. (The forward tile, which backward data at
    /// stride 1 runs too, has blocks of 4 channels: one vec4 of packed weights.)
    pub tm: u32,
    /// Backward weight: threads the first pass aims for (each chunk of dy rows gets `O/8 * I`
    /// threads: a thread owns 8 output channels of one input channel, fixed by the shader's code).
    /// Fewer threads mean fewer partial sums to write and add up.
    pub bw_threads: u32,
}

impl Default for Tiling {
    fn default() -> Tiling {
        Tiling { wg: 64, rows: 4, tm: 4, bw_threads: 512 }
    }
}

impl Tiling {
    /// `Err(why)` when the shader cannot run this tiling (adapter limits aside).
    pub fn check(&self) -> Result<(), String> {
        let ok = self.wg > 0 && [2, 4].contains(&self.rows) && (1..=16).contains(&self.tm) && self.bw_threads > 0;
        ok.then_some(())
            .ok_or_else(|| format!("tiling {self:?} out of range (wg > 0, rows 2 or 4, tm 1..=16, bw_threads > 0)"))
    }

    /// This tiling for a grid of `tiles` threads along x (one per output tile): the workgroup
    /// shrinks to the tiles it has, rounded up to 8 lanes (a CPU driver's SIMD width), so that a
    /// small image does not leave most of each workgroup computing discarded copies of the last
    /// tile. At batch 2 the U-Net's 16x16 level has 32 tiles: 64-thread workgroups ran them at
    /// half speed. The sums are the same whatever the workgroup size.
    pub(crate) fn for_tiles(&self, tiles: u32) -> Tiling {
        Tiling { wg: self.wg.min(tiles.next_multiple_of(8)), ..*self }
    }
}

/// Workgroup-memory tiling of [`conv2d_forward_shared`](crate::ops::conv2d::conv2d_forward_shared).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedTiling {
    /// Threads along pixels.
    pub tx: u32,
    /// Threads along output channels.
    pub ty: u32,
    /// Output channels a thread (at most 8).
    pub sm: u32,
    /// Pixels a thread (at most 8).
    pub sn: u32,
    /// K slice a step; `bk * ty * sm` and `bk * tx * sn` at most 2048.
    pub bk: u32,
}

impl Default for SharedTiling {
    fn default() -> SharedTiling {
        SharedTiling { tx: 16, ty: 16, sm: 4, sn: 4, bk: 8 }
    }
}
