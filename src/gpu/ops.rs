//! The ops on device-resident matrices.
//!
//! [`Staged`] runs each op as the sequence of small kernels the maths is written in: row
//! maximum, row sum of exponentials, normalise, per-row loss, reduction, one-hot subtract. It is
//! the readable reference on the GPU. The methods of [`GpuContext`] with the same names are the
//! default path: the fused kernels of `shaders/fused.wgsl`, which read each row once for its
//! statistics (online softmax) and, where they write a matrix, once more to write it.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::buffers::{GpuLabels, GpuMatrix, GpuVector};
use crate::gpu::params::{BackwardArgs, FusedArgs, GradArgs, LossArgs, NoArgs};
use crate::gpu::record::{At, GpuPlan, Recorder};
use crate::gpu::shaders::{DEN_Z, Kernel};
use crate::loss::{BceOptions, CrossEntropyOptions, Loss, Reduction};
use ndarray::{ArrayD, ArrayViewD, IxDyn};

/// A loss computed on the device: one value per row, or a reduced scalar.
#[derive(Debug)]
pub struct GpuLoss {
    values: GpuVector,
    reduction: Reduction,
}

impl GpuLoss {
    /// The reduction it was computed with.
    pub fn reduction(&self) -> Reduction {
        self.reduction
    }

    /// The values: `N` per-row losses for [`Reduction::None`], one scalar otherwise.
    pub fn values(&self) -> &GpuVector {
        &self.values
    }
}

/// The staged kernels, one dispatch per stage of the maths. Get it from
/// [`GpuContext::staged`].
#[derive(Clone, Copy, Debug)]
pub struct Staged<'a> {
    gpu: &'a GpuContext,
}

fn check_classes(op: &'static str, x: &GpuMatrix) -> Result<()> {
    if x.cols() == 0 {
        return Err(Error::Empty {
            op,
            what: "the class dimension",
        });
    }
    Ok(())
}

fn check_per_row(op: &'static str, x: &GpuMatrix, v: &GpuVector, what: &str) -> Result<()> {
    if v.len() != x.rows() {
        return Err(Error::shape(
            op,
            format!("{} {what} (one per row)", x.rows()),
            format!("{}", v.len()),
        ));
    }
    Ok(())
}

/// The row statistics `m` and `s` of `x`, recorded into `rec`.
fn record_stats(
    rec: &mut Recorder<'_>,
    gpu: &GpuContext,
    op: &'static str,
    x: &GpuMatrix,
) -> Result<(GpuVector, GpuVector)> {
    let (rows, cols) = x.dim();
    let m = gpu.new_vector(op, rows)?;
    let s = gpu.new_vector(op, rows)?;
    rec.rows(
        Kernel::RowMax,
        rows,
        cols,
        &[x.at(), m.at()],
        NoArgs::default(),
    )?;
    rec.rows(
        Kernel::RowSumexp,
        rows,
        cols,
        &[x.at(), m.at(), s.at()],
        NoArgs::default(),
    )?;
    Ok((m, s))
}

/// `scale * sum` of the first `len` values of `values` into element 0 of `out`; NaN instead
/// for `empty_mean`, PyTorch's mean over no rows (0 / 0). Every reduced loss ends here.
#[allow(clippy::too_many_arguments)]
fn record_total_into(
    rec: &mut Recorder<'_>,
    gpu: &GpuContext,
    op: &'static str,
    values: At<'_>,
    len: usize,
    scale: f32,
    empty_mean: bool,
    out: At<'_>,
) -> Result<()> {
    if empty_mean {
        // A copy from a NaN the plan keeps: recorded, so that a replayed plan writes it too.
        let nan = gpu.storage_init("NaN", bytemuck::bytes_of(&f32::NAN));
        rec.copy((&nan).into(), out.buffer, out.offset, 4);
    } else {
        rec.push(gpu.plan_sum(op, values, len, out, scale)?);
    }
    Ok(())
}

/// Where an op's per-row losses go: the loss itself for [`Reduction::None`], else a
/// workspace of the plan's own that [`reduce`](Self::reduce) sums into the loss. The per-row
/// values carry the reduction's scale (a mean's denominator), so a plain sum remains.
pub(crate) struct PerRow {
    values: Option<GpuVector>,
    /// A mean over no rows at all: PyTorch's NaN, which no kernel is left to write. (A mean
    /// over rows that are all ignored gets its NaN from the kernels: `ignored_loss`.)
    empty_mean: bool,
}

impl PerRow {
    pub(crate) fn new(
        gpu: &GpuContext,
        op: &'static str,
        rows: usize,
        reduction: Reduction,
    ) -> Result<Self> {
        Ok(PerRow {
            values: match reduction {
                Reduction::None => None,
                Reduction::Mean | Reduction::Sum => Some(gpu.new_vector(op, rows)?),
            },
            empty_mean: reduction == Reduction::Mean && rows == 0,
        })
    }

    /// The per-row losses as a kernel binds them.
    pub(crate) fn at<'a>(&'a self, loss: &'a GpuVector) -> At<'a> {
        self.values.as_ref().unwrap_or(loss).at()
    }

    /// Records the sum of the workspace into `loss`; nothing for [`Reduction::None`], whose
    /// per-row losses are the loss.
    pub(crate) fn reduce(
        &self,
        rec: &mut Recorder<'_>,
        gpu: &GpuContext,
        op: &'static str,
        loss: &GpuVector,
    ) -> Result<()> {
        match &self.values {
            None => Ok(()),
            Some(v) => record_total_into(
                rec,
                gpu,
                op,
                v.at(),
                v.len(),
                1.0,
                self.empty_mean,
                loss.at(),
            ),
        }
    }
}

impl GpuContext {
    /// The denominators a label loss divides by under `reduction`, in a buffer the kernels
    /// bind whole: at slot 0 the class-weighted count of the rows not ignored (the plain count
    /// without `weights`), at slot [`DEN_Z`] their plain count (the z-loss's), for a mean; 1
    /// and 1 otherwise. The one place a mean's denominator is made: from the host's counts of
    /// uploaded labels, with no dispatch, or summed on the device (`label_stats`, then two
    /// sums) for labels the application wrote there, so that each replay of the plan counts
    /// that frame's labels.
    pub(crate) fn denominators(
        &self,
        rec: &mut Recorder<'_>,
        op: &'static str,
        labels: &GpuLabels,
        weights: Option<(&[f32], &wgpu::Buffer)>,
        reduction: Reduction,
    ) -> Result<wgpu::Buffer> {
        let mut den = [0f32; DEN_Z + 1];
        match (reduction, labels.counted()) {
            (Reduction::Sum | Reduction::None, _) => {
                den[0] = 1.0;
                den[DEN_Z] = 1.0;
            }
            (Reduction::Mean, Some(counted)) => {
                den[0] = match weights {
                    Some((w, _)) => counted
                        .per_class
                        .iter()
                        .map(|&(class, n)| n as f64 * f64::from(w[class as usize]))
                        .sum::<f64>() as f32,
                    None => counted.active as f32,
                };
                den[DEN_Z] = counted.active as f32;
            }
            (Reduction::Mean, None) => {
                let buffer = self.storage("denominators", std::mem::size_of_val(&den) as u64);
                let rows = labels.len();
                let weight = self.new_vector(op, rows)?;
                let active = self.new_vector(op, rows)?;
                // Unweighted, label_stats never reads binding 2: the buffer stands in.
                let w = weights.map_or(&buffer, |(_, b)| b);
                rec.rows_labelled(
                    Kernel::LabelStats,
                    rows,
                    labels.classes(),
                    &[labels.at(), At::from(w), weight.at(), active.at()],
                    LossArgs {
                        weighted: u32::from(weights.is_some()),
                        ..LossArgs::default()
                    },
                    labels,
                )?;
                rec.push(self.plan_sum(op, weight.at(), rows, At::from(&buffer), 1.0)?);
                let z = At {
                    offset: 4 * DEN_Z as u64,
                    ..At::from(&buffer)
                };
                rec.push(self.plan_sum(op, active.at(), rows, z, 1.0)?);
                return Ok(buffer);
            }
        }
        Ok(self.storage_init("denominators", bytemuck::cast_slice(&den)))
    }
}

/// The class weights of `opts` for `classes` classes, 1 each without weights: the fused
/// kernels always read a weight.
fn class_weights(opts: &CrossEntropyOptions, classes: usize) -> Vec<f32> {
    match &opts.weight {
        Some(w) => w.to_vec(),
        None => vec![1.0; classes],
    }
}

/// A matrix an op binds, for [`check_disjoint`].
fn span_m<'b>(what: &'static str, m: &'b GpuMatrix) -> Span<'b> {
    (what, m.at(), m.byte_len())
}

