//! Softmax and cross-entropy on the GPU, in WGSL through wgpu, with an ndarray reference on the
//! CPU.
//!
//! # From the top
//!
//! - [`GpuContext`] owns a wgpu device and the compiled kernels; [`GpuMatrix`] is a matrix on
//!   it. Ops take and return device arrays, so they chain without host round trips.
//! - [`cpu`] computes every op on ndarray; it is the reference the GPU is tested against.
//! - [`Labels`] are class labels validated once, with PyTorch's `ignore_index`.
//! - [`CrossEntropyOptions`], [`Reduction`] and [`Loss`] describe a loss call and its result,
//!   the same on both paths.
//! - [`train`] trains a softmax-regression classifier by the seed's SGD on either device, and
//!   [`logistic`] a logistic-regression (binary) one;
//!   [`data`] reads the bundled MNIST digits, IDX files and `.npy` data for it.
//! - [`cpu::fast`] is a parallel, vectorised CPU path for fair CPU-against-GPU comparisons.
//! - [`Error`] is the one error type: bad input is always an `Err` naming the op and the values.
//!
//! Semantics follow PyTorch (`torch.softmax`, `log_softmax`, `logsumexp`, `F.cross_entropy`);
//! `docs/semantics.md` lists each behaviour and each deliberate difference.
//!
//! # Example
//!
//! ```no_run
//! use ndarray::array;
//! use softmax_ce::{cpu, CrossEntropyOptions, GpuContext, Labels};
//!
//! # fn main() -> Result<(), softmax_ce::Error> {
//! let logits = array![[2.0f32, 1.0, 0.1], [0.5, 2.5, -1.0]];
//! let labels = Labels::new([0, 1], 3, -100)?;
//! let opts = CrossEntropyOptions::default(); // mean over rows not ignored
//!
//! let gpu = GpuContext::new()?;
//! let x = gpu.upload(logits.view())?;
//! let y = gpu.upload_labels(&labels)?;
//! let (loss, grad) = gpu.cross_entropy_with_grad(&x, &y, &opts)?;
//! let loss = gpu.download_loss(&loss)?.scalar().unwrap();
//! let grad = gpu.download(&grad)?;
//!
//! // The CPU reference computes the same.
//! let cpu_loss = cpu::cross_entropy(logits.view(), &labels, &opts)?.scalar().unwrap();
//! assert!((loss - cpu_loss).abs() < 1e-5);
//! assert_eq!(grad.dim(), (2, 3));
//! # Ok(())
//! # }
//! ```
//!
//! # GPU requirements
//!
//! Any adapter wgpu can drive with compute shaders: Vulkan, Metal, DX12, or GL. With no GPU,
//! Mesa's lavapipe (`apt-get install mesa-vulkan-drivers`) provides a software Vulkan adapter;
//! `SOFTMAX_CE_ADAPTER` (or `WGPU_ADAPTER_NAME`) picks an adapter by name and `WGPU_BACKEND`
//! limits the backends searched.

#![deny(missing_docs)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod cpu;
pub mod data;
mod device;
mod dtype;
mod error;
pub mod gpu;
mod labels;
pub mod logistic;
mod loss;
#[cfg(feature = "fs")]
pub mod npy;
mod par;
pub mod train;

/// The clock of epoch and kernel timings: std's, or on wasm32 the browser's (std's
/// `Instant::now` panics there).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use std::time::Instant;
#[cfg(target_arch = "wasm32")]
pub(crate) use web_time::Instant;

pub use device::{Device, DeviceKind};
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use gpu::{GpuContext, GpuLabels, GpuMatrix, GpuOptions, GpuPlan, GpuVector, LabelType};
pub use half::f16;
pub use labels::{DEFAULT_IGNORE_INDEX, Labels};
pub use loss::{BceOptions, CrossEntropyOptions, LinearCrossEntropyOptions, Loss, Reduction};

/// The README's examples, compiled as doctests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
