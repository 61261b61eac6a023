//! Workgroup sizes of `shaders/conv_transpose2d/tiled.wgsl`, as plain data
//! ([`crate::ops::conv_transpose2d`] dispatches them).

/// Workgroup sizes of the kernels (the shader's `WG` override constant): the wrappers take them from
/// their operands' `workgroups` field, or else from [`Gpu::tuning`](crate::runtime::Gpu::tuning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workgroups {
    /// Threads a workgroup of the general kernels (W not a multiple of 4), of the bias gradient
    /// and of the pass that sums the weight gradient's partial sums (which every shape runs).
    pub general: u32,
    /// Threads a workgroup of the quad kernels (W a multiple of 4: every U-Net level).
    pub quads: u32,
}

impl Default for Workgroups {
    /// 64 and 32: the sizes these kernels were written and benchmarked with on lavapipe (the
    /// README's figures); [`crate::tune::Tuning::builtin`] keeps them for CPU drivers.
    fn default() -> Workgroups {
        Workgroups { general: 64, quads: 32 }
    }
}

impl Workgroups {
    /// `Err(why)` when a size is 0 (adapter limits aside).
    pub fn check(&self) -> Result<(), String> {
        (self.general > 0 && self.quads > 0)
            .then_some(())
            .ok_or_else(|| format!("workgroups {self:?} must be positive"))
    }

    pub(crate) fn assert_valid(&self) {
        if let Err(e) = self.check() {
            panic!("conv_transpose2d: {e}");
        }
    }
}
