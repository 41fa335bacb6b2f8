//! The kernels: which WGSL file holds each, its entry point, its bindings, and how its source is
//! assembled.
//!
//! Every entry-point string and binding signature lives here, once. A family's source is the
//! generated [prelude](Config::prelude) (constants shared with the host), the lane helpers of
//! the chosen vector width, the shared row plumbing where the family needs it, then the family
//! file itself. The prelude is generated from [`Config`], so a workgroup size is written in one
//! place (Rust) and can never disagree between host and shader. The library compiles the
//! sources for wgpu-native; [`Target::Web`] writes them as Dawn and the browsers require
//! (`softmax-ce wgsl --emit`, over every configuration of [`configs`]).

use std::fmt::Write as _;

use crate::dtype::DType;
use crate::labels::{IGNORED, INVALID};

/// A WGSL file of related entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    Reduce,
    Softmax,
    Loss,
    Grad,
    Matmul,
    MatmulTex,
    Train,
    TrainTex,
    Copy,
    Fused,
    Backward,
    Linear,
}

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const LANES_1: &str = include_str!("../../shaders/lanes1.wgsl");
const LANES_4: &str = include_str!("../../shaders/lanes4.wgsl");
const SUBGROUP_NONE: &str = include_str!("../../shaders/subgroup_none.wgsl");
const SUBGROUP_SHUFFLE: &str = include_str!("../../shaders/subgroup_shuffle.wgsl");
const MATMUL_COMMON: &str = include_str!("../../shaders/matmul_common.wgsl");

impl Family {
    /// Every family.
    pub(crate) const ALL: [Family; 12] = [
        Family::Reduce,
        Family::Softmax,
        Family::Loss,
        Family::Grad,
        Family::Matmul,
        Family::MatmulTex,
        Family::Train,
        Family::TrainTex,
        Family::Copy,
        Family::Fused,
        Family::Backward,
        Family::Linear,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Family::Reduce => "reduce",
            Family::Softmax => "softmax",
            Family::Loss => "loss",
            Family::Grad => "grad",
            Family::Matmul => "matmul",
            Family::MatmulTex => "matmul_tex",
            Family::Train => "train",
            Family::TrainTex => "train_tex",
            Family::Copy => "copy",
            Family::Fused => "fused",
            Family::Backward => "backward",
            Family::Linear => "linear",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Family::Reduce => include_str!("../../shaders/reduce.wgsl"),
            Family::Softmax => include_str!("../../shaders/softmax.wgsl"),
            Family::Loss => include_str!("../../shaders/loss.wgsl"),
            Family::Grad => include_str!("../../shaders/grad.wgsl"),
            Family::Matmul => include_str!("../../shaders/matmul.wgsl"),
            Family::MatmulTex => include_str!("../../shaders/matmul_tex.wgsl"),
            Family::Train => include_str!("../../shaders/train.wgsl"),
            Family::TrainTex => include_str!("../../shaders/train_tex.wgsl"),
            Family::Copy => include_str!("../../shaders/copy.wgsl"),
            Family::Fused => include_str!("../../shaders/fused.wgsl"),
            Family::Backward => include_str!("../../shaders/backward.wgsl"),
            Family::Linear => include_str!("../../shaders/linear.wgsl"),
        }
    }

    /// Whether the family is built on the row plumbing of `common.wgsl`.
    fn uses_rows(self) -> bool {
        !self.is_matmul()
    }

    /// Whether the family's source uses subgroup operations under `config`: the texture
    /// families always (they are compiled only where `Config::texture_kernels` holds), the row
    /// families where `config.subgroup > 1`.
    fn needs_subgroups(self, config: &Config) -> bool {
        matches!(self, Family::MatmulTex | Family::TrainTex)
            || (self.uses_rows() && config.subgroup > 1)
    }

    /// Whether the family has an `f16` variant: its matrices stored as `S`, `f16` where the
    /// device has `SHADER_F16`, read and written through conversions to and from `V`.
    pub(crate) fn has_f16(self) -> bool {
        // The texture training kernels read rgba32float; the linear cross-entropy's blocks of
        // products are f32 (its inputs take f32).
        !matches!(self, Family::TrainTex | Family::Linear)
    }

    /// Whether the family is a matrix product, built on `matmul_common.wgsl`.
    fn is_matmul(self) -> bool {
        matches!(self, Family::Matmul | Family::MatmulTex)
    }
}

/// How many `f32` each matrix access moves: 4 when the row length allows `vec4` loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Width {
    Scalar,
    Vec4,
}

impl Width {
    pub(crate) fn lanes(self) -> usize {
        match self {
            Width::Scalar => 1,
            Width::Vec4 => 4,
        }
    }

    /// The widest access that divides a row of `cols` elements.
    pub(crate) fn for_cols(cols: usize) -> Width {
        if cols.is_multiple_of(4) {
            Width::Vec4
        } else {
            Width::Scalar
        }
    }
}

/// What a kernel binding holds, which decides how it is cut into row windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A row-major matrix with the kernel's column count, windowed by rows, in the kernel's
    /// precision (`S`).
    Matrix,
    /// A matrix windowed like [`Slot::Matrix`] but `f32` whatever the kernel's precision: the
    /// losses and weights beside `f16` logits.
    MatrixF32,
    /// One value per row, windowed by rows.
    PerRow,
    /// Bound whole (a scalar accumulator, class weights).
    Whole,
    /// A small matrix every thread reads at the same index at the same time (theta, a batch
    /// gradient), bound whole as a uniform buffer of [`STEP_UNIFORM_BYTES`]: each read is one
    /// broadcast instead of a load per thread.
    Uniform,
    /// A 2-D `rgba32float` storage texture: read-only, or write-only when `writable`.
    Texture,
}

impl Slot {
    /// Whether the slot is a matrix windowed by rows, with its own base and row stride in the
    /// params (`row_at` in common.wgsl).
    pub(crate) fn is_matrix(self) -> bool {
        matches!(self, Slot::Matrix | Slot::MatrixF32)
    }

    /// The precision of a matrix slot in a kernel of precision `kernel`.
    pub(crate) fn matrix_dtype(self, kernel: DType) -> DType {
        match self {
            Slot::MatrixF32 => DType::F32,
            _ => kernel,
        }
    }
}