/// A vector an op binds, for [`check_disjoint`].
fn span_v<'b>(what: &'static str, v: &'b GpuVector) -> Span<'b> {
    (what, v.at(), 4 * v.len() as u64)
}

impl GpuContext {
    /// The checks of every cross-entropy plan against labels, fused or staged: shapes, owners,
    /// outputs apart from inputs and each other, an upstream gradient only for reduction none,
    /// and the options against the class count.
    fn check_label_loss(
        &self,
        op: &'static str,
        x: &GpuMatrix,
        labels: &GpuLabels,
        opts: &CrossEntropyOptions,
        (loss, grad): (&GpuVector, Option<&GpuMatrix>),
        upstream: Option<&GpuVector>,
    ) -> Result<()> {
        check_classes(op, x)?;
        labels.check_fits(op, x.rows(), x.cols())?;
        let rows = x.rows();
        check_loss_len(op, loss, rows, opts.reduction)?;
        let mut owners = vec![x.owner, labels.owner, loss.owner];
        let mut outputs = vec![span_v("the loss", loss)];
        if let Some(g) = grad {
            check_pair(op, x, g, "a gradient")?;
            owners.push(g.owner);
            outputs.push(span_m("the gradient", g));
        }
        let mut inputs = vec![
            span_m("the logits", x),
            ("the labels", labels.at(), 4 * rows as u64),
        ];
        if let Some(u) = upstream {
            if opts.reduction != Reduction::None {
                return Err(Error::invalid(
                    op,
                    format!(
                        "an upstream gradient needs reduction none, not {}",
                        opts.reduction
                    ),
                ));
            }
            check_per_row(op, x, u, "upstream gradients")?;
            owners.push(u.owner);
            inputs.push(span_v("the upstream gradient", u));
        }
        self.check_owned(op, &owners)?;
        check_disjoint(op, &inputs, &outputs)?;
        opts.validate(op, x.cols())
    }

    /// A new loss of `rows` rows under `reduction`, written by the plan `plan` builds into it,
    /// submitted: the convenience form of every loss plan.
    pub(crate) fn new_loss(
        &self,
        op: &'static str,
        rows: usize,
        reduction: Reduction,
        plan: impl FnOnce(&GpuVector) -> Result<GpuPlan>,
    ) -> Result<GpuLoss> {
        let values = self.new_vector(op, loss_len(rows, reduction))?;
        self.run_plan(plan(&values)?)?;
        Ok(GpuLoss { values, reduction })
    }

    /// A new `rows x cols` matrix of `dtype`, written by the plan `plan` builds into it,
    /// submitted: the convenience form of every plan with a matrix output.
    fn new_output(
        &self,
        op: &'static str,
        (rows, cols): (usize, usize),
        dtype: DType,
        plan: impl FnOnce(&GpuMatrix) -> Result<GpuPlan>,
    ) -> Result<GpuMatrix> {
        let out = self.new_matrix_of(op, rows, cols, dtype)?;
        self.run_plan(plan(&out)?)?;
        Ok(out)
    }
}

/// The op a cross-entropy plan reports: with or without its gradient.
fn cross_entropy_name(grad: Option<&GpuMatrix>) -> &'static str {
    if grad.is_some() {
        "cross_entropy_with_grad"
    } else {
        "cross_entropy"
    }
}

impl<'a> Staged<'a> {
    /// Row-wise maximum: `m[i] = max_j x[i, j]`.
    pub fn row_max(&self, x: &GpuMatrix) -> Result<GpuVector> {
        let m = self.gpu.new_vector("row_max", x.rows())?;
        self.gpu.run_plan(self.plan_row_max(x, &m)?)?;
        Ok(m)
    }

    /// The plan of [`row_max`](Self::row_max) into `m` (one value per row). Like every plan
    /// of the staged kernels, it fails as [`GpuContext::plan_softmax`] does for outputs of the
    /// wrong shape, outputs sharing a buffer with an input, or arrays of another context.
    pub fn plan_row_max(&self, x: &GpuMatrix, m: &GpuVector) -> Result<GpuPlan> {
        const OP: &str = "row_max";
        check_classes(OP, x)?;
        check_per_row(OP, x, m, "row maxima")?;
        self.gpu.check_owned(OP, &[x.owner, m.owner])?;
        check_disjoint(OP, &[span_m("the input", x)], &[span_v("the maxima", m)])?;
        let (rows, cols) = x.dim();
        self.gpu.build_plan(OP, |rec| {
            rec.rows(
                Kernel::RowMax,
                rows,
                cols,
                &[x.at(), m.at()],
                NoArgs::default(),
            )
        })
    }

    /// Row-wise `s[i] = sum_j exp(x[i, j] - m[i])` (0 where `m[i] = -inf`).
    pub fn row_sumexp(&self, x: &GpuMatrix, m: &GpuVector) -> Result<GpuVector> {
        let s = self.gpu.new_vector("row_sumexp", x.rows())?;
        self.gpu.run_plan(self.plan_row_sumexp(x, m, &s)?)?;
        Ok(s)
    }

    /// The plan of [`row_sumexp`](Self::row_sumexp) into `s` (one value per row).
    pub fn plan_row_sumexp(&self, x: &GpuMatrix, m: &GpuVector, s: &GpuVector) -> Result<GpuPlan> {
        const OP: &str = "row_sumexp";
        check_classes(OP, x)?;
        check_per_row(OP, x, m, "row maxima")?;
        check_per_row(OP, x, s, "row sums")?;
        self.gpu.check_owned(OP, &[x.owner, m.owner, s.owner])?;
        check_disjoint(
            OP,
            &[span_m("the input", x), span_v("the maxima", m)],
            &[span_v("the sums", s)],
        )?;
        let (rows, cols) = x.dim();
        self.gpu.build_plan(OP, |rec| {
            rec.rows(
                Kernel::RowSumexp,
                rows,
                cols,
                &[x.at(), m.at(), s.at()],
                NoArgs::default(),
            )
        })
    }

    /// The exp/normalise step: `exp(x - m) / s`, from [`row_max`](Self::row_max) and
    /// [`row_sumexp`](Self::row_sumexp).
    pub fn softmax_normalise(
        &self,
        x: &GpuMatrix,
        m: &GpuVector,
        s: &GpuVector,
    ) -> Result<GpuMatrix> {
        self.gpu
            .new_output("softmax_normalise", x.dim(), x.dtype(), |out| {
                self.plan_softmax_normalise(x, m, s, out)
            })
    }

    /// `x - m - log s`, from the same statistics.
    pub fn log_softmax_normalise(
        &self,
        x: &GpuMatrix,
        m: &GpuVector,
        s: &GpuVector,
    ) -> Result<GpuMatrix> {
        self.gpu
            .new_output("log_softmax_normalise", x.dim(), x.dtype(), |out| {
                self.plan_log_softmax_normalise(x, m, s, out)
            })
    }

    /// The plan of [`softmax_normalise`](Self::softmax_normalise) into `out` (`x`'s shape).
    pub fn plan_softmax_normalise(
        &self,
        x: &GpuMatrix,
        m: &GpuVector,
        s: &GpuVector,
        out: &GpuMatrix,
    ) -> Result<GpuPlan> {
        self.plan_normalise(
            "softmax_normalise",
            Kernel::SoftmaxNormalise,
            x,
            (m, s),
            out,
        )
    }

    /// The plan of [`log_softmax_normalise`](Self::log_softmax_normalise) into `out`.
    pub fn plan_log_softmax_normalise(
        &self,
        x: &GpuMatrix,
        m: &GpuVector,
        s: &GpuVector,
        out: &GpuMatrix,
    ) -> Result<GpuPlan> {
        self.plan_normalise(
            "log_softmax_normalise",
            Kernel::LogSoftmaxNormalise,
            x,
            (m, s),
            out,
        )
    }

    fn plan_normalise(
        &self,
        op: &'static str,
        kernel: Kernel,
        x: &GpuMatrix,
        (m, s): (&GpuVector, &GpuVector),
        out: &GpuMatrix,
    ) -> Result<GpuPlan> {
        check_classes(op, x)?;
        check_per_row(op, x, m, "row maxima")?;
        check_per_row(op, x, s, "row sums")?;
        check_pair(op, x, out, "an output")?;
        self.gpu
            .check_owned(op, &[x.owner, m.owner, s.owner, out.owner])?;
        check_disjoint(
            op,
            &[
                span_m("the input", x),
                span_v("the maxima", m),
                span_v("the sums", s),
            ],
            &[span_m("the output", out)],
        )?;
        let (rows, cols) = x.dim();
        self.gpu.build_plan(op, |rec| {
            rec.rows(
                kernel,
                rows,
                cols,
                &[x.at(), m.at(), s.at(), out.at()],
                NoArgs::default(),
            )
        })
    }

