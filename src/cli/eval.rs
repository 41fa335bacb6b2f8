//! `softmax-ce eval OP`: one op on .npy files. The flags are a contract scripts depend on
//! (DESIGN.md): extend them, never change them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use ndarray::{ArrayD, ArrayView2, ArrayViewD, Ix2};
use softmax_ce::npy::{Matrix, NpyArray};
use softmax_ce::{
    BceOptions, CrossEntropyOptions, DEFAULT_IGNORE_INDEX, DType, Device, Element, Labels,
    Reduction, npy,
};

use super::output::Outputs;
use super::{DeviceArg, open_device};

#[derive(Debug, Subcommand)]
pub enum Op {
    /// Row-wise softmax of a 2-D array of logits.
    Softmax(RowArgs),
    /// Row-wise log-softmax of a 2-D array of logits.
    LogSoftmax(RowArgs),
    /// Row-wise log-sum-exp: writes shape (N,).
    Logsumexp(RowArgs),
    /// Cross-entropy against integer labels, as F.cross_entropy.
    CrossEntropy(CrossEntropyArgs),
    /// The softmax backward pass: DX = P * (DY - sum(DY * P)) per row.
    SoftmaxBackward(SoftmaxBackwardArgs),
    /// The log-softmax backward pass: DX = DY - exp(LP) * sum(DY) per row.
    LogSoftmaxBackward(LogSoftmaxBackwardArgs),
    /// Binary cross-entropy with logits, as F.binary_cross_entropy_with_logits.
    BceWithLogits(BceArgs),
    /// The cross-entropy of a classifier layer's logits H W^T + b without holding them (the
    /// vocabulary in blocks), with its gradients with respect to H, W and b.
    LinearCrossEntropy(LinearArgs),
}

#[derive(Debug, Args)]
pub struct LinearArgs {
    /// N x D hidden states (.npy, float32 or float64).
    #[arg(long)]
    hidden: PathBuf,
    /// V x D classifier weights (the layout of nn.Linear.weight).
    #[arg(long)]
    classifier: PathBuf,
    /// V biases.
    #[arg(long)]
    bias: Option<PathBuf>,
    /// N integer class labels in [0, V) or the ignore index.
    #[arg(long)]
    labels: PathBuf,
    /// V class weights, as F.cross_entropy's weight.
    #[arg(long)]
    class_weight: Option<PathBuf>,
    /// mean and sum write a 0-d loss, none shape (N,).
    #[arg(long, value_enum, default_value = "mean")]
    reduction: ReductionArg,
    #[arg(long, default_value_t = DEFAULT_IGNORE_INDEX, allow_negative_numbers = true)]
    ignore_index: i64,
    /// Label smoothing e in [0, 1].
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    label_smoothing: f32,
    /// The z-loss strength S: adds S lse^2 per row not ignored.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    z_loss: f32,
    /// Logit soft-capping c: the loss sees c tanh(z / c).
    #[arg(long, allow_negative_numbers = true)]
    softcap: Option<f32>,
    /// Split the classifier's rows into K shards, computed apart and merged, as K devices
    /// would (the result is the unsharded one).
    #[arg(long, default_value_t = 1)]
    vocab_shards: usize,
    /// Where to write the loss (.npy, float32).
    #[arg(long)]
    out: PathBuf,
    /// Where to write d(loss)/dH, N x D.
    #[arg(long)]
    grad_hidden: Option<PathBuf>,
    /// Where to write d(loss)/dW, V x D.
    #[arg(long)]
    grad_classifier: Option<PathBuf>,
    /// Where to write d(loss)/db, V (needs --bias).
    #[arg(long, requires = "bias")]
    grad_bias: Option<PathBuf>,
    /// The CPU only so far: the GPU kernels of this op are not written yet.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
}

#[derive(Debug, Args)]
pub struct SoftmaxBackwardArgs {
    /// N x C probabilities (softmax's output; .npy, float32, float64 or float16).
    #[arg(long)]
    probs: PathBuf,
    /// N x C upstream gradient d(loss)/d(probs), in the probabilities' precision.
    #[arg(long)]
    upstream: PathBuf,
    /// Where to write d(loss)/d(logits), N x C (float16 for float16 inputs).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
}