/// One binding after the params uniform (binding 0): what it holds, and whether it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Binding {
    pub slot: Slot,
    pub writable: bool,
}

const MAT_IN: Binding = Binding {
    slot: Slot::Matrix,
    writable: false,
};
const MAT_OUT: Binding = Binding {
    slot: Slot::Matrix,
    writable: true,
};
const F32_IN: Binding = Binding {
    slot: Slot::MatrixF32,
    writable: false,
};
const F32_OUT: Binding = Binding {
    slot: Slot::MatrixF32,
    writable: true,
};
const ROW_IN: Binding = Binding {
    slot: Slot::PerRow,
    writable: false,
};
const ROW_OUT: Binding = Binding {
    slot: Slot::PerRow,
    writable: true,
};
const WHOLE_IN: Binding = Binding {
    slot: Slot::Whole,
    writable: false,
};
const WHOLE_OUT: Binding = Binding {
    slot: Slot::Whole,
    writable: true,
};
const UNIFORM_IN: Binding = Binding {
    slot: Slot::Uniform,
    writable: false,
};
const TEX_IN: Binding = Binding {
    slot: Slot::Texture,
    writable: false,
};
const TEX_OUT: Binding = Binding {
    slot: Slot::Texture,
    writable: true,
};

const NORMALISE: &[Binding] = &[MAT_IN, ROW_IN, ROW_IN, MAT_OUT];
const PRODUCT: &[Binding] = &[WHOLE_IN, WHOLE_IN, WHOLE_OUT];
const BACKWARD: &[Binding] = &[MAT_IN, MAT_IN, MAT_OUT];

/// What the host knows of one entry point: a row of the kernel table ([`Kernel::spec`]).
struct Spec {
    family: Family,
    entry: &'static str,
    bindings: &'static [Binding],
    shape: Shape,
    row_passes: u64,
}

/// One entry point. The variant name, the WGSL entry point and the CPU reference function share
/// one spelling (`RowMax` / `row_max` / `cpu::row_max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    RowMax,
    RowSumexp,
    SoftmaxNormalise,
    LogSoftmaxNormalise,
    LogsumexpRows,
    CrossEntropyRows,
    LabelStats,
    SumTree,
    OneHotSubtract,
    MatmulNn,
    MatmulTn,
    MatmulNt,
    Pack,
    PackTransposed,
    MatmulTex,
    SoftmaxGradRows,
    LossErrRows,
    CopyRows,
    CopyFlat,
    WidenRows,
    NarrowRows,
    SoftmaxFused,
    LogsumexpFused,
    CrossEntropyLossFused,
    CrossEntropyFused,
    SoftmaxBackward,
    LogSoftmaxBackward,
    BceWithLogits,
    BceWithLogitsWeighted,
    CrossEntropySoft,
    StepForward,
    StepUpdate,
    LossErrFused,
    StepForwardTex,
    StepUpdateTex,
    LossErrTex,
    LogisticResidual,
    LinearBlockStats,
    LinearMergeStats,
    LinearLossRows,
    LinearBlockGrad,
}

impl Kernel {
    /// Every kernel.
    pub(crate) const ALL: [Kernel; 41] = [
        Kernel::RowMax,
        Kernel::RowSumexp,
        Kernel::SoftmaxNormalise,
        Kernel::LogSoftmaxNormalise,
        Kernel::LogsumexpRows,
        Kernel::CrossEntropyRows,
        Kernel::LabelStats,
        Kernel::SumTree,
        Kernel::OneHotSubtract,
        Kernel::MatmulNn,
        Kernel::MatmulTn,
        Kernel::MatmulNt,
        Kernel::Pack,
        Kernel::PackTransposed,
        Kernel::MatmulTex,
        Kernel::SoftmaxGradRows,
        Kernel::LossErrRows,
        Kernel::CopyRows,
        Kernel::CopyFlat,
        Kernel::WidenRows,
        Kernel::NarrowRows,
        Kernel::SoftmaxFused,
        Kernel::LogsumexpFused,
        Kernel::CrossEntropyLossFused,
        Kernel::CrossEntropyFused,
        Kernel::SoftmaxBackward,
        Kernel::LogSoftmaxBackward,
        Kernel::BceWithLogits,
        Kernel::BceWithLogitsWeighted,
        Kernel::CrossEntropySoft,
        Kernel::StepForward,
        Kernel::StepUpdate,
        Kernel::LossErrFused,
        Kernel::StepForwardTex,
        Kernel::StepUpdateTex,
        Kernel::LossErrTex,
        Kernel::LogisticResidual,
        Kernel::LinearBlockStats,
        Kernel::LinearMergeStats,
        Kernel::LinearLossRows,
        Kernel::LinearBlockGrad,
    ];

