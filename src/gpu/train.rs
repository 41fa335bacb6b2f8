//! Softmax-regression training on the device: the seed's SGD epoch, with the data, theta and
//! every intermediate resident, and every dispatch built once.
//!
//! A batch step is two dispatches when theta and the batch gradient each fit one uniform
//! binding (up to [`STEP_CLASSES`] classes, [`STEP_UNIFORM_BYTES`] each; MNIST-sized models):
//!
//! 1. `G = softmax(X_b theta) - I_y`, logits in registers ([`Kernel::StepForward`]);
//! 2. `theta = (1 - lr l2) theta - lr/B X_b^T G`, a thread per feature ([`Kernel::StepUpdate`]).
//!
//! Both read the small operand (theta, then G) as a uniform, which every thread reads at the
//! same index: a broadcast on every adapter. On a CPU adapter with subgroups of 8
//! ([`GpuContext::texture_kernels`]) the same two steps run as [`Kernel::StepForwardTex`] and
//! [`Kernel::StepUpdateTex`]: the training rows are packed once into a texture (a texel is
//! about as cheap there as one float from a storage buffer) and each subgroup loads theta or G
//! once, lane by lane, and broadcasts it. Larger models take three dispatches:
//!
//! 1. `logits = X_b theta` ([`Kernel::MatmulNn`]);
//! 2. `G = softmax(logits) - I_y`, in place ([`Kernel::SoftmaxGradRows`]);
//! 3. `theta = (1 - lr l2) theta - lr/B X_b^T G` ([`Kernel::MatmulTn`], accumulating into theta).
//!
//! The dispatches of every batch, and those that evaluate loss and error on the training and
//! test sets, are planned when the model is built ([`GpuContext::plan_rows`],
//! [`GpuContext::plan_matmul`]) and replayed every epoch: no bind group or buffer is created
//! per batch, and nothing is read back until the epoch's four metrics.

use ndarray::{Array2, ArrayView2};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{FIXED_TRIPS, row_groups};
use crate::gpu::matmul::{Form, Gemm, PackedTexture, Packing, TextureSet};
use crate::gpu::params::{Args, NoArgs, RowParams, StepParams, TrainArgs};
use crate::gpu::record::{At, Dispatch, uniform_binding};
use crate::gpu::shaders::{Kernel, MT_LANES, STEP_CLASSES, STEP_UNIFORM_BYTES, Width};
use crate::labels::Labels;

/// The step's knobs, already validated by the caller.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Step {
    pub lr: f32,
    pub batch: usize,
    pub l2: f32,
    /// The precision the training and test rows are held in on the device (already rounded to
    /// it by the caller where it is `f16`).
    pub dtype: DType,
}

/// Rows the three-dispatch route's evaluation multiplies at once (and, for `f16` data, widens:
/// the workspace is `max(batch, EVAL_CHUNK) x features` floats).
const EVAL_CHUNK: usize = 4096;

/// Rows of an evaluation's products at once on the three-dispatch route, for either data
/// precision: at least a batch, at most [`EVAL_CHUNK`] unless the batch is larger.
fn eval_chunk(batch: usize, rows: usize) -> usize {
    batch.max(rows.min(EVAL_CHUNK))
}

/// An `f32` workspace that `f16` rows are widened into ([`Kernel::WidenRows`]) before the
/// products of the three-dispatch route read them: `rows` rows of the model's features.
#[derive(Clone, Copy)]
struct Widen<'a> {
    buffer: &'a wgpu::Buffer,
    rows: usize,
}

/// Batches per submission: the host waits on each in turn to report progress, while the
/// device already has the next ones queued.
const BATCHES_PER_SUBMIT: usize = 50;

/// A data set on the device.
#[derive(Debug)]
struct DeviceSet {
    x: wgpu::Buffer,
    y: wgpu::Buffer,
    rows: usize,
    /// The precision of `x`.
    dtype: DType,
    /// The rows of `x` packed into a texture, for the texture kernels of the fused step.
    texture: Option<DataTexture>,
}

impl DeviceSet {
    /// The rows of `x` from `first_row`, as the kernels bind them.
    fn x_at(&self, first_row: usize) -> At<'_> {
        At {
            buffer: &self.x,
            offset: 0,
            first_row,
            stride: 0,
            dtype: self.dtype,
        }
    }
}

