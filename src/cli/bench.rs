//! `softmax-ce bench`: the same work on every path, CPU and GPU, side by side in one run.
//!
//! GPU figures come from `GpuContext::timed` (timestamp queries where the adapter has them),
//! with inputs uploaded and pipelines compiled before the first timed run. Each memory-bound
//! GPU kernel is also reported against a plain copy kernel moving the same bytes on the same
//! adapter in the same run (`copy_ratio`). The JSON keys are a contract: extend, never rename.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array2;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use softmax_ce::cpu::{self, fast};
use softmax_ce::gpu::CopyKernel;
use softmax_ce::train::{SoftmaxRegression, TrainOptions};
use softmax_ce::{CrossEntropyOptions, DType, Labels, f16};

use super::output::Outputs;
use super::plot::BenchBar;
use super::{DeviceArg, open_device};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Shapes of the row ops, e.g. `4096x1024,1024x32768`.
    #[arg(long, value_delimiter = ',')]
    shapes: Option<Vec<String>>,
    /// Matmul shapes `MxKxN`, e.g. `1024x1024x1024,100x784x10`.
    #[arg(long, value_delimiter = ',')]
    matmul: Option<Vec<String>>,
    /// Training epoch `ROWSxFEATURESxCLASSES` (batch 100, synthetic data with a fixed seed).
    #[arg(long)]
    epoch: Option<String>,
    /// Linear cross-entropy shapes `NxDxV` (tokens, hidden size, vocabulary), e.g.
    /// `1024x256x32768,2048x64x65536`.
    #[arg(long, value_delimiter = ',')]
    linear: Option<Vec<String>>,
    /// A small, fast run (small shapes, few repetitions): for smoke tests and CI.
    #[arg(long)]
    quick: bool,
    /// Timed repetitions per case, after one warm-up run.
    #[arg(long, allow_negative_numbers = true)]
    reps: Option<usize>,
    /// `cpu` runs only the CPU paths; default: every path, the GPU's when there is one.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// One JSON object per line on stdout, and nothing else there.
    #[arg(long)]
    json: bool,
    /// Also draw every row into this SVG file: per case, each path's GB/s (or GFLOP/s) beside
    /// the copy line of its device.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

/// One measured case.
struct Row {
    op: &'static str,
    shape: String,
    path: &'static str,
    times: Vec<f64>,
    /// Bytes read once plus written once, for memory-bound ops.
    bytes: Option<f64>,
    /// Floating-point operations, for the matmul.
    flops: Option<f64>,
    copy_ratio: Option<f64>,
    /// The kernel a row measured when the op has several (the copies).
    kernel: Option<&'static str>,
    /// How the matrices are stored: `f32`, or `f16` (bytes counted at 2 an element).
    dtype: DType,
    /// The memory the route holds beyond its inputs and outputs, at its peak.
    peak_bytes: Option<u64>,
}

impl Row {
    /// A row of `op` on `shape` and `path`, f32, with no rate, ratio, kernel or memory yet.
    fn new(op: &'static str, shape: &str, path: &'static str, times: Vec<f64>) -> Row {
        Row {
            op,
            shape: shape.to_string(),
            path,
            times,
            bytes: None,
            flops: None,
            copy_ratio: None,
            kernel: None,
            dtype: DType::F32,
            peak_bytes: None,
        }
    }

    fn json(&self) -> Value {
        let median = median(&self.times);
        let min = self.times.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.times.iter().copied().fold(0.0, f64::max);
        let mut v = json!({
            "op": self.op,
            "shape": self.shape,
            "path": self.path,
            "median_ms": round(median),
            "min_ms": round(min),
            "max_ms": round(max),
            "reps": self.times.len(),
            "dtype": self.dtype.name(),
        });
        if let Some(bytes) = self.bytes {
            v["gbps"] = json!(round(bytes / median / 1e6));
        }
        if let Some(flops) = self.flops {
            v["gflops"] = json!(round(flops / median / 1e6));
        }
        if let Some(r) = self.copy_ratio {
            v["copy_ratio"] = json!(round(r));
        }
        if let Some(k) = self.kernel {
            v["kernel"] = json!(k);
        }
        if let Some(b) = self.peak_bytes {
            v["peak_bytes"] = json!(b);
        }
        v
    }
}

