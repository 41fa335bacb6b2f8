//! Softmax regression trained by minibatch SGD: the classifier of the seed (CMU 10-414/714
//! hw0), on the GPU or the CPU with the same results.
//!
//! Each step takes the next batch `X_b` of `B` rows, in order, and updates
//!
//! ```text
//! Z     = softmax(X_b theta)
//! theta = theta - lr/B X_b^T (Z - I_y)        (- lr l2 theta with L2 regularisation)
//! ```
//!
//! Theta starts at zero; an epoch takes `rows / B` batches, dropping the last partial one, as
//! the seed does. After each epoch the mean loss and the error rate (numpy's `argmax`, the
//! first of equal maxima) are computed on the training and test sets. On the GPU, data, theta
//! and every intermediate stay on the device, and those four numbers are the epoch's only
//! readback.
//!
//! ```
//! use ndarray::array;
//! use softmax_ce::train::{SoftmaxRegression, TrainOptions};
//! use softmax_ce::{Device, Labels};
//!
//! let x = array![[1.0f32, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]];
//! let y = Labels::new([0, 1, 0, 1], 2, -100)?;
//! let device = Device::Cpu; // or Device::select(None)?.0 for the GPU when there is one
//! let opts = TrainOptions::default().lr(1.0).batch(2);
//! let mut model = SoftmaxRegression::new(&device, (x.view(), &y), None, opts)?;
//! for _ in 0..20 {
//!     model.fit_epoch()?;
//! }
//! let m = model.fit_epoch()?;
//! assert_eq!(m.train_err, 0.0);
//! assert_eq!(model.predict(x.view())?.to_vec(), vec![0, 1, 0, 1]);
//! # Ok::<(), softmax_ce::Error>(())
//! ```

use crate::Instant;

use ndarray::{Array1, Array2, ArrayView2, Axis, s};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::train::{GpuRegression, Step};
use crate::labels::{DEFAULT_IGNORE_INDEX, Labels};
use crate::par::*;

const OP: &str = "train";

/// How to train. The defaults are the CLI's (CMU hw0's settings): learning rate 0.2, batches of
/// 100, no bias column, no regularisation, no shuffling.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct TrainOptions {
    /// The SGD step size.
    pub lr: f32,
    /// Rows per batch.
    pub batch: usize,
    /// Append a constant-1 feature, so that theta's last row is a per-class bias.
    pub bias: bool,
    /// L2 regularisation strength: the step also subtracts `lr * l2 * theta` (seed 002).
    pub l2: f32,
    /// Shuffle the training rows before every epoch with this seed; `None` keeps the order.
    pub shuffle: Option<u64>,
    /// The precision the training and test rows are held in: [`DType::F16`] rounds every
    /// feature to `f16` once (round to nearest even), so that a GPU holds and reads half the
    /// bytes; theta, the logits and every sum stay `f32`. The CPU trains on the same rounded
    /// values, so both devices still give the same results. A feature past `f16`'s range
    /// (65,504) is an error, never an infinity. Softmax regression only: the logistic trainer
    /// takes `f32`.
    pub dtype: DType,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            lr: 0.2,
            batch: 100,
            bias: false,
            l2: 0.0,
            shuffle: None,
            dtype: DType::F32,
        }
    }
}

impl TrainOptions {
    /// Sets [`lr`](Self::lr).
    pub fn lr(mut self, lr: f32) -> Self {
        self.lr = lr;
        self
    }

    /// Sets [`batch`](Self::batch).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// Sets [`bias`](Self::bias).
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Sets [`l2`](Self::l2).
    pub fn l2(mut self, l2: f32) -> Self {
        self.l2 = l2;
        self
    }

    /// Sets [`shuffle`](Self::shuffle).
    pub fn shuffle(mut self, seed: Option<u64>) -> Self {
        self.shuffle = seed;
        self
    }

    /// Sets [`dtype`](Self::dtype).
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }
}

/// What one epoch achieved: the loss and error after its last step.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochMetrics {
    /// 1 for the first epoch.
    pub epoch: usize,
    /// Mean cross-entropy on the training set.
    pub train_loss: f32,
    /// Fraction of the training set misclassified.
    pub train_err: f32,
    /// Mean cross-entropy on the test set, if there is one.
    pub test_loss: Option<f32>,
    /// Fraction of the test set misclassified, if there is one.
    pub test_err: Option<f32>,
    /// Wall-clock seconds for the epoch and its evaluation.
    pub seconds: f64,
}