/// A data set's rows in an `rgba32float` texture: row `r` in panel `r / panel_rows` (a power
/// of two), texel `q` of it holding features `4q .. 4q + 4` (zero past the last), panels side
/// by side.
#[derive(Debug)]
struct DataTexture {
    texture: PackedTexture,
    panel_rows: usize,
    /// The dispatches that pack `x` into it, run again when the rows are rewritten.
    pack: Vec<Dispatch>,
}

impl DataTexture {
    /// Packs the rows of `set` (`features` each) where the texture kernels run, a texture can
    /// hold them, and one binding their labels and per-row results (the kernels bind those
    /// whole); `None` otherwise, and the storage-buffer kernels run.
    fn new(
        gpu: &GpuContext,
        op: &'static str,
        set: &DeviceSet,
        features: usize,
    ) -> Result<Option<Self>> {
        let max_side = gpu.limits().max_texture_dimension_2d as usize;
        let quads = features.div_ceil(4);
        // A power of two, so that the kernels find a row's panel by a shift.
        let panel_rows = set
            .rows
            .next_power_of_two()
            .min(prev_power_of_two(max_side));
        let width = set.rows.div_ceil(panel_rows) * quads;
        if !gpu.config.texture_kernels
            || set.rows == 0
            || features == 0
            || width > max_side
            || set.rows as u64 * 4 > gpu.geometry.max_binding
        {
            return Ok(None);
        }
        let height = set.rows.min(panel_rows);
        // A texture of up to a few GiB: running out of memory is an error naming the op.
        let texture = gpu.capture(op, || {
            let texture = gpu.packed_texture([width, height]);
            let pack = gpu.plan_pack(
                op,
                &Packing {
                    src: set.x_at(0),
                    rows: set.rows,
                    cols: features,
                    transposed: false,
                    texture: &texture,
                    panel_rows,
                },
            )?;
            Ok(DataTexture {
                texture,
                panel_rows,
                pack,
            })
        })?;
        texture.repack(gpu, op)?;
        Ok(Some(texture))
    }

    /// The texture kernels' params for `rows` rows from `first_row`.
    fn step_params(
        &self,
        rows: usize,
        first_row: usize,
        model: &Model<'_>,
        scale: f32,
        decay: f32,
    ) -> StepParams {
        StepParams {
            batch: rows as u32,
            features: model.features as u32,
            classes: model.classes as u32,
            first_row: first_row as u32,
            panel_shift: self.panel_rows.trailing_zeros(),
            quads: model.features.div_ceil(4) as u32,
            scale,
            decay,
        }
    }

    fn repack(&self, gpu: &GpuContext, op: &'static str) -> Result<()> {
        gpu.record(op, |rec| {
            rec.run(&self.pack);
            Ok(())
        })
    }
}

/// Loss and error of one data set, each summed into its own one-float buffer.
#[derive(Debug)]
struct EvalPlan {
    dispatches: Vec<Dispatch>,
    loss: wgpu::Buffer,
    err: wgpu::Buffer,
}

/// A softmax-regression model on the device, with its training and test data.
#[derive(Debug)]
pub(crate) struct GpuRegression {
    owner: u64,
    features: usize,
    classes: usize,
    theta: wgpu::Buffer,
    train: DeviceSet,
    test: Option<DeviceSet>,
    /// Per batch: the step's dispatches (two fused, three otherwise).
    batches: Vec<Vec<Dispatch>>,
    eval_train: EvalPlan,
    eval_test: Option<EvalPlan>,
    /// `[train loss, train error, test loss, test error]`, gathered for the one readback.
    results: wgpu::Buffer,
    /// Whether the batch step and evaluation take the fused kernels.
    fused: bool,
    // Scratch the plans bind; kept alive with them.
    _scratch: Vec<wgpu::Buffer>,
}