    /// The kernel's row of the table: its file, entry point, bindings, shape and loops.
    fn spec(self) -> Spec {
        use Family as F;
        use Kernel::*;
        use Shape::{
            Blocks, CachedTeamPerRow as Cached, TeamPerRow as Team, ThreadPerRow as Thread, Tiles,
        };
        let row = |family, entry, bindings, shape, row_passes| Spec {
            family,
            entry,
            bindings,
            shape,
            row_passes,
        };
        match self {
            RowMax => row(F::Reduce, "row_max", &[MAT_IN, ROW_OUT], Team, 1),
            RowSumexp => row(F::Reduce, "row_sumexp", &[MAT_IN, ROW_IN, ROW_OUT], Team, 1),
            SoftmaxNormalise => row(F::Softmax, "softmax_normalise", NORMALISE, Team, 1),
            LogSoftmaxNormalise => row(F::Softmax, "log_softmax_normalise", NORMALISE, Team, 1),
            LogsumexpRows => row(
                F::Loss,
                "logsumexp_rows",
                &[ROW_IN, ROW_IN, ROW_OUT],
                Thread,
                0,
            ),
            CrossEntropyRows => row(
                F::Loss,
                "cross_entropy_rows",
                &[MAT_IN, ROW_IN, ROW_IN, ROW_IN, ROW_OUT, WHOLE_IN],
                Thread,
                0,
            ),
            LabelStats => row(
                F::Loss,
                "label_stats",
                &[ROW_IN, WHOLE_IN, ROW_OUT, ROW_OUT],
                Thread,
                0,
            ),
            SumTree => row(F::Loss, "sum_tree", &[ROW_IN, WHOLE_OUT], Blocks, 0),
            OneHotSubtract => row(
                F::Grad,
                "one_hot_subtract",
                &[ROW_IN, MAT_OUT, WHOLE_IN],
                Team,
                1,
            ),
            MatmulNn => row(F::Matmul, "matmul_nn", PRODUCT, Tiles, 0),
            MatmulTn => row(F::Matmul, "matmul_tn", PRODUCT, Tiles, 0),
            MatmulNt => row(F::Matmul, "matmul_nt", PRODUCT, Tiles, 0),
            Pack => row(F::MatmulTex, "pack", &[WHOLE_IN, TEX_OUT], Tiles, 0),
            PackTransposed => row(
                F::MatmulTex,
                "pack_transposed",
                &[WHOLE_IN, TEX_OUT],
                Tiles,
                0,
            ),
            MatmulTex => row(
                F::MatmulTex,
                "matmul_tex",
                &[TEX_IN, TEX_IN, WHOLE_OUT],
                Tiles,
                0,
            ),
            // The logits are f32 beside f16 training data: MatrixF32 slots.
            SoftmaxGradRows => row(F::Train, "softmax_grad_rows", &[ROW_IN, F32_OUT], Team, 3),
            LossErrRows => row(
                F::Train,
                "loss_err_rows",
                &[F32_IN, ROW_IN, ROW_OUT, ROW_OUT],
                Team,
                2,
            ),
            CopyRows => row(F::Copy, "copy_rows", &[MAT_IN, MAT_OUT], Team, 1),
            // Elementwise: one vector per "row" of the dispatch, so no thread loops.
            CopyFlat => row(F::Copy, "copy_flat", &[MAT_IN, MAT_OUT], Thread, 0),
            WidenRows => row(F::Copy, "widen_rows", &[MAT_IN, F32_OUT], Team, 1),
            NarrowRows => row(F::Copy, "narrow_rows", &[F32_IN, MAT_OUT], Team, 1),
            SoftmaxFused => row(F::Fused, "softmax_fused", &[MAT_IN, MAT_OUT], Cached, 2),
            LogsumexpFused => row(F::Fused, "logsumexp_fused", &[MAT_IN, ROW_OUT], Team, 1),
            CrossEntropyLossFused => row(
                F::Fused,
                "cross_entropy_loss_fused",
                &[MAT_IN, ROW_IN, ROW_OUT, WHOLE_IN],
                Team,
                1,
            ),
            CrossEntropyFused => row(
                F::Fused,
                "cross_entropy_fused",
                &[MAT_IN, ROW_IN, ROW_OUT, MAT_OUT, WHOLE_IN, ROW_IN, WHOLE_IN],
                Cached,
                2,
            ),
            CrossEntropySoft => row(
                F::Fused,
                "cross_entropy_soft",
                &[MAT_IN, MAT_IN, ROW_OUT, MAT_OUT, WHOLE_IN],
                Team,
                3,
            ),
            SoftmaxBackward => row(F::Backward, "softmax_backward", BACKWARD, Team, 2),
            LogSoftmaxBackward => row(F::Backward, "log_softmax_backward", BACKWARD, Team, 2),
            // One vector a thread; its per-column gather loops over the W lanes only. The
            // weighted form adds the per-element weights after the unweighted one's bindings.
            BceWithLogits => row(
                F::Backward,
                "bce_with_logits",
                &[MAT_IN, MAT_IN, WHOLE_IN, F32_OUT, MAT_OUT],
                Thread,
                0,
            ),
            BceWithLogitsWeighted => row(
                F::Backward,
                "bce_with_logits_weighted",
                &[MAT_IN, MAT_IN, WHOLE_IN, F32_OUT, MAT_OUT, F32_IN, F32_IN],
                Thread,
                0,
            ),
            // Targets windowed as a 1-column matrix, so that their window may start at another
            // row than the residuals'.
            LogisticResidual => row(
                F::Backward,
                "logistic_residual",
                &[MAT_IN, ROW_OUT],
                Thread,
                0,
            ),
            // step_forward and loss_err_fused walk the features once, step_update the batch;
            // their loops over at most STEP_CLASSES classes are counted by fused_step_fits
            // (src/gpu/train.rs), which alone plans them.
            StepForward => row(
                F::Train,
                "step_forward",
                &[MAT_IN, ROW_IN, WHOLE_OUT, UNIFORM_IN],
                Thread,
                1,
            ),
            // The batch's rows of x are bound by the caller (src/gpu/train.rs), not windowed.
            StepUpdate => row(
                F::Train,
                "step_update",
                &[WHOLE_IN, UNIFORM_IN, WHOLE_OUT],
                Thread,
                1,
            ),
            LossErrFused => row(
                F::Train,
                "loss_err_fused",
                &[MAT_IN, ROW_IN, ROW_OUT, UNIFORM_IN, ROW_OUT],
                Thread,
                1,
            ),
            StepForwardTex => row(
                F::TrainTex,
                "step_forward_tex",
                &[TEX_IN, WHOLE_IN, WHOLE_OUT, UNIFORM_IN],
                Tiles,
                0,
            ),
            StepUpdateTex => row(
                F::TrainTex,
                "step_update_tex",
                &[TEX_IN, UNIFORM_IN, WHOLE_OUT],
                Tiles,
                0,
            ),
            LossErrTex => row(
                F::TrainTex,
                "loss_err_tex",
                &[TEX_IN, WHOLE_IN, WHOLE_OUT, UNIFORM_IN, WHOLE_OUT],
                Tiles,
                0,
            ),
            LinearBlockStats => row(
                F::Linear,
                "linear_block_stats",
                &[
                    MAT_IN, WHOLE_IN, WHOLE_IN, ROW_IN, ROW_OUT, ROW_OUT, ROW_OUT, ROW_OUT,
                ],
                Team,
                2,
            ),
            LinearMergeStats => row(
                F::Linear,
                "linear_merge_stats",
                &[
                    ROW_OUT, ROW_OUT, ROW_OUT, ROW_OUT, ROW_IN, ROW_IN, ROW_IN, ROW_IN,
                ],
                Thread,
                0,
            ),
            LinearLossRows => row(
                F::Linear,
                "linear_loss_rows",
                &[
                    WHOLE_IN, ROW_IN, ROW_IN, ROW_IN, ROW_IN, ROW_IN, ROW_OUT, WHOLE_IN,
                ],
                Thread,
                0,
            ),
            LinearBlockGrad => row(
                F::Linear,
                "linear_block_grad",
                &[
                    MAT_OUT, WHOLE_IN, WHOLE_IN, ROW_IN, ROW_IN, ROW_IN, WHOLE_IN, WHOLE_IN,
                ],
                Team,
                1,
            ),
        }
    }

