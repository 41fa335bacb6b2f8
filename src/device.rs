//! One interface over both paths, ndarray in and ndarray out, for comparing the CPU with the
//! GPU on the same work.

use std::fmt;
use std::str::FromStr;

use ndarray::{Array1, Array2, ArrayD, ArrayView2, ArrayViewD};

use crate::cpu;
use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::labels::Labels;
use crate::loss::{BceOptions, CrossEntropyOptions, Loss, Reduction};

/// Where ops run: the CPU reference, or a GPU context.
///
/// ```
/// use ndarray::array;
/// use softmax_ce::Device;
/// let p = Device::Cpu.softmax(array![[0.0f32, 0.0]].view())?;
/// assert_eq!(p, array![[0.5f32, 0.5]]);
/// # Ok::<(), softmax_ce::Error>(())
/// ```
#[derive(Debug)]
pub enum Device {
    /// The ndarray reference path ([`crate::cpu`]).
    Cpu,
    /// A wgpu adapter (boxed: a context is large, the CPU variant empty).
    Gpu(Box<GpuContext>),
}

/// Which device a caller asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// The ndarray reference path.
    Cpu,
    /// A wgpu adapter (an error when there is none).
    Gpu,
}

impl FromStr for DeviceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "gpu" => Ok(DeviceKind::Gpu),
            other => Err(Error::invalid(
                "device",
                format!("{other:?} is not cpu or gpu"),
            )),
        }
    }
}

impl Device {
    /// The device `kind` names; `None` picks the GPU when one exists and the CPU otherwise, and
    /// also returns why the GPU was passed over. Not in a browser, which builds its context
    /// with [`GpuContext::new_async`] and wraps it in [`Device::Gpu`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn select(kind: Option<DeviceKind>) -> Result<(Device, Option<Error>)> {
        match kind {
            Some(DeviceKind::Cpu) => Ok((Device::Cpu, None)),
            Some(DeviceKind::Gpu) => Ok((Device::Gpu(Box::new(GpuContext::new()?)), None)),
            None => match GpuContext::new() {
                Ok(gpu) => Ok((Device::Gpu(Box::new(gpu)), None)),
                Err(e) => Ok((Device::Cpu, Some(e))),
            },
        }
    }

    /// `cpu` or `gpu`.
    pub fn kind(&self) -> DeviceKind {
        match self {
            Device::Cpu => DeviceKind::Cpu,
            Device::Gpu(_) => DeviceKind::Gpu,
        }
    }

    /// The GPU context, if this is a GPU.
    pub fn gpu(&self) -> Option<&GpuContext> {
        match self {
            Device::Cpu => None,
            Device::Gpu(g) => Some(g),
        }
    }

    /// Row-wise softmax, in the input's precision (`f32` or `f16`).
    pub fn softmax<T: Element>(&self, x: ArrayView2<T>) -> Result<Array2<T>> {
        match self {
            Device::Cpu => cpu::softmax(x),
            Device::Gpu(g) => g.download_as(&g.softmax(&g.upload_as("softmax", x)?)?),
        }
    }

    /// Row-wise log-softmax, in the input's precision.
    pub fn log_softmax<T: Element>(&self, x: ArrayView2<T>) -> Result<Array2<T>> {
        match self {
            Device::Cpu => cpu::log_softmax(x),
            Device::Gpu(g) => g.download_as(&g.log_softmax(&g.upload_as("log_softmax", x)?)?),
        }
    }

    /// Row-wise log-sum-exp, in `f32` whatever the input's precision.
    pub fn logsumexp<T: Element>(&self, x: ArrayView2<T>) -> Result<Array1<f32>> {
        match self {
            Device::Cpu => cpu::logsumexp(x),
            Device::Gpu(g) => g.download_vector(&g.logsumexp(&g.upload_as("logsumexp", x)?)?),
        }
    }

    /// Cross-entropy against integer labels (the loss in `f32`).
    pub fn cross_entropy<T: Element>(
        &self,
        x: ArrayView2<T>,
        labels: &Labels,
        opts: &CrossEntropyOptions,
    ) -> Result<Loss> {
        match self {
            Device::Cpu => cpu::cross_entropy(x, labels, opts),
            Device::Gpu(g) => {
                let x = g.upload_as("cross_entropy", x)?;
                let loss = g.cross_entropy(&x, &g.upload_labels(labels)?, opts)?;
                g.download_loss(&loss)
            }
        }
    }

    /// Cross-entropy and its gradient with respect to the logits, the gradient in the
    /// logits' precision.
    pub fn cross_entropy_with_grad<T: Element>(
        &self,
        x: ArrayView2<T>,
        labels: &Labels,
        opts: &CrossEntropyOptions,
    ) -> Result<(Loss, Array2<T>)> {
        match self {
            Device::Cpu => Ok((
                cpu::cross_entropy(x, labels, opts)?,
                cpu::cross_entropy_grad(x, labels, opts)?,
            )),
            Device::Gpu(g) => {
                let x = g.upload_as("cross_entropy_with_grad", x)?;
                let (loss, grad) =
                    g.cross_entropy_with_grad(&x, &g.upload_labels(labels)?, opts)?;
                Ok((g.download_loss(&loss)?, g.download_as(&grad)?))
            }
        }
    }
}