    /// The one-hot-subtract gradient `(p - onehot(y)) * scale`, 0 for ignored rows, computed in
    /// place: the probabilities `p` are consumed and their buffer returned holding the gradient.
    pub fn one_hot_subtract(
        &self,
        p: GpuMatrix,
        labels: &GpuLabels,
        scale: f32,
    ) -> Result<GpuMatrix> {
        self.gpu
            .run_plan(self.plan_one_hot_subtract(&p, labels, scale)?)?;
        Ok(p)
    }

    /// The plan of [`one_hot_subtract`](Self::one_hot_subtract), in place on `p`: each
    /// recording turns the probabilities `p` holds into the gradient.
    pub fn plan_one_hot_subtract(
        &self,
        p: &GpuMatrix,
        labels: &GpuLabels,
        scale: f32,
    ) -> Result<GpuPlan> {
        const OP: &str = "one_hot_subtract";
        check_classes(OP, p)?;
        labels.check_fits(OP, p.rows(), p.cols())?;
        self.gpu.check_owned(OP, &[p.owner, labels.owner])?;
        check_disjoint(
            OP,
            &[("the labels", labels.at(), 4 * labels.len() as u64)],
            &[span_m("the probabilities", p)],
        )?;
        let (rows, cols) = p.dim();
        self.gpu.build_plan(OP, |rec| {
            let den = self
                .gpu
                .denominators(rec, OP, labels, None, Reduction::Sum)?;
            rec.rows_labelled(
                Kernel::OneHotSubtract,
                rows,
                cols,
                &[labels.at(), p.at(), At::from(&den)],
                GradArgs {
                    scale,
                    ..GradArgs::default()
                },
                labels,
            )
        })
    }

    /// Softmax in three dispatches: row max, row sum of exponentials, normalise.
    pub fn softmax(&self, x: &GpuMatrix) -> Result<GpuMatrix> {
        self.gpu.new_output("softmax", x.dim(), x.dtype(), |out| {
            self.plan_softmax(x, out)
        })
    }

    /// Log-softmax in three dispatches.
    pub fn log_softmax(&self, x: &GpuMatrix) -> Result<GpuMatrix> {
        self.gpu
            .new_output("log_softmax", x.dim(), x.dtype(), |out| {
                self.plan_log_softmax(x, out)
            })
    }

    /// The plan of [`softmax`](Self::softmax) into `out` (`x`'s shape); the row statistics
    /// are the plan's own workspace.
    pub fn plan_softmax(&self, x: &GpuMatrix, out: &GpuMatrix) -> Result<GpuPlan> {
        self.plan_softmax_like("softmax", Kernel::SoftmaxNormalise, x, out)
    }

    /// The plan of [`log_softmax`](Self::log_softmax) into `out`.
    pub fn plan_log_softmax(&self, x: &GpuMatrix, out: &GpuMatrix) -> Result<GpuPlan> {
        self.plan_softmax_like("log_softmax", Kernel::LogSoftmaxNormalise, x, out)
    }

    fn plan_softmax_like(
        &self,
        op: &'static str,
        kernel: Kernel,
        x: &GpuMatrix,
        out: &GpuMatrix,
    ) -> Result<GpuPlan> {
        check_classes(op, x)?;
        check_pair(op, x, out, "an output")?;
        self.gpu.check_owned(op, &[x.owner, out.owner])?;
        check_disjoint(op, &[span_m("the input", x)], &[span_m("the output", out)])?;
        let (rows, cols) = x.dim();
        self.gpu.build_plan(op, |rec| {
            let (m, s) = record_stats(rec, self.gpu, op, x)?;
            rec.rows(
                kernel,
                rows,
                cols,
                &[x.at(), m.at(), s.at(), out.at()],
                NoArgs::default(),
            )
        })
    }

    /// Row-wise log-sum-exp in three dispatches.
    pub fn logsumexp(&self, x: &GpuMatrix) -> Result<GpuVector> {
        let lse = self.gpu.new_vector("logsumexp", x.rows())?;
        self.gpu.run_plan(self.plan_logsumexp(x, &lse)?)?;
        Ok(lse)
    }

    /// The plan of [`logsumexp`](Self::logsumexp) into `lse` (one value per row).
    pub fn plan_logsumexp(&self, x: &GpuMatrix, lse: &GpuVector) -> Result<GpuPlan> {
        const OP: &str = "logsumexp";
        check_classes(OP, x)?;
        check_per_row(OP, x, lse, "outputs")?;
        self.gpu.check_owned(OP, &[x.owner, lse.owner])?;
        check_disjoint(OP, &[span_m("the input", x)], &[span_v("the output", lse)])?;
        let (rows, cols) = x.dim();
        self.gpu.build_plan(OP, |rec| {
            let (m, s) = record_stats(rec, self.gpu, OP, x)?;
            rec.rows(
                Kernel::LogsumexpRows,
                rows,
                cols,
                &[m.at(), s.at(), lse.at()],
                LossArgs::default(),
            )
        })
    }

    /// Cross-entropy against integer labels (see [`GpuContext::cross_entropy`]).
    pub fn cross_entropy(
        &self,
        x: &GpuMatrix,
        labels: &GpuLabels,
        opts: &CrossEntropyOptions,
    ) -> Result<GpuLoss> {
        self.cross_entropy_op("cross_entropy", x, labels, opts, None)
    }

    /// Cross-entropy and its gradient with respect to the logits (see
    /// [`GpuContext::cross_entropy_with_grad`]).
    pub fn cross_entropy_with_grad(
        &self,
        x: &GpuMatrix,
        labels: &GpuLabels,
        opts: &CrossEntropyOptions,
    ) -> Result<(GpuLoss, GpuMatrix)> {
        const OP: &str = "cross_entropy_with_grad";
        let grad = self.gpu.new_matrix_of(OP, x.rows(), x.cols(), x.dtype())?;
        let loss = self.cross_entropy_op(OP, x, labels, opts, Some(&grad))?;
        Ok((loss, grad))
    }

    fn cross_entropy_op(
        &self,
        op: &'static str,
        x: &GpuMatrix,
        labels: &GpuLabels,
        opts: &CrossEntropyOptions,
        grad: Option<&GpuMatrix>,
    ) -> Result<GpuLoss> {
        self.gpu.new_loss(op, x.rows(), opts.reduction, |loss| {
            self.plan_cross_entropy_op(op, x, labels, opts, loss, grad)
        })
    }

    /// The plan of [`cross_entropy`](Self::cross_entropy) (`grad` `None`) or
    /// [`cross_entropy_with_grad`](Self::cross_entropy_with_grad) into `loss` and `grad`, as
    /// [`GpuContext::plan_cross_entropy`]; the staged kernels take the reduction and the ignore
    /// index only.
    pub fn plan_cross_entropy(
        &self,
        x: &GpuMatrix,
        labels: &GpuLabels,
        opts: &CrossEntropyOptions,
        loss: &GpuVector,
        grad: Option<&GpuMatrix>,
    ) -> Result<GpuPlan> {
        let op = cross_entropy_name(grad);
        self.plan_cross_entropy_op(op, x, labels, opts, loss, grad)
    }

    fn plan_cross_entropy_op(
        &self,
        op: &'static str,
        x: &GpuMatrix,
        labels: &GpuLabels,
        opts: &CrossEntropyOptions,
        loss: &GpuVector,
        grad: Option<&GpuMatrix>,
    ) -> Result<GpuPlan> {
        self.gpu
            .check_label_loss(op, x, labels, opts, (loss, grad), None)?;
        if !opts.is_plain() {
            return Err(Error::invalid(
                op,
                "the staged kernels implement the reduction and ignore_index only; the default (fused) path has every option",
            ));
        }
        let (rows, cols) = x.dim();
        let gpu = self.gpu;
        gpu.build_plan(op, |rec| {
            let den = gpu.denominators(rec, op, labels, None, opts.reduction)?;
            let (m, s) = record_stats(rec, gpu, op, x)?;
            let per_row = PerRow::new(gpu, op, rows, opts.reduction)?;
            rec.rows_labelled(
                Kernel::CrossEntropyRows,
                rows,
                cols,
                &[
                    x.at(),
                    m.at(),
                    s.at(),
                    labels.at(),
                    per_row.at(loss),
                    At::from(&den),
                ],
                LossArgs::default(),
                labels,
            )?;
            per_row.reduce(rec, gpu, op, loss)?;
            if let Some(g) = grad {
                rec.rows(
                    Kernel::SoftmaxNormalise,
                    rows,
                    cols,
                    &[x.at(), m.at(), s.at(), g.at()],
                    NoArgs::default(),
                )?;
                rec.rows_labelled(
                    Kernel::OneHotSubtract,
                    rows,
                    cols,
                    &[labels.at(), g.at(), At::from(&den)],
                    GradArgs {
                        scale: 1.0,
                        ..GradArgs::default()
                    },
                    labels,
                )?;
            }
            Ok(())
        })
    }
}

