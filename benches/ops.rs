//! criterion benchmarks over the cases of `softmax-ce bench`, at sizes that keep a full
//! `cargo bench` to a few minutes on a software adapter. CI compiles them and runs nothing.
//!
//! GPU cases time device work with `GpuContext::timed` (timestamp queries where the adapter has
//! them), inputs uploaded and pipelines compiled before the first sample; without an adapter
//! they are skipped with a note on stderr.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ndarray::Array2;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use softmax_ce::cpu::{self, fast};
use softmax_ce::train::{SoftmaxRegression, TrainOptions};
use softmax_ce::{CrossEntropyOptions, GpuContext, Labels};

fn data(rows: usize, cols: usize, scale: f32, seed: u64) -> Array2<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array2::from_shape_fn((rows, cols), |_| rng.random_range(-scale..scale))
}

fn labels(rows: usize, classes: usize, seed: u64) -> Labels {
    let mut rng = StdRng::seed_from_u64(seed);
    Labels::new(
        (0..rows).map(|_| rng.random_range(0..classes as i64)),
        classes,
        -100,
    )
    .unwrap()
}

fn gpu() -> Option<GpuContext> {
    match GpuContext::new() {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            eprintln!("GPU benchmarks skipped: {e}");
            None
        }
    }
}

/// Times `f` on the device, `iters` times, as criterion's custom timing asks.
fn device_time(gpu: &GpuContext, iters: u64, f: impl Fn() -> softmax_ce::Result<()>) -> Duration {
    let ms: f64 = (0..iters).map(|_| gpu.timed(&f).unwrap().1).sum();
    Duration::from_secs_f64(ms / 1e3)
}

fn row_ops(c: &mut Criterion) {
    let gpu = gpu();
    let (n, k) = (512, 4096);
    let x = data(n, k, 8.0, 1);
    let y = labels(n, k, 2);
    let opts = CrossEntropyOptions::default();
    let shape = format!("{n}x{k}");
    let mut group = c.benchmark_group("cross_entropy_fwd_bwd");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    group.bench_function(BenchmarkId::new("cpu_reference", &shape), |b| {
        b.iter(|| {
            cpu::cross_entropy(x.view(), &y, &opts).unwrap();
            cpu::cross_entropy_grad(x.view(), &y, &opts).unwrap()
        })
    });
    group.bench_function(BenchmarkId::new("cpu_fast", &shape), |b| {
        b.iter(|| fast::cross_entropy_with_grad(x.view(), &y, &opts).unwrap())
    });
    // Into one gradient reused from call to call, as a training loop passes it.
    let mut grad = ndarray::Array2::<f32>::zeros(x.raw_dim());
    group.bench_function(BenchmarkId::new("cpu_fast_into", &shape), |b| {
        b.iter(|| fast::cross_entropy_with_grad_into(x.view(), &y, &opts, grad.view_mut()).unwrap())
    });
    if let Some(gpu) = &gpu {
        let (gx, gy) = (
            gpu.upload(x.view()).unwrap(),
            gpu.upload_labels(&y).unwrap(),
        );
        group.bench_function(BenchmarkId::new("gpu_staged", &shape), |b| {
            b.iter_custom(|iters| {
                device_time(gpu, iters, || {
                    gpu.staged()
                        .cross_entropy_with_grad(&gx, &gy, &opts)
                        .map(drop)
                })
            })
        });
        group.bench_function(BenchmarkId::new("gpu_fused", &shape), |b| {
            b.iter_custom(|iters| {
                device_time(gpu, iters, || {
                    gpu.cross_entropy_with_grad(&gx, &gy, &opts).map(drop)
                })
            })
        });
        group.bench_function(BenchmarkId::new("copy", &shape), |b| {
            b.iter_custom(|iters| device_time(gpu, iters, || gpu.copy(&gx).map(drop)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("softmax");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    group.bench_function(BenchmarkId::new("cpu_reference", &shape), |b| {
        b.iter(|| cpu::softmax(x.view()).unwrap())
    });
    group.bench_function(BenchmarkId::new("cpu_fast", &shape), |b| {
        b.iter(|| fast::softmax(x.view()).unwrap())
    });
    if let Some(gpu) = &gpu {
        let gx = gpu.upload(x.view()).unwrap();
        group.bench_function(BenchmarkId::new("gpu_staged", &shape), |b| {
            b.iter_custom(|iters| device_time(gpu, iters, || gpu.staged().softmax(&gx).map(drop)))
        });
        group.bench_function(BenchmarkId::new("gpu_fused", &shape), |b| {
            b.iter_custom(|iters| device_time(gpu, iters, || gpu.softmax(&gx).map(drop)))
        });
    }
    group.finish();
}

fn matmul(c: &mut Criterion) {
    let gpu = gpu();
    let mut group = c.benchmark_group("matmul");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    for (m, k, n) in [(256, 256, 256), (100, 784, 10)] {
        let (a, b_) = (data(m, k, 1.0, 3), data(k, n, 1.0, 4));
        let shape = format!("{m}x{k}x{n}");
        group.bench_function(BenchmarkId::new("cpu_reference", &shape), |b| {
            b.iter(|| a.dot(&b_))
        });
        if let Some(gpu) = &gpu {
            let (ga, gb) = (
                gpu.upload(a.view()).unwrap(),
                gpu.upload(b_.view()).unwrap(),
            );
            group.bench_function(BenchmarkId::new("gpu", &shape), |b| {
                b.iter_custom(|iters| device_time(gpu, iters, || gpu.matmul(&ga, &gb).map(drop)))
            });
        }
    }
    group.finish();
}

fn train_epoch(c: &mut Criterion) {
    let gpu = gpu();
    let (rows, features, classes) = (2000, 784, 10);
    let x = data(rows, features, 1.0, 5).mapv(f32::abs);
    let y = labels(rows, classes, 6);
    let opts = TrainOptions::default().lr(0.01);
    let shape = format!("{rows}x{features}x{classes}");
    let mut group = c.benchmark_group("train_epoch");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    let mut model =
        SoftmaxRegression::new(&softmax_ce::Device::Cpu, (x.view(), &y), None, opts.clone())
            .unwrap();
    group.bench_function(BenchmarkId::new("cpu_reference", &shape), |b| {
        b.iter(|| model.sgd_epoch().unwrap())
    });
    if let Some(gpu) = &gpu {
        let mut model = SoftmaxRegression::new(gpu, (x.view(), &y), None, opts).unwrap();
        group.bench_function(BenchmarkId::new("gpu", &shape), |b| {
            b.iter(|| model.sgd_epoch().unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, row_ops, matmul, train_epoch);
criterion_main!(benches);