#[derive(Debug, Args)]
pub struct LogSoftmaxBackwardArgs {
    /// N x C log-probabilities (log-softmax's output; float32, float64 or float16).
    #[arg(long)]
    log_probs: PathBuf,
    /// N x C upstream gradient d(loss)/d(log-probs), in the log-probabilities' precision.
    #[arg(long)]
    upstream: PathBuf,
    /// Where to write d(loss)/d(logits), N x C (float16 for float16 inputs).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
}

#[derive(Debug, Args)]
pub struct BceArgs {
    /// Logits of any shape (a 1-D vector for logistic regression, N x C, ...).
    #[arg(long)]
    logits: PathBuf,
    /// Targets in [0, 1], the shape of the logits.
    #[arg(long)]
    targets: PathBuf,
    /// Weights that broadcast to the logits' shape (numpy's rules), as PyTorch's weight.
    #[arg(long)]
    weight: Option<PathBuf>,
    /// Weights of the positive term that broadcast to the logits' shape, usually one per class
    /// along the last axis, as PyTorch's pos_weight.
    #[arg(long)]
    pos_weight: Option<PathBuf>,
    /// none writes one loss per element (the logits' shape), mean and sum a 0-d array.
    #[arg(long, value_enum, default_value = "mean")]
    reduction: ReductionArg,
    /// Where to write the loss (.npy, float32).
    #[arg(long)]
    out: PathBuf,
    /// Where to write d(loss)/d(logits), the logits' shape.
    #[arg(long)]
    grad_out: Option<PathBuf>,
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
}

#[derive(Debug, Args)]
pub struct RowArgs {
    /// N x C logits (.npy, float32, float64 or float16).
    #[arg(long)]
    logits: PathBuf,
    /// Where to write the result (.npy: float32, or float16 for float16 logits; log-sum-exp
    /// always float32).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ReductionArg {
    None,
    Mean,
    Sum,
}

impl From<ReductionArg> for Reduction {
    fn from(r: ReductionArg) -> Self {
        match r {
            ReductionArg::None => Reduction::None,
            ReductionArg::Mean => Reduction::Mean,
            ReductionArg::Sum => Reduction::Sum,
        }
    }
}

#[derive(Debug, Args)]
pub struct CrossEntropyArgs {
    /// N x C logits (.npy, float32, float64 or float16); or N x C x d1 x ... x dk, classes on
    /// axis 1 (per-pixel losses); or one unbatched row of C.
    #[arg(long)]
    logits: PathBuf,
    /// N integer class labels (.npy, any integer dtype); N x d1 x ... x dk for N-d logits, 0-d
    /// for one row.
    #[arg(long, required_unless_present = "targets", conflicts_with = "targets")]
    labels: Option<PathBuf>,
    /// Probability targets of the logits' shape and precision (.npy), instead of --labels.
    #[arg(long)]
    targets: Option<PathBuf>,
    /// How per-row losses combine: mean writes a 0-d array, none shape (N,) (the labels' shape
    /// for N-d logits).
    #[arg(long, value_enum, default_value = "mean")]
    reduction: ReductionArg,
    /// Rows with this label add nothing to the loss and get a zero gradient.
    #[arg(long, default_value_t = DEFAULT_IGNORE_INDEX, allow_negative_numbers = true)]
    ignore_index: i64,
    /// Label smoothing e in [0, 1]: the target becomes (1 - e) onehot(y) + e / C.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    label_smoothing: f32,
    /// C class weights (.npy, float32 or float64), as F.cross_entropy's weight.
    #[arg(long)]
    weight: Option<PathBuf>,
    /// z-loss strength S: adds S * logsumexp^2 per row not ignored.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    z_loss: f32,
    /// Where to write the loss (.npy, float32).
    #[arg(long)]
    out: PathBuf,
    /// Where to write d(loss)/d(logits), N x C; for --reduction none, the gradient of the sum
    /// of the per-row losses.
    #[arg(long)]
    grad_out: Option<PathBuf>,
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
}

