//! Every GPU op against the CPU reference, over shapes around every workgroup size, ragged
//! sizes, adversarial values, and every kernel configuration (workgroup sizes, row windows).

mod common;

use common::*;
use ndarray::{Array2, ArrayView2};
use softmax_ce::gpu::CopyKernel;
use softmax_ce::{CrossEntropyOptions, GpuContext, Labels, Reduction, cpu};

/// Column counts around every row-kernel workgroup size (32, 64, 256 threads) in both scalar
/// and vec4 lanes, primes, and wide rows.
const COLS: &[usize] = &[
    1, 2, 3, 4, 5, 7, 8, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1023, 1024, 1025,
    4099, 100_003,
];

/// Row counts around the rows packed per workgroup when rows are narrow.
fn rows_for(cols: usize) -> &'static [usize] {
    if cols > 10_000 {
        &[1, 3]
    } else if cols > 1000 {
        &[1, 17, 33]
    } else {
        &[1, 2, 15, 16, 17, 63, 64, 65, 257]
    }
}

fn shapes() -> Vec<(usize, usize)> {
    COLS.iter()
        .flat_map(|&c| rows_for(c).iter().map(move |&r| (r, c)))
        .collect()
}

/// Runs `check` on every kernel configuration, every shape, with plain and adversarial inputs.
fn for_each_case(mut check: impl FnMut(&GpuContext, ArrayView2<f32>, &str)) {
    let configs = configs();
    if configs.is_empty() {
        return;
    }
    for (name, gpu) in configs {
        for (rows, cols) in shapes() {
            // The 4 KiB-binding context cannot bind a 100k-wide row: that is tested as an error.
            if name == "windows" && cols * 4 > 4096 - 64 {
                continue;
            }
            let seed = (rows * 7919 + cols) as u64;
            let plain = logits(rows, cols, 5.0, seed);
            check(gpu, plain.view(), &format!("{name} {rows}x{cols} plain"));
            let adv = adversarial(rows, cols, seed);
            check(
                gpu,
                adv.view(),
                &format!("{name} {rows}x{cols} adversarial"),
            );
        }
    }
}

/// The default path (the fused kernels) and the staged kernels: both are held to the CPU, on
/// every shape, value and configuration.
#[derive(Clone, Copy, Debug)]
enum Path {
    Fused,
    Staged,
}

const PATHS: [Path; 2] = [Path::Fused, Path::Staged];

fn softmax_on(gpu: &GpuContext, path: Path, x: ArrayView2<f32>) -> Array2<f32> {
    let gx = gpu.upload(x).unwrap();
    let p = match path {
        Path::Fused => gpu.softmax(&gx),
        Path::Staged => gpu.staged().softmax(&gx),
    };
    gpu.download(&p.unwrap()).unwrap()
}

fn log_softmax_on(gpu: &GpuContext, path: Path, x: ArrayView2<f32>) -> Array2<f32> {
    let gx = gpu.upload(x).unwrap();
    let p = match path {
        Path::Fused => gpu.log_softmax(&gx),
        Path::Staged => gpu.staged().log_softmax(&gx),
    };
    gpu.download(&p.unwrap()).unwrap()
}

#[test]
fn row_max_matches_cpu() {
    for_each_case(|gpu, x, case| {
        let m = gpu.staged().row_max(&gpu.upload(x).unwrap()).unwrap();
        let got = gpu.download_vector(&m).unwrap();
        assert_close(got.view(), cpu::row_max(x).unwrap().view(), 0.0, 0.0, case);
    });
}

#[test]
fn row_sumexp_matches_cpu() {
    for_each_case(|gpu, x, case| {
        let staged = gpu.staged();
        let gx = gpu.upload(x).unwrap();
        let m = staged.row_max(&gx).unwrap();
        let s = staged.row_sumexp(&gx, &m).unwrap();
        let got = gpu.download_vector(&s).unwrap();
        let want = cpu::row_sumexp(x, cpu::row_max(x).unwrap().view()).unwrap();
        assert_close(got.view(), want.view(), PROB_ABS, PROB_REL, case);
    });
}

