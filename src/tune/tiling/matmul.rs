//! Tilings of `shaders/matmul/tiled.wgsl`, as plain data ([`crate::ops::matmul`] dispatches them).

/// Register tiling (override constants of `matmul_forward` / `matmul_forward_scalar`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    /// Threads a workgroup (along column blocks).
    pub wg: u32,
    /// Rows of C a thread: a multiple of 4, at most 32.
    pub tm: u32,
    /// Columns of C a thread: 4, 8, 12 or 16.
    pub tn: u32,
}

impl Default for Tiling {
    /// 16 x 16 a thread, 16 threads a group: the fastest of the sweep on lavapipe (1024^3 on
    /// 2 cores: 4x4 12, 8x8 25, 16x16 36 GFLOP/s; larger tiles spill and gain nothing; see
    /// `MATMUL_SWEEP` in `benches/kernels/matmul.rs`).
    fn default() -> Tiling {
        Tiling { wg: 16, tm: 16, tn: 16 }
    }
}

/// Workgroup-memory tiling (override constants of `matmul_forward_shared`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedTiling {
    /// Threads along columns.
    pub tx: u32,
    /// Threads along rows.
    pub ty: u32,
    /// Rows a thread (at most 4).
    pub sm: u32,
    /// Columns a thread (at most 4).
    pub sn: u32,
    /// K slice a step. `bk * ty * sm` and `bk * tx * sn` at most 2048 and multiples of `tx * ty`.
    pub bk: u32,
}

impl Default for SharedTiling {
    fn default() -> SharedTiling {
        SharedTiling { tx: 16, ty: 16, sm: 4, sn: 4, bk: 8 }
    }
}

/// Which kernel computes a product. The wrappers take it from their operands' `tiles` field, or else
/// from [`Gpu::tuning`](crate::runtime::Gpu::tuning);
/// `Tiles::default()` is what lavapipe runs fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiles {
    /// Register tiles, no workgroup memory (the default).
    Register(Tiling),
    /// Workgroup-memory tiles with barriers.
    Shared(SharedTiling),
}

impl Default for Tiles {
    fn default() -> Tiles {
        Tiles::Register(Tiling::default())
    }
}

impl std::fmt::Display for Tiles {
    /// `register tiles 16x16, wg 16` or `shared tiles 64x64 (16x16 threads), bk 8`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tiles::Register(t) => write!(f, "register tiles {}x{}, wg {}", t.tm, t.tn, t.wg),
            Tiles::Shared(t) => {
                write!(f, "shared tiles {}x{} ({}x{} threads), bk {}", t.ty * t.sm, t.tx * t.sn, t.ty, t.tx, t.bk)
            }
        }
    }
}

impl Tiles {
    /// `Err(why)` when the shader's arrays cannot hold these tiles (adapter limits aside).
    pub fn check(&self) -> Result<(), String> {
        match *self {
            Tiles::Register(t) => {
                let ok = t.wg > 0
                    && t.tm % 4 == 0
                    && (4..=MAX_TM).contains(&t.tm)
                    && t.tn % 4 == 0
                    && (4..=MAX_TN).contains(&t.tn);
                ok.then_some(()).ok_or_else(|| {
                    format!("register tiling {t:?} out of range (wg > 0; tm 4..=32, tn 4..=16, multiples of 4)")
                })
            }
            Tiles::Shared(t) => {
                let (bm, bn, threads) = (t.ty * t.sm, t.tx * t.sn, t.tx * t.ty);
                let ok = threads > 0
                    && (1..=4).contains(&t.sm)
                    && (1..=4).contains(&t.sn)
                    && t.bk > 0
                    && t.bk * bm <= MAX_TILE
                    && t.bk * bn <= MAX_TILE
                    && (t.bk * bm) % threads == 0
                    && (t.bk * bn) % threads == 0;
                ok.then_some(()).ok_or_else(|| format!("shared tiling {t:?} does not fit the shader's tiles"))
            }
        }
    }
}

// Bounds of the shader's arrays (keep in step with `shaders/matmul/tiled.wgsl`).
pub(crate) const MAX_TM: u32 = 32;
pub(crate) const MAX_TN: u32 = 16;
pub(crate) const MAX_TILE: u32 = 2048;