/// Runs one op; its outputs are replaced only if every one of them was written.
pub fn run(op: Op) -> Result<()> {
    match op {
        Op::Softmax(a) => row_op(a, RowOp::Softmax),
        Op::LogSoftmax(a) => row_op(a, RowOp::LogSoftmax),
        Op::Logsumexp(a) => row_op(a, RowOp::Logsumexp),
        Op::CrossEntropy(a) => cross_entropy(a),
        Op::SoftmaxBackward(a) => backward(
            (&a.probs, "--probs"),
            &a.upstream,
            &a.out,
            a.device,
            Backward::Softmax,
        ),
        Op::LogSoftmaxBackward(a) => backward(
            (&a.log_probs, "--log-probs"),
            &a.upstream,
            &a.out,
            a.device,
            Backward::LogSoftmax,
        ),
        Op::BceWithLogits(a) => bce(a),
        Op::LinearCrossEntropy(a) => linear_cross_entropy(a),
    }
}

// Every op below starts by preparing its outputs (Outputs::prepare refuses an output that is an
// input or another output, and fails on an unwritable directory before any work) and ends with
// one commit, so that a failure anywhere replaces none of its files.

/// The backward passes `eval` runs, on float32 or float16 inputs.
#[derive(Clone, Copy)]
enum Backward {
    Softmax,
    LogSoftmax,
}

fn backward(
    (input, flag): (&Path, &str),
    upstream: &Path,
    out: &Path,
    device: Option<DeviceArg>,
    pass: Backward,
) -> Result<()> {
    let mut outs = Outputs::prepare(
        &[(flag, Some(input)), ("--upstream", Some(upstream))],
        &[("--out", Some(out))],
    )?;
    let a = npy::read_matrix_any(input, "input").with_context(|| flag.to_string())?;
    let dy = npy::read_matrix_any(upstream, "upstream gradient").context("--upstream")?;
    same_dtype(
        (flag, "inputs", a.dtype()),
        ("--upstream", "upstream gradients", dy.dtype()),
    )?;
    let device = open_device(device)?;
    match (a, dy) {
        (Matrix::F16(a), Matrix::F16(dy)) => {
            backward_as(&device, pass, a.view(), dy.view(), &mut outs)?
        }
        (a, dy) => backward_as(
            &device,
            pass,
            a.into_f32().view(),
            dy.into_f32().view(),
            &mut outs,
        )?,
    }
    outs.commit()
}

/// `pass` on inputs of `T`, its output written in `T`.
fn backward_as<T: Element>(
    device: &Device,
    pass: Backward,
    a: ArrayView2<T>,
    dy: ArrayView2<T>,
    outs: &mut Outputs,
) -> Result<()> {
    let dx = match pass {
        Backward::Softmax => device.softmax_backward(a, dy)?,
        Backward::LogSoftmax => device.log_softmax_backward(a, dy)?,
    };
    outs.write_as("--out", dx.view().into_dyn())
}

/// numpy's name of a dtype.
fn numpy_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
    }
}

/// Fails unless two inputs an op computes together share one precision: float16 with float16,
/// float32 (or float64, read as float32) with float32. Each input is its flag and its noun.
fn same_dtype(
    (flag_a, what_a, a): (&str, &str, DType),
    (flag_b, what_b, b): (&str, &str, DType),
) -> Result<()> {
    if a != b {
        bail!(
            "{flag_b}: {} {what_b} for {} {what_a} ({flag_a}): both must have one dtype",
            numpy_name(b),
            numpy_name(a)
        );
    }
    Ok(())
}

fn bce(a: BceArgs) -> Result<()> {
    let mut outs = Outputs::prepare(
        &[
            ("--logits", Some(&a.logits)),
            ("--targets", Some(&a.targets)),
            ("--weight", a.weight.as_deref()),
            ("--pos-weight", a.pos_weight.as_deref()),
        ],
        &[
            ("--out", Some(&a.out)),
            ("--grad-out", a.grad_out.as_deref()),
        ],
    )?;
    let z = npy::read_f32(&a.logits).context("--logits")?;
    let t = npy::read_f32(&a.targets).context("--targets")?;
    let mut opts = BceOptions::default().reduction(a.reduction.into());
    if let Some(path) = &a.weight {
        opts = opts.weight(npy::read_f32(path).context("--weight")?);
    }
    if let Some(path) = &a.pos_weight {
        opts = opts.pos_weight(npy::read_f32(path).context("--pos-weight")?);
    }
    let device = open_device(a.device)?;
    let (loss, grad) = device.bce_with_logits_nd_with_grad(z.view(), t.view(), &opts)?;
    if a.grad_out.is_some() {
        outs.write("--grad-out", grad.view())?;
    }
    outs.write("--out", loss.view())?;
    outs.commit()
}