impl GpuRegression {
    /// Uploads the data, creates theta (`features x classes`, zero) and plans every dispatch.
    pub(crate) fn new(
        gpu: &GpuContext,
        train: (ArrayView2<f32>, &Labels),
        test: Option<(ArrayView2<f32>, &Labels)>,
        step: Step,
    ) -> Result<Self> {
        const OP: &str = "train";
        let (features, classes) = (train.0.ncols(), train.1.classes());
        if step.dtype == DType::F16 {
            gpu.check_shader_f16(OP, "f16 training data")?;
        }
        let mut train_set = upload_set(gpu, OP, train, step.dtype)?;
        let mut test_set = test
            .map(|t| upload_set(gpu, OP, t, step.dtype))
            .transpose()?;

        let theta_bytes = gpu.check_bytes(OP, "theta", features * classes)?;
        let batch_bytes = gpu.check_bytes(OP, "a batch of logits", step.batch * classes)?;
        let fused = fused_step_fits(gpu, features, classes, step.batch)?;
        if fused {
            train_set.texture = DataTexture::new(gpu, OP, &train_set, features)?;
            if let Some(test) = &mut test_set {
                test.texture = DataTexture::new(gpu, OP, test, features)?;
            }
        }
        // wgpu zero-initialises every buffer: theta starts at zero, as in the seed.
        let (theta, batch_logits) = if fused {
            (
                gpu.uniform_storage("theta", theta_bytes),
                gpu.uniform_storage("batch gradient", batch_bytes),
            )
        } else {
            (
                gpu.storage("theta", theta_bytes),
                gpu.storage("batch logits", batch_bytes),
            )
        };

        let eval_rows = train_set.rows.max(test_set.as_ref().map_or(0, |t| t.rows));
        // The products read f32: f16 rows are widened into this first, a batch or a chunk of
        // an evaluation at a time.
        let wide = (!fused && step.dtype == DType::F16)
            .then(|| -> Result<_> {
                let rows = eval_chunk(step.batch, eval_rows);
                let bytes = gpu.check_bytes(OP, "the widened f16 rows", rows * features)?;
                Ok((gpu.storage("widened rows", bytes), rows))
            })
            .transpose()?;
        let widen = wide.as_ref().map(|(buffer, rows)| Widen {
            buffer,
            rows: *rows,
        });
        let mut batches = Vec::new();
        // The three-dispatch step's products pack their operands into the same textures in
        // every batch: one set for all of them.
        let textures = TextureSet::default();
        for b in 0..train_set.rows / step.batch {
            let first_row = b * step.batch;
            let model = Model {
                theta: &theta,
                features,
                classes,
            };
            batches.push(if fused {
                plan_fused_step(gpu, OP, &train_set, first_row, &model, &batch_logits, step)?
            } else {
                plan_step(
                    gpu,
                    OP,
                    &train_set,
                    first_row,
                    &model,
                    (&batch_logits, &textures, widen),
                    step,
                )?
            });
        }

        let scratch = EvalScratch {
            logits: gpu.storage(
                "eval logits",
                gpu.check_bytes(OP, "logits", eval_rows * classes)?,
            ),
            loss: gpu.storage("eval loss", eval_rows as u64 * 4),
            err: gpu.storage("eval err", eval_rows as u64 * 4),
        };
        let model = Model {
            theta: &theta,
            features,
            classes,
        };
        let chunk = eval_chunk(step.batch, eval_rows);
        let eval_train = plan_eval(gpu, OP, &train_set, &model, (fused, widen, chunk), &scratch)?;
        let eval_test = test_set
            .as_ref()
            .map(|t| plan_eval(gpu, OP, t, &model, (fused, widen, chunk), &scratch))
            .transpose()?;
        let results = gpu.storage("results", 16);
        Ok(GpuRegression {
            owner: gpu.id,
            features,
            classes,
            theta,
            train: train_set,
            test: test_set,
            batches,
            eval_train,
            eval_test,
            results,
            fused,
            _scratch: [batch_logits, scratch.logits, scratch.loss, scratch.err]
                .into_iter()
                .chain(wide.map(|(buffer, _)| buffer))
                .collect(),
        })
    }