    pub(crate) fn family(self) -> Family {
        self.spec().family
    }

    pub(crate) fn entry(self) -> &'static str {
        self.spec().entry
    }

    /// The bindings after binding 0 (always the params uniform), in binding order. Keep in sync
    /// with the `@binding` declarations of the kernel's WGSL file.
    pub(crate) fn bindings(self) -> &'static [Binding] {
        self.spec().bindings
    }

    /// How the kernel's invocations map onto rows.
    pub(crate) fn shape(self) -> Shape {
        self.spec().shape
    }

    /// How many loops of a row kernel walk a thread's share of its row (each of
    /// `ceil(vectors / tpr)` trips), at most: with [`FIXED_TRIPS`] for its reductions, what a
    /// thread's loops cost against the loop budget (`Geometry::check_trips`). Count the
    /// `for` loops over `row_vectors` (or over `p.cols` for a thread per row) in the kernel's
    /// WGSL, `row_stats` included; the boundary tests in `tests/limits.rs` hold the count to
    /// lavapipe's real limit. 0 for the kernels that are not row kernels: their planners count
    /// their own loops.
    ///
    /// [`FIXED_TRIPS`]: crate::gpu::dispatch::FIXED_TRIPS
    pub(crate) fn row_passes(self) -> u64 {
        self.spec().row_passes
    }

    /// The access width for rows of `cols` elements: vec4 where the row allows it, except in
    /// the kernels written for scalars only.
    pub(crate) fn width(self, cols: usize) -> Width {
        match self.family() {
            Family::Train | Family::TrainTex => Width::Scalar,
            _ => Width::for_cols(cols),
        }
    }

    /// The workgroup size the kernel declares.
    #[cfg(test)]
    pub(crate) fn workgroup_size(self, config: &Config) -> [u32; 3] {
        match self {
            Kernel::Pack | Kernel::PackTransposed => [PACK_TX, PACK_TX, 1],
            Kernel::MatmulTex => [MT_TILE, 1, 1],
            Kernel::StepForwardTex | Kernel::StepUpdateTex | Kernel::LossErrTex => [MT_LANES, 1, 1],
            _ if self.shape() == Shape::Tiles => [MM_TX, MM_TY, 1],
            _ => [config.wg(self.family()), 1, 1],
        }
    }
}

/// Matmul threads per workgroup along the columns (x) and rows (y) of the output tile.
pub(crate) const MM_TX: u32 = 8;
/// See [`MM_TX`].
pub(crate) const MM_TY: u32 = 8;
/// Rows and columns of C each matmul thread accumulates in registers: 64 multiply-adds for
/// every 8 values of op(A) and 8 of B it loads. The kernel's registers are written out for 8.
pub(crate) const MM_BLOCK: u32 = 8;
/// Output rows and columns of one matmul workgroup's tile.
pub(crate) const MM_TILE: [u32; 2] = [MM_BLOCK * MM_TY, MM_BLOCK * MM_TX];

/// Threads of a subgroup in the texture kernels (`matmul_tex.wgsl`, `train_tex.wgsl`), which
/// it must hold exactly: they broadcast from lanes named 0 to 7 (the rows of op(A), the class
/// quads of theta or G), and the training kernels run one subgroup per workgroup.
pub(crate) const MT_LANES: u32 = 8;
/// Output rows and columns of one texture-matmul workgroup (`MT_LANES` subgroups of
/// `MT_LANES` threads, each thread an 8 x 8 block).
pub(crate) const MT_TILE: u32 = MT_LANES * MT_LANES;
/// Threads along each side of a `pack` workgroup; each writes 4 texels of a column.
pub(crate) const PACK_TX: u32 = 8;

/// The most classes the fused training step handles (its per-thread logits live in registers).
pub(crate) const STEP_CLASSES: u32 = 16;
/// Size of the fused step's uniform bindings (theta, the batch gradient): the 64 KiB every
/// WebGPU adapter offers. Buffers bound there are allocated at least this large.
pub(crate) const STEP_UNIFORM_BYTES: u64 = 64 << 10;

/// Where a label loss's second denominator (the z-loss's count of rows not ignored) sits in
/// its denominators buffer, in `f32`s: 256 bytes past the first, the largest storage-binding
/// alignment WebGPU allows, so that a sum can write each through a binding of its own.
pub(crate) const DEN_Z: usize = 64;

/// Values each thread of `sum_tree` adds before its workgroup's tree (written out in
/// `loss.wgsl`, which must match): a workgroup reduces `SUM_TERMS * WG` values.
pub(crate) const SUM_TERMS: u32 = 4;

/// How a kernel's invocations map onto the rows of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A team of threads shares each row (`tpr` from the row length).
    TeamPerRow,
    /// A team per row, small enough that each thread's share of the row fits the fused
    /// kernels' private row cache (`Config::row_cache`) where it can.
    CachedTeamPerRow,
    /// One thread per row (`tpr = 1`).
    ThreadPerRow,
    /// Each workgroup sums [`SUM_TERMS`] x WG consecutive values into one partial sum
    /// (`tpr = WG`); planned as a tree of such dispatches by `GpuContext::plan_sum`.
    Blocks,
    /// Not a row kernel: a grid of output tiles (the products, `pack`) or of subgroups (the
    /// training step's texture kernels), planned by its own code.
    Tiles,
}