/// The row ops `eval` runs on float32 or float16 logits.
#[derive(Clone, Copy)]
enum RowOp {
    Softmax,
    LogSoftmax,
    Logsumexp,
}

fn row_op(a: RowArgs, op: RowOp) -> Result<()> {
    let mut outs = Outputs::prepare(&[("--logits", Some(&a.logits))], &[("--out", Some(&a.out))])?;
    let x = npy::read_matrix_any(&a.logits, "logits").context("--logits")?;
    let device = open_device(a.device)?;
    match x {
        Matrix::F32(x) => row_op_as(&device, op, x.view(), &mut outs)?,
        Matrix::F16(x) => row_op_as(&device, op, x.view(), &mut outs)?,
    }
    outs.commit()
}

/// `op` on logits of `T`: matrices written in `T`, log-sum-exp in float32.
fn row_op_as<T: Element>(
    device: &Device,
    op: RowOp,
    x: ArrayView2<T>,
    outs: &mut Outputs,
) -> Result<()> {
    match op {
        RowOp::Softmax => outs.write_as("--out", device.softmax(x)?.view().into_dyn()),
        RowOp::LogSoftmax => outs.write_as("--out", device.log_softmax(x)?.view().into_dyn()),
        RowOp::Logsumexp => outs.write("--out", device.logsumexp(x)?.view().into_dyn()),
    }
}

fn cross_entropy_options(a: &CrossEntropyArgs) -> Result<CrossEntropyOptions> {
    let mut opts = CrossEntropyOptions::default()
        .reduction(a.reduction.into())
        .label_smoothing(a.label_smoothing)
        .z_loss(a.z_loss);
    if let Some(path) = &a.weight {
        opts = opts.weight(npy::read_vector(path, "class weights").context("--weight")?);
    }
    Ok(opts)
}

fn cross_entropy(a: CrossEntropyArgs) -> Result<()> {
    let mut outs = Outputs::prepare(
        &[
            ("--logits", Some(&a.logits)),
            ("--labels", a.labels.as_deref()),
            ("--targets", a.targets.as_deref()),
            ("--weight", a.weight.as_deref()),
        ],
        &[
            ("--out", Some(&a.out)),
            ("--grad-out", a.grad_out.as_deref()),
        ],
    )?;
    match npy::read_array(&a.logits).context("--logits")? {
        NpyArray::F32(x) => cross_entropy_of(&a, x, &mut outs)?,
        NpyArray::F16(x) => cross_entropy_of(&a, x, &mut outs)?,
    }
    outs.commit()
}

/// The cross-entropy of logits of `T` of any of PyTorch's shapes: 2-D logits as rows, the
/// others through [`cross_entropy_nd`].
fn cross_entropy_of<T: Element>(
    a: &CrossEntropyArgs,
    x: ArrayD<T>,
    outs: &mut Outputs,
) -> Result<()> {
    if x.ndim() == 2 {
        let x = x.into_dimensionality::<Ix2>().expect("checked 2-D");
        cross_entropy_as(a, x.view(), outs)
    } else {
        cross_entropy_nd(a, x.view(), outs)
    }
}

