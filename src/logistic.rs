//! Logistic regression trained by minibatch SGD: seed 002's binary classifier (sigmoid and
//! binary cross-entropy), on the GPU or the CPU with the same results.
//!
//! One weight column `w` (`features`, one more with [`TrainOptions::bias`], whose last entry
//! is then the bias); each step takes the next batch `X_b` of `B` rows, in order, and updates
//!
//! ```text
//! w = w - lr/B X_b^T (sigmoid(X_b w) - y_b)        (- lr l2 w with L2 regularisation)
//! ```
//!
//! the gradient of the mean binary cross-entropy `-(y log p + (1 - y) log(1 - p))` over the
//! batch. `w` starts at zero; an epoch takes `rows / B` batches in order, dropping the last
//! partial one, as the softmax trainer ([`crate::train`]) does. After each epoch the mean
//! binary cross-entropy (with logits, stable) and the error rate (predicting 1 where
//! `x w > 0`, i.e. `sigmoid > 1/2`) are computed on the training and test sets.
//!
//! ```
//! use ndarray::array;
//! use softmax_ce::logistic::LogisticRegression;
//! use softmax_ce::train::TrainOptions;
//! use softmax_ce::Device;
//!
//! let x = array![[1.0f32, 0.2], [0.1, 1.0], [0.9, 0.0], [0.0, 0.8]];
//! let y = array![1.0f32, 0.0, 1.0, 0.0];
//! let opts = TrainOptions::default().lr(1.0).batch(2).bias(true);
//! let mut model = LogisticRegression::new(&Device::Cpu, (x.view(), y.view()), None, opts)?;
//! for _ in 0..30 {
//!     model.fit_epoch()?;
//! }
//! assert_eq!(model.fit_epoch()?.train_err, 0.0);
//! assert_eq!(model.weights()?.len(), 3); // two features and the bias
//! # Ok::<(), softmax_ce::Error>(())
//! ```

use crate::Instant;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, s};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::logistic::GpuLogistic;
use crate::train::{EpochMetrics, TrainOptions};

const OP: &str = "train_logistic";

/// A logistic-regression classifier and its training data, on the CPU or a GPU.
#[derive(Debug)]
pub struct LogisticRegression<'d> {
    state: State<'d>,
    opts: TrainOptions,
    rows: usize,
    epoch: usize,
}

/// The host model: the weights and both sets.
#[derive(Debug)]
struct CpuModel {
    w: Array1<f32>,
    train: (Array2<f32>, Array1<f32>),
    test: Option<(Array2<f32>, Array1<f32>)>,
}

#[derive(Debug)]
enum State<'d> {
    Cpu(Box<CpuModel>),
    Gpu {
        gpu: &'d GpuContext,
        model: Box<GpuLogistic>,
    },
}

impl<'d> LogisticRegression<'d> {
    /// A model with `w` at zero, holding `train` (rows and their targets) and the optional
    /// `test` set on `device`. Targets are in `[0, 1]` (0/1 labels, usually).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a learning rate or L2 strength that is not finite (or a
    /// negative L2), a batch of 0 or larger than the training set, shuffling (not offered
    /// here: the order is fixed), or a target outside `[0, 1]`; [`Error::Shape`] when targets
    /// and rows disagree or the test set's features differ from the training set's; a GPU
    /// error when the data do not fit the device.
    pub fn new(
        device: &'d Device,
        train: (ArrayView2<f32>, ArrayView1<f32>),
        test: Option<(ArrayView2<f32>, ArrayView1<f32>)>,
        opts: TrainOptions,
    ) -> Result<Self> {
        validate(&opts, train, test)?;
        let train = (design(train.0, opts.bias), train.1.to_owned());
        let test = test.map(|(x, y)| (design(x, opts.bias), y.to_owned()));
        let rows = train.0.nrows();
        let state = match device {
            Device::Cpu => State::Cpu(Box::new(CpuModel {
                w: Array1::zeros(train.0.ncols()),
                train,
                test,
            })),
            Device::Gpu(gpu) => {
                let test = test.as_ref().map(|(x, y)| (x.view(), y.view()));
                let model = GpuLogistic::new(
                    gpu,
                    (train.0.view(), train.1.view()),
                    test,
                    opts.lr,
                    opts.l2,
                    opts.batch,
                )?;
                State::Gpu {
                    gpu,
                    model: Box::new(model),
                }
            }
        };
        Ok(LogisticRegression {
            state,
            opts,
            rows,
            epoch: 0,
        })
    }

    /// SGD steps per epoch: whole batches of the training set.
    pub fn batches_per_epoch(&self) -> usize {
        self.rows / self.opts.batch
    }

