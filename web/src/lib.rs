//! softmax-ce in a browser page. [`run_checks`] builds a context on the page's WebGPU adapter
//! (its configuration chosen from the limits and features the adapter reports, as on any
//! other), runs softmax, log-softmax, cross-entropy with its gradient under several options,
//! the matrix product and a few epochs of softmax-regression training, and holds each result
//! to the library's CPU reference, computed in the same wasm module from the same inputs.
//!
//! It resolves to a report of one line per check, or rejects with the first failure. Only the
//! async downloads are used: a page cannot block its one thread until the GPU is done.

use ndarray::{Array1, Array2, ArrayView2};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use softmax_ce::train::{Backend, SoftmaxRegression, TrainOptions};
use softmax_ce::{
    CrossEntropyOptions, DEFAULT_IGNORE_INDEX, GpuContext, GpuOptions, Labels, Loss, Reduction, cpu,
};
use wasm_bindgen::prelude::*;

/// Runs every check on the browser's adapter: the report, one line per check, or the first
/// failure.
#[wasm_bindgen]
pub async fn run_checks() -> Result<String, JsValue> {
    checks().await.map_err(|e| JsValue::from_str(&e))
}

/// What failed, in words: a library error or a result off the reference.
type Failure = String;

/// Turns a library error into a failure naming the check.
fn at<T>(check: &str, r: softmax_ce::Result<T>) -> Result<T, Failure> {
    r.map_err(|e| format!("{check}: {e}"))
}

async fn checks() -> Result<String, Failure> {
    let gpu = at(
        "context",
        GpuContext::new_async(&GpuOptions::default()).await,
    )?;
    let info = gpu.adapter_info();
    let limits = gpu.limits();
    let features = gpu.device().features();
    let f16 = features.contains(wgpu::Features::SHADER_F16);
    let mut report = vec![format!(
        "adapter {:?} ({:?}, {:?}): {} invocations per workgroup, subgroups of {}..{}, \
         bindings of {} MiB; {gpu:?}",
        info.name,
        info.backend,
        info.device_type,
        limits.max_compute_invocations_per_workgroup,
        info.subgroup_min_size,
        info.subgroup_max_size,
        limits.max_storage_buffer_binding_size >> 20,
    )];
    // What this adapter's configuration leaves out, said rather than skipped in silence.
    let mut not_run = Vec::new();
    if !f16 {
        not_run.push("f16 kernels (the device has no shader-f16)");
    }
    if !features.contains(wgpu::Features::SUBGROUP) {
        not_run.push(
            "subgroup shuffles (the device has no SUBGROUP feature; wgpu 30's WebGPU backend \
             never requests `subgroups`): reductions run in workgroup memory",
        );
    }
    if !gpu.texture_kernels() {
        not_run.push("texture kernels (for CPU adapters with subgroups of exactly 8)");
    }
    if !not_run.is_empty() {
        report.push(format!("not run here: {}", not_run.join("; ")));
    }
    // Around the workgroup sizes (64, 128, 256), the vector width (4) and a ragged tail.
    let shapes = [
        (1, 1),
        (3, 5),
        (2, 255),
        (5, 256),
        (7, 257),
        (3, 1023),
        (4, 4097),
        (2, 20000),
    ];
    for (i, &(rows, cols)) in shapes.iter().enumerate() {
        let x = adversarial(rows, cols, i as u64);
        report.push(check_softmax(&gpu, x.view()).await?);
        if f16 {
            report.push(check_softmax_f16(&gpu, x.view()).await?);
        }
        report.push(check_cross_entropy(&gpu, x.view(), i as u64).await?);
    }
    for &(n, k, m) in &[(1, 1, 1), (17, 33, 9), (65, 64, 63), (130, 31, 257)] {
        report.push(check_matmul(&gpu, n, k, m).await?);
    }
    report.push(check_training(&gpu).await?);
    Ok(report.join("\n"))
}