    /// Replaces the training rows with `x` and `y` (the same shape: a reshuffled epoch).
    pub(crate) fn rewrite_train(
        &self,
        gpu: &GpuContext,
        x: ArrayView2<f32>,
        y: &Labels,
    ) -> Result<()> {
        debug_assert_eq!(x.nrows(), self.train.rows);
        let x = x.as_standard_layout();
        let data = x.as_slice().expect("standard layout is contiguous");
        match self.train.dtype {
            DType::F32 => gpu
                .queue
                .write_buffer(&self.train.x, 0, bytemuck::cast_slice(data)),
            DType::F16 => {
                let half: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
                let mut bytes = bytemuck::cast_slice(&half).to_vec();
                // Writes move whole 4-byte words, as the buffer was sized.
                bytes.resize(bytes.len().next_multiple_of(4), 0);
                gpu.queue.write_buffer(&self.train.x, 0, &bytes);
            }
        }
        gpu.queue
            .write_buffer(&self.train.y, 0, bytemuck::cast_slice(y.raw()));
        match &self.train.texture {
            Some(texture) => texture.repack(gpu, "train"),
            None => Ok(()),
        }
    }

    /// Steps per batch: 2 fused, 3 otherwise, and with the texture matmul the packing of each
    /// product's operands (a copy or a `pack` dispatch each) on top.
    pub(crate) fn dispatches_per_step(&self) -> usize {
        self.batches
            .first()
            .map_or(if self.fused { 2 } else { 3 }, Vec::len)
    }

    /// Whether a test set was given.
    pub(crate) fn has_test(&self) -> bool {
        self.test.is_some()
    }