/// Where a model trains: the CPU, or a GPU context it borrows. `&Device` and `&GpuContext`
/// convert into it.
#[derive(Clone, Copy, Debug)]
pub enum Backend<'d> {
    /// ndarray on the host, in f32 as the seed's numpy code.
    Cpu,
    /// The WGSL kernels on this context.
    Gpu(&'d GpuContext),
}

impl<'d> From<&'d Device> for Backend<'d> {
    fn from(device: &'d Device) -> Self {
        match device {
            Device::Cpu => Backend::Cpu,
            Device::Gpu(gpu) => Backend::Gpu(gpu),
        }
    }
}

impl<'d> From<&'d GpuContext> for Backend<'d> {
    fn from(gpu: &'d GpuContext) -> Self {
        Backend::Gpu(gpu)
    }
}

/// A softmax-regression classifier and its training data, on the CPU or a GPU.
#[derive(Debug)]
pub struct SoftmaxRegression<'d> {
    state: State<'d>,
    opts: TrainOptions,
    /// The training rows as given (bias column included), for reshuffling.
    train: (Array2<f32>, Labels),
    rng: Option<StdRng>,
    epoch: usize,
}

#[derive(Debug)]
enum State<'d> {
    Cpu {
        theta: Array2<f32>,
        test: Option<(Array2<f32>, Labels)>,
    },
    Gpu {
        gpu: &'d GpuContext,
        model: Box<GpuRegression>,
    },
}

impl<'d> SoftmaxRegression<'d> {
    /// A model with theta at zero (`features x classes`, one more feature with
    /// [`TrainOptions::bias`]), holding `train` and the optional `test` set on `backend` (a
    /// `&Device` or a `&GpuContext`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a learning rate or L2 strength that is not finite (or a
    /// negative L2), a batch of 0 or larger than the training set, or ignored labels;
    /// [`Error::Shape`] when labels and rows disagree or the test set's features or classes
    /// differ from the training set's; a GPU error when the data do not fit the device.
    pub fn new(
        backend: impl Into<Backend<'d>>,
        train: (ArrayView2<f32>, &Labels),
        test: Option<(ArrayView2<f32>, &Labels)>,
        opts: TrainOptions,
    ) -> Result<Self> {
        validate(&opts, train, test)?;
        let held = |what: &str, x: ArrayView2<f32>| -> Result<Array2<f32>> {
            let mut x = design(x, opts.bias);
            if opts.dtype == DType::F16 {
                round_to_f16(what, &mut x)?;
            }
            Ok(x)
        };
        let train = (held("the training set", train.0)?, train.1.clone());
        let test = test
            .map(|(x, y)| Ok::<_, Error>((held("the test set", x)?, y.clone())))
            .transpose()?;
        let state = match backend.into() {
            Backend::Cpu => {
                let (features, classes) = (train.0.ncols(), train.1.classes());
                // What the CPU trainer holds at once: theta and its gradient, a batch's
                // logits, and an evaluation's logits of each set.
                let rows = train
                    .0
                    .nrows()
                    .max(test.as_ref().map_or(0, |(x, _)| x.nrows()));
                check_host("train", "theta and its gradient", &[2, features, classes])?;
                check_host("train", "the logits of a data set", &[rows, classes])?;
                State::Cpu {
                    theta: Array2::zeros((features, classes)),
                    test,
                }
            }
            Backend::Gpu(gpu) => {
                let step = Step {
                    lr: opts.lr,
                    batch: opts.batch,
                    l2: opts.l2,
                    dtype: opts.dtype,
                };
                let test = test.as_ref().map(|(x, y)| (x.view(), y));
                let model = GpuRegression::new(gpu, (train.0.view(), &train.1), test, step)?;
                State::Gpu {
                    gpu,
                    model: Box::new(model),
                }
            }
        };
        Ok(SoftmaxRegression {
            state,
            rng: opts.shuffle.map(StdRng::seed_from_u64),
            opts,
            train,
            epoch: 0,
        })
    }

    /// Number of features theta weighs (the bias column included).
    pub fn features(&self) -> usize {
        self.train.0.ncols()
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.train.1.classes()
    }

    /// Kernel dispatches per SGD step on the GPU: 2 where the fused step fits the model (up to
    /// 16 classes, theta and a batch's gradient within 64 KiB each), else 3, plus one step per
    /// operand where the products pack their operands into textures first (a `pack` dispatch
    /// or a buffer-to-texture copy each: 7 in all; see [`GpuContext::texture_kernels`]);
    /// `None` on the CPU.
    ///
    /// [`GpuContext::texture_kernels`]: crate::GpuContext::texture_kernels
    pub fn dispatches_per_step(&self) -> Option<usize> {
        match &self.state {
            State::Cpu { .. } => None,
            State::Gpu { model, .. } => Some(model.dispatches_per_step()),
        }
    }