/// Uniform logits in [-10, 10), with the adversarial rows every GPU op is held to where
/// there are rows for them: +-1e4, 1e30 beside -1e30, some -inf entries, a row of equal values.
fn adversarial(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut x = Array2::from_shape_fn((rows, cols), |_| rng.random_range(-10.0f32..10.0));
    for (r, mut row) in x.rows_mut().into_iter().enumerate().skip(1) {
        match r % 4 {
            1 => row.iter_mut().enumerate().for_each(|(j, v)| {
                *v = if j % 2 == 0 { 1e4 } else { -1e4 };
            }),
            2 => row.iter_mut().enumerate().for_each(|(j, v)| {
                if j % 3 == 1 {
                    *v = f32::NEG_INFINITY;
                }
            }),
            3 => row.fill(7.5),
            _ => {
                row[0] = 1e30;
                row[cols - 1] = -1e30;
            }
        }
    }
    x
}

/// The largest `|gpu - cpu| / (1 + |cpu|)`, and whether both are infinite alike where either is.
fn worst(gpu: ArrayView2<f32>, cpu: ArrayView2<f32>) -> f32 {
    gpu.iter().zip(cpu).fold(0.0f32, |w, (&g, &c)| {
        let e = if g == c {
            0.0
        } else if g.is_finite() && c.is_finite() {
            (g - c).abs() / (1.0 + c.abs())
        } else {
            f32::INFINITY
        };
        w.max(e)
    })
}

/// `what` within `tol` of the reference, as a report line, or a failure.
fn judged(what: String, err: f32, tol: f32) -> Result<String, Failure> {
    if err <= tol {
        Ok(format!(
            "ok   {what}: worst error {err:.2e} (tolerance {tol:.0e})"
        ))
    } else {
        Err(format!("FAIL {what}: worst error {err:.2e} past {tol:.0e}"))
    }
}

async fn check_softmax(gpu: &GpuContext, x: ArrayView2<'_, f32>) -> Result<String, Failure> {
    let (rows, cols) = x.dim();
    let what = format!("softmax and log-softmax {rows}x{cols}");
    let dx = at(&what, gpu.upload(x))?;
    let p = at(&what, gpu.softmax(&dx))?;
    let lp = at(&what, gpu.log_softmax(&dx))?;
    let p = at(&what, gpu.download_async(&p).await)?;
    let lp = at(&what, gpu.download_async(&lp).await)?;
    let err = worst(p.view(), at(&what, cpu::softmax(x))?.view())
        .max(worst(lp.view(), at(&what, cpu::log_softmax(x))?.view()));
    judged(what, err, 1e-5)
}

/// Softmax of the logits rounded to f16, against the reference on the same f16 values (its
/// output rounded once to f16: a tolerance of f16's half ulp).
async fn check_softmax_f16(gpu: &GpuContext, x: ArrayView2<'_, f32>) -> Result<String, Failure> {
    let (rows, cols) = x.dim();
    let what = format!("softmax in f16 {rows}x{cols}");
    let x = x.mapv(softmax_ce::f16::from_f32);
    let p = at(&what, gpu.softmax(&at(&what, gpu.upload_f16(x.view()))?))?;
    let p = at(&what, gpu.download_async(&p).await)?;
    let cpu = at(&what, cpu::softmax(x.view()))?.mapv(|v| v.to_f32());
    judged(what, worst(p.view(), cpu.view()), 1e-3)
}

async fn check_cross_entropy(
    gpu: &GpuContext,
    x: ArrayView2<'_, f32>,
    seed: u64,
) -> Result<String, Failure> {
    let (rows, cols) = x.dim();
    let mut rng = StdRng::seed_from_u64(seed + 100);
    // A label on an infinite logit would make the loss infinite on both sides; every third
    // row past the first is ignored.
    let labels: Vec<i64> = (0..rows)
        .map(|r| {
            if r % 3 == 2 {
                DEFAULT_IGNORE_INDEX
            } else {
                (0..)
                    .map(|_| rng.random_range(0..cols))
                    .find(|&j| x[[r, j]].is_finite())
                    .unwrap_or(0) as i64
            }
        })
        .collect();
    let what = format!("cross-entropy with gradient {rows}x{cols}");
    let labels = at(&what, Labels::new(labels, cols, DEFAULT_IGNORE_INDEX))?;
    let weight = Array1::from_shape_fn(cols, |j| 0.5 + (j % 5) as f32 / 4.0);
    let options = [
        CrossEntropyOptions::default(),
        CrossEntropyOptions::default()
            .reduction(Reduction::Sum)
            .label_smoothing(0.1),
        CrossEntropyOptions::default()
            .reduction(Reduction::None)
            .weight(weight)
            .z_loss(1e-4),
    ];
    let dx = at(&what, gpu.upload(x))?;
    let dy = at(&what, gpu.upload_labels(&labels))?;
    let mut err = 0.0f32;
    for opts in &options {
        let (loss, grad) = at(&what, gpu.cross_entropy_with_grad(&dx, &dy, opts))?;
        let loss = at(&what, gpu.download_loss_async(&loss).await)?;
        let grad = at(&what, gpu.download_async(&grad).await)?;
        let cpu_loss = at(&what, cpu::cross_entropy(x, &labels, opts))?;
        let cpu_grad = at(&what, cpu::cross_entropy_grad(x, &labels, opts))?;
        err = err
            .max(worst(losses(&loss).view(), losses(&cpu_loss).view()))
            .max(worst(grad.view(), cpu_grad.view()));
    }
    judged(format!("{what}, 3 option sets"), err, 1e-5)
}