    /// Runs one epoch of batch steps and waits for them. `progress(done, total)` is called as
    /// batches complete on the device.
    pub(crate) fn sgd_epoch(
        &self,
        gpu: &GpuContext,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        const OP: &str = "train";
        gpu.check_owned(OP, &[self.owner])?;
        let total = self.batches.len();
        let mut submitted = Vec::new();
        for (c, chunk) in self.batches.chunks(BATCHES_PER_SUBMIT).enumerate() {
            let index = gpu.capture(OP, || {
                Ok(gpu.submit_steps(OP, chunk.iter().map(Vec::as_slice)))
            })?;
            submitted.push((index, (c * BATCHES_PER_SUBMIT + chunk.len())));
        }
        for (index, done) in submitted {
            gpu.device.poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })?;
            progress(done, total);
        }
        Ok(())
    }

    /// Loss and error on the training and test sets, `[train loss, train error, test loss,
    /// test error]` (the test pair NaN without a test set): the epoch's one readback.
    pub(crate) fn metrics(&self, gpu: &GpuContext) -> Result<[f32; 4]> {
        self.record_metrics(gpu)?;
        Ok(self.metrics_of(&gpu.read_f32(&self.results, 4)?))
    }

    /// [`metrics`](Self::metrics) without blocking (see [`GpuContext::download_async`]).
    pub(crate) async fn metrics_async(&self, gpu: &GpuContext) -> Result<[f32; 4]> {
        self.record_metrics(gpu)?;
        Ok(self.metrics_of(&gpu.read_pod_async::<f32>(&self.results, 0, 4).await?))
    }

    /// `[train loss, train error, test loss, test error]` from the four values read back.
    fn metrics_of(&self, values: &[f32]) -> [f32; 4] {
        let test = |v: f32| if self.test.is_some() { v } else { f32::NAN };
        [values[0], values[1], test(values[2]), test(values[3])]
    }

    /// Submits the evaluation whose four values [`metrics`](Self::metrics) reads back.
    fn record_metrics(&self, gpu: &GpuContext) -> Result<()> {
        const OP: &str = "evaluate";
        gpu.check_owned(OP, &[self.owner])?;
        gpu.record(OP, |rec| {
            for (i, plan) in std::iter::once(&self.eval_train)
                .chain(self.eval_test.as_ref())
                .enumerate()
            {
                rec.clear(&plan.loss);
                rec.clear(&plan.err);
                rec.run(&plan.dispatches);
                rec.copy((&plan.loss).into(), &self.results, 8 * i as u64, 4);
                rec.copy((&plan.err).into(), &self.results, 8 * i as u64 + 4, 4);
            }
            Ok(())
        })
    }

    /// Theta, `features x classes`.
    pub(crate) fn theta(&self, gpu: &GpuContext) -> Result<Array2<f32>> {
        gpu.check_owned("theta", &[self.owner])?;
        let data = gpu.read_f32(&self.theta, self.features * self.classes)?;
        Ok(Array2::from_shape_vec((self.features, self.classes), data)
            .expect("length matches the shape"))
    }

    /// [`theta`](Self::theta) without blocking.
    pub(crate) async fn theta_async(&self, gpu: &GpuContext) -> Result<Array2<f32>> {
        gpu.check_owned("theta", &[self.owner])?;
        let len = self.features * self.classes;
        let data = gpu.read_pod_async::<f32>(&self.theta, 0, len).await?;
        Ok(Array2::from_shape_vec((self.features, self.classes), data)
            .expect("length matches the shape"))
    }

    /// Loss and error of theta on other data: `(mean loss, error rate)`.
    pub(crate) fn evaluate(
        &self,
        gpu: &GpuContext,
        x: ArrayView2<f32>,
        y: &Labels,
    ) -> Result<(f32, f32)> {
        const OP: &str = "evaluate";
        gpu.check_owned(OP, &[self.owner])?;
        let mut set = upload_set(gpu, OP, (x, y), DType::F32)?;
        if self.fused {
            set.texture = DataTexture::new(gpu, OP, &set, self.features)?;
        }
        let scratch = EvalScratch {
            logits: gpu.storage(
                "eval logits",
                gpu.check_bytes(OP, "logits", set.rows * self.classes)?,
            ),
            loss: gpu.storage("eval loss", set.rows as u64 * 4),
            err: gpu.storage("eval err", set.rows as u64 * 4),
        };
        let model = Model {
            theta: &self.theta,
            features: self.features,
            classes: self.classes,
        };
        let chunk = set.rows;
        let plan = plan_eval(gpu, OP, &set, &model, (self.fused, None, chunk), &scratch)?;
        gpu.record(OP, |rec| {
            rec.clear(&plan.loss);
            rec.clear(&plan.err);
            rec.run(&plan.dispatches);
            rec.copy((&plan.loss).into(), &self.results, 0, 4);
            rec.copy((&plan.err).into(), &self.results, 4, 4);
            Ok(())
        })?;
        let values = gpu.read_f32(&self.results, 2)?;
        Ok((values[0], values[1]))
    }

    /// `x theta`, the logits of each row of `x`.
    pub(crate) fn logits(&self, gpu: &GpuContext, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        const OP: &str = "predict";
        gpu.check_owned(OP, &[self.owner])?;
        let x = gpu.upload(x)?;
        let out = gpu.new_matrix(OP, x.rows(), self.classes)?;
        gpu.record(OP, |rec| {
            let plan = gpu.plan_matmul(
                OP,
                &Gemm {
                    a: (&x.buffer).into(),
                    b: (&self.theta).into(),
                    c: (&out.buffer).into(),
                    m: x.rows(),
                    n: self.classes,
                    k: self.features,
                    form: Form::Nn,
                    alpha: 1.0,
                    beta: 0.0,
                    textures: None,
                },
            )?;
            rec.run(&plan);
            Ok(())
        })?;
        gpu.download(&out)
    }
}

struct EvalScratch {
    logits: wgpu::Buffer,
    loss: wgpu::Buffer,
    err: wgpu::Buffer,
}

/// Uploads a data set, its rows in `dtype` (values the caller has already rounded to it).
fn upload_set(
    gpu: &GpuContext,
    op: &'static str,
    (x, y): (ArrayView2<f32>, &Labels),
    dtype: DType,
) -> Result<DeviceSet> {
    if x.nrows() != y.len() {
        return Err(Error::shape(
            op,
            format!("{} labels (one per row of x)", x.nrows()),
            format!("{}", y.len()),
        ));
    }
    let x_buf = match dtype {
        DType::F32 => gpu.upload(x)?.buffer,
        DType::F16 => gpu.upload_f16(x.mapv(half::f16::from_f32).view())?.buffer,
    };
    let y_buf = gpu.upload_labels(y)?.buffer;
    Ok(DeviceSet {
        x: x_buf,
        y: y_buf,
        rows: x.nrows(),
        dtype,
        texture: None,
    })
}