impl GpuContext {
    /// Submits a plan built for one call and drops it (its buffers live on in the work).
    pub(crate) fn run_plan(&self, plan: GpuPlan) -> Result<()> {
        self.submit(&plan).map(drop)
    }

    /// The staged kernels, for reading, testing and benchmarking against the default path.
    pub fn staged(&self) -> Staged<'_> {
        Staged { gpu: self }
    }

    /// Row-wise softmax of `x`, as `torch.softmax(x, dim=1)`: one fused dispatch that reads
    /// each row twice (statistics, then the result) and writes it once.
    pub fn softmax(&self, x: &GpuMatrix) -> Result<GpuMatrix> {
        self.new_output("softmax", x.dim(), x.dtype(), |out| {
            self.plan_softmax(x, out)
        })
    }

    /// Row-wise log-softmax of `x`, as `torch.log_softmax(x, dim=1)`, fused like
    /// [`softmax`](Self::softmax).
    pub fn log_softmax(&self, x: &GpuMatrix) -> Result<GpuMatrix> {
        self.new_output("log_softmax", x.dim(), x.dtype(), |out| {
            self.plan_log_softmax(x, out)
        })
    }

    /// The plan of [`softmax`](Self::softmax) from `x` into `out` (same shape), to record
    /// into any encoder as often as needed ([`GpuPlan`]).
    ///
    /// # Errors
    /// [`Error::Shape`] when `out` is not `x`'s shape, [`Error::InvalidArgument`] when `out`
    /// overlaps `x` or either lives on another context, [`Error::Empty`] for no classes.
    pub fn plan_softmax(&self, x: &GpuMatrix, out: &GpuMatrix) -> Result<GpuPlan> {
        self.plan_softmax_fused("softmax", x, out, false)
    }

    /// The plan of [`log_softmax`](Self::log_softmax), as [`plan_softmax`](Self::plan_softmax).
    pub fn plan_log_softmax(&self, x: &GpuMatrix, out: &GpuMatrix) -> Result<GpuPlan> {
        self.plan_softmax_fused("log_softmax", x, out, true)
    }

    fn plan_softmax_fused(
        &self,
        op: &'static str,
        x: &GpuMatrix,
        out: &GpuMatrix,
        log: bool,
    ) -> Result<GpuPlan> {
        check_classes(op, x)?;
        check_pair(op, x, out, "an output")?;
        self.check_owned(op, &[x.owner, out.owner])?;
        check_disjoint(
            op,
            &[("the input", x.at(), x.byte_len())],
            &[("the output", out.at(), out.byte_len())],
        )?;
        let (rows, cols) = x.dim();
        self.build_plan(op, |rec| {
            rec.rows(
                Kernel::SoftmaxFused,
                rows,
                cols,
                &[x.at(), out.at()],
                FusedArgs {
                    log: u32::from(log),
                    ..FusedArgs::default()
                },
            )
        })
    }

    /// Row-wise log-sum-exp of `x`, as `torch.logsumexp(x, dim=1)`, in one read of each row.
    pub fn logsumexp(&self, x: &GpuMatrix) -> Result<GpuVector> {
        let out = self.new_vector("logsumexp", x.rows())?;
        self.run_plan(self.plan_logsumexp(x, &out)?)?;
        Ok(out)
    }

    /// The plan of [`logsumexp`](Self::logsumexp) from `x` into `out` (one value per row),
    /// with the errors of [`plan_softmax`](Self::plan_softmax).
    pub fn plan_logsumexp(&self, x: &GpuMatrix, out: &GpuVector) -> Result<GpuPlan> {
        const OP: &str = "logsumexp";
        check_classes(OP, x)?;
        check_per_row(OP, x, out, "outputs")?;
        self.check_owned(OP, &[x.owner, out.owner])?;
        check_disjoint(
            OP,
            &[("the input", x.at(), x.byte_len())],
            &[("the output", out.at(), 4 * out.len() as u64)],
        )?;
        let (rows, cols) = x.dim();
        self.build_plan(OP, |rec| {
            rec.rows(
                Kernel::LogsumexpFused,
                rows,
                cols,
                &[x.at(), out.at()],
                FusedArgs::default(),
            )
        })
    }

    /// Cross-entropy of logits `x` against `labels`, as `F.cross_entropy` with every option of
    /// [`CrossEntropyOptions`] (see [`cpu::cross_entropy`](crate::cpu::cross_entropy) for the
    /// exact semantics). With the reduction and ignore index alone it reads each row once; with
    /// label smoothing, class weights or the z-loss it runs
    /// [`cross_entropy_with_grad`](Self::cross_entropy_with_grad) and drops the gradient.
    pub fn cross_entropy(
        &self,
        x: &GpuMatrix,
        labels: &GpuLabels,
        opts: &CrossEntropyOptions,
    ) -> Result<GpuLoss> {
        self.cross_entropy_op("cross_entropy", x, labels, opts, None, None)
    }

    /// Cross-entropy and its gradient with respect to the logits in one fused dispatch (plus
    /// the reduction): each row of logits is read twice, once for its running maximum and sum
    /// of exponentials and once to write the gradient, which is written once. Every option of
    /// [`CrossEntropyOptions`] applies. For [`Reduction::None`] the gradient is that of the sum
    /// of the per-row losses.
    pub fn cross_entropy_with_grad(
        &self,
        x: &GpuMatrix,
        labels: &GpuLabels,
        opts: &CrossEntropyOptions,
    ) -> Result<(GpuLoss, GpuMatrix)> {
        const OP: &str = "cross_entropy_with_grad";
        let grad = self.new_matrix_of(OP, x.rows(), x.cols(), x.dtype())?;
        let loss = self.cross_entropy_op(OP, x, labels, opts, Some(&grad), None)?;
        Ok((loss, grad))
    }

    /// [`cross_entropy_with_grad`](Self::cross_entropy_with_grad) for [`Reduction::None`] with a
    /// per-row upstream gradient: row `i` of the gradient is multiplied by `upstream[i]`, the
    /// derivative of the caller's loss with respect to row `i`'s cross-entropy.
    pub fn cross_entropy_with_grad_upstream(
        &self,
        x: &GpuMatrix,
        labels: &GpuLabels,
        opts: &CrossEntropyOptions,
        upstream: &GpuVector,
    ) -> Result<(GpuLoss, GpuMatrix)> {
        const OP: &str = "cross_entropy_with_grad_upstream";
        let grad = self.new_matrix_of(OP, x.rows(), x.cols(), x.dtype())?;
        let loss = self.cross_entropy_op(OP, x, labels, opts, Some(&grad), Some(upstream))?;
        Ok((loss, grad))
    }

    /// The convenience form of [`plan_cross_entropy_op`](Self::plan_cross_entropy_op): a new
    /// loss, one plan, submitted.
    fn cross_entropy_op(
        &self,
        op: &'static str,
        x: &GpuMatrix,
        labels: &GpuLabels,
        opts: &CrossEntropyOptions,
        grad: Option<&GpuMatrix>,
        upstream: Option<&GpuVector>,
    ) -> Result<GpuLoss> {
        self.new_loss(op, x.rows(), opts.reduction, |loss| {
            self.plan_cross_entropy_op(op, x, labels, opts, loss, grad, upstream)
        })
    }

    /// The plan of [`cross_entropy`](Self::cross_entropy) (`grad` `None`) or
    /// [`cross_entropy_with_grad`](Self::cross_entropy_with_grad): the loss into `loss` (`N`
    /// values for [`Reduction::None`], one otherwise) and the gradient into `grad` (`x`'s
    /// shape). Its workspace (per-row losses for a reduction, the class weights) is the plan's
    /// own, so recording it again allocates nothing.
    ///
    /// # Errors
    /// Those of [`cross_entropy_with_grad`](Self::cross_entropy_with_grad), and
    /// [`Error::Shape`] or [`Error::InvalidArgument`] for outputs of the wrong length or
    /// overlapping an input.
    pub fn plan_cross_entropy(
        &self,
        x: &GpuMatrix,
        labels: &GpuLabels,
        opts: &CrossEntropyOptions,
        loss: &GpuVector,
        grad: Option<&GpuMatrix>,
    ) -> Result<GpuPlan> {
        let op = cross_entropy_name(grad);
        self.plan_cross_entropy_op(op, x, labels, opts, loss, grad, None)
    }

    /// [`plan_cross_entropy`](Self::plan_cross_entropy) with a per-row upstream gradient (see
    /// [`cross_entropy_with_grad_upstream`](Self::cross_entropy_with_grad_upstream)).
    pub fn plan_cross_entropy_upstream(
        &self,
        x: &GpuMatrix,
        labels: &GpuLabels,
        opts: &CrossEntropyOptions,
        upstream: &GpuVector,
        loss: &GpuVector,
        grad: &GpuMatrix,
    ) -> Result<GpuPlan> {
        self.plan_cross_entropy_op(
            "cross_entropy_with_grad_upstream",
            x,
            labels,
            opts,
            loss,
            Some(grad),
            Some(upstream),
        )
    }

    /// The one description of the cross-entropy against labels: checks, then the kernels.
    #[allow(clippy::too_many_arguments)]
    fn plan_cross_entropy_op(
        &self,
        op: &'static str,
        x: &GpuMatrix,
        labels: &GpuLabels,
        opts: &CrossEntropyOptions,
        loss: &GpuVector,
        grad: Option<&GpuMatrix>,
        upstream: Option<&GpuVector>,
    ) -> Result<GpuPlan> {
        self.check_label_loss(op, x, labels, opts, (loss, grad), upstream)?;
        let (rows, cols) = x.dim();
        self.build_plan(op, |rec| {
            let per_row_losses = PerRow::new(self, op, rows, opts.reduction)?;
            let per_row = per_row_losses.at(loss);
            if grad.is_none() && opts.is_plain() {
                let den = self.denominators(rec, op, labels, None, opts.reduction)?;
                rec.rows_labelled(
                    Kernel::CrossEntropyLossFused,
                    rows,
                    cols,
                    &[x.at(), labels.at(), per_row, At::from(&den)],
                    FusedArgs::default(),
                    labels,
                )?;
                return per_row_losses.reduce(rec, self, op, loss);
            }
            let weights = class_weights(opts, cols);
            let w = self.storage_init("class weights", bytemuck::cast_slice(&weights));
            let weighted = opts.weight.as_ref().map(|_| (weights.as_slice(), &w));
            let den = self.denominators(rec, op, labels, weighted, opts.reduction)?;
            let args = FusedArgs {
                upstream: u32::from(upstream.is_some()),
                smoothing: opts.label_smoothing,
                z_loss: opts.z_loss,
                weight_sum: weights.iter().map(|&w| f64::from(w)).sum::<f64>() as f32,
                ..FusedArgs::default()
            };
            // The loss alone still needs somewhere to write the gradient it computes.
            let scratch;
            let g = match grad {
                Some(g) => g.at(),
                None => {
                    scratch = self.new_matrix_of(op, rows, cols, x.dtype())?;
                    scratch.at()
                }
            };
            // Without an upstream gradient the kernel never reads binding 6; the labels stand in.
            let up = upstream.map_or(labels.at(), GpuVector::at);
            rec.rows_labelled(
                Kernel::CrossEntropyFused,
                rows,
                cols,
                &[
                    x.at(),
                    labels.at(),
                    per_row,
                    g,
                    At::from(&w),
                    up,
                    At::from(&den),
                ],
                args,
                labels,
            )?;
            per_row_losses.reduce(rec, self, op, loss)
        })
    }

    /// Cross-entropy against probability ("soft") targets, `N x C` like the logits, with its
    /// gradient, as `F.cross_entropy` with a float target (see
    /// [`cpu::cross_entropy_soft`](crate::cpu::cross_entropy_soft)); label smoothing, class
    /// weights and the z-loss apply. One dispatch, plus the reduction.
    pub fn cross_entropy_soft_with_grad(
        &self,
        x: &GpuMatrix,
        targets: &GpuMatrix,
        opts: &CrossEntropyOptions,
    ) -> Result<(GpuLoss, GpuMatrix)> {
        const OP: &str = "cross_entropy_soft";
        let grad = self.new_matrix_of(OP, x.rows(), x.cols(), x.dtype())?;
        let loss = self.new_loss(OP, x.rows(), opts.reduction, |loss| {
            self.plan_cross_entropy_soft(x, targets, opts, loss, &grad)
        })?;
        Ok((loss, grad))
    }

    /// The plan of [`cross_entropy_soft_with_grad`](Self::cross_entropy_soft_with_grad) into
    /// `loss` (`N` values for [`Reduction::None`], one otherwise) and `grad` (`x`'s shape),
    /// with the errors of [`plan_cross_entropy`](Self::plan_cross_entropy).
    pub fn plan_cross_entropy_soft(
        &self,
        x: &GpuMatrix,
        targets: &GpuMatrix,
        opts: &CrossEntropyOptions,
        loss: &GpuVector,
        grad: &GpuMatrix,
    ) -> Result<GpuPlan> {
        const OP: &str = "cross_entropy_soft";
        check_classes(OP, x)?;
        if targets.dim() != x.dim() {
            return Err(Error::shape(
                OP,
                format!("targets of shape {:?} (the logits')", x.dim()),
                format!("{:?}", targets.dim()),
            ));
        }
        check_pair(OP, x, grad, "a gradient")?;
        check_loss_len(OP, loss, x.rows(), opts.reduction)?;
        self.check_owned(OP, &[x.owner, targets.owner, loss.owner, grad.owner])?;
        check_disjoint(
            OP,
            &[
                ("the logits", x.at(), x.byte_len()),
                ("the targets", targets.at(), targets.byte_len()),
            ],
            &[
                ("the loss", loss.at(), 4 * loss.len() as u64),
                ("the gradient", grad.at(), grad.byte_len()),
            ],
        )?;
        opts.validate(OP, x.cols())?;
        let (rows, cols) = x.dim();
        let weights = class_weights(opts, cols);
        let scale = match opts.reduction {
            Reduction::Mean => 1.0 / rows as f32,
            Reduction::Sum | Reduction::None => 1.0,
        };
        self.build_plan(OP, |rec| {
            let per_row_losses = PerRow::new(self, OP, rows, opts.reduction)?;
            let per_row = per_row_losses.at(loss);
            let w = self.storage_init("class weights", bytemuck::cast_slice(&weights));
            rec.rows(
                Kernel::CrossEntropySoft,
                rows,
                cols,
                &[x.at(), targets.at(), per_row, grad.at(), At::from(&w)],
                FusedArgs {
                    scale,
                    smoothing: opts.label_smoothing,
                    z_loss: opts.z_loss,
                    ..FusedArgs::default()
                },
            )?;
            per_row_losses.reduce(rec, self, OP, loss)
        })
    }

    /// Copies a loss back to the host.
    pub fn download_loss(&self, loss: &GpuLoss) -> Result<Loss> {
        self.check_owned("download_loss", &[loss.values.owner])?;
        Ok(loss_of(loss.reduction, self.download_vector(&loss.values)?))
    }

    /// [`download_loss`](Self::download_loss) without blocking (see
    /// [`download_async`](Self::download_async)).
    pub fn download_loss_async(
        &self,
        loss: &GpuLoss,
    ) -> impl Future<Output = Result<Loss>> + Send + 'static + use<> {
        let reduction = loss.reduction;
        let values = self
            .check_owned("download_loss_async", &[loss.values.owner])
            .map(|()| self.download_vector_async(&loss.values));
        async move { Ok(loss_of(reduction, values?.await?)) }
    }
}