/// A finite `f32` as a WGSL hexadecimal float literal (`0x1.fffffep+127f` for `f32::MAX`):
/// exact, so every implementation reads the same value.
pub(crate) fn hex_f32(v: f32) -> String {
    assert!(v.is_finite(), "WGSL has no literal for {v}");
    let bits = v.to_bits();
    let sign = if bits >> 31 == 1 { "-" } else { "" };
    let exp = ((bits >> 23) & 0xff) as i32;
    let frac = bits & 0x7f_ffff;
    if exp == 0 && frac == 0 {
        return format!("{sign}0.0f");
    }
    // Normal: 1.frac x 2^(exp - 127); subnormal: 0.frac x 2^-126. 23 bits of fraction, shifted
    // left once to fill six hex digits.
    let (lead, e) = if exp == 0 { (0, -126) } else { (1, exp - 127) };
    format!("{sign}0x{lead}.{:06x}p{e:+}f", frac << 1)
}

/// The compile-time choices of one context's kernels, injected into every shader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    /// Threads in a row-kernel workgroup (a power of two).
    pub row_wg: u32,
    /// Threads in a workgroup of the fused family (`fused.wgsl`), at least `row_wg`: on a CPU
    /// adapter twice as many, so that a team of 128 threads, each caching `row_cache` vec4s,
    /// holds a whole row of 131,072 floats between its two passes.
    pub fused_wg: u32,
    /// Vectors of its row each thread of a fused kernel keeps in a private array between its
    /// read pass and its write pass: many on a CPU adapter, where private memory is cheap and
    /// storage loads are not; 1 (in effect none) on a GPU, where a large array would spill.
    pub row_cache: u32,
    /// Threads every subgroup is guaranteed to hold, over which team reductions shuffle
    /// before they touch workgroup memory: the adapter's smallest subgroup size (at most
    /// `row_wg`), or 1 where there are no subgroup operations (or they are turned off).
    pub subgroup: u32,
    /// Whether the texture kernels run where shapes fit (products through `matmul_tex.wgsl`,
    /// the fused training step's `*_tex` kernels): on a CPU adapter whose subgroups hold
    /// exactly [`MT_LANES`] threads. Everything else runs the storage-buffer kernels.
    pub texture_kernels: bool,
}

impl Config {
    /// The generated first lines of every shader: the `enable` directives `target` needs, then
    /// the host's constants, so that WGSL and Rust cannot disagree on them.
    pub(crate) fn prelude(
        &self,
        target: Target,
        family: Family,
        width: Width,
        dtype: DType,
    ) -> String {
        // An `enable` directive must come before every declaration.
        let mut s = String::from(directives(target, family, self, dtype));
        s.push_str("// Generated by src/gpu/shaders.rs (Config::prelude).\n");
        // S: how a matrix element is stored; V (lanes*.wgsl): what kernels compute in.
        let scalar = dtype.name();
        let _ = match width {
            Width::Scalar => writeln!(s, "alias S = {scalar};"),
            Width::Vec4 => writeln!(s, "alias S = vec4<{scalar}>;"),
        };
        let _ = writeln!(s, "const SG: u32 = {}u;", self.subgroup.max(1));
        let _ = writeln!(s, "const WG: u32 = {}u;", self.wg(family));
        let _ = writeln!(s, "const W: u32 = {}u;", width.lanes());
        let _ = writeln!(s, "const ROW_CACHE: u32 = {}u;", self.row_cache.max(1));
        let _ = writeln!(s, "const MM_TX: u32 = {MM_TX}u;");
        let _ = writeln!(s, "const MM_TY: u32 = {MM_TY}u;");
        let _ = writeln!(s, "const MM_BLOCK: u32 = {MM_BLOCK}u;");
        let _ = writeln!(s, "const MT_LANES: u32 = {MT_LANES}u;");
        let _ = writeln!(s, "const MT_TILE: u32 = {MT_TILE}u;");
        let _ = writeln!(s, "const PACK_TX: u32 = {PACK_TX}u;");
        let _ = writeln!(s, "const STEP_CLASSES: u32 = {STEP_CLASSES}u;");
        let _ = writeln!(s, "const STEP_UNIFORM: u32 = {}u;", STEP_UNIFORM_BYTES / 16);
        let _ = writeln!(s, "const IGNORED: u32 = {IGNORED:#x}u;");
        let _ = writeln!(s, "const INVALID: u32 = {INVALID:#x}u;");
        let _ = writeln!(s, "const DEN_Z: u32 = {DEN_Z}u;");
        // WGSL has no infinity literal; `x < -F32_MAX` is how the kernels test for -inf. The
        // hexadecimal form is exactly f32::MAX: Tint rejects a decimal above it before
        // rounding (Rust's shortest `{:e}`, 3.4028235e38, is one), naga accepts both.
        let _ = writeln!(s, "const F32_MAX: f32 = {};", hex_f32(f32::MAX));
        s
    }

    /// Threads in a workgroup of `family`'s row kernels.
    pub(crate) fn wg(&self, family: Family) -> u32 {
        match family {
            Family::Fused => self.fused_wg,
            _ => self.row_wg,
        }
    }

    /// The complete WGSL source of `family` at `width`, as the implementation the library runs
    /// on takes it: what the library compiles.
    pub(crate) fn source(&self, family: Family, width: Width, dtype: DType) -> String {
        self.source_for(Target::RUNTIME, family, width, dtype)
    }

    /// The complete WGSL source of `family` at `width`, written for `target`.
    pub(crate) fn source_for(
        &self,
        target: Target,
        family: Family,
        width: Width,
        dtype: DType,
    ) -> String {
        let mut s = self.prelude(target, family, width, dtype);
        s.push_str(match width {
            Width::Scalar => LANES_1,
            Width::Vec4 => LANES_4,
        });
        if family.uses_rows() {
            s.push_str(if self.subgroup > 1 {
                SUBGROUP_SHUFFLE
            } else {
                SUBGROUP_NONE
            });
            s.push_str(COMMON);
        }
        if family.is_matmul() {
            s.push_str(MATMUL_COMMON);
        }
        if family == Family::TrainTex {
            s.push_str(Family::Train.file());
        }
        s.push_str(family.file());
        s
    }
}

/// The WebGPU implementation a module's source is written for. The two disagree on one thing
/// only, the `subgroups` extension (see `directives`); everything else in the sources is
/// WGSL that both accept.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// wgpu-native, whose WGSL front end is naga: what the library itself compiles.
    Native,
    /// Dawn (Tint) and the browsers: the WGSL specification as written.
    Web,
}