/// Logits of every row, per-row loss and error, and their means.
fn plan_eval(
    gpu: &GpuContext,
    op: &'static str,
    set: &DeviceSet,
    model: &Model<'_>,
    (fused, widen, chunk): (bool, Option<Widen<'_>>, usize),
    scratch: &EvalScratch,
) -> Result<EvalPlan> {
    // The texture kernel covers every row in one dispatch of 32 rows per workgroup.
    let one_dispatch =
        set.rows.div_ceil(4 * MT_LANES as usize) as u64 <= gpu.geometry.dispatch_rows(1);
    let texture = set.texture.as_ref().filter(|_| one_dispatch);
    let mut dispatches = if let (true, Some(texture)) = (fused, texture) {
        vec![plan_loss_err_tex(gpu, op, set, texture, model, scratch)?]
    } else if fused {
        gpu.plan_rows(
            op,
            Kernel::LossErrFused,
            (set.rows, model.features),
            &[
                set.x_at(0),
                (&set.y).into(),
                (&scratch.loss).into(),
                model.theta.into(),
                (&scratch.err).into(),
            ],
            TrainArgs {
                classes: model.classes as u32,
                ..TrainArgs::default()
            },
            None,
        )?
    } else {
        // Every row's logits, in chunks of `chunk` rows (the widening workspace's, for f16
        // data): the same products for f32 and f16 data, so that the two give the same bits.
        let chunk = chunk.max(1);
        let mut plan = Vec::new();
        for start in (0..set.rows).step_by(chunk) {
            let rows = chunk.min(set.rows - start);
            let a = x_widened(gpu, op, set, start, rows, model.features, widen, &mut plan)?;
            plan.extend(gpu.plan_matmul(
                op,
                &Gemm {
                    a,
                    b: model.theta.into(),
                    c: At {
                        first_row: start,
                        ..(&scratch.logits).into()
                    },
                    m: rows,
                    n: model.classes,
                    k: model.features,
                    form: Form::Nn,
                    alpha: 1.0,
                    beta: 0.0,
                    textures: None,
                },
            )?);
        }
        plan.extend(gpu.plan_rows(
            op,
            Kernel::LossErrRows,
            (set.rows, model.classes),
            &[
                (&scratch.logits).into(),
                (&set.y).into(),
                (&scratch.loss).into(),
                (&scratch.err).into(),
            ],
            TrainArgs::default(),
            None,
        )?);
        plan
    };
    let loss = gpu.storage("loss total", 4);
    let err = gpu.storage("error total", 4);
    let mean = 1.0 / set.rows as f32;
    for (per_row, total) in [(&scratch.loss, &loss), (&scratch.err, &err)] {
        dispatches.extend(gpu.plan_sum(op, per_row.into(), set.rows, total.into(), mean)?);
    }
    Ok(EvalPlan {
        dispatches,
        loss,
        err,
    })
}

/// [`Kernel::LossErrTex`] over every row of `set`: per-row loss and error into `scratch`.
fn plan_loss_err_tex(
    gpu: &GpuContext,
    op: &'static str,
    set: &DeviceSet,
    texture: &DataTexture,
    model: &Model<'_>,
    scratch: &EvalScratch,
) -> Result<Dispatch> {
    let params = texture.step_params(set.rows, 0, model, 0.0, 0.0);
    let groups = gpu
        .geometry
        .fold(op, set.rows.div_ceil(4 * MT_LANES as usize) as u64)?;
    Ok(gpu.dispatch(
        Kernel::LossErrTex,
        &gpu.pipeline(Kernel::LossErrTex, Width::Scalar)?,
        bytemuck::bytes_of(&params),
        vec![
            wgpu::BindingResource::TextureView(&texture.texture.view),
            set.y.as_entire_binding(),
            scratch.loss.as_entire_binding(),
            uniform_binding(model.theta),
            scratch.err.as_entire_binding(),
        ],
        groups,
    ))
}

/// Theta and its shape, as the planners bind it.
struct Model<'a> {
    theta: &'a wgpu::Buffer,
    features: usize,
    classes: usize,
}