/// The 2-D cross-entropy of logits of `T`: the loss in float32, the gradient (and soft
/// targets, which must share the logits' dtype) in `T`.
fn cross_entropy_as<T: Element>(
    a: &CrossEntropyArgs,
    x: ArrayView2<T>,
    outs: &mut Outputs,
) -> Result<()> {
    let opts = cross_entropy_options(a)?;
    let loss = match (&a.targets, &a.labels) {
        (Some(path), _) => {
            let targets = read_targets::<T>(path)?
                .into_dimensionality::<Ix2>()
                .map_err(|_| anyhow::anyhow!("--targets: 2-D (N, C) targets for 2-D logits"))?;
            let device = open_device(a.device)?;
            let (loss, grad) = device.cross_entropy_soft_with_grad(x, targets.view(), &opts)?;
            if a.grad_out.is_some() {
                outs.write_as("--grad-out", grad.view().into_dyn())?;
            }
            loss
        }
        (None, Some(path)) => {
            let raw = npy::read_labels(path).context("--labels")?;
            let labels =
                Labels::new(raw.iter().copied(), x.ncols(), a.ignore_index).context("--labels")?;
            let device = open_device(a.device)?;
            if a.grad_out.is_some() {
                let (loss, grad) = device.cross_entropy_with_grad(x, &labels, &opts)?;
                outs.write_as("--grad-out", grad.view().into_dyn())?;
                loss
            } else {
                device.cross_entropy(x, &labels, &opts)?
            }
        }
        // clap requires one of the two; said as an error rather than a panic all the same.
        (None, None) => bail!("cross-entropy needs --labels or --targets"),
    };
    outs.write("--out", loss.into_array().view())
}

/// Probability targets in the logits' precision `T`: exactly the values of the file, which must
/// have the logits' dtype.
fn read_targets<T: Element>(path: &Path) -> Result<ArrayD<T>> {
    let targets = npy::read_array(path).context("--targets")?;
    same_dtype(
        ("--logits", "logits", T::DTYPE),
        ("--targets", "targets", targets.dtype()),
    )?;
    // Exact: the values are of T already.
    Ok(targets.into_f32().mapv(T::from_f32))
}

/// Cross-entropy of logits that are not 2-D: `(N, C, d1, ..., dk)` with per-position labels,
/// or one row `(C,)` with a 0-d label, as PyTorch takes them; the gradient in the logits'
/// precision.
fn cross_entropy_nd<T: Element>(
    a: &CrossEntropyArgs,
    x: ArrayViewD<T>,
    outs: &mut Outputs,
) -> Result<()> {
    let opts = cross_entropy_options(a)?;
    let loss = match (&a.targets, &a.labels) {
        (Some(path), _) => {
            let targets = read_targets::<T>(path)?;
            let device = open_device(a.device)?;
            let (loss, grad) = device.cross_entropy_soft_nd_with_grad(x, targets.view(), &opts)?;
            if a.grad_out.is_some() {
                outs.write_as("--grad-out", grad.view())?;
            }
            loss
        }
        (None, Some(path)) => {
            let labels = npy::read_labels_nd(path).context("--labels")?;
            let device = open_device(a.device)?;
            if a.grad_out.is_some() {
                let (loss, grad) =
                    device.cross_entropy_nd_with_grad(x, labels.view(), a.ignore_index, &opts)?;
                outs.write_as("--grad-out", grad.view())?;
                loss
            } else {
                device.cross_entropy_nd(x, labels.view(), a.ignore_index, &opts)?
            }
        }
        (None, None) => bail!("cross-entropy needs --labels or --targets"),
    };
    outs.write("--out", loss.view())
}