/// A loss as a one-row matrix, for [`worst`].
fn losses(loss: &Loss) -> Array2<f32> {
    let values = match loss {
        Loss::PerRow(v) => v.clone(),
        Loss::Reduced(v) => Array1::from_elem(1, *v),
    };
    values.insert_axis(ndarray::Axis(0))
}

async fn check_matmul(gpu: &GpuContext, n: usize, k: usize, m: usize) -> Result<String, Failure> {
    let what = format!("matmul {n}x{k} by {k}x{m}");
    let mut rng = StdRng::seed_from_u64((n * k * m) as u64);
    let a = Array2::from_shape_fn((n, k), |_| rng.random_range(-1.0f32..1.0));
    let b = Array2::from_shape_fn((k, m), |_| rng.random_range(-1.0f32..1.0));
    let (da, db) = (
        at(&what, gpu.upload(a.view()))?,
        at(&what, gpu.upload(b.view()))?,
    );
    let c = at(&what, gpu.matmul(&da, &db))?;
    let c = at(&what, gpu.download_async(&c).await)?;
    // Sums of k products of values in [-1, 1): rounding grows with k.
    judged(what, worst(c.view(), a.dot(&b).view()), 1e-6 * k as f32)
}

/// Three epochs of the seed's SGD on separable synthetic data, on the GPU and on the CPU from
/// the same start: the weights and the epoch losses agree.
async fn check_training(gpu: &GpuContext) -> Result<String, Failure> {
    const WHAT: &str = "training 600x20, 4 classes, 3 epochs of batches of 100";
    let (rows, features, classes) = (600, 20, 4);
    let mut rng = StdRng::seed_from_u64(7);
    let y: Vec<i64> = (0..rows).map(|r| (r % classes) as i64).collect();
    let x = Array2::from_shape_fn((rows, features), |(r, j)| {
        let centre = if j % classes == r % classes { 1.0 } else { 0.0 };
        centre + rng.random_range(-0.5f32..0.5)
    });
    let labels = at(WHAT, Labels::new(y, classes, DEFAULT_IGNORE_INDEX))?;
    let opts = TrainOptions::default().bias(true);
    let mut on_gpu = at(
        WHAT,
        SoftmaxRegression::new(gpu, (x.view(), &labels), None, opts.clone()),
    )?;
    let mut on_cpu = at(
        WHAT,
        SoftmaxRegression::new(Backend::Cpu, (x.view(), &labels), None, opts),
    )?;
    let mut err = 0.0f32;
    let mut last = (0.0, 0.0);
    for _ in 0..3 {
        let g = at(WHAT, on_gpu.fit_epoch_async().await)?;
        let c = at(WHAT, on_cpu.fit_epoch())?;
        err = err
            .max((g.train_loss - c.train_loss).abs())
            .max((g.train_err - c.train_err).abs());
        last = (g.train_loss, g.train_err);
    }
    let theta = at(WHAT, on_gpu.theta_async().await)?;
    err = err.max(worst(theta.view(), at(WHAT, on_cpu.theta())?.view()));
    judged(
        format!("{WHAT} (loss {:.4}, error {:.3})", last.0, last.1),
        err,
        1e-4,
    )
}