/// Loop trips of the step kernels over their classes, at most: the texture kernels walk up to
/// [`STEP_CLASSES`] classes three times for each of the four rows a lane takes.
const STEP_CLASS_TRIPS: u64 = 4 * 3 * STEP_CLASSES as u64;

/// Whether the fused two-dispatch step fits the model: few enough classes for its registers,
/// theta and a batch gradient within one uniform binding each, a batch within one binding, and
/// its threads' walks over the features (forward, evaluation) and over the batch (update)
/// within the loop budget.
fn fused_step_fits(
    gpu: &GpuContext,
    features: usize,
    classes: usize,
    batch: usize,
) -> Result<bool> {
    let uniform_floats = (STEP_UNIFORM_BYTES / 4) as usize;
    Ok(classes <= STEP_CLASSES as usize
        && features * classes <= uniform_floats
        && batch * classes <= uniform_floats
        && gpu.limits().max_uniform_buffer_binding_size >= STEP_UNIFORM_BYTES
        && features.max(batch) as u64 + FIXED_TRIPS + STEP_CLASS_TRIPS <= gpu.geometry.loop_budget
        && gpu.geometry.windows("train", batch, features)?.len() == 1)
}

fn prev_power_of_two(n: usize) -> usize {
    1 << n.ilog2()
}

/// The fused step of the batch starting at `first_row`: [`Kernel::StepForward`] into `grad`,
/// then [`Kernel::StepUpdate`] into theta.
fn plan_fused_step(
    gpu: &GpuContext,
    op: &'static str,
    set: &DeviceSet,
    first_row: usize,
    model: &Model<'_>,
    grad: &wgpu::Buffer,
    step: Step,
) -> Result<Vec<Dispatch>> {
    if let Some(texture) = &set.texture {
        return plan_fused_step_tex(gpu, set, texture, first_row, model, grad, step);
    }
    let classes = model.classes as u32;
    let mut plan = gpu.plan_rows(
        op,
        Kernel::StepForward,
        (step.batch, model.features),
        &[
            set.x_at(first_row),
            At {
                buffer: &set.y,
                offset: 0,
                stride: 0,
                first_row,
                dtype: DType::F32,
            },
            grad.into(),
            model.theta.into(),
        ],
        TrainArgs {
            classes,
            scale: 1.0,
            ..TrainArgs::default()
        },
        None,
    )?;
    // fused_step_fits checked this: the kernel indexes the gradient by row within its window.
    assert_eq!(plan.len(), 1, "a fused batch spans one window");

    let pipeline = gpu.pipeline_of(Kernel::StepUpdate, Width::Scalar, set.dtype)?;
    let (offset, size, base) = gpu.geometry.slice_rows(
        0,
        &(first_row..first_row + step.batch),
        (model.features, model.features),
        set.dtype.size() as u64,
    );
    let params = RowParams {
        rows: model.features as u32,
        cols: step.batch as u32,
        tpr: 1,
        args: TrainArgs {
            classes,
            scale: -step.lr / step.batch as f32,
            decay: 1.0 - step.lr * step.l2,
            ..TrainArgs::default()
        }
        .words(),
        base: [base, 0, 0, 0, 0, 0, 0, 0],
        ..RowParams::default()
    };
    let groups = gpu
        .geometry
        .fold(op, row_groups(model.features, 1, gpu.config.row_wg))?;
    plan.push(gpu.dispatch(
        Kernel::StepUpdate,
        &pipeline,
        bytemuck::bytes_of(&params),
        vec![
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &set.x,
                offset,
                size: wgpu::BufferSize::new(size),
            }),
            uniform_binding(grad),
            model.theta.as_entire_binding(),
        ],
        groups,
    ));
    Ok(plan)
}