impl Device {
    /// The softmax backward pass, `p * (dy - sum(dy * p))` per row, in the inputs' precision
    /// (computed in `f32` on the GPU, in `f64` on the CPU).
    pub fn softmax_backward<T: Element>(
        &self,
        p: ArrayView2<T>,
        dy: ArrayView2<T>,
    ) -> Result<Array2<T>> {
        const OP: &str = "softmax_backward";
        match self {
            Device::Cpu => cpu::softmax_backward(p, dy),
            Device::Gpu(g) => {
                g.download_as(&g.softmax_backward(&g.upload_as(OP, p)?, &g.upload_as(OP, dy)?)?)
            }
        }
    }

    /// The log-softmax backward pass, `dy - exp(lp) * sum(dy)` per row, in the inputs'
    /// precision.
    pub fn log_softmax_backward<T: Element>(
        &self,
        lp: ArrayView2<T>,
        dy: ArrayView2<T>,
    ) -> Result<Array2<T>> {
        const OP: &str = "log_softmax_backward";
        match self {
            Device::Cpu => cpu::log_softmax_backward(lp, dy),
            Device::Gpu(g) => g.download_as(
                &g.log_softmax_backward(&g.upload_as(OP, lp)?, &g.upload_as(OP, dy)?)?,
            ),
        }
    }

    /// Cross-entropy against probability targets and its gradient with respect to the logits,
    /// targets and gradient in the logits' precision.
    pub fn cross_entropy_soft_with_grad<T: Element>(
        &self,
        x: ArrayView2<T>,
        targets: ArrayView2<T>,
        opts: &CrossEntropyOptions,
    ) -> Result<(Loss, Array2<T>)> {
        match self {
            Device::Cpu => Ok((
                cpu::cross_entropy_soft(x, targets, opts)?,
                cpu::cross_entropy_soft_grad(x, targets, opts)?,
            )),
            Device::Gpu(g) => {
                const OP: &str = "cross_entropy_soft";
                let (x, t) = (g.upload_as(OP, x)?, g.upload_as(OP, targets)?);
                let (loss, grad) = g.cross_entropy_soft_with_grad(&x, &t, opts)?;
                Ok((g.download_loss(&loss)?, g.download_as(&grad)?))
            }
        }
    }

    /// Binary cross-entropy with logits and its gradient with respect to the logits.
    pub fn bce_with_logits_with_grad(
        &self,
        z: ArrayView2<f32>,
        t: ArrayView2<f32>,
        reduction: Reduction,
    ) -> Result<(cpu::BceLoss, Array2<f32>)> {
        match self {
            Device::Cpu => Ok((
                cpu::bce_with_logits(z, t, reduction)?,
                cpu::bce_with_logits_grad(z, t, reduction)?,
            )),
            Device::Gpu(g) => {
                let (loss, grad) =
                    g.bce_with_logits_with_grad(&g.upload(z)?, &g.upload(t)?, reduction)?;
                Ok((g.download_bce(&loss)?, g.download(&grad)?))
            }
        }
    }
}