    /// SGD steps per epoch: whole batches of the training set.
    pub fn batches_per_epoch(&self) -> usize {
        self.train.0.nrows() / self.opts.batch
    }

    /// Epochs trained so far.
    pub fn epochs(&self) -> usize {
        self.epoch
    }

    /// One epoch of SGD, then the loss and error on the training and test sets.
    pub fn fit_epoch(&mut self) -> Result<EpochMetrics> {
        self.fit_epoch_with_progress(|_, _| {})
    }

    /// [`fit_epoch`](Self::fit_epoch), calling `progress(batches done, batches in all)` as it
    /// goes (on the GPU, as chunks of batches complete on the device).
    pub fn fit_epoch_with_progress(
        &mut self,
        progress: impl FnMut(usize, usize),
    ) -> Result<EpochMetrics> {
        let start = Instant::now();
        self.sgd_epoch_with_progress(progress)?;
        let metrics = match &self.state {
            State::Cpu { .. } => self.cpu_metrics(),
            State::Gpu { gpu, model } => model.metrics(gpu)?,
        };
        Ok(self.epoch_metrics(start, metrics))
    }

    /// [`fit_epoch`](Self::fit_epoch) without blocking on the device: what a browser calls
    /// (the steps are submitted, and the metrics read back by
    /// [`GpuContext::download_async`]'s route).
    pub async fn fit_epoch_async(&mut self) -> Result<EpochMetrics> {
        let start = Instant::now();
        self.sgd_epoch_with_progress(|_, _| {})?;
        let metrics = match &self.state {
            State::Cpu { .. } => self.cpu_metrics(),
            State::Gpu { gpu, model } => model.metrics_async(gpu).await?,
        };
        Ok(self.epoch_metrics(start, metrics))
    }

    /// `[train loss, train error, test loss, test error]` of the CPU model.
    fn cpu_metrics(&self) -> [f32; 4] {
        let State::Cpu { theta, test } = &self.state else {
            unreachable!("called for the CPU model only");
        };
        let (train_loss, train_err) = loss_err(self.train.0.dot(theta).view(), &self.train.1);
        let (test_loss, test_err) = test.as_ref().map_or((f32::NAN, f32::NAN), |(x, y)| {
            loss_err(x.dot(theta).view(), y)
        });
        [train_loss, train_err, test_loss, test_err]
    }

    /// The epoch just trained, its metrics and the time since `start`.
    fn epoch_metrics(&self, start: Instant, metrics: [f32; 4]) -> EpochMetrics {
        let [train_loss, train_err, test_loss, test_err] = metrics;
        let has_test = match &self.state {
            State::Cpu { test, .. } => test.is_some(),
            State::Gpu { model, .. } => model.has_test(),
        };
        EpochMetrics {
            epoch: self.epoch,
            train_loss,
            train_err,
            test_loss: has_test.then_some(test_loss),
            test_err: has_test.then_some(test_err),
            seconds: start.elapsed().as_secs_f64(),
        }
    }

    /// One epoch of SGD steps alone, without the evaluation; returns when the device has
    /// finished them. For benchmarks, and for callers that evaluate less often.
    pub fn sgd_epoch(&mut self) -> Result<()> {
        self.sgd_epoch_with_progress(|_, _| {})
    }

    fn sgd_epoch_with_progress(&mut self, mut progress: impl FnMut(usize, usize)) -> Result<()> {
        if let Some(rng) = &mut self.rng {
            let mut order: Vec<usize> = (0..self.train.0.nrows()).collect();
            order.shuffle(rng);
            let x = self.train.0.select(Axis(0), &order);
            let y = Labels::new(
                order
                    .iter()
                    .map(|&i| self.train.1.get(i).expect("no ignored rows") as i64),
                self.train.1.classes(),
                DEFAULT_IGNORE_INDEX,
            )?;
            self.train = (x, y);
            if let State::Gpu { gpu, model } = &self.state {
                model.rewrite_train(gpu, self.train.0.view(), &self.train.1)?;
            }
        }
        match &mut self.state {
            State::Cpu { theta, .. } => cpu_epoch(theta, &self.train, &self.opts, &mut progress),
            State::Gpu { gpu, model } => model.sgd_epoch(gpu, &mut progress)?,
        }
        self.epoch += 1;
        Ok(())
    }