/// [`plan_fused_step`] on the texture kernels: [`Kernel::StepForwardTex`] over 32 batch rows
/// per subgroup, then [`Kernel::StepUpdateTex`] over 32 features per subgroup.
fn plan_fused_step_tex(
    gpu: &GpuContext,
    set: &DeviceSet,
    texture: &DataTexture,
    first_row: usize,
    model: &Model<'_>,
    grad: &wgpu::Buffer,
    step: Step,
) -> Result<Vec<Dispatch>> {
    let params = |scale, decay| texture.step_params(step.batch, first_row, model, scale, decay);
    let lanes = MT_LANES;
    let forward_params = params(1.0, 1.0);
    let update_params = params(-step.lr / step.batch as f32, 1.0 - step.lr * step.l2);
    let data = || wgpu::BindingResource::TextureView(&texture.texture.view);
    let forward = gpu.pipeline(Kernel::StepForwardTex, Width::Scalar)?;
    let update = gpu.pipeline(Kernel::StepUpdateTex, Width::Scalar)?;
    Ok(vec![
        gpu.dispatch(
            Kernel::StepForwardTex,
            &forward,
            bytemuck::bytes_of(&forward_params),
            vec![
                data(),
                set.y.as_entire_binding(),
                grad.as_entire_binding(),
                uniform_binding(model.theta),
            ],
            [forward_params.batch.div_ceil(4 * lanes), 1, 1],
        ),
        gpu.dispatch(
            Kernel::StepUpdateTex,
            &update,
            bytemuck::bytes_of(&update_params),
            vec![
                data(),
                uniform_binding(grad),
                model.theta.as_entire_binding(),
            ],
            [update_params.quads.div_ceil(lanes), 1, 1],
        ),
    ])
}

/// The three-dispatch step of the batch starting at `first_row`, for any model: matmul,
/// softmax minus one-hot in place in `logits`, matmul accumulating into theta.
fn plan_step(
    gpu: &GpuContext,
    op: &'static str,
    set: &DeviceSet,
    first_row: usize,
    model: &Model<'_>,
    (logits, textures, widen): (&wgpu::Buffer, &TextureSet, Option<Widen<'_>>),
    step: Step,
) -> Result<Vec<Dispatch>> {
    let mut plan = Vec::new();
    let x_b = x_widened(
        gpu,
        op,
        set,
        first_row,
        step.batch,
        model.features,
        widen,
        &mut plan,
    )?;
    plan.extend(gpu.plan_matmul(
        op,
        &Gemm {
            a: x_b,
            b: model.theta.into(),
            c: logits.into(),
            m: step.batch,
            n: model.classes,
            k: model.features,
            form: Form::Nn,
            alpha: 1.0,
            beta: 0.0,
            textures: Some(textures),
        },
    )?);
    plan.extend(gpu.plan_rows(
        op,
        Kernel::SoftmaxGradRows,
        (step.batch, model.classes),
        &[
            At {
                buffer: &set.y,
                offset: 0,
                stride: 0,
                first_row,
                dtype: DType::F32,
            },
            logits.into(),
        ],
        TrainArgs {
            scale: 1.0,
            ..TrainArgs::default()
        },
        None,
    )?);
    plan.extend(gpu.plan_matmul(
        op,
        &Gemm {
            a: x_b,
            b: logits.into(),
            c: model.theta.into(),
            m: model.features,
            n: model.classes,
            k: step.batch,
            form: Form::Tn,
            alpha: -step.lr / step.batch as f32,
            beta: 1.0 - step.lr * step.l2,
            textures: Some(textures),
        },
    )?);
    Ok(plan)
}

/// Rows `first_row .. first_row + rows` of `set`'s data as the products read them: in place
/// for `f32` data; for `f16`, widened into `widen`'s workspace by a [`Kernel::WidenRows`]
/// dispatch pushed onto `plan` (exact: every f16 is an f32).
#[allow(clippy::too_many_arguments)]
fn x_widened<'a>(
    gpu: &GpuContext,
    op: &'static str,
    set: &'a DeviceSet,
    first_row: usize,
    rows: usize,
    features: usize,
    widen: Option<Widen<'a>>,
    plan: &mut Vec<Dispatch>,
) -> Result<At<'a>> {
    if set.dtype == DType::F32 {
        return Ok(set.x_at(first_row));
    }
    let wide = widen.expect("f16 data on the three-dispatch route have a workspace");
    debug_assert!(rows <= wide.rows, "the workspace holds the rows");
    plan.extend(gpu.plan_rows(
        op,
        Kernel::WidenRows,
        (rows, features),
        &[set.x_at(first_row), wide.buffer.into()],
        NoArgs::default(),
        None,
    )?);
    Ok(wide.buffer.into())
}