fn linear_cross_entropy(a: LinearArgs) -> Result<()> {
    use softmax_ce::LinearCrossEntropyOptions;
    use softmax_ce::cpu::vocab::{Shard, loss_from_stats, shard_grads, shard_stats};
    let mut outs = Outputs::prepare(
        &[
            ("--hidden", Some(&a.hidden)),
            ("--classifier", Some(&a.classifier)),
            ("--bias", a.bias.as_deref()),
            ("--labels", Some(&a.labels)),
            ("--class-weight", a.class_weight.as_deref()),
        ],
        &[
            ("--out", Some(&a.out)),
            ("--grad-hidden", a.grad_hidden.as_deref()),
            ("--grad-classifier", a.grad_classifier.as_deref()),
            ("--grad-bias", a.grad_bias.as_deref()),
        ],
    )?;
    if a.vocab_shards == 0 {
        bail!("--vocab-shards 0: at least one shard");
    }
    let h = npy::read_matrix(&a.hidden, "hidden states").context("--hidden")?;
    let w = npy::read_matrix(&a.classifier, "classifier").context("--classifier")?;
    let bias = match &a.bias {
        Some(p) => Some(npy::read_vector(p, "bias").context("--bias")?),
        None => None,
    };
    if let Some(b) = &bias
        && b.len() != w.nrows()
    {
        bail!(
            "--bias: {} values for a classifier of {} rows: one bias per class",
            b.len(),
            w.nrows()
        );
    }
    let raw = npy::read_labels(&a.labels).context("--labels")?;
    let labels = Labels::new(raw.iter().copied(), w.nrows(), a.ignore_index).context("--labels")?;
    let mut loss = CrossEntropyOptions::default()
        .reduction(a.reduction.into())
        .label_smoothing(a.label_smoothing)
        .z_loss(a.z_loss);
    if let Some(p) = &a.class_weight {
        loss = loss.weight(npy::read_vector(p, "class weights").context("--class-weight")?);
    }
    let mut opts = LinearCrossEntropyOptions::default().loss(loss);
    opts.softcap = a.softcap;
    let v = w.nrows();
    if a.vocab_shards > v.max(1) {
        bail!(
            "--vocab-shards {}: more shards than the classifier's {v} classes",
            a.vocab_shards
        );
    }
    let device = open_device(a.device)?;
    let k_shards = a.vocab_shards;
    let want_grads =
        a.grad_hidden.is_some() || a.grad_classifier.is_some() || a.grad_bias.is_some();
    if let Some(gpu) = device.gpu() {
        note!(
            "softmax-ce: linear-cross-entropy on the GPU, in {k_shards} vocabulary shard(s), one context each"
        );
        let (value, grads) = linear_on_gpus(
            gpu,
            (&h, &w, bias.as_ref()),
            &labels,
            &opts,
            k_shards,
            want_grads,
        )?;
        if let Some((dh, dw, db)) = grads {
            if a.grad_hidden.is_some() {
                outs.write("--grad-hidden", dh.view().into_dyn())?;
            }
            if a.grad_classifier.is_some() {
                outs.write("--grad-classifier", dw.view().into_dyn())?;
            }
            if a.grad_bias.is_some() {
                outs.write("--grad-bias", ndarray::Array1::from(db).view().into_dyn())?;
            }
        }
        outs.write("--out", value.into_array().view())?;
        return outs.commit();
    }
    note!("softmax-ce: linear-cross-entropy on the CPU, in {k_shards} vocabulary shard(s)");
    // K shards of near-equal size (they differ by one class at most), computed one after
    // another as separate devices would.
    let shards: Vec<Shard<'_>> = (0..k_shards)
        .map(|k| {
            let rows = shard_rows(k, k_shards, v);
            Shard {
                classifier: w.slice(ndarray::s![rows.clone(), ..]),
                bias: bias.as_ref().map(|b| b.slice(ndarray::s![rows.clone()])),
                first_class: rows.start,
            }
        })
        .collect();
    let mut stats = shard_stats(h.view(), &shards[0], &labels, &opts)?;
    for s in &shards[1..] {
        stats = stats.merge(&shard_stats(h.view(), s, &labels, &opts)?)?;
    }
    let value = loss_from_stats(&stats, &labels, &opts)?;
    if want_grads {
        let mut dh = ndarray::Array2::<f32>::zeros(h.raw_dim());
        let mut dw = Vec::with_capacity(shards.len());
        let mut db = Vec::with_capacity(v);
        for s in &shards {
            let g = shard_grads(h.view(), s, &labels, &opts, &stats)?;
            dh += &g.hidden;
            dw.push(g.classifier);
            db.extend(g.bias.into_iter().flatten());
        }
        if a.grad_hidden.is_some() {
            outs.write("--grad-hidden", dh.view().into_dyn())?;
        }
        if a.grad_classifier.is_some() {
            let views: Vec<_> = dw.iter().map(|g| g.view()).collect();
            let dw =
                ndarray::concatenate(ndarray::Axis(0), &views).expect("shards of the same columns");
            outs.write("--grad-classifier", dw.view().into_dyn())?;
        }
        if a.grad_bias.is_some() {
            outs.write("--grad-bias", ndarray::Array1::from(db).view().into_dyn())?;
        }
    }
    outs.write("--out", value.into_array().view())?;
    outs.commit()
}