/// A loss as the host sees it, from the values of its vector on the device.
fn loss_of(reduction: Reduction, values: ndarray::Array1<f32>) -> Loss {
    match reduction {
        Reduction::None => Loss::PerRow(values),
        Reduction::Mean | Reduction::Sum => Loss::Reduced(values[0]),
    }
}

impl GpuContext {
    /// The sum of the elements of `v`, as a one-element vector on the device (0 for an empty
    /// vector): the reduction every `mean` and `sum` loss ends with. A fixed pairwise tree of
    /// partial sums (see `sum_tree` in `shaders/loss.wgsl`): its rounding error grows with the
    /// logarithm of the length, and a sum of equal values is exact where blocks are whole.
    /// Infinities and NaN propagate as in any sum.
    pub fn sum(&self, v: &GpuVector) -> Result<GpuVector> {
        let out = self.new_vector("sum", 1)?;
        self.run_plan(self.plan_sum_into(v, &out)?)?;
        Ok(out)
    }

    /// The plan of [`sum`](Self::sum) into `out` (one value), its tree's partial sums its own
    /// workspace.
    ///
    /// # Errors
    /// [`Error::Shape`] when `out` does not hold exactly one value, [`Error::InvalidArgument`]
    /// when it shares `v`'s buffer or either lives on another context.
    pub fn plan_sum_into(&self, v: &GpuVector, out: &GpuVector) -> Result<GpuPlan> {
        const OP: &str = "sum";
        if out.len() != 1 {
            return Err(Error::shape(
                OP,
                "an output of 1 value",
                format!("{}", out.len()),
            ));
        }
        self.check_owned(OP, &[v.owner, out.owner])?;
        check_disjoint(
            OP,
            &[("the input", v.at(), 4 * v.len() as u64)],
            &[("the output", out.at(), 4)],
        )?;
        self.build_plan(OP, |rec| {
            record_total_into(rec, self, OP, v.at(), v.len(), 1.0, false, out.at())
        })
    }