impl Target {
    /// What the library compiles for itself: wgpu's WebGPU backend in the browser hands the
    /// sources to the browser's implementation, every other build to naga.
    pub const RUNTIME: Target = if cfg!(target_arch = "wasm32") {
        Target::Web
    } else {
        Target::Native
    };

    /// The name used on the command line (`--target native|web`).
    pub fn name(self) -> &'static str {
        match self {
            Target::Native => "native",
            Target::Web => "web",
        }
    }
}

/// The `enable` directives a module of `family` under `config` at `dtype` starts with on
/// `target`.
///
/// - `enable f16;` wherever f16 is used, on every target: the specification requires it and
///   naga does too.
/// - `enable subgroups;` before any subgroup builtin (or `@builtin(subgroup_size)`) on the web
///   only: Tint refuses subgroup operations without it, while naga 30 does not parse the
///   directive at all (naga issue 8202), wgpu-native gating them on `Features::SUBGROUP`
///   instead. Which modules use subgroups is [`Family::needs_subgroups`], which the naga test
///   holds to the sources by validating every other module without the capability.
fn directives(target: Target, family: Family, config: &Config, dtype: DType) -> &'static str {
    let f16 = dtype == DType::F16;
    let subgroups = target == Target::Web && family.needs_subgroups(config);
    match (f16, subgroups) {
        (false, false) => "",
        (true, false) => "enable f16;\n",
        (false, true) => "enable subgroups;\n",
        (true, true) => "enable f16;\nenable subgroups;\n",
    }
}

/// The configurations a [`GpuContext`](crate::GpuContext) picks (`GpuContext::build` in
/// `src/gpu/context.rs`), one for each kind of adapter and each option the tests run with. The
/// choice is a function of the adapter (its type, its smallest subgroup size) and of
/// [`GpuOptions`](crate::GpuOptions), so a list cannot hold every adapter's; this one holds
/// every value of each field the defaults and the tests' options produce. The naga test and
/// `softmax-ce wgsl --emit` both walk it.
pub(crate) fn configs() -> Vec<Config> {
    // A CPU adapter: row workgroups of 64, fused ones of 128, a row cache of 256 vectors.
    let cpu = |subgroup: u32| Config {
        row_wg: 64,
        fused_wg: 128,
        row_cache: 256,
        subgroup,
        texture_kernels: subgroup == MT_LANES,
    };
    // A GPU: workgroups of 256 for both, no row cache.
    let gpu = |subgroup: u32| Config {
        row_wg: 256,
        fused_wg: 256,
        row_cache: 1,
        subgroup,
        texture_kernels: false,
    };
    // `GpuOptions::row_workgroup_size(wg)` on lavapipe: the fused kernels take the same size.
    let cpu_wg = |wg: u32| Config {
        row_wg: wg,
        fused_wg: wg,
        ..cpu(MT_LANES)
    };
    let mut all = vec![
        // lavapipe on AVX2 (subgroups of 8: the texture kernels run), and with subgroups off.
        cpu(MT_LANES),
        cpu(1),
        // The workgroup sizes of the test matrix (tests/common/mod.rs).
        cpu_wg(32),
        cpu_wg(256),
        // Other CPU adapters: SwiftShader (subgroups of 4), llvmpipe on AVX-512 (16).
        cpu(4),
        cpu(16),
    ];
    // GPUs without subgroups and with each smallest subgroup size vendors report.
    all.extend([1, 4, 8, 16, 32, 64].map(gpu));
    all
}

impl Config {
    /// The configuration as it appears in file names:
    /// `wg{row}-fwg{fused}-rc{cache}-sg{subgroup}-{tex|buf}`.
    fn tag(&self) -> String {
        format!(
            "wg{}-fwg{}-rc{}-sg{}-{}",
            self.row_wg,
            self.fused_wg,
            self.row_cache,
            self.subgroup,
            if self.texture_kernels { "tex" } else { "buf" }
        )
    }
}

/// One module a context can compile: a family at a width and precision, under a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Variant {
    pub config: Config,
    pub family: Family,
    pub width: Width,
    pub dtype: DType,
}

impl Variant {
    /// `{family}-w{lanes}-{dtype}-{config tag}.wgsl`, e.g.
    /// `fused-w4-f16-wg64-fwg128-rc256-sg8-tex.wgsl`.
    pub(crate) fn file_name(&self) -> String {
        format!(
            "{}-w{}-{}-{}.wgsl",
            self.family.name(),
            self.width.lanes(),
            self.dtype.name(),
            self.config.tag()
        )
    }
}

/// Every module the library can assemble under each of [`configs`]: the widths each family is
/// run at ([`Kernel::width`]: scalar only for the training families), f16 where the family has
/// it, and the texture families where the configuration runs them.
pub(crate) fn variants() -> Vec<Variant> {
    let mut out = Vec::new();
    for config in configs() {
        for family in Family::ALL {
            if matches!(family, Family::MatmulTex | Family::TrainTex) && !config.texture_kernels {
                continue;
            }
            let widths: &[Width] = match family {
                Family::Train | Family::TrainTex => &[Width::Scalar],
                _ => &[Width::Scalar, Width::Vec4],
            };
            let dtypes: &[DType] = if family.has_f16() {
                &[DType::F32, DType::F16]
            } else {
                &[DType::F32]
            };
            for &dtype in dtypes {
                for &width in widths {
                    out.push(Variant {
                        config,
                        family,
                        width,
                        dtype,
                    });
                }
            }
        }
    }
    out
}

/// One assembled module: the file name that says its configuration, and its source.
#[doc(hidden)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assembled {
    /// `{family}-w{lanes}-{dtype}-wg{row}-fwg{fused}-rc{cache}-sg{subgroup}-{tex|buf}.wgsl`.
    pub file_name: String,
    /// The WGSL source, exactly as it is handed to the implementation.
    pub source: String,
}

