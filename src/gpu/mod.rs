//! The GPU path: WGSL kernels run through wgpu.
//!
//! A [`GpuContext`] owns the device, the queue and the compiled kernels. Matrices, vectors and
//! labels are uploaded once ([`GpuContext::upload`], [`GpuContext::upload_labels`]) and stay on
//! the device as [`GpuMatrix`], [`GpuVector`] and [`GpuLabels`]; every op takes and returns
//! those, so results chain without host round trips, and nothing comes back until a
//! `download`. Everything is freed when dropped.
//!
//! Each op records its kernels into one command buffer and submits it; the call returns when
//! the work is queued, and a download waits for it. wgpu's validation and out-of-memory errors
//! come back as [`Error::Gpu`](crate::Error::Gpu) naming the op.
//!
//! Every wgpu call of the crate lives in this module.
//!
//! | file | what |
//! |---|---|
//! | `context.rs` | adapter choice, device, limits, the pipeline cache |
//! | `shaders.rs` | the kernel table: family file, entry point, bindings; the generated prelude |
//! | `params.rs` | uniform blocks mirrored in WGSL |
//! | `dispatch.rs` | row windows and workgroup counts, as pure functions |
//! | `record.rs` | recording kernels into a command buffer |
//! | `buffers.rs` | device arrays, uploads and downloads |
//! | `ops.rs` | the ops: staged kernels and the default path |
//! | `matmul.rs` | the register-tiled matrix products `A B`, `A^T B` and `A B^T` |
//! | `linear.rs` | the linear cross-entropy blocked over the vocabulary |
//! | `train.rs` | softmax-regression training: every dispatch of an epoch, planned once |
//! | `logistic.rs` | logistic-regression training, planned likewise |
//! | `timing.rs` | device time of submitted work, for benchmarks |

mod buffers;
mod context;
mod dispatch;
mod linear;
pub(crate) mod logistic;
mod matmul;
mod ops;
mod params;
mod record;
mod shaders;
mod timing;
pub(crate) mod train;

pub use buffers::{GpuLabels, GpuMatrix, GpuVector, LabelType};
#[cfg(not(target_arch = "wasm32"))]
pub use context::enumerate_adapters;
pub use context::{ADAPTER_ENV, AdapterReport, GpuContext, GpuOptions};
pub use linear::{
    GpuLinearGrads, GpuShard, GpuShardStats, WORKSPACE_BYTES as LINEAR_WORKSPACE_BYTES,
};
pub use ops::{CopyKernel, GpuBceLoss, GpuLoss, Staged};
pub use record::GpuPlan;
#[doc(hidden)]
pub use shaders::{Assembled, Target, assemble_all};
pub use timing::Clock;