    /// A plain copy of `x` through the same row plumbing as the row kernels
    /// ([`CopyKernel::Rows`]).
    pub fn copy(&self, x: &GpuMatrix) -> Result<GpuMatrix> {
        self.copy_with(x, CopyKernel::Rows)
    }

    /// A plain copy of `x` into a new matrix by `kernel`: the yardsticks benchmarks hold the
    /// memory-bound kernels to (they move the bytes softmax moves, and do nothing else).
    pub fn copy_with(&self, x: &GpuMatrix, kernel: CopyKernel) -> Result<GpuMatrix> {
        self.new_output("copy", x.dim(), x.dtype(), |out| {
            self.plan_copy(x, out, kernel)
        })
    }

    /// The plan of [`copy_with`](Self::copy_with) from `x` into `out` (same shape and
    /// precision: an f16 matrix is copied as its halves, untouched).
    ///
    /// # Errors
    /// Those of [`plan_softmax`](Self::plan_softmax), and [`Error::InvalidArgument`] for padded
    /// rows (a stride longer than the row) in either matrix where `kernel` copies one flat run
    /// ([`CopyKernel::Flat`], [`CopyKernel::Buffer`]), or an odd number of f16 elements for
    /// [`CopyKernel::Buffer`], whose copies move whole 4-byte words.
    pub fn plan_copy(&self, x: &GpuMatrix, out: &GpuMatrix, kernel: CopyKernel) -> Result<GpuPlan> {
        const OP: &str = "copy";
        self.check_owned(OP, &[x.owner, out.owner])?;
        check_pair(OP, x, out, "an output")?;
        if kernel != CopyKernel::Rows {
            x.check_contiguous(OP)?;
            out.check_contiguous(OP)?;
        }
        if kernel == CopyKernel::Buffer && !x.byte_len().is_multiple_of(4) {
            return Err(Error::invalid(
                OP,
                format!(
                    "copy_buffer_to_buffer moves whole 4-byte words, and {} {} elements are {} bytes: copy them with CopyKernel::Flat or Rows",
                    x.rows() * x.cols(),
                    x.dtype(),
                    x.byte_len()
                ),
            ));
        }
        check_disjoint(OP, &[span_m("the input", x)], &[span_m("the output", out)])?;
        let (rows, cols) = x.dim();
        self.build_plan(OP, |rec| {
            match kernel {
                CopyKernel::Rows => rec.rows(
                    Kernel::CopyRows,
                    rows,
                    cols,
                    &[x.at(), out.at()],
                    NoArgs::default(),
                )?,
                CopyKernel::Flat => {
                    // The matrix as rows of one vector each: vec4s where the length allows.
                    let len = rows * cols;
                    let width = if len.is_multiple_of(4) { 4 } else { 1 };
                    rec.rows(
                        Kernel::CopyFlat,
                        len / width,
                        width,
                        &[x.flat_at(0), out.flat_at(0)],
                        NoArgs::default(),
                    )?;
                }
                CopyKernel::Buffer => {
                    rec.copy(x.at(), &out.buffer, out.offset(), x.byte_len());
                }
            }
            Ok(())
        })
    }
}

/// How [`GpuContext::copy_with`] copies: each is a candidate for the speed of light of the
/// adapter, and which is fastest depends on the adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CopyKernel {
    /// `copy_rows`: the row kernels' plumbing, a team per row walking it in a strided loop.
    Rows,
    /// `copy_flat`: one vec4 (or one float, for lengths not a multiple of 4) per invocation,
    /// no loop.
    Flat,
    /// `copy_buffer_to_buffer`: the adapter's own copy, no kernel.
    Buffer,
}

impl CopyKernel {
    /// Every copy, in the order benchmarks try them.
    pub const ALL: [CopyKernel; 3] = [CopyKernel::Rows, CopyKernel::Flat, CopyKernel::Buffer];

    /// The name benchmarks print (`copy_rows`, `copy_flat`, `copy_buffer_to_buffer`).
    pub fn name(self) -> &'static str {
        match self {
            CopyKernel::Rows => "copy_rows",
            CopyKernel::Flat => "copy_flat",
            CopyKernel::Buffer => "copy_buffer_to_buffer",
        }
    }
}

// Modes of a BCE weight in the flags of `bce_with_logits`. Keep in sync with BCE_ONE, BCE_COLS and
// BCE_FULL in shaders/backward.wgsl.
/// No weight: 1.
const BCE_ONE: u32 = 0;
/// One weight per column, from the whole-bound column buffer.
const BCE_COLS: u32 = 1;
/// One weight per element, windowed like the logits.
const BCE_FULL: u32 = 2;

/// A binary cross-entropy on the device: the per-element losses, or their reduction.
#[derive(Debug)]
pub enum GpuBceLoss {
    /// `none`: one loss per element of the logits.
    PerElement(GpuMatrix),
    /// `mean` or `sum`: one value.
    Reduced(GpuVector),
}

/// Values of a loss over `rows` rows under `reduction`: one per row, or one.
fn loss_len(rows: usize, reduction: Reduction) -> usize {
    match reduction {
        Reduction::None => rows,
        Reduction::Mean | Reduction::Sum => 1,
    }
}

/// Fails unless `loss` holds [`loss_len`] values.
fn check_loss_len(
    op: &'static str,
    loss: &GpuVector,
    rows: usize,
    reduction: Reduction,
) -> Result<()> {
    let want = loss_len(rows, reduction);
    if loss.len() != want {
        return Err(Error::shape(
            op,
            format!("a loss of {want} values (reduction {reduction})"),
            format!("{} values", loss.len()),
        ));
    }
    Ok(())
}

/// An array an op binds: what it is, where it lies, and its bytes.
type Span<'b> = (&'static str, At<'b>, u64);

