//! Uniform blocks passed to the kernels, mirrored field for field in WGSL.

use bytemuck::{Pod, Zeroable};

use crate::gpu::shaders::Family;

/// Params of every row kernel, for one row window: where it works, how it decodes labels, its
/// family's own arguments ([`Args`]), and each matrix binding's layout. Keep in sync with
/// `struct RowParams` in `shaders/common.wgsl`.
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
    /// The word of a label binding that marks an ignored row, where `ignores` is 1.
    pub ignore: u32,
    /// 1 where some label word means "ignored" (`ignore`), 0 where none does.
    pub ignores: u32,
    /// Always NaN: what a row with an out-of-range label gets (WGSL has no NaN literal, and a
    /// constant expression may not produce one).
    pub nan: f32,
    /// Pads the header to 32 bytes.
    pub pad: u32,
    /// The family's arguments, an [`Args`] struct's words.
    pub args: [u32; ARGS_WORDS],
    /// Matrix binding `k` of the kernel (from 0): where the window's first row starts inside
    /// its binding, in vector lanes (`W` elements), because bindings start at aligned offsets
    /// and rows need not.
    pub base: [u32; MATRICES],
    /// Matrix binding `k`'s row stride, in vector lanes.
    pub stride: [u32; MATRICES],
}

/// Words of [`RowParams::args`].
pub(crate) const ARGS_WORDS: usize = 8;

/// A row family's own arguments: a `#[repr(C)]` struct of [`ARGS_WORDS`] words, mirrored field
/// by field as `struct Args` in the family's WGSL file (a test holds the two together through
/// naga), read there as `p.a`.
pub(crate) trait Args: Pod {
    /// The families whose `struct Args` this is.
    const FAMILIES: &'static [Family];

    /// The words of [`RowParams::args`].
    fn words(&self) -> [u32; ARGS_WORDS] {
        let mut words = [0; ARGS_WORDS];
        words.copy_from_slice(bytemuck::cast_slice(bytemuck::bytes_of(self)));
        words
    }
}

/// The arguments of the families that take none (`reduce.wgsl`, `softmax.wgsl`, `copy.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub(crate) struct NoArgs {
    /// Unused.
    pub unused: [u32; ARGS_WORDS],
}

impl Args for NoArgs {
    const FAMILIES: &'static [Family] = &[Family::Reduce, Family::Softmax, Family::Copy];
}

/// `fused.wgsl`'s arguments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub(crate) struct FusedArgs {
    /// `softmax_fused`: 1 for the log-softmax.
    pub log: u32,
    /// `cross_entropy_fused`: 1 to multiply row `i` by the upstream gradient `up[i]`.
    pub upstream: u32,
    /// `cross_entropy_soft`: the reduction's scale of every row.
    pub scale: f32,
    /// Label smoothing `e`.
    pub smoothing: f32,
    /// The z-loss strength `S`.
    pub z_loss: f32,
    /// The sum of the class weights (`C` without weights).
    pub weight_sum: f32,
    /// Unused.
    pub pad: [u32; 2],
}

impl Args for FusedArgs {
    const FAMILIES: &'static [Family] = &[Family::Fused];
}

/// `loss.wgsl`'s arguments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub(crate) struct LossArgs {
    /// `sum_tree`: where the dispatch's first partial sum goes in its output.
    pub first_partial: u32,
    /// `label_stats`: 1 to read class weights, 0 for a weight of 1 each.
    pub weighted: u32,
    /// `sum_tree`: the scale of each partial sum.
    pub scale: f32,
    /// Unused.
    pub pad: [u32; 5],
}

impl Args for LossArgs {
    const FAMILIES: &'static [Family] = &[Family::Loss];
}

/// `grad.wgsl`'s arguments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub(crate) struct GradArgs {
    /// The scale of the gradient, over the denominator the kernel reads.
    pub scale: f32,
    /// Unused.
    pub pad: [u32; 7],
}

impl Args for GradArgs {
    const FAMILIES: &'static [Family] = &[Family::Grad];
}

/// `backward.wgsl`'s arguments (read by `bce_with_logits` only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub(crate) struct BackwardArgs {
    /// How the weight is bound: `BCE_NONE`, `BCE_FULL` or `BCE_COLS` (`src/gpu/ops.rs`).
    pub weight_mode: u32,
    /// How the positive weight is bound, the same way.
    pub pos_weight_mode: u32,
    /// The reduction's scale of every element.
    pub scale: f32,
    /// `K`, the last dimension, along which a per-column weight runs.
    pub k_cols: u32,
    /// The column (modulo `K`) of the window's first element.
    pub first_col: u32,
    /// Unused.
    pub pad: [u32; 3],
}

impl Args for BackwardArgs {
    const FAMILIES: &'static [Family] = &[Family::Backward];
}

/// `train.wgsl`'s arguments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub(crate) struct TrainArgs {
    /// Classes: columns of theta and of the logits.
    pub classes: u32,
    /// The gradient's scale; `step_update`: `-lr / B`.
    pub scale: f32,
    /// `step_update`: `1 - lr l2`.
    pub decay: f32,
    /// Unused.
    pub pad: [u32; 5],
}

impl Args for TrainArgs {
    const FAMILIES: &'static [Family] = &[Family::Train];
}

/// `linear.wgsl`'s arguments (each kernel reads the fields its header names).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub(crate) struct LinearArgs {
    /// The vocabulary index of the block's first class.
    pub class0: u32,
    /// `LINEAR_HAS_BIAS | LINEAR_WEIGHTED | LINEAR_FIRST` (`src/gpu/linear.rs`).
    pub flags: u32,
    /// `C`, the vocabulary.
    pub classes: u32,
    /// The soft cap `c`; 0 for none.
    pub cap: f32,
    /// Label smoothing `e`.
    pub smoothing: f32,
    /// The z-loss strength `S`.
    pub z_loss: f32,
    /// The summed class weights: of the shard's classes before the block (statistics), of
    /// the statistics merged into (merge), of the vocabulary (loss, gradient).
    pub weight: f32,
    /// The merge: the summed class weights of the statistics merged in.
    pub weight_b: f32,
}

impl Args for LinearArgs {
    const FAMILIES: &'static [Family] = &[Family::Linear];
}

/// The most matrix bindings a row kernel has (`bce_with_logits_weighted`: six).
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
        assert_eq!(std::mem::offset_of!(RowParams, args), 32);
        for size in [
            std::mem::size_of::<NoArgs>(),
            std::mem::size_of::<FusedArgs>(),
            std::mem::size_of::<LossArgs>(),
            std::mem::size_of::<GradArgs>(),
            std::mem::size_of::<BackwardArgs>(),
            std::mem::size_of::<TrainArgs>(),
        ] {
            assert_eq!(size, 4 * ARGS_WORDS);
        }
    }
}