    /// Theta, `features x classes` (the bias, if any, in the last row).
    pub fn theta(&self) -> Result<Array2<f32>> {
        match &self.state {
            State::Cpu { theta, .. } => Ok(theta.clone()),
            State::Gpu { gpu, model } => model.theta(gpu),
        }
    }

    /// [`theta`](Self::theta) without blocking on the device.
    pub async fn theta_async(&self) -> Result<Array2<f32>> {
        match &self.state {
            State::Cpu { theta, .. } => Ok(theta.clone()),
            State::Gpu { gpu, model } => model.theta_async(gpu).await,
        }
    }

    /// The logits `x theta` of each row of `x` (without the bias column: it is added here).
    pub fn logits(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.check_features("predict", x)?;
        let x = design(x, self.opts.bias);
        match &self.state {
            State::Cpu { theta, .. } => Ok(x.dot(theta)),
            State::Gpu { gpu, model } => model.logits(gpu, x.view()),
        }
    }

    /// The predicted class of each row of `x`: the first class of highest logit.
    pub fn predict(&self, x: ArrayView2<f32>) -> Result<Array1<usize>> {
        Ok(self.logits(x)?.rows().into_iter().map(argmax).collect())
    }

    /// `(mean loss, error rate)` of the model on `x` and `y`.
    pub fn evaluate(&self, x: ArrayView2<f32>, y: &Labels) -> Result<(f32, f32)> {
        self.check_features("evaluate", x)?;
        check_set("evaluate", "the data", x, y, self.classes())?;
        let x = design(x, self.opts.bias);
        match &self.state {
            State::Cpu { theta, .. } => Ok(loss_err(x.dot(theta).view(), y)),
            State::Gpu { gpu, model } => model.evaluate(gpu, x.view(), y),
        }
    }

    fn check_features(&self, op: &'static str, x: ArrayView2<f32>) -> Result<()> {
        let want = self.features() - usize::from(self.opts.bias);
        if x.ncols() != want {
            return Err(Error::shape(
                op,
                format!("{want} features"),
                format!("{}", x.ncols()),
            ));
        }
        Ok(())
    }
}

/// The seed's epoch on the CPU, in f32 like its numpy code. Each batch is cut into [`PARTS`]
/// blocks of rows that run in parallel, each taking its products through matrixmultiply
/// (`x_p theta`, then `x_p^T (Z_p - I_y)`); their gradients are summed in order, so that an
/// epoch gives the same bits on any number of threads.
fn cpu_epoch(
    theta: &mut Array2<f32>,
    (x, y): &(Array2<f32>, Labels),
    opts: &TrainOptions,
    progress: &mut dyn FnMut(usize, usize),
) {
    let b = opts.batch;
    let batches = x.nrows() / b;
    let per_part = b.div_ceil(PARTS);
    let (lr, l2, bf) = (opts.lr, opts.l2, b as f32);
    for i in 0..batches {
        let theta_now = theta.view();
        let part = |p: usize| {
            let start = (i * b + p * per_part).min((i + 1) * b);
            let end = (start + per_part).min((i + 1) * b);
            let xp = x.slice(s![start..end, ..]);
            let mut z = xp.dot(&theta_now);
            for (r, mut row) in z.rows_mut().into_iter().enumerate() {
                let m = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                row.mapv_inplace(|v| (v - m).exp());
                let sum = row.sum();
                row /= sum;
                row[y.get(start + r).expect("no ignored rows")] -= 1.0;
            }
            xp.t().dot(&z)
        };
        let grads: Vec<Array2<f32>> = (0..PARTS).into_par_iter().map(part).collect();
        let grad = grads
            .into_iter()
            .reduce(|acc, g| acc + g)
            .expect("PARTS > 0");
        theta.zip_mut_with(&grad, |t, &g| *t -= lr * (g / bf + l2 * *t));
        progress(i + 1, batches);
    }
}

/// Blocks of rows each batch of the CPU epoch is cut into: a fixed count, so that the order of
/// its sums does not depend on the machine.
const PARTS: usize = 2;

/// Fails unless an array of `dims` f32s can be allocated on the host: its size computed with
/// checked arithmetic, then reserved fallibly and released, so that an absurd request (a
/// billion classes) is an error naming it instead of an abort in the allocator.
fn check_host(op: &'static str, what: &str, dims: &[usize]) -> Result<()> {
    let bytes = dims.iter().try_fold(4usize, |acc, &d| acc.checked_mul(d));
    match bytes {
        Some(b) if Vec::<u8>::new().try_reserve_exact(b).is_ok() => Ok(()),
        _ => Err(Error::invalid(
            op,
            format!(
                "{what} ({} f32s) cannot be allocated on this machine",
                dims.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(" x ")
            ),
        )),
    }
}