/// Fails when an output shares a buffer with an input, or overlaps another output: WebGPU
/// refuses one buffer bound both read-only and writable in a dispatch, whatever the ranges,
/// and two outputs over the same bytes would race.
pub(crate) fn check_disjoint(
    op: &'static str,
    inputs: &[Span<'_>],
    outputs: &[Span<'_>],
) -> Result<()> {
    let range = |s: &Span<'_>| format!("{} (bytes {}..{})", s.0, s.1.offset, s.1.offset + s.2);
    for (i, out) in outputs.iter().enumerate() {
        if let Some(input) = inputs.iter().find(|s| s.1.buffer == out.1.buffer) {
            return Err(Error::invalid(
                op,
                format!(
                    "{} shares a buffer with {}: an op's outputs need buffers of their own",
                    range(out),
                    range(input)
                ),
            ));
        }
        let overlaps = |b: &&Span<'_>| {
            b.1.buffer == out.1.buffer
                && out.1.offset < b.1.offset + b.2
                && b.1.offset < out.1.offset + out.2
        };
        if let Some(other) = outputs[..i].iter().find(overlaps) {
            return Err(Error::invalid(
                op,
                format!("{} overlaps {}", range(out), range(other)),
            ));
        }
    }
    Ok(())
}

fn check_pair(op: &'static str, a: &GpuMatrix, b: &GpuMatrix, what: &str) -> Result<()> {
    if a.dim() != b.dim() {
        return Err(Error::shape(
            op,
            format!("{what} of shape {:?}", a.dim()),
            format!("{:?}", b.dim()),
        ));
    }
    if a.dtype() != b.dtype() {
        return Err(Error::invalid(
            op,
            format!(
                "{what} of {}, the input's precision, not {}",
                a.dtype(),
                b.dtype()
            ),
        ));
    }
    Ok(())
}

impl GpuContext {
    /// The softmax backward pass: `dx = p * (dy - sum_j dy_j p_j)` per row, for probabilities
    /// `p` and upstream gradient `dy` (see [`cpu::softmax_backward`](crate::cpu::softmax_backward)).
    pub fn softmax_backward(&self, p: &GpuMatrix, dy: &GpuMatrix) -> Result<GpuMatrix> {
        self.new_output("softmax_backward", p.dim(), p.dtype(), |dx| {
            self.plan_softmax_backward(p, dy, dx)
        })
    }

    /// The log-softmax backward pass: `dx = dy - exp(lp) * sum_j dy_j` per row (see
    /// [`cpu::log_softmax_backward`](crate::cpu::log_softmax_backward)).
    pub fn log_softmax_backward(&self, lp: &GpuMatrix, dy: &GpuMatrix) -> Result<GpuMatrix> {
        self.new_output("log_softmax_backward", lp.dim(), lp.dtype(), |dx| {
            self.plan_log_softmax_backward(lp, dy, dx)
        })
    }

    /// The plan of [`softmax_backward`](Self::softmax_backward) into `dx`, with the errors of
    /// [`plan_softmax`](Self::plan_softmax).
    pub fn plan_softmax_backward(
        &self,
        p: &GpuMatrix,
        dy: &GpuMatrix,
        dx: &GpuMatrix,
    ) -> Result<GpuPlan> {
        self.plan_backward("softmax_backward", Kernel::SoftmaxBackward, p, dy, dx)
    }

    /// The plan of [`log_softmax_backward`](Self::log_softmax_backward) into `dx`.
    pub fn plan_log_softmax_backward(
        &self,
        lp: &GpuMatrix,
        dy: &GpuMatrix,
        dx: &GpuMatrix,
    ) -> Result<GpuPlan> {
        self.plan_backward(
            "log_softmax_backward",
            Kernel::LogSoftmaxBackward,
            lp,
            dy,
            dx,
        )
    }

    fn plan_backward(
        &self,
        op: &'static str,
        kernel: Kernel,
        a: &GpuMatrix,
        dy: &GpuMatrix,
        dx: &GpuMatrix,
    ) -> Result<GpuPlan> {
        check_classes(op, a)?;
        check_pair(op, a, dy, "an upstream gradient")?;
        check_pair(op, a, dx, "an output")?;
        self.check_owned(op, &[a.owner, dy.owner, dx.owner])?;
        check_disjoint(
            op,
            &[
                ("the forward output", a.at(), a.byte_len()),
                ("the upstream gradient", dy.at(), dy.byte_len()),
            ],
            &[("the output", dx.at(), dx.byte_len())],
        )?;
        let (rows, cols) = a.dim();
        self.build_plan(op, |rec| {
            rec.rows(
                kernel,
                rows,
                cols,
                &[a.at(), dy.at(), dx.at()],
                BackwardArgs::default(),
            )
        })
    }

    /// Binary cross-entropy with logits `z` against targets `t` of the same shape, and its
    /// gradient with respect to `z`, as `F.binary_cross_entropy_with_logits` (see
    /// [`cpu::bce_with_logits`](crate::cpu::bce_with_logits)).
    pub fn bce_with_logits_with_grad(
        &self,
        z: &GpuMatrix,
        t: &GpuMatrix,
        reduction: Reduction,
    ) -> Result<(GpuBceLoss, GpuMatrix)> {
        self.bce_with_logits_weighted_with_grad(z, t, None, None, reduction)
    }

    /// [`bce_with_logits_with_grad`](Self::bce_with_logits_with_grad) with PyTorch's `weight` and `pos_weight`
    /// (see [`cpu::bce_with_logits_nd`](crate::cpu::bce_with_logits_nd) for the formulas):
    /// each is a `1 x K` matrix, one value per column broadcast over the rows of the `R x K`
    /// logits (`pos_weight`'s usual shape, one per class), or `R x K`, one per element.
    /// Other shapes broadcast on the host: [`bce_with_logits_nd_with_grad`](Self::bce_with_logits_nd_with_grad).
    ///
    /// One thread per `vec4` of the logits (per element where their count is not a multiple
    /// of 4), reading each input once and writing the loss and the gradient once; a mean or sum
    /// adds one reduction. A `1 x K` weight is read from a buffer of `K` values where `2 K`
    /// floats fit one binding; past that it is first copied to every row on the
    /// device (`R x K` more floats). The weights' values are not checked here (they are on the
    /// device); non-finite ones give non-finite losses.
    ///
    /// `f16` logits take `f16` targets and give an `f16` gradient; the losses (per element or
    /// reduced) and the weights are `f32` in either precision, and the kernel computes in `f32`.
    ///
    /// # Errors
    /// [`Error::Shape`] when the targets are not the logits' shape or a weight is neither
    /// `1 x K` nor `R x K`, naming both shapes; [`Error::InvalidArgument`] for targets of
    /// another precision than the logits, or `f16` weights.
    pub fn bce_with_logits_weighted_with_grad(
        &self,
        z: &GpuMatrix,
        t: &GpuMatrix,
        weight: Option<&GpuMatrix>,
        pos_weight: Option<&GpuMatrix>,
        reduction: Reduction,
    ) -> Result<(GpuBceLoss, GpuMatrix)> {
        const OP: &str = "bce_with_logits";
        let loss = match reduction {
            Reduction::None => GpuBceLoss::PerElement(self.new_matrix(OP, z.rows(), z.cols())?),
            Reduction::Mean | Reduction::Sum => GpuBceLoss::Reduced(self.new_vector(OP, 1)?),
        };
        let grad = self.new_matrix_of(OP, z.rows(), z.cols(), z.dtype())?;
        self.run_plan(self.plan_bce_with_logits(
            (z, t, weight, pos_weight),
            reduction,
            &loss,
            &grad,
        )?)?;
        Ok((loss, grad))
    }

    /// The plan of [`bce_with_logits_weighted_with_grad`](Self::bce_with_logits_weighted_with_grad)
    /// for `(z, t, weight, pos_weight)` into `loss` ([`GpuBceLoss::PerElement`], the logits'
    /// shape, for [`Reduction::None`]; [`GpuBceLoss::Reduced`], one value, otherwise) and `grad`
    /// (the logits' shape), recorded as often as needed without allocating.
    ///
    /// # Errors
    /// Those of [`bce_with_logits_weighted_with_grad`](Self::bce_with_logits_weighted_with_grad),
    /// and [`Error::Shape`] or [`Error::InvalidArgument`] for outputs of the wrong shape or kind,
    /// or sharing a buffer with an input.
    pub fn plan_bce_with_logits(
        &self,
        (z, t, weight, pos_weight): (
            &GpuMatrix,
            &GpuMatrix,
            Option<&GpuMatrix>,
            Option<&GpuMatrix>,
        ),
        reduction: Reduction,
        loss: &GpuBceLoss,
        grad: &GpuMatrix,
    ) -> Result<GpuPlan> {
        const OP: &str = "bce_with_logits";
        check_pair(OP, z, t, "targets")?;
        check_pair(OP, z, grad, "a gradient")?;
        grad.check_contiguous(OP)?;
        let (loss_at, loss_bytes, loss_owner) = match (loss, reduction) {
            (GpuBceLoss::PerElement(m), Reduction::None) => {
                if m.dim() != z.dim() {
                    return Err(Error::shape(
                        OP,
                        format!("a per-element loss of shape {:?}", z.dim()),
                        format!("{:?}", m.dim()),
                    ));
                }
                m.check_f32_as(OP, "the per-element loss (losses are f32)")?;
                m.check_contiguous(OP)?;
                (m.at(), m.byte_len(), m.owner)
            }
            (GpuBceLoss::Reduced(v), Reduction::Mean | Reduction::Sum) if v.len() == 1 => {
                (v.at(), 4, v.owner)
            }
            (_, r) => {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "reduction {r} takes a loss of {}",
                        if r == Reduction::None {
                            "the logits' shape (GpuBceLoss::PerElement)"
                        } else {
                            "one value (GpuBceLoss::Reduced)"
                        }
                    ),
                ));
            }
        };
        let mut inputs = vec![
            ("the logits", z.at(), z.byte_len()),
            ("the targets", t.at(), t.byte_len()),
        ];
        for (what, w) in [("the weight", weight), ("the positive weight", pos_weight)] {
            if let Some(w) = w {
                inputs.push((what, w.at(), w.byte_len()));
            }
        }
        check_disjoint(
            OP,
            &inputs,
            &[
                ("the loss", loss_at, loss_bytes),
                ("the gradient", grad.at(), grad.byte_len()),
            ],
        )?;
        for m in [Some(z), Some(t), weight, pos_weight].into_iter().flatten() {
            m.check_contiguous(OP)?;
        }
        for w in [weight, pos_weight].into_iter().flatten() {
            w.check_f32_as(
                OP,
                "a weight (weights are f32 whatever the logits' precision)",
            )?;
        }
        let (rows, cols) = z.dim();
        let mut owners = vec![z.owner, t.owner, grad.owner, loss_owner];
        for (what, w) in [("weight", weight), ("pos_weight", pos_weight)] {
            let Some(w) = w else { continue };
            if w.dim() != (1, cols) && w.dim() != (rows, cols) {
                return Err(Error::shape(
                    OP,
                    format!(
                        "a {what} of shape (1, {cols}) or ({rows}, {cols}) (per column, or per element of the logits)"
                    ),
                    format!("{what} of shape {:?}", w.dim()),
                ));
            }
            owners.push(w.owner);
        }
        self.check_owned(OP, &owners)?;
        let elems = rows * cols;
        let scale = match reduction {
            Reduction::Mean => 1.0 / elems as f32,
            Reduction::Sum | Reduction::None => 1.0,
        };
        // Per-column weights are read from one whole binding of 2 K floats.
        let cols_fit = (2 * cols as u64) * 4 <= self.geometry.max_binding;
        let mode = |w: Option<&GpuMatrix>| match w {
            None => BCE_ONE,
            Some(w) if w.rows() == 1 && rows > 1 && cols_fit => BCE_COLS,
            Some(_) => BCE_FULL,
        };
        let (w_mode, pw_mode) = (mode(weight), mode(pos_weight));
        self.build_plan(OP, |rec| {
            // Per-element losses: the output itself for `none`, else the plan's workspace.
            let workspace = match loss {
                GpuBceLoss::PerElement(_) => None,
                GpuBceLoss::Reduced(_) => Some(self.new_matrix(OP, rows, cols)?),
            };
            let per_element = match (loss, &workspace) {
                (GpuBceLoss::PerElement(m), _) => m,
                (_, Some(w)) => w,
                (GpuBceLoss::Reduced(_), None) => unreachable!("made above"),
            };
            // Binding 5: K weights then K positive weights, 1 where absent.
            let per_col = if w_mode == BCE_COLS || pw_mode == BCE_COLS {
                let buffer = self.storage_init(
                    "bce column weights",
                    bytemuck::cast_slice(&vec![1.0f32; 2 * cols]),
                );
                let row_bytes = cols as u64 * 4;
                for (i, (w, m)) in [(weight, w_mode), (pos_weight, pw_mode)]
                    .into_iter()
                    .enumerate()
                {
                    if let (Some(w), BCE_COLS) = (w, m) {
                        rec.copy(w.at(), &buffer, i as u64 * row_bytes, row_bytes);
                    }
                }
                buffer
            } else {
                self.storage("unused", 4)
            };
            // A full weight's buffer: its own, or a 1 x K one copied to every row; the logits
            // stand in where there is none (never read then).
            let full = |rec: &mut Recorder<'_>,
                        w: Option<&GpuMatrix>,
                        m: u32|
             -> Result<Option<(wgpu::Buffer, u64)>> {
                match w {
                    Some(w) if m == BCE_FULL && w.rows() != rows => {
                        let expanded = self.new_matrix(OP, rows, cols)?;
                        let row_bytes = cols as u64 * 4;
                        for r in 0..rows as u64 {
                            rec.copy(w.at(), &expanded.buffer, r * row_bytes, row_bytes);
                        }
                        Ok(Some((expanded.buffer, 0)))
                    }
                    Some(w) if m == BCE_FULL => Ok(Some((w.buffer.clone(), w.offset()))),
                    _ => Ok(None),
                }
            };
            let w_full = full(rec, weight, w_mode)?;
            let pw_full = full(rec, pos_weight, pw_mode)?;
            // Where only one weight is full, the other's binding repeats it (never read then).
            let full_pair = match (&w_full, &pw_full) {
                (None, None) => None,
                (Some(w), None) | (None, Some(w)) => Some([w, w]),
                (Some(w), Some(pw)) => Some([w, pw]),
            };
            let kernel = if full_pair.is_some() {
                Kernel::BceWithLogitsWeighted
            } else {
                Kernel::BceWithLogits
            };
            let args = BackwardArgs {
                weight_mode: w_mode,
                pos_weight_mode: pw_mode,
                scale,
                k_cols: cols as u32,
                ..BackwardArgs::default()
            };
            // vec4s first, then the last elems % 4 one at a time; each window of either is one
            // dispatch, told the column of its first element.
            let vectors = elems / 4;
            for (width, first, count) in [(4, 0, vectors), (1, vectors * 4, elems % 4)] {
                if count == 0 {
                    continue;
                }
                // The windows plan_rows itself cuts (one thread per row of one vector), so that
                // each is one dispatch.
                let per_dispatch = self
                    .geometry
                    .dispatch_rows(u64::from(self.config.wg(kernel.family())));
                for window in self
                    .geometry
                    .windows_capped(OP, count, width, per_dispatch)?
                {
                    let first_row = first / width + window.start;
                    let mut buffers = vec![
                        z.flat_at(first_row),
                        t.flat_at(first_row),
                        At::from(&per_col),
                        per_element.flat_at(first_row),
                        grad.flat_at(first_row),
                    ];
                    for (buffer, offset) in full_pair.into_iter().flatten() {
                        buffers.push(At {
                            buffer,
                            offset: *offset,
                            first_row,
                            stride: 0,
                            dtype: DType::F32,
                        });
                    }
                    let phase = (first + window.start * width) % cols.max(1);
                    let args = BackwardArgs {
                        first_col: phase as u32,
                        ..args
                    };
                    let plan =
                        self.plan_rows(OP, kernel, (window.len(), width), &buffers, args, None)?;
                    // The column phase is per window: the plan must not cut it again.
                    assert_eq!(plan.len(), 1, "a BCE window is one dispatch");
                    rec.run(&plan);
                }
            }
            if let GpuBceLoss::Reduced(total) = loss {
                // The per-element losses, read as one long vector.
                let empty_mean = reduction == Reduction::Mean && elems == 0;
                let values = per_element.flat_at(0);
                record_total_into(rec, self, OP, values, elems, scale, empty_mean, total.at())?;
            }
            Ok(())
        })
    }

    /// Binary cross-entropy with logits of any shape and its gradient, host arrays in and out,
    /// with every option of [`BceOptions`] and the semantics of
    /// [`cpu::bce_with_logits_nd`](crate::cpu::bce_with_logits_nd): the loss in PyTorch's shape
    /// (the logits' for `none`, else 0-d) and the gradient in the logits' shape.
    ///
    /// The logits run as an `R x K` matrix, `K` their last axis. A weight that is constant
    /// along every other axis (a scalar, `(K,)`, `(1, .., 1, K)`) is uploaded as its `K`
    /// values; any other broadcast (a per-sample weight `(N, 1)`, say) is expanded on the host
    /// to the logits' full shape, which costs one more upload and read of `R K` floats. A last
    /// axis too long for one binding runs as `R K x 1`, its weights expanded likewise.
    pub fn bce_with_logits_nd_with_grad(
        &self,
        z: ArrayViewD<f32>,
        t: ArrayViewD<f32>,
        opts: &BceOptions,
    ) -> Result<(ArrayD<f32>, ArrayD<f32>)> {
        const OP: &str = "bce_with_logits";
        let shape = z.shape().to_vec();
        let (w, pw) = opts.broadcast(OP, &shape, t.shape())?;
        let k = shape.last().copied().unwrap_or(1);
        let r = shape.iter().rev().skip(1).product::<usize>();
        let row_fits = k as u64 * 4
            <= self
                .geometry
                .max_binding
                .saturating_sub(self.geometry.align);
        let (rows, cols) = if row_fits { (r, k) } else { (r * k, 1) };
        let upload = |a: ArrayViewD<f32>| -> Result<GpuMatrix> {
            let a = a.as_standard_layout();
            let flat = a.as_slice().expect("standard layout is contiguous");
            self.upload(
                ndarray::ArrayView2::from_shape((rows, cols), flat)
                    .expect("the element count matches"),
            )
        };
        let weight = |w: Option<ArrayViewD<f32>>| -> Result<Option<GpuMatrix>> {
            let Some(w) = w else { return Ok(None) };
            // Constant along every axis but the last: stride 0 (broadcast) or length 1.
            let broadcast_rows =
                (0..w.ndim().saturating_sub(1)).all(|a| w.strides()[a] == 0 || w.shape()[a] == 1);
            if row_fits && rows > 1 && broadcast_rows {
                let row = w.iter().take(cols).copied().collect::<Vec<f32>>();
                Ok(Some(self.upload(
                    ndarray::ArrayView2::from_shape((1, cols), &row).expect("one row"),
                )?))
            } else {
                Ok(Some(upload(w)?))
            }
        };
        let gz = upload(z.view())?;
        let gt = upload(t)?;
        let gw = weight(w)?;
        let gpw = weight(pw)?;
        let (loss, grad) = self.bce_with_logits_weighted_with_grad(
            &gz,
            &gt,
            gw.as_ref(),
            gpw.as_ref(),
            opts.reduction,
        )?;
        let loss = match self.download_bce(&loss)? {
            crate::cpu::BceLoss::PerElement(m) => m.into_shape_with_order(IxDyn(&shape)),
            crate::cpu::BceLoss::Reduced(v) => Ok(ndarray::arr0(v).into_dyn()),
        }
        .expect("the loss has the logits' element count");
        let grad = self
            .download(&grad)?
            .into_shape_with_order(IxDyn(&shape))
            .expect("the gradient has the logits' element count");
        Ok((loss, grad))
    }

    /// Copies a binary cross-entropy back to the host.
    pub fn download_bce(&self, loss: &GpuBceLoss) -> Result<crate::cpu::BceLoss> {
        Ok(match loss {
            GpuBceLoss::PerElement(m) => crate::cpu::BceLoss::PerElement(self.download(m)?),
            GpuBceLoss::Reduced(v) => crate::cpu::BceLoss::Reduced(self.download_vector(v)?[0]),
        })
    }
}