impl Row {
    /// The row as the plot draws it; the copy rows themselves are its lines, not bars.
    fn bar(&self) -> Option<BenchBar> {
        if self.op == "copy" {
            return None;
        }
        let median = median(&self.times);
        let (rate, bytes) = match (self.bytes, self.flops) {
            (Some(b), _) => (b / median / 1e6, true),
            (None, Some(f)) => (f / median / 1e6, false),
            (None, None) => return None,
        };
        let device = if self.path.starts_with("gpu") {
            "gpu"
        } else {
            "cpu"
        };
        let case = match self.dtype {
            DType::F32 => format!("{} {}", self.op, self.shape),
            DType::F16 => format!("{} {} f16", self.op, self.shape),
        };
        Some(BenchBar {
            case,
            path: self.path.to_string(),
            rate,
            bytes,
            // The copy moved the same bytes in copy_ratio times less time.
            copy: self
                .copy_ratio
                .filter(|_| bytes)
                .map(|r| (device.to_string(), rate * r)),
        })
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Parses `--flag` value `s` as `N` positive integers joined by `x`.
fn parse_dims<const N: usize>(flag: &str, s: &str) -> Result<[usize; N]> {
    let parts: Vec<usize> = s
        .split('x')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("{flag} {s:?}: expected {N} positive integers joined by x"))?;
    let dims: [usize; N] = parts
        .try_into()
        .map_err(|_| anyhow::anyhow!("{flag} {s:?}: expected {N} dimensions"))?;
    if dims.contains(&0) {
        bail!("{flag} {s:?}: every dimension must be at least 1");
    }
    Ok(dims)
}

/// Refuses a case whose host arrays cannot exist, before any is allocated: `arrays` are the
/// element counts and sizes of what the case holds at once. The sum must fit the address space
/// (checked, so that no product wraps) and the machine's physical memory.
fn check_fits(flag: &str, s: &str, arrays: &[(&[usize], usize)]) -> Result<()> {
    let bytes = arrays.iter().try_fold(0u64, |sum, (dims, item)| {
        let n = dims
            .iter()
            .try_fold(*item, |acc, &d| acc.checked_mul(d))
            .filter(|&n| isize::try_from(n).is_ok())?;
        sum.checked_add(u64::try_from(n).ok()?)
    });
    match (bytes, softmax_ce::data::physical_memory()) {
        (None, _) => bail!("{flag} {s:?}: the arrays of this shape are too large to address"),
        (Some(b), Some(memory)) if b > memory => bail!(
            "{flag} {s:?}: the arrays of this shape need {b} bytes, more than this machine's \
             {memory} bytes of memory"
        ),
        _ => Ok(()),
    }
}

/// Runs `f` once to warm up, then `reps` times; returns milliseconds per run.
fn measure(reps: usize, mut f: impl FnMut() -> Result<f64>) -> Result<Vec<f64>> {
    f()?;
    (0..reps).map(|_| f()).collect()
}

fn wall(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// Runs the benchmark: sizes are checked first, then every case runs on every path.
pub fn run(args: BenchArgs) -> Result<()> {
    let reps = args.reps.unwrap_or(if args.quick { 3 } else { 7 });
    if reps == 0 {
        bail!("--reps must be at least 1");
    }
    let row_shapes: Vec<[usize; 2]> = match &args.shapes {
        Some(s) => s
            .iter()
            .map(|s| {
                let [n, c] = parse_dims("--shapes", s)?;
                // The logits, two results of their size (probabilities, gradient), and the
                // labels (drawn as i64, kept as u32).
                check_fits("--shapes", s, &[(&[n, c], 12), (&[n], 12)])?;
                if u32::try_from(c).is_err() {
                    bail!("--shapes {s:?}: {c} classes do not fit 32-bit labels");
                }
                Ok([n, c])
            })
            .collect::<Result<_>>()?,
        None if args.quick => vec![[256, 1024], [64, 8192]],
        None => vec![[4096, 1024], [1024, 32768], [256, 131072]],
    };
    let matmul_shapes: Vec<[usize; 3]> = match &args.matmul {
        Some(s) => s
            .iter()
            .map(|s| {
                let [m, k, n] = parse_dims("--matmul", s)?;
                check_fits("--matmul", s, &[(&[m, k], 4), (&[k, n], 4), (&[m, n], 4)])?;
                Ok([m, k, n])
            })
            .collect::<Result<_>>()?,
        None if args.quick => vec![[128, 128, 128], [100, 784, 10]],
        None => vec![[1024, 1024, 1024], [100, 784, 10]],
    };
    let linear_shapes: Vec<[usize; 3]> = match &args.linear {
        Some(s) => s
            .iter()
            .map(|s| {
                let [n, d, v] = parse_dims("--linear", s)?;
                // H, W, their gradients, and the materialised route's logits and gradient.
                check_fits("--linear", s, &[(&[n, d], 8), (&[v, d], 8), (&[n, v], 8)])?;
                if u32::try_from(v).is_err() {
                    bail!("--linear {s:?}: {v} classes do not fit 32-bit labels");
                }
                Ok([n, d, v])
            })
            .collect::<Result<_>>()?,
        None if args.quick => vec![[64, 32, 3000]],
        None => vec![[1024, 256, 32768], [2048, 64, 65536]],
    };
    let epoch: [usize; 3] = match &args.epoch {
        Some(s) => {
            let [rows, features, classes] = parse_dims("--epoch", s)?;
            // The features, the model's own copy of them, labels, and theta.
            check_fits(
                "--epoch",
                s,
                &[
                    (&[rows, features], 8),
                    (&[rows], 12),
                    (&[features, classes], 4),
                ],
            )?;
            if u32::try_from(classes).is_err() {
                bail!("--epoch {s:?}: {classes} classes do not fit 32-bit labels");
            }
            [rows, features, classes]
        }
        None if args.quick => [2000, 784, 10],
        None => [60000, 784, 10],
    };

    // Before anything runs: a plot that cannot be written fails at once.
    let mut plot = Outputs::prepare(&[], &[("--plot", args.plot.as_deref())])?;
    let bars = std::cell::RefCell::new(Vec::new());
    let device = open_device(args.device)?;
    let gpu = device.gpu();
    if let Some(gpu) = gpu {
        // Before the CPU paths spend minutes on a case whose upload the device must refuse.
        let limit = gpu.limits().max_buffer_size;
        let too_big = |flag: &str, shape: String, elems: usize| -> Result<()> {
            // check_fits bounded every array to the address space, so this cannot overflow.
            let bytes = elems as u64 * 4;
            if bytes > limit {
                bail!(
                    "{flag} {shape:?}: an array of {bytes} bytes is larger than the adapter's \
                     largest buffer ({limit} bytes); use --device cpu or a smaller shape"
                );
            }
            Ok(())
        };
        for &[n, c] in &row_shapes {
            too_big("--shapes", format!("{n}x{c}"), n * c)?;
        }
        for &[m, k, n] in &matmul_shapes {
            let shape = format!("{m}x{k}x{n}");
            too_big("--matmul", shape.clone(), (m * k).max(k * n).max(m * n))?;
        }
        let [rows, features, _] = epoch;
        too_big(
            "--epoch",
            format!("{rows}x{features}x{}", epoch[2]),
            rows * features,
        )?;
    }
    let cases = row_shapes.len() * (7 + 7 * usize::from(gpu.is_some()))
        + matmul_shapes.len() * (1 + usize::from(gpu.is_some()))
        + linear_shapes.len() * (2 + 2 * usize::from(gpu.is_some()))
        + 1
        + usize::from(gpu.is_some());
    let bar = ProgressBar::new(cases as u64).with_style(
        ProgressStyle::with_template("bench [{bar:30}] {pos}/{len} {msg}")
            .context("the progress bar's template")?
            .progress_chars("=> "),
    );

    let mut header = json!({"op": "adapter", "device": if gpu.is_some() { "gpu" } else { "cpu" }});
    if let Some(gpu) = gpu {
        let info = gpu.adapter_info();
        header["name"] = json!(info.name);
        header["backend"] = json!(format!("{:?}", info.backend));
        header["device_type"] = json!(format!("{:?}", info.device_type));
        header["driver"] = json!(format!("{} {}", info.driver, info.driver_info));
        header["clock"] = json!(gpu.clock().as_str());
    }
    header["cpu_threads"] = json!(rayon_threads());
    if args.json {
        outln!("{header}")?;
    } else {
        bar.suspend(|| print_header(&header))?;
    }

    let emit = |row: Row| -> Result<()> {
        bars.borrow_mut().extend(row.bar());
        bar.inc(1);
        bar.suspend(|| {
            if args.json {
                outln!("{}", row.json())
            } else {
                print_row(&row)
            }
        })
    };

    let mut rng = StdRng::seed_from_u64(714);
    for &[n, c] in &row_shapes {
        let shape = format!("{n}x{c}");
        bar.set_message(format!("row ops {shape}"));
        let x = Array2::from_shape_fn((n, c), |_| rng.random_range(-8.0f32..8.0));
        let labels = Labels::new((0..n).map(|_| rng.random_range(0..c as i64)), c, -100)?;
        let opts = CrossEntropyOptions::default();
        // check_fits bounded n * c * 12 bytes.
        let bytes = Some(2.0 * (n * c * 4) as f64);
        let row = |op, path, times| Row {
            bytes,
            ..Row::new(op, &shape, path, times)
        };
        let v = x.view();
        // The fast path writes into one output reused from run to run, as a training loop
        // would: a fresh 128 MiB result pays a page fault per 4 KiB on its first write.
        let mut out = ndarray::Array2::<f32>::zeros((n, c));
        // The CPU's yardstick: the faster of one memcpy of these bytes and one per thread over
        // its share of the rows, into the same reused output.
        let src = x.as_slice().expect("a standard-layout matrix");
        let memcpy = measure(reps, || {
            wall(|| {
                out.as_slice_mut()
                    .expect("standard layout")
                    .copy_from_slice(src);
                Ok(())
            })
        })?;
        let memcpy_par = measure(reps, || {
            wall(|| {
                use rayon::prelude::*;
                let rows_per = n.div_ceil(rayon::current_num_threads()).max(1) * c;
                out.as_slice_mut()
                    .expect("standard layout")
                    .par_chunks_mut(rows_per)
                    .zip(src.par_chunks(rows_per))
                    .for_each(|(o, i)| o.copy_from_slice(i));
                Ok(())
            })
        })?;
        let (cpu_kernel, cpu_copy) = if median(&memcpy_par) < median(&memcpy) {
            ("memcpy_per_thread", memcpy_par)
        } else {
            ("memcpy", memcpy)
        };
        let cpu_copy_median = median(&cpu_copy);
        let cpu_row = |op, path, times: Vec<f64>| {
            let mut r = row(op, path, times);
            r.copy_ratio = Some(median(&r.times) / cpu_copy_median);
            r
        };
        emit(Row {
            kernel: Some(cpu_kernel),
            ..cpu_row("copy", "cpu", cpu_copy)
        })?;
        emit(cpu_row(
            "softmax",
            "cpu_reference",
            measure(reps, || {
                wall(|| cpu::softmax(v).map(drop).map_err(Into::into))
            })?,
        ))?;
        emit(cpu_row(
            "softmax",
            "cpu_fast",
            measure(reps, || {
                wall(|| fast::softmax_into(v, out.view_mut()).map_err(Into::into))
            })?,
        ))?;
        emit(cpu_row(
            "log_softmax",
            "cpu_fast",
            measure(reps, || {
                wall(|| fast::log_softmax_into(v, out.view_mut()).map_err(Into::into))
            })?,
        ))?;
        emit(cpu_row(
            "cross_entropy_fwd_bwd",
            "cpu_fast",
            measure(reps, || {
                wall(|| {
                    fast::cross_entropy_with_grad_into(v, &labels, &opts, out.view_mut())
                        .map(drop)
                        .map_err(Into::into)
                })
            })?,
        ))?;
        drop(out);
        if let Some(gpu) = gpu {
            let gx = gpu.upload(v)?;
            let gy = gpu.upload_labels(&labels)?;
            let time = |f: &dyn Fn() -> softmax_ce::Result<()>| -> Result<Vec<f64>> {
                measure(reps, || Ok(gpu.timed(f)?.1))
            };
            // The yardstick: the fastest plain copy of these bytes this adapter runs, whichever
            // kernel that is; the row plumbing's own copy is its own row.
            let mut copies = Vec::new();
            for kernel in CopyKernel::ALL {
                copies.push((kernel, time(&|| gpu.copy_with(&gx, kernel).map(drop))?));
            }
            let rows_copy = copies[0].1.clone();
            let (fastest, copy) = copies
                .into_iter()
                .min_by(|a, b| median(&a.1).total_cmp(&median(&b.1)))
                .expect("three copies");
            let copy_median = median(&copy);
            let gpu_row = |op, path, times: Vec<f64>, kernel| {
                let ratio = median(&times) / copy_median;
                let mut r = row(op, path, times);
                r.copy_ratio = Some(ratio);
                r.kernel = kernel;
                emit(r)
            };
            gpu_row("copy", "gpu", copy, Some(fastest.name()))?;
            gpu_row("copy", "gpu_rows", rows_copy, Some(CopyKernel::Rows.name()))?;
            gpu_row(
                "softmax",
                "gpu_staged",
                time(&|| gpu.staged().softmax(&gx).map(drop))?,
                None,
            )?;
            gpu_row(
                "log_softmax",
                "gpu_staged",
                time(&|| gpu.staged().log_softmax(&gx).map(drop))?,
                None,
            )?;
            gpu_row(
                "cross_entropy_fwd_bwd",
                "gpu_staged",
                time(&|| {
                    gpu.staged()
                        .cross_entropy_with_grad(&gx, &gy, &opts)
                        .map(drop)
                })?,
                None,
            )?;
            gpu_row(
                "softmax",
                "gpu_fused",
                time(&|| gpu.softmax(&gx).map(drop))?,
                None,
            )?;
            gpu_row(
                "log_softmax",
                "gpu_fused",
                time(&|| gpu.log_softmax(&gx).map(drop))?,
                None,
            )?;
            gpu_row(
                "cross_entropy_fwd_bwd",
                "gpu_fused",
                time(&|| gpu.cross_entropy_with_grad(&gx, &gy, &opts).map(drop))?,
                None,
            )?;
            if gpu.device().features().contains(wgpu::Features::SHADER_F16) {
                // Half precision: half the bytes, so its own yardstick, the fastest copy of an
                // f32 matrix of those bytes (n x c/2); no ratio where c is odd.
                let hx = gpu.upload_f16(x.mapv(f16::from_f32).view())?;
                let half_copy = if c % 2 == 0 {
                    let same_bytes = gpu.upload(x.slice(ndarray::s![.., ..c / 2]))?;
                    let mut best = f64::INFINITY;
                    for kernel in CopyKernel::ALL {
                        let t = median(&time(&|| gpu.copy_with(&same_bytes, kernel).map(drop))?);
                        best = best.min(t);
                    }
                    Some(best)
                } else {
                    None
                };
                let half_row = |op, times: Vec<f64>| {
                    let mut r = row(op, "gpu_fused", times);
                    r.bytes = Some(2.0 * (n * c * 2) as f64);
                    r.copy_ratio = half_copy.map(|copy| median(&r.times) / copy);
                    r.dtype = DType::F16;
                    emit(r)
                };
                half_row("softmax", time(&|| gpu.softmax(&hx).map(drop))?)?;
                half_row("log_softmax", time(&|| gpu.log_softmax(&hx).map(drop))?)?;
                half_row(
                    "cross_entropy_fwd_bwd",
                    time(&|| gpu.cross_entropy_with_grad(&hx, &gy, &opts).map(drop))?,
                )?;
            }
        }
        // The reference is slow by design (f64, one thread): fewer repetitions keep the run short.
        let few = reps.min(3);
        emit(cpu_row(
            "log_softmax",
            "cpu_reference",
            measure(few, || {
                wall(|| cpu::log_softmax(v).map(drop).map_err(Into::into))
            })?,
        ))?;
        emit(cpu_row(
            "cross_entropy_fwd_bwd",
            "cpu_reference",
            measure(few, || {
                wall(|| {
                    cpu::cross_entropy(v, &labels, &opts)?;
                    cpu::cross_entropy_grad(v, &labels, &opts)?;
                    Ok(())
                })
            })?,
        ))?;
    }

    for &[m, k, n] in &matmul_shapes {
        let shape = format!("{m}x{k}x{n}");
        bar.set_message(format!("matmul {shape}"));
        let a = Array2::from_shape_fn((m, k), |_| rng.random_range(-1.0f32..1.0));
        let b = Array2::from_shape_fn((k, n), |_| rng.random_range(-1.0f32..1.0));
        let flops = Some(2.0 * m as f64 * n as f64 * k as f64);
        let row = |path, times| Row {
            flops,
            ..Row::new("matmul", &shape, path, times)
        };
        emit(row(
            "cpu_reference",
            measure(reps, || {
                wall(|| {
                    let _ = a.dot(&b);
                    Ok(())
                })
            })?,
        ))?;
        if let Some(gpu) = gpu {
            let (ga, gb) = (gpu.upload(a.view())?, gpu.upload(b.view())?);
            emit(row(
                "gpu",
                measure(reps, || Ok(gpu.timed(|| gpu.matmul(&ga, &gb).map(drop))?.1))?,
            ))?;
        }
    }

    for &[n, d, v] in &linear_shapes {
        let shape = format!("{n}x{d}x{v}");
        bar.set_message(format!("linear cross-entropy {shape}"));
        let h = Array2::from_shape_fn((n, d), |_| rng.random_range(-1.0f32..1.0));
        let w = Array2::from_shape_fn((v, d), |_| rng.random_range(-0.1f32..0.1));
        let y = Labels::new((0..n).map(|_| rng.random_range(0..v as i64)), v, -100)?;
        let lin = softmax_ce::LinearCrossEntropyOptions::default();
        // 3 products of 2 N V D flops, forward and backward.
        let flops = Some(6.0 * n as f64 * v as f64 * d as f64);
        let row = |path, times, peak| Row {
            flops,
            peak_bytes: Some(peak),
            ..Row::new("linear_cross_entropy_fwd_bwd", &shape, path, times)
        };
        // Blocked over the vocabulary, without a softcap: one block of logits per thread.
        let blocks = rayon::current_num_threads() as u64 * cpu::vocab::BLOCK_LOGITS as u64 * 4;
        emit(row(
            "cpu_vocab",
            measure(reps, || {
                wall(|| {
                    cpu::vocab::linear_cross_entropy(h.view(), w.view(), None, &y, &lin, true)
                        .map(drop)
                        .map_err(Into::into)
                })
            })?,
            blocks,
        ))?;
        // The materialised route: the logits, the fast fused cross-entropy with its gradient
        // into a reused buffer, and the two gradient products.
        let mut grad = Array2::<f32>::zeros((n, v));
        let opts = CrossEntropyOptions::default();
        emit(row(
            "cpu_materialised",
            measure(reps, || {
                wall(|| {
                    let z = h.dot(&w.t());
                    fast::cross_entropy_with_grad_into(z.view(), &y, &opts, grad.view_mut())?;
                    let _ = (grad.dot(&w), grad.t().dot(&h));
                    Ok(())
                })
            })?,
            2 * (n * v * 4) as u64,
        ))?;
        if let Some(gpu) = gpu {
            let (gh, gw, gy) = (
                gpu.upload(h.view())?,
                gpu.upload(w.view())?,
                gpu.upload_labels(&y)?,
            );
            emit(row(
                "gpu",
                measure(reps, || {
                    Ok(gpu
                        .timed(|| {
                            gpu.linear_cross_entropy(&gh, &gw, None, &gy, &lin, true)
                                .map(drop)
                        })?
                        .1)
                })?,
                gpu.linear_workspace_bytes(n, d, v)?,
            ))?;
            // The materialised route on the same adapter: the logits (as H (W^T), W transposed
            // once, outside the timing), the fused cross-entropy with its gradient, and the
            // two gradient products.
            let wt = gpu.upload(w.t().as_standard_layout().view())?;
            emit(row(
                "gpu_materialised",
                measure(reps, || {
                    Ok(gpu
                        .timed(|| {
                            let z = gpu.matmul(&gh, &wt)?;
                            let (_, g) = gpu.cross_entropy_with_grad(&z, &gy, &opts)?;
                            gpu.matmul(&g, &gw)?;
                            gpu.matmul_tn(&g, &gh).map(drop)
                        })?
                        .1)
                })?,
                2 * (n * v * 4) as u64,
            ))?;
        }
    }

    let [rows, features, classes] = epoch;
    let shape = format!("{rows}x{features}x{classes}");
    bar.set_message(format!("train epoch {shape}"));
    let x = Array2::from_shape_fn((rows, features), |_| rng.random_range(0.0f32..1.0));
    let y = Labels::new(
        (0..rows).map(|_| rng.random_range(0..classes as i64)),
        classes,
        -100,
    )?;
    // A small step keeps synthetic data from overflowing over many repetitions.
    let opts = TrainOptions::default().lr(0.01).batch(100.min(rows));
    let epoch_reps = reps.min(5);
    let train_row = |path, times| {
        emit(Row {
            // In f64: the product of three user-given sizes can pass usize.
            flops: Some(
                4.0 * ((rows / 100.min(rows) * 100.min(rows)) as f64)
                    * features as f64
                    * classes as f64,
            ),
            ..Row::new("train_epoch", &shape, path, times)
        })
    };
    let mut model =
        SoftmaxRegression::new(&softmax_ce::Device::Cpu, (x.view(), &y), None, opts.clone())?;
    train_row(
        "cpu_reference",
        measure(epoch_reps, || wall(|| Ok(model.sgd_epoch()?)))?,
    )?;
    if let Some(gpu) = gpu {
        let mut model = SoftmaxRegression::new(gpu, (x.view(), &y), None, opts)?;
        train_row(
            "gpu",
            measure(epoch_reps, || wall(|| Ok(model.sgd_epoch()?)))?,
        )?;
    }
    bar.finish_and_clear();
    if args.plot.is_some() {
        let title = match gpu {
            Some(g) => format!("softmax-ce bench, {}", g.adapter_info().name),
            None => "softmax-ce bench, cpu".to_string(),
        };
        let svg = super::plot::bench_svg(&bars.borrow(), &title)?;
        plot.write_text("--plot", &svg)?;
    }
    plot.commit()
}

/// The median of `times` (the mean of the middle two for an even count).
fn median(times: &[f64]) -> f64 {
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    let n = t.len();
    if n % 2 == 1 {
        t[n / 2]
    } else {
        (t[n / 2 - 1] + t[n / 2]) / 2.0
    }
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn print_header(header: &Value) -> Result<()> {
    let name = header["name"].as_str().unwrap_or("none (CPU only)");
    outln!(
        "adapter: {name} {}",
        header["backend"].as_str().unwrap_or("")
    )?;
    if let Some(clock) = header["clock"].as_str() {
        outln!("gpu clock: {clock}; cpu threads: {}", header["cpu_threads"])?;
    }
    outln!(
        "| {:<22} | {:<16} | {:<13} | {:>10} | {:>10} | {:>10} | {:>8} | {:>8} | {:>6} |",
        "op",
        "shape",
        "path",
        "median ms",
        "min ms",
        "max ms",
        "GB/s",
        "GFLOP/s",
        "/copy"
    )?;
    outln!(
        "|{:-<24}|{:-<18}|{:-<15}|{:->12}|{:->12}|{:->12}|{:->10}|{:->10}|{:->8}|",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        ""
    )
}

fn print_row(row: &Row) -> Result<()> {
    let v = row.json();
    let num = |k: &str| v[k].as_f64().map_or("-".to_string(), |x| format!("{x:.3}"));
    let short = |k: &str| v[k].as_f64().map_or("-".to_string(), |x| format!("{x:.2}"));
    outln!(
        "| {:<22} | {:<16} | {:<13} | {:>10} | {:>10} | {:>10} | {:>8} | {:>8} | {:>6} |",
        row.op,
        row.shape,
        match row.dtype {
            DType::F32 => row.path.to_string(),
            DType::F16 => format!("{} f16", row.path),
        },
        num("median_ms"),
        num("min_ms"),
        num("max_ms"),
        short("gbps"),
        short("gflops"),
        short("copy_ratio"),
    )
}