/// Ops on arrays of any of PyTorch's shapes.
impl Device {
    /// Binary cross-entropy with logits of any shape and its gradient, with PyTorch's
    /// `weight` and `pos_weight` (see [`cpu::bce_with_logits_nd`]): the loss in PyTorch's shape
    /// (the logits' for `none`, 0-d otherwise) and the gradient in the logits' shape.
    ///
    /// ```
    /// use ndarray::array;
    /// use softmax_ce::{BceOptions, Device};
    /// // Logistic regression: one logit per sample, 0/1 targets.
    /// let z = array![0.0f32, 3.0, -1.0];
    /// let t = array![1.0f32, 1.0, 0.0];
    /// let (loss, grad) = Device::Cpu.bce_with_logits_nd_with_grad(
    ///     z.view().into_dyn(),
    ///     t.view().into_dyn(),
    ///     &BceOptions::default(),
    /// )?;
    /// assert_eq!(loss.ndim(), 0);
    /// assert_eq!(grad.shape(), &[3]);
    /// # Ok::<(), softmax_ce::Error>(())
    /// ```
    pub fn bce_with_logits_nd_with_grad(
        &self,
        z: ArrayViewD<f32>,
        t: ArrayViewD<f32>,
        opts: &BceOptions,
    ) -> Result<(ArrayD<f32>, ArrayD<f32>)> {
        match self {
            Device::Cpu => Ok((
                cpu::bce_with_logits_nd(z.view(), t.view(), opts)?,
                cpu::bce_with_logits_nd_grad(z, t, opts)?,
            )),
            Device::Gpu(g) => g.bce_with_logits_nd_with_grad(z, t, opts),
        }
    }

    /// Cross-entropy of logits `(C,)`, `(N, C)` or `(N, C, d1, ..., dk)` (classes on axis 1)
    /// against integer labels of the logits' shape without axis 1 (see
    /// [`cpu::cross_entropy_nd`]). On the GPU the class axis is moved last on the host, the
    /// rows run through [`GpuContext::cross_entropy`], and nothing moves back but the loss.
    pub fn cross_entropy_nd<T: Element>(
        &self,
        x: ArrayViewD<T>,
        labels: ArrayViewD<i64>,
        ignore_index: i64,
        opts: &CrossEntropyOptions,
    ) -> Result<ArrayD<f32>> {
        const OP: &str = "cross_entropy";
        match self {
            Device::Cpu => cpu::cross_entropy_nd(x, labels, ignore_index, opts),
            Device::Gpu(g) => {
                let rows = cpu::ClassRows::new(OP, x)?;
                let labels = rows.labels(OP, labels, ignore_index)?;
                let loss = g.cross_entropy(
                    &g.upload_as(OP, rows.rows.view())?,
                    &g.upload_labels(&labels)?,
                    opts,
                )?;
                Ok(rows.loss(g.download_loss(&loss)?))
            }
        }
    }

    /// [`cross_entropy_nd`](Self::cross_entropy_nd) and its gradient with respect to the
    /// logits, in the logits' shape. On the GPU the class axis is moved last on the host and
    /// the gradient moved back (a transpose of the logits each way, on the CPU).
    pub fn cross_entropy_nd_with_grad<T: Element>(
        &self,
        x: ArrayViewD<T>,
        labels: ArrayViewD<i64>,
        ignore_index: i64,
        opts: &CrossEntropyOptions,
    ) -> Result<(ArrayD<f32>, ArrayD<T>)> {
        const OP: &str = "cross_entropy_with_grad";
        let rows = cpu::ClassRows::new(OP, x)?;
        let labels = rows.labels(OP, labels, ignore_index)?;
        let (loss, grad) = self.cross_entropy_with_grad(rows.rows.view(), &labels, opts)?;
        Ok((rows.loss(loss), rows.grad(grad)))
    }

    /// Cross-entropy against probability targets of the logits' shape (`(C,)`, `(N, C)` or
    /// `(N, C, d1, ..., dk)`) and its gradient (see [`cpu::cross_entropy_soft_nd`]).
    pub fn cross_entropy_soft_nd_with_grad<T: Element>(
        &self,
        x: ArrayViewD<T>,
        targets: ArrayViewD<T>,
        opts: &CrossEntropyOptions,
    ) -> Result<(ArrayD<f32>, ArrayD<T>)> {
        const OP: &str = "cross_entropy_soft";
        let rows = cpu::ClassRows::new(OP, x)?;
        let t = rows.targets(OP, targets)?;
        let (loss, grad) = self.cross_entropy_soft_with_grad(rows.rows.view(), t.view(), opts)?;
        Ok((rows.loss(loss), rows.grad(grad)))
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu (ndarray reference)"),
            Device::Gpu(g) => {
                let info = g.adapter_info();
                write!(f, "gpu ({}, {:?})", info.name, info.backend)
            }
        }
    }
}