#[test]
fn softmax_matches_cpu() {
    for_each_case(|gpu, x, case| {
        let want = cpu::softmax(x).unwrap();
        let fused = softmax_on(gpu, Path::Fused, x);
        let staged = softmax_on(gpu, Path::Staged, x);
        assert_close(
            fused.view(),
            want.view(),
            PROB_ABS,
            PROB_REL,
            &format!("{case} fused"),
        );
        assert_close(
            staged.view(),
            want.view(),
            PROB_ABS,
            PROB_REL,
            &format!("{case} staged"),
        );
        // And to each other, which differ in how they reach the same statistics.
        assert_close(
            fused.view(),
            staged.view(),
            PROB_ABS,
            PROB_REL,
            &format!("{case} fused vs staged"),
        );
    });
}

#[test]
fn log_softmax_matches_cpu() {
    for_each_case(|gpu, x, case| {
        let want = cpu::log_softmax(x).unwrap();
        for path in PATHS {
            let got = log_softmax_on(gpu, path, x);
            assert_close(
                got.view(),
                want.view(),
                LOG_ABS,
                LOG_REL,
                &format!("{case} {path:?}"),
            );
        }
    });
}

#[test]
fn logsumexp_matches_cpu() {
    for_each_case(|gpu, x, case| {
        let gx = gpu.upload(x).unwrap();
        let want = cpu::logsumexp(x).unwrap();
        for (path, lse) in [
            (Path::Fused, gpu.logsumexp(&gx)),
            (Path::Staged, gpu.staged().logsumexp(&gx)),
        ] {
            let got = gpu.download_vector(&lse.unwrap()).unwrap();
            assert_close(
                got.view(),
                want.view(),
                LOG_ABS,
                LOG_REL,
                &format!("{case} {path:?}"),
            );
        }
    });
}

fn check_cross_entropy(gpu: &GpuContext, x: ArrayView2<f32>, labels: &Labels, case: &str) {
    for path in PATHS {
        check_cross_entropy_on(gpu, path, x, labels, &format!("{case} {path:?}"));
    }
}

fn check_cross_entropy_on(
    gpu: &GpuContext,
    path: Path,
    x: ArrayView2<f32>,
    labels: &Labels,
    case: &str,
) {
    let gx = gpu.upload(x).unwrap();
    let gy = gpu.upload_labels(labels).unwrap();
    for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        let opts = CrossEntropyOptions::default().reduction(reduction);
        let case = format!("{case} {reduction}");
        let (loss, grad) = match path {
            Path::Fused => gpu.cross_entropy_with_grad(&gx, &gy, &opts),
            Path::Staged => gpu.staged().cross_entropy_with_grad(&gx, &gy, &opts),
        }
        .unwrap();
        // The loss alone (a kernel of its own on each path) agrees with the loss of the pair.
        let alone = match path {
            Path::Fused => gpu.cross_entropy(&gx, &gy, &opts),
            Path::Staged => gpu.staged().cross_entropy(&gx, &gy, &opts),
        }
        .unwrap();
        let alone = gpu.download_loss(&alone).unwrap().into_array();
        let got = gpu.download_loss(&loss).unwrap().into_array();
        assert_close(
            alone.view(),
            got.view(),
            LOSS_ABS,
            LOSS_REL,
            &format!("{case} loss alone"),
        );
        let want = cpu::cross_entropy(x, labels, &opts).unwrap().into_array();
        let (abs, rel) = match reduction {
            Reduction::None => (LOG_ABS, LOG_REL),
            _ => (LOSS_ABS, LOSS_REL),
        };
        assert_close(got.view(), want.view(), abs, rel, &format!("{case} loss"));
        let got = gpu.download(&grad).unwrap();
        let want = cpu::cross_entropy_grad(x, labels, &opts).unwrap();
        let scale = match reduction {
            Reduction::Mean => 1.0 / labels.active_count().max(1) as f32,
            _ => 1.0,
        };
        let abs = GRAD_ABS_PER_SCALE * scale;
        assert_close(
            got.view(),
            want.view(),
            abs,
            PROB_REL,
            &format!("{case} grad"),
        );
    }
}

#[test]
fn cross_entropy_matches_cpu() {
    for_each_case(|gpu, x, case| {
        let (rows, cols) = x.dim();
        // Plain rows with every third row ignored; adversarial rows are what must be ignored
        // safely, so those keep their labels only on rows with a finite answer.
        let labels = labels(rows, cols, 3, rows as u64);
        check_cross_entropy(gpu, x, &labels, case);
    });
}