    /// One epoch of SGD, then the mean binary cross-entropy and the error on the training and
    /// test sets.
    pub fn fit_epoch(&mut self) -> Result<EpochMetrics> {
        let start = Instant::now();
        let (train, test) = match &mut self.state {
            State::Cpu(model) => {
                let CpuModel { w, train, test } = &mut **model;
                cpu_epoch(w, train, &self.opts);
                let metrics =
                    |(x, y): &(Array2<f32>, Array1<f32>)| loss_err(x.dot(&*w).view(), y.view());
                (metrics(train), test.as_ref().map(metrics))
            }
            State::Gpu { gpu, model } => {
                model.sgd_epoch(gpu)?;
                let (train, test) = model.logits(gpu)?;
                (
                    loss_err(train.view(), model.train_targets()),
                    test.zip(model.test_targets())
                        .map(|(z, y)| loss_err(z.view(), y)),
                )
            }
        };
        self.epoch += 1;
        Ok(EpochMetrics {
            epoch: self.epoch,
            train_loss: train.0,
            train_err: train.1,
            test_loss: test.map(|t| t.0),
            test_err: test.map(|t| t.1),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The weights, one per feature (the bias last, with [`TrainOptions::bias`]).
    pub fn weights(&self) -> Result<Array1<f32>> {
        match &self.state {
            State::Cpu(model) => Ok(model.w.clone()),
            State::Gpu { gpu, model } => model.weights(gpu),
        }
    }
}

/// The logistic function, stable for any `z`.
fn sigmoid(z: f32) -> f32 {
    let e = (-z.abs()).exp();
    if z >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// One epoch on the host, in f32 as the seed's numpy code.
fn cpu_epoch(w: &mut Array1<f32>, (x, y): &(Array2<f32>, Array1<f32>), opts: &TrainOptions) {
    let b = opts.batch;
    for i in 0..x.nrows() / b {
        let xb = x.slice(s![i * b..(i + 1) * b, ..]);
        let yb = y.slice(s![i * b..(i + 1) * b]);
        let r = xb.dot(&*w).mapv(sigmoid) - yb;
        let grad = xb.t().dot(&r);
        let (lr, l2, bf) = (opts.lr, opts.l2, b as f32);
        w.zip_mut_with(&grad, |w, &g| *w = (1.0 - lr * l2) * *w - lr / bf * g);
    }
}

/// Mean binary cross-entropy with logits `z` against `y`, and the error rate of predicting
/// `z > 0` against `y > 1/2`, accumulated in f64.
fn loss_err(z: ArrayView1<f32>, y: ArrayView1<f32>) -> (f32, f32) {
    let n = z.len() as f64;
    let (mut loss, mut wrong) = (0.0f64, 0usize);
    for (&z, &y) in z.iter().zip(y) {
        let (zf, yf) = (z as f64, y as f64);
        loss += zf.max(0.0) - zf * yf + (-zf.abs()).exp().ln_1p();
        wrong += usize::from((z > 0.0) != (y > 0.5));
    }
    ((loss / n) as f32, (wrong as f64 / n) as f32)
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

fn check_set(what: &str, x: ArrayView2<f32>, y: ArrayView1<f32>) -> Result<()> {
    if x.nrows() != y.len() {
        return Err(Error::shape(
            OP,
            format!("{} targets for {what} (one per row)", x.nrows()),
            format!("{}", y.len()),
        ));
    }
    if let Some((i, v)) = y
        .iter()
        .enumerate()
        .find(|(_, v)| !(0.0..=1.0).contains(*v))
    {
        return Err(Error::invalid(
            OP,
            format!("target {v} at row {i} of {what} is not in [0, 1]"),
        ));
    }
    Ok(())
}

fn validate(
    opts: &TrainOptions,
    (x, y): (ArrayView2<f32>, ArrayView1<f32>),
    test: Option<(ArrayView2<f32>, ArrayView1<f32>)>,
) -> Result<()> {
    check_set("the training set", x, y)?;
    if let Some((tx, ty)) = test {
        check_set("the test set", tx, ty)?;
    }
    crate::train::validate_sgd(OP, opts, x, test.map(|(tx, _)| tx))?;
    if opts.dtype != crate::dtype::DType::F32 {
        return Err(crate::error::Error::invalid(
            OP,
            format!(
                "dtype {}: the logistic trainer holds its data in f32 (softmax regression takes f16)",
                opts.dtype
            ),
        ));
    }
    if opts.shuffle.is_some() {
        return Err(Error::invalid(
            OP,
            "logistic regression trains in the fixed row order; shuffling is not offered",
        ));
    }
    Ok(())
}