/// Mean cross-entropy and error rate of `logits` against `y`, accumulated in f64.
fn loss_err(logits: ArrayView2<f32>, y: &Labels) -> (f32, f32) {
    let n = logits.nrows() as f64;
    let (mut loss, mut wrong) = (0.0f64, 0usize);
    for (row, label) in logits.rows().into_iter().zip(y.iter()) {
        let label = label.expect("no ignored rows");
        let m = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        loss += (m - row[label] as f64) + s.ln();
        wrong += usize::from(argmax(row) != label);
    }
    ((loss / n) as f32, (wrong as f64 / n) as f32)
}

/// The first index of the largest value (numpy's `argmax`).
fn argmax(row: ndarray::ArrayView1<f32>) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best
}

/// `x`, with a column of ones appended when `bias` is set.
fn design(x: ArrayView2<f32>, bias: bool) -> Array2<f32> {
    if !bias {
        return x.to_owned();
    }
    let mut out = Array2::ones((x.nrows(), x.ncols() + 1));
    out.slice_mut(s![.., ..x.ncols()]).assign(&x);
    out
}

fn check_set(
    op: &'static str,
    what: &str,
    x: ArrayView2<f32>,
    y: &Labels,
    classes: usize,
) -> Result<()> {
    if x.nrows() != y.len() {
        return Err(Error::shape(
            op,
            format!("{} labels for {what} (one per row)", x.nrows()),
            format!("{}", y.len()),
        ));
    }
    if y.classes() != classes {
        return Err(Error::shape(
            op,
            format!("labels over {classes} classes for {what}"),
            format!("{}", y.classes()),
        ));
    }
    if y.active_count() != y.len() {
        return Err(Error::invalid(
            op,
            format!("{what} has ignored labels; every training or test row needs a class"),
        ));
    }
    if x.nrows() == 0 {
        return Err(Error::Empty {
            op,
            what: "a data set",
        });
    }
    Ok(())
}

/// Rounds every value of `x` to the nearest `f16` (held as the `f32` it widens to, exactly);
/// a finite value past `f16`'s range is an error naming where it is.
fn round_to_f16(what: &str, x: &mut Array2<f32>) -> Result<()> {
    for ((r, c), v) in x.indexed_iter_mut() {
        let h = half::f16::from_f32(*v);
        if h.is_infinite() && v.is_finite() {
            return Err(Error::invalid(
                OP,
                format!(
                    "{what} holds {v} at row {r}, column {c}: past f16's range (65504), so it cannot be held as f16 (dtype f16)"
                ),
            ));
        }
        *v = h.to_f32();
    }
    Ok(())
}

fn validate(
    opts: &TrainOptions,
    (x, y): (ArrayView2<f32>, &Labels),
    test: Option<(ArrayView2<f32>, &Labels)>,
) -> Result<()> {
    check_set(OP, "the training set", x, y, y.classes())?;
    if let Some((tx, ty)) = test {
        check_set(OP, "the test set", tx, ty, y.classes())?;
    }
    validate_sgd(OP, opts, x, test.map(|(tx, _)| tx))
}

/// The checks every SGD trainer makes of its options and data shapes (softmax regression
/// here, logistic regression in `crate::logistic`): a test set with the training set's
/// features, a finite learning rate, a finite L2 strength >= 0, and a batch between 1 and the
/// training rows.
pub(crate) fn validate_sgd(
    op: &'static str,
    opts: &TrainOptions,
    x: ArrayView2<f32>,
    test_x: Option<ArrayView2<f32>>,
) -> Result<()> {
    if let Some(tx) = test_x
        && tx.ncols() != x.ncols()
    {
        return Err(Error::shape(
            op,
            format!(
                "{} features in the test set (as in the training set)",
                x.ncols()
            ),
            format!("{}", tx.ncols()),
        ));
    }
    if !opts.lr.is_finite() {
        return Err(Error::invalid(
            op,
            format!("learning rate {} is not finite", opts.lr),
        ));
    }
    if !opts.l2.is_finite() || opts.l2 < 0.0 {
        return Err(Error::invalid(
            op,
            format!("L2 strength {} is not a finite number >= 0", opts.l2),
        ));
    }
    if opts.batch == 0 || opts.batch > x.nrows() {
        return Err(Error::invalid(
            op,
            format!(
                "batch {} is not between 1 and the {} training rows",
                opts.batch,
                x.nrows()
            ),
        ));
    }
    Ok(())
}