/// An ignored row contributes nothing, whatever its logits hold: NaN, +inf, all -inf.
#[test]
fn ignored_rows_never_leak_nan_or_inf() {
    let gpu = require_gpu!();
    let mut x = logits(6, 5, 2.0, 1);
    x.row_mut(0).fill(f32::NAN);
    x.row_mut(1).fill(f32::INFINITY);
    x.row_mut(2).fill(f32::NEG_INFINITY);
    let labels = Labels::new([-100, -100, -100, 1, 4, 0], 5, -100).unwrap();
    for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        let opts = CrossEntropyOptions::default().reduction(reduction);
        let (loss, grad) = gpu
            .cross_entropy_with_grad(
                &gpu.upload(x.view()).unwrap(),
                &gpu.upload_labels(&labels).unwrap(),
                &opts,
            )
            .unwrap();
        let loss = gpu.download_loss(&loss).unwrap().into_array();
        let grad = gpu.download(&grad).unwrap();
        assert!(loss.iter().all(|v| v.is_finite()), "{reduction}: {loss}");
        assert!(grad.iter().all(|v| v.is_finite()), "{reduction}: {grad}");
        assert!(grad.slice(ndarray::s![..3, ..]).iter().all(|&v| v == 0.0));
        let want = cpu::cross_entropy(x.view(), &labels, &opts)
            .unwrap()
            .into_array();
        assert_close(
            loss.view(),
            want.view(),
            LOSS_ABS,
            LOSS_REL,
            reduction.as_str(),
        );
    }
}

/// Every row ignored: the mean is NaN (0/0, PyTorch's answer), the sum 0, the gradient 0.
#[test]
fn all_rows_ignored() {
    let gpu = require_gpu!();
    let x = logits(4, 3, 1.0, 2);
    let labels = Labels::new([-100; 4], 3, -100).unwrap();
    let gx = gpu.upload(x.view()).unwrap();
    let gy = gpu.upload_labels(&labels).unwrap();
    let mean = CrossEntropyOptions::default();
    let (loss, grad) = gpu.cross_entropy_with_grad(&gx, &gy, &mean).unwrap();
    assert!(gpu.download_loss(&loss).unwrap().scalar().unwrap().is_nan());
    assert!(gpu.download(&grad).unwrap().iter().all(|&v| v == 0.0));
    let sum = CrossEntropyOptions::default().reduction(Reduction::Sum);
    let loss = gpu.cross_entropy(&gx, &gy, &sum).unwrap();
    assert_eq!(gpu.download_loss(&loss).unwrap().scalar(), Some(0.0));
}

/// No rows at all: empty outputs, a NaN mean and a zero sum, as PyTorch.
#[test]
fn empty_batch() {
    let gpu = require_gpu!();
    let x = Array2::<f32>::zeros((0, 5));
    let gx = gpu.upload(x.view()).unwrap();
    assert_eq!(
        gpu.download(&gpu.softmax(&gx).unwrap()).unwrap().dim(),
        (0, 5)
    );
    assert_eq!(
        gpu.download_vector(&gpu.logsumexp(&gx).unwrap())
            .unwrap()
            .len(),
        0
    );
    let gy = gpu
        .upload_labels(&Labels::new([], 5, -100).unwrap())
        .unwrap();
    let mean = gpu
        .cross_entropy(&gx, &gy, &CrossEntropyOptions::default())
        .unwrap();
    assert!(gpu.download_loss(&mean).unwrap().scalar().unwrap().is_nan());
    let sum = CrossEntropyOptions::default().reduction(Reduction::Sum);
    let sum = gpu.cross_entropy(&gx, &gy, &sum).unwrap();
    assert_eq!(gpu.download_loss(&sum).unwrap().scalar(), Some(0.0));
}

/// More rows than one dispatch dimension holds (65,535 workgroups): the groups fold into y.
#[test]
fn rows_past_the_dispatch_limit_fold() {
    let gpu = require_gpu!();
    for cols in [256, 3] {
        // 256 columns put one row per workgroup; 3 columns need 64x as many rows to fold, so
        // the second case checks the packed-rows path on a long matrix instead.
        let rows = if cols == 256 { 70_000 } else { 300_000 };
        let x = logits(rows, cols, 4.0, cols as u64);
        let labels = labels(rows, cols, 5, 3);
        let gx = gpu.upload(x.view()).unwrap();
        let got = gpu.download(&gpu.softmax(&gx).unwrap()).unwrap();
        let case = format!("{rows}x{cols}");
        assert_close(
            got.view(),
            cpu::softmax(x.view()).unwrap().view(),
            PROB_ABS,
            PROB_REL,
            &case,
        );
        let opts = CrossEntropyOptions::default();
        let loss = gpu
            .cross_entropy(&gx, &gpu.upload_labels(&labels).unwrap(), &opts)
            .unwrap();
        let got = gpu.download_loss(&loss).unwrap().scalar().unwrap();
        let want = cpu::cross_entropy(x.view(), &labels, &opts)
            .unwrap()
            .scalar()
            .unwrap();
        assert_close_scalar(got, want, LOSS_ABS, LOSS_REL, &case);
    }
}

