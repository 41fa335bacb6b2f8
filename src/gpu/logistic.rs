//! Logistic-regression training on the device (see [`crate::logistic`]): data, weights and the
//! batch residuals stay on the device, and every dispatch of an epoch and of the evaluation is
//! planned once, when the model is built.
//!
//! A step is three dispatches: `z = X_b w` (the matrix product, [`Gemm`]),
//! `r = sigmoid(z) - y_b` in place (`logistic_residual` in `shaders/backward.wgsl`, one thread
//! per batch row), and `w = (1 - lr l2) w - lr/B X_b^T r` (the product `A^T B` accumulating
//! into `w`). The evaluation computes `X w` for each set; the logits come back to the host,
//! which takes their mean binary cross-entropy and error.

use ndarray::{Array1, ArrayView1, ArrayView2};

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::buffers::{GpuMatrix, GpuVector};
use crate::gpu::matmul::{Form, Gemm, TextureSet};
use crate::gpu::params::BackwardArgs;
use crate::gpu::record::Dispatch;
use crate::gpu::shaders::Kernel;

const OP: &str = "train_logistic";

/// Batches recorded per submission: bounded, so that no submission holds the device long.
const BATCHES_PER_SUBMIT: usize = 64;

/// One set of rows on the device with its targets (kept on the host for the metrics too).
#[derive(Debug)]
struct Set {
    x: GpuMatrix,
    logits: GpuVector,
    targets: Array1<f32>,
    /// `logits = x w`.
    eval: Vec<Dispatch>,
}

/// A logistic-regression model on the device.
#[derive(Debug)]
pub(crate) struct GpuLogistic {
    train: Set,
    test: Option<Set>,
    /// The targets of the training rows, `N x 1` (bound by the steps' residual dispatches).
    _y: GpuMatrix,
    /// The weights, `features x 1`.
    w: GpuMatrix,
    /// The batch's logits, then its residuals (bound by the steps).
    _resid: GpuVector,
    /// Each batch's three dispatches, in order.
    steps: Vec<Vec<Dispatch>>,
    /// Packed operands of the texture products, shared by the batches' plans.
    _textures: Box<TextureSet>,
}

impl GpuLogistic {
    /// Uploads the sets and plans every dispatch. The inputs are validated by the caller.
    pub(crate) fn new(
        gpu: &GpuContext,
        (x, y): (ArrayView2<f32>, ArrayView1<f32>),
        test: Option<(ArrayView2<f32>, ArrayView1<f32>)>,
        lr: f32,
        l2: f32,
        batch: usize,
    ) -> Result<Self> {
        let features = x.ncols();
        let w = gpu.upload(
            Array1::<f32>::zeros(features)
                .view()
                .insert_axis(ndarray::Axis(1)),
        )?;
        let set = |x: ArrayView2<f32>, y: ArrayView1<f32>| -> Result<Set> {
            let x = gpu.upload(x)?;
            let logits = gpu.new_vector(OP, x.rows())?;
            let eval = gpu.plan_matmul(
                OP,
                &Gemm {
                    a: (&x.buffer).into(),
                    b: (&w.buffer).into(),
                    c: (&logits.buffer).into(),
                    m: x.rows(),
                    n: 1,
                    k: features,
                    form: Form::Nn,
                    alpha: 1.0,
                    beta: 0.0,
                    textures: None,
                },
            )?;
            Ok(Set {
                x,
                logits,
                targets: y.to_owned(),
                eval,
            })
        };
        let train = set(x, y)?;
        let test = test.map(|(x, y)| set(x, y)).transpose()?;
        let y = gpu.upload(y.insert_axis(ndarray::Axis(1)))?;
        let resid = gpu.new_vector(OP, batch)?;
        let textures = Box::new(TextureSet::default());
        let mut steps = Vec::new();
        for b in 0..x.nrows() / batch {
            let x_b = train.x.at_row(b * batch);
            let mut plan = gpu.plan_matmul(
                OP,
                &Gemm {
                    a: x_b,
                    b: (&w.buffer).into(),
                    c: (&resid.buffer).into(),
                    m: batch,
                    n: 1,
                    k: features,
                    form: Form::Nn,
                    alpha: 1.0,
                    beta: 0.0,
                    textures: Some(&textures),
                },
            )?;
            plan.extend(gpu.plan_rows(
                OP,
                Kernel::LogisticResidual,
                (batch, 1),
                &[y.at_row(b * batch), (&resid.buffer).into()],
                BackwardArgs::default(),
                None,
            )?);
            plan.extend(gpu.plan_matmul(
                OP,
                &Gemm {
                    a: x_b,
                    b: (&resid.buffer).into(),
                    c: (&w.buffer).into(),
                    m: features,
                    n: 1,
                    k: batch,
                    form: Form::Tn,
                    alpha: -lr / batch as f32,
                    beta: 1.0 - lr * l2,
                    textures: Some(&textures),
                },
            )?);
            steps.push(plan);
        }
        Ok(GpuLogistic {
            train,
            test,
            _y: y,
            w,
            _resid: resid,
            steps,
            _textures: textures,
        })
    }

    /// One epoch of SGD steps, in bounded submissions.
    pub(crate) fn sgd_epoch(&self, gpu: &GpuContext) -> Result<()> {
        for chunk in self.steps.chunks(BATCHES_PER_SUBMIT) {
            gpu.capture(OP, || {
                gpu.submit_steps(OP, chunk.iter().map(Vec::as_slice));
                Ok(())
            })?;
        }
        Ok(())
    }

    /// The logits `x w` of the training set and of the test set, if any.
    pub(crate) fn logits(&self, gpu: &GpuContext) -> Result<(Array1<f32>, Option<Array1<f32>>)> {
        gpu.record(OP, |rec| {
            rec.run(&self.train.eval);
            if let Some(test) = &self.test {
                rec.run(&test.eval);
            }
            Ok(())
        })?;
        let train = gpu.download_vector(&self.train.logits)?;
        let test = self
            .test
            .as_ref()
            .map(|t| gpu.download_vector(&t.logits))
            .transpose()?;
        Ok((train, test))
    }

    /// The training set's targets.
    pub(crate) fn train_targets(&self) -> ArrayView1<'_, f32> {
        self.train.targets.view()
    }

    /// The test set's targets, if there is one.
    pub(crate) fn test_targets(&self) -> Option<ArrayView1<'_, f32>> {
        self.test.as_ref().map(|t| t.targets.view())
    }

    /// The weights.
    pub(crate) fn weights(&self, gpu: &GpuContext) -> Result<Array1<f32>> {
        Ok(gpu.download(&self.w)?.column(0).to_owned())
    }
}
