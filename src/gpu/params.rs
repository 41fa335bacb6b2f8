//! Uniform blocks passed to the kernels, mirrored field for field in WGSL.

use bytemuck::{Pod, Zeroable};

/// Params of every row kernel, for one row window. Keep in sync with `struct RowParams` in
/// `shaders/common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub(crate) struct RowParams {
    /// Rows in this window.
    pub rows: u32,
    /// Elements per row.
    pub cols: u32,
    /// Threads that share one row (a power of two dividing the workgroup size).
    pub tpr: u32,
    /// Where the window's first row starts inside each per-row binding, in elements.
    pub vec_base: u32,
    /// Kernel-specific bits (see each kernel's header).
    pub flags: u32,
    /// Kernel-specific scalar (a reduction scale, for instance).
    pub f0: f32,
    /// Kernel-specific scalar.
    pub f1: f32,
    /// Kernel-specific scalar.
    pub f2: f32,
    /// Kernel-specific scalar.
    pub f3: f32,
    /// Kernel-specific scalar.
    pub f4: f32,
    /// The word of a label binding that marks an ignored row, where `ignores` is 1.
    pub ignore: u32,
    /// 1 where some label word means "ignored" (`ignore`), 0 where none does.
    pub ignores: u32,
    /// Always NaN: what a row with an out-of-range label gets (WGSL has no NaN literal, and a
    /// constant expression may not produce one).
    pub nan: f32,
    /// Pads the scalars to 64 bytes, where the arrays start (WGSL aligns them to 16).
    pub pad: [u32; 3],
    /// Matrix binding `k` of the kernel (from 0): where the window's first row starts inside
    /// its binding, in vector lanes (`W` elements), because bindings start at aligned offsets
    /// and rows need not.
    pub base: [u32; MATRICES],
    /// Matrix binding `k`'s row stride, in vector lanes.
    pub stride: [u32; MATRICES],
}

/// The most matrix bindings a row kernel has (`bce_with_logits`: six).
pub(crate) const MATRICES: usize = 8;

/// Params of the matmul kernels. Keep in sync with `struct MatmulParams` in
/// `shaders/matmul_common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub(crate) struct MatmulParams {
    /// Rows of C.
    pub m: u32,
    /// Columns of C.
    pub n: u32,
    /// The inner dimension.
    pub k: u32,
    /// Where A, B and C start inside their bindings, in elements (bindings start aligned).
    pub a_base: u32,
    /// See `a_base`.
    pub b_base: u32,
    /// See `a_base`.
    pub c_base: u32,
    /// C = alpha op(A) B + beta C.
    pub alpha: f32,
    /// See `alpha`; 0 means C is not read.
    pub beta: f32,
    /// The first column tile of this dispatch: products wider than the workgroups of one
    /// dispatch dimension cover take several dispatches (`matmul.wgsl` only).
    pub tile_x0: u32,
    /// Padding to a multiple of 16 bytes.
    pub pad: [u32; 3],
}

/// Params of `pack` (`shaders/matmul_tex.wgsl`): which matrix goes into a texture, and where.
/// Keep in sync with `struct PackParams` there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub(crate) struct PackParams {
    /// Rows of the packed matrix in this window.
    pub rows: u32,
    /// Its columns, packed four to a texel.
    pub cols: u32,
    /// Where it (or, for `pack_transposed`, its transpose) starts inside its binding, in
    /// elements.
    pub base: u32,
    /// The window's first row in the whole matrix.
    pub first_row: u32,
    /// Rows per panel of the texture (panels side by side, `ceil(cols / 4)` texels each).
    pub panel_rows: u32,
    /// Pads the block to a multiple of 16 bytes.
    pub pad: [u32; 3],
}

/// Params of the fused training step on CPU adapters (`step_forward_tex`, `step_update_tex`
/// in `shaders/train.wgsl`). Keep in sync with `struct StepParams` there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub(crate) struct StepParams {
    /// Rows in the batch.
    pub batch: u32,
    /// Features per row.
    pub features: u32,
    /// Classes (columns of theta).
    pub classes: u32,
    /// The batch's first row in the data set.
    pub first_row: u32,
    /// Log2 of the data-set rows per panel of the data texture.
    pub panel_shift: u32,
    /// Texels per row of the data texture, `ceil(features / 4)`.
    pub quads: u32,
    /// Forward: the gradient's scale; update: `-lr / B`.
    pub scale: f32,
    /// Update: `1 - lr l2`.
    pub decay: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WGSL lays a uniform struct of 4-byte scalars out densely, rounded up to 16 bytes.
    #[test]
    fn row_params_is_a_dense_multiple_of_16_bytes() {
        assert_eq!(std::mem::size_of::<RowParams>(), 128);
        assert_eq!(std::mem::offset_of!(RowParams, base), 64);
        assert_eq!(std::mem::offset_of!(RowParams, stride), 96);
        assert_eq!(std::mem::size_of::<RowParams>() % 16, 0);
        assert_eq!(std::mem::size_of::<MatmulParams>(), 48);
        assert_eq!(std::mem::size_of::<PackParams>(), 32);
        assert_eq!(std::mem::size_of::<StepParams>(), 32);
    }
}