/// Every module the library can assemble, for every configuration it picks, written for
/// `target` (`softmax-ce wgsl --emit`).
///
/// # Errors
/// [`Error::Shader`](crate::Error::Shader) when an assembled source lacks one of its family's
/// entry points or the directives `target` needs, or two modules would share a file name.
#[doc(hidden)]
pub fn assemble_all(target: Target) -> crate::Result<Vec<Assembled>> {
    let mut out: Vec<Assembled> = Vec::new();
    let mut names = std::collections::HashSet::new();
    for v in variants() {
        let source = v.config.source_for(target, v.family, v.width, v.dtype);
        let fail = |message: String| crate::Error::Shader {
            kernel: v.family.name(),
            message: format!("{} ({}): {message}", v.file_name(), target.name()),
        };
        let enables = directives(target, v.family, &v.config, v.dtype);
        if !source.starts_with(enables) {
            return Err(fail(format!("does not start with {enables:?}")));
        }
        for kernel in Kernel::ALL.into_iter().filter(|k| k.family() == v.family) {
            if !source.contains(&format!("fn {}(", kernel.entry())) {
                return Err(fail(format!("no entry point {}", kernel.entry())));
            }
        }
        let file_name = v.file_name();
        if !names.insert(file_name.clone()) {
            return Err(fail("two modules have this file name".into()));
        }
        out.push(Assembled { file_name, source });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(config: &Config, family: Family, width: Width) -> naga::Module {
        parse_as(config, family, width, DType::F32)
    }

    fn parse_as(config: &Config, family: Family, width: Width, dtype: DType) -> naga::Module {
        let src = config.source(family, width, dtype);
        naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{}: {}", family.name(), e.emit_to_string(&src)))
    }

    /// Every assembled source parses and validates, the way wgpu will see it: each module
    /// `softmax-ce wgsl --emit` writes for wgpu-native, from the same list.
    #[test]
    fn every_module_of_every_configuration_validates() {
        let variants = variants();
        assert!(variants.len() > 200, "{} modules", variants.len());
        for Variant {
            config,
            family,
            width,
            dtype,
        } in variants
        {
            // wgpu validates a module against the device's features: only the families that
            // run where subgroups do may use them, so that the rest work without (and so that
            // `directives` may trust `needs_subgroups`).
            let mut caps = naga::valid::Capabilities::all();
            if !family.needs_subgroups(&config) {
                caps -= naga::valid::Capabilities::SUBGROUP
                    | naga::valid::Capabilities::SUBGROUP_BARRIER
                    | naga::valid::Capabilities::SUBGROUP_VERTEX_STAGE;
            }
            // Only the f16 variants may use f16: the f32 ones run without SHADER_F16.
            if dtype == DType::F32 {
                caps -= naga::valid::Capabilities::SHADER_FLOAT16;
            }
            let module = parse_as(&config, family, width, dtype);
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                .validate(&module)
                .unwrap_or_else(|e| {
                    panic!("{} ({width:?}, {dtype}, {config:?}): {e:?}", family.name())
                });
        }
    }

    /// The web sources are the native ones behind the directives the web needs: subgroups
    /// enabled exactly where they are used.
    #[test]
    fn web_sources_differ_from_native_only_by_their_directives() {
        for v in variants() {
            let native = v
                .config
                .source_for(Target::Native, v.family, v.width, v.dtype);
            let web = v.config.source_for(Target::Web, v.family, v.width, v.dtype);
            let subgroups = v.family.needs_subgroups(&v.config);
            // A directive line, not the comment of subgroup_shuffle.wgsl that names it.
            let enables = |s: &str| s.lines().any(|l| l == "enable subgroups;");
            assert!(!enables(&native), "{}", v.file_name());
            assert_eq!(enables(&web), subgroups, "{}", v.file_name());
            let native_body = native.strip_prefix("enable f16;\n").unwrap_or(&native);
            let web_body = web.strip_prefix("enable f16;\n").unwrap_or(&web);
            let web_body = web_body
                .strip_prefix("enable subgroups;\n")
                .unwrap_or(web_body);
            assert_eq!(native_body, web_body, "{}", v.file_name());
        }
        assert_eq!(assemble_all(Target::Web).unwrap().len(), variants().len());
    }

    /// Each kernel's entry point exists, has the host's workgroup size, and declares exactly the
    /// bindings its signature says, in order.
    #[test]
    fn entry_points_match_their_signatures() {
        // lavapipe's: the only kind that compiles every kernel, the texture ones included.
        let config = configs()[0];
        assert!(config.texture_kernels);
        for kernel in Kernel::ALL {
            let module = parse(&config, kernel.family(), kernel.width(4));
            let ep = module
                .entry_points
                .iter()
                .find(|ep| ep.name == kernel.entry())
                .unwrap_or_else(|| panic!("no entry point {}", kernel.entry()));
            assert_eq!(
                ep.workgroup_size,
                kernel.workgroup_size(&config),
                "{}",
                kernel.entry()
            );

            let info = naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::all(),
            )
            .validate(&module)
            .unwrap();
            let index = module
                .entry_points
                .iter()
                .position(|e| e.name == kernel.entry())
                .unwrap();
            let ep_info = info.get_entry_point(index);
            let mut used: Vec<(u32, bool)> = module
                .global_variables
                .iter()
                .filter(|(handle, _)| !ep_info[*handle].is_empty())
                .filter_map(|(_, var)| {
                    let binding = var.binding.as_ref()?;
                    let writable = match (var.space, &module.types[var.ty].inner) {
                        (naga::AddressSpace::Storage { access }, _) => {
                            access.contains(naga::StorageAccess::STORE)
                        }
                        (
                            naga::AddressSpace::Handle,
                            naga::TypeInner::Image {
                                class: naga::ImageClass::Storage { access, .. },
                                ..
                            },
                        ) => access.contains(naga::StorageAccess::STORE),
                        _ => false,
                    };
                    Some((binding.binding, writable))
                })
                .collect();
            used.sort();
            let mut expected = vec![(0, false)];
            expected.extend(
                kernel
                    .bindings()
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (i as u32 + 1, b.writable)),
            );
            assert_eq!(used, expected, "bindings of {}", kernel.entry());
        }
    }

    /// The WGSL struct `name` in `module`: each member's name and byte offset.
    fn members(module: &naga::Module, name: &str) -> Vec<(String, u32)> {
        module
            .types
            .iter()
            .find_map(|(_, ty)| match &ty.inner {
                naga::TypeInner::Struct { members, .. } if ty.name.as_deref() == Some(name) => {
                    Some(
                        members
                            .iter()
                            .map(|m| (m.name.clone().unwrap_or_default(), m.offset))
                            .collect(),
                    )
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no struct {name}"))
    }

    /// The uniform blocks' WGSL mirrors lie exactly where the Rust structs put each field, so
    /// that a field added on one side only, or in another order, fails here and not as a
    /// silently wrong parameter.
    #[test]
    fn params_structs_match_their_wgsl_mirrors_field_by_field() {
        use crate::gpu::params::{MatmulParams, RowParams};
        use std::mem::{offset_of, size_of};
        let config = configs()[0];
        let rows = parse(&config, Family::Fused, Width::Vec4);
        let want_rows = [
            ("rows", offset_of!(RowParams, rows)),
            ("cols", offset_of!(RowParams, cols)),
            ("tpr", offset_of!(RowParams, tpr)),
            ("vec_base", offset_of!(RowParams, vec_base)),
            ("ignore", offset_of!(RowParams, ignore)),
            ("ignores", offset_of!(RowParams, ignores)),
            ("nan", offset_of!(RowParams, nan)),
            ("a", offset_of!(RowParams, args)),
            ("base", offset_of!(RowParams, base)),
            ("stride", offset_of!(RowParams, stride)),
        ];
        let got = assert_members(&rows, "RowParams", &want_rows);
        let last = got.iter().map(|(_, o)| *o).max().unwrap();
        // The last member is the 32-byte stride array.
        assert_eq!(last as usize + 32, size_of::<RowParams>());

        // Each row family's arguments, field by field, 32 bytes in all.
        macro_rules! args {
            ($family:expr, $ty:ty, [$($field:ident),*]) => {{
                let module = parse(&config, $family, Width::Vec4);
                let want = [$((stringify!($field), offset_of!($ty, $field))),*];
                let got = assert_members(&module, "Args", &want);
                let last = got.iter().map(|(_, o)| *o).max().unwrap();
                assert_eq!(last + 4, size_of::<$ty>() as u32, "{:?}: Args ends early", $family);
            }};
        }
        use crate::gpu::params::*;
        args!(
            Family::Fused,
            FusedArgs,
            [log, upstream, scale, smoothing, z_loss, weight_sum]
        );
        args!(Family::Loss, LossArgs, [first_partial, weighted, scale]);
        args!(Family::Grad, GradArgs, [scale]);
        args!(
            Family::Backward,
            BackwardArgs,
            [weight_mode, pos_weight_mode, scale, k_cols, first_col]
        );
        args!(Family::Train, TrainArgs, [classes, scale, decay]);
        args!(
            Family::Linear,
            LinearArgs,
            [
                class0, flags, classes, cap, smoothing, z_loss, weight, weight_b
            ]
        );
        for family in Family::ALL.into_iter().filter(|f| f.uses_rows()) {
            let module = parse(&config, family, Width::Vec4);
            let ty = module
                .types
                .iter()
                .find(|(_, t)| t.name.as_deref() == Some("Args"))
                .unwrap_or_else(|| panic!("{} declares no Args", family.name()));
            assert_eq!(
                ty.1.inner.size(module.to_ctx()),
                size_of::<NoArgs>() as u32,
                "{}: Args is not 32 bytes",
                family.name()
            );
        }

        let mm = parse(&config, Family::Matmul, Width::Scalar);
        let want_mm = [
            ("m", offset_of!(MatmulParams, m)),
            ("n", offset_of!(MatmulParams, n)),
            ("k", offset_of!(MatmulParams, k)),
            ("a_base", offset_of!(MatmulParams, a_base)),
            ("b_base", offset_of!(MatmulParams, b_base)),
            ("c_base", offset_of!(MatmulParams, c_base)),
            ("alpha", offset_of!(MatmulParams, alpha)),
            ("beta", offset_of!(MatmulParams, beta)),
            ("tile_x0", offset_of!(MatmulParams, tile_x0)),
        ];
        assert_members(&mm, "MatmulParams", &want_mm);
    }

    /// Asserts that struct `name` of `module` has each `(field, offset)` of `want`, and
    /// returns all its members.
    fn assert_members(
        module: &naga::Module,
        name: &str,
        want: &[(&str, usize)],
    ) -> Vec<(String, u32)> {
        let got = members(module, name);
        for &(field, offset) in want {
            let at = got.iter().find(|(n, _)| n == field).map(|(_, o)| *o);
            assert_eq!(at, Some(offset as u32), "{name}.{field}");
        }
        got
    }

    #[test]
    fn hex_literals_are_exact() {
        assert_eq!(hex_f32(f32::MAX), "0x1.fffffep+127f");
        assert_eq!(hex_f32(1.0), "0x1.000000p+0f");
        assert_eq!(hex_f32(-0.75), "-0x1.800000p-1f");
        assert_eq!(hex_f32(0.0), "0.0f");
        assert_eq!(hex_f32(f32::MIN_POSITIVE), "0x1.000000p-126f");
        assert_eq!(hex_f32(f32::from_bits(1)), "0x0.000002p-126f");
        // And naga reads each back as the same bits.
        for v in [
            f32::MAX,
            -f32::MAX,
            1.0,
            0.1,
            -0.75,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
        ] {
            let module =
                naga::front::wgsl::parse_str(&format!("const X: f32 = {};", hex_f32(v))).unwrap();
            let (_, c) = module.constants.iter().next().unwrap();
            match module.global_expressions[c.init] {
                naga::Expression::Literal(naga::Literal::F32(got)) => {
                    assert_eq!(got.to_bits(), v.to_bits(), "{v:e}")
                }
                ref e => panic!("{v:e}: {e:?}"),
            }
        }
    }

    #[test]
    fn prelude_carries_the_host_constants() {
        let p = Config {
            row_wg: 128,
            fused_wg: 256,
            row_cache: 1,
            subgroup: 1,
            texture_kernels: false,
        }
        .prelude(Target::Native, Family::Softmax, Width::Vec4, DType::F32);
        assert!(p.contains("const WG: u32 = 128u;"));
        assert!(p.contains("const W: u32 = 4u;"));
        assert!(p.contains("const IGNORED: u32 = 0xffffffffu;"));
    }
}