/// Ops never modify what the caller passed in.
#[test]
fn inputs_are_left_untouched() {
    let gpu = require_gpu!();
    let x = adversarial(37, 129, 9);
    let labels = labels(37, 129, 4, 9);
    let gx = gpu.upload(x.view()).unwrap();
    let gy = gpu.upload_labels(&labels).unwrap();
    gpu.softmax(&gx).unwrap();
    gpu.log_softmax(&gx).unwrap();
    gpu.logsumexp(&gx).unwrap();
    gpu.cross_entropy_with_grad(&gx, &gy, &CrossEntropyOptions::default())
        .unwrap();
    let back = gpu.download(&gx).unwrap();
    assert!(
        back.iter()
            .zip(x.iter())
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

/// Results chain on the device: the staged stages composed by hand equal the composite op.
#[test]
fn staged_stages_compose() {
    let gpu = require_gpu!();
    let x = logits(50, 300, 6.0, 4);
    let labels = labels(50, 300, 7, 4);
    let staged = gpu.staged();
    let gx = gpu.upload(x.view()).unwrap();
    let gy = gpu.upload_labels(&labels).unwrap();
    let m = staged.row_max(&gx).unwrap();
    let s = staged.row_sumexp(&gx, &m).unwrap();
    let p = staged.softmax_normalise(&gx, &m, &s).unwrap();
    let scale = 1.0 / labels.active_count() as f32;
    let g = staged.one_hot_subtract(p, &gy, scale).unwrap();
    let (_, want) = staged
        .cross_entropy_with_grad(&gx, &gy, &CrossEntropyOptions::default())
        .unwrap();
    assert_close(
        gpu.download(&g).unwrap().view(),
        gpu.download(&want).unwrap().view(),
        0.0,
        0.0,
        "hand-composed",
    );
    let lp = staged.log_softmax_normalise(&gx, &m, &s).unwrap();
    let want = cpu::log_softmax(x.view()).unwrap();
    assert_close(
        gpu.download(&lp).unwrap().view(),
        want.view(),
        LOG_ABS,
        LOG_REL,
        "log_softmax_normalise",
    );
    let g = staged
        .one_hot_subtract(
            gpu.upload(cpu::softmax(x.view()).unwrap().view()).unwrap(),
            &gy,
            1.0,
        )
        .unwrap();
    let want = cpu::one_hot_subtract(cpu::softmax(x.view()).unwrap().view(), &labels, 1.0).unwrap();
    assert_close(
        gpu.download(&g).unwrap().view(),
        want.view(),
        0.0,
        1e-7,
        "one_hot_subtract",
    );
}

/// The benchmarks' speed-of-light kernels copy every bit, NaN and infinities included, each
/// of them, on every shape and configuration (rows of one vector per thread, windows, folds).
#[test]
fn copies_are_exact() {
    for_each_case(|gpu, x, case| {
        let on = gpu.upload(x).unwrap();
        for kernel in CopyKernel::ALL {
            let got = gpu.download(&gpu.copy_with(&on, kernel).unwrap()).unwrap();
            let same = got
                .iter()
                .zip(x.iter())
                .all(|(g, w)| g.to_bits() == w.to_bits());
            assert!(same, "{case}: {} differs", kernel.name());
        }
    });
}

/// Device timing gives a positive, finite figure and the work's result.
#[test]
fn timed_work_reports_its_time() {
    let gpu = require_gpu!();
    let x = gpu.upload(logits(64, 4096, 1.0, 1).view()).unwrap();
    let (y, ms) = gpu.timed(|| gpu.softmax(&x)).unwrap();
    assert!(ms.is_finite() && ms > 0.0, "{ms} ms on {:?}", gpu.clock());
    assert_eq!(gpu.download(&y).unwrap().dim(), (64, 4096));
}