/// The rows of `v` classes the `k`-th of `shards` near-equal shards holds.
fn shard_rows(k: usize, shards: usize, v: usize) -> std::ops::Range<usize> {
    k * v / shards..(k + 1) * v / shards
}

/// Gradients on the host: `dH`, `dW` and `db` (empty without a bias).
type HostGrads = (ndarray::Array2<f32>, ndarray::Array2<f32>, Vec<f32>);

/// The linear cross-entropy with the classifier split over `shards` GPU contexts (the first
/// `gpu`, the others new ones on the same adapter), as `shards` devices would run it: each
/// context computes its shard's statistics, the host merges them (a few floats per row), and
/// each context its gradients from the merged statistics.
fn linear_on_gpus(
    gpu: &softmax_ce::GpuContext,
    (h, w, bias): (
        &ndarray::Array2<f32>,
        &ndarray::Array2<f32>,
        Option<&ndarray::Array1<f32>>,
    ),
    labels: &Labels,
    opts: &softmax_ce::LinearCrossEntropyOptions,
    shards: usize,
    want_grads: bool,
) -> Result<(softmax_ce::Loss, Option<HostGrads>)> {
    use softmax_ce::gpu::GpuShard;
    let v = w.nrows();
    let others: Vec<softmax_ce::GpuContext> = (1..shards)
        .map(|_| softmax_ce::GpuContext::new())
        .collect::<softmax_ce::Result<_>>()?;
    let contexts: Vec<&softmax_ce::GpuContext> = std::iter::once(gpu).chain(&others).collect();
    // Each context's copy of H, its shard of W and of the bias, and the labels.
    struct OnDevice {
        h: softmax_ce::GpuMatrix,
        w: softmax_ce::GpuMatrix,
        b: Option<softmax_ce::GpuVector>,
        y: softmax_ce::GpuLabels,
        first_class: usize,
    }
    impl OnDevice {
        fn shard(&self) -> GpuShard<'_> {
            GpuShard {
                classifier: &self.w,
                bias: self.b.as_ref(),
                first_class: self.first_class,
            }
        }
    }
    let mut on_device = Vec::with_capacity(shards);
    for (k, c) in contexts.iter().enumerate() {
        let rows = shard_rows(k, shards, v);
        on_device.push(OnDevice {
            h: c.upload(h.view())?,
            w: c.upload(w.slice(ndarray::s![rows.clone(), ..]))?,
            b: bias
                .map(|b| c.upload_vector(b.slice(ndarray::s![rows.clone()])))
                .transpose()?,
            y: c.upload_labels(labels)?,
            first_class: rows.start,
        });
    }
    let mut merged: Option<softmax_ce::cpu::vocab::ShardStats> = None;
    for (c, d) in contexts.iter().zip(&on_device) {
        let stats = c.linear_shard_stats(&d.h, &d.shard(), &d.y, opts)?;
        let stats = c.download_shard_stats(&stats)?;
        merged = Some(match merged {
            None => stats,
            Some(m) => m.merge(&stats)?,
        });
    }
    let merged = merged.expect("at least one shard");
    let first = &on_device[0];
    let loss = gpu.linear_loss_from_stats(&gpu.upload_shard_stats(&merged)?, &first.y, opts)?;
    let loss = gpu.download_loss(&loss)?;
    if !want_grads {
        return Ok((loss, None));
    }
    let mut dh = ndarray::Array2::<f32>::zeros(h.raw_dim());
    let mut dw = Vec::with_capacity(shards);
    let mut db = Vec::with_capacity(v);
    for (c, d) in contexts.iter().zip(&on_device) {
        let stats = c.upload_shard_stats(&merged)?;
        let g = c.linear_shard_grads(&d.h, &d.shard(), &d.y, opts, &stats)?;
        dh += &c.download(&g.hidden)?;
        dw.push(c.download(&g.classifier)?);
        if let Some(b) = &g.bias {
            db.extend(c.download_vector(b)?);
        }
    }
    let views: Vec<_> = dw.iter().map(|g| g.view()).collect();
    let dw = ndarray::concatenate(ndarray::Axis(0), &views).expect("shards of the same columns");
    Ok((loss, Some((dh, dw, db))))
}
