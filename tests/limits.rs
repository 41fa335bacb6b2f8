//! The device limits as tested boundaries: below, at and past each one, against the CPU.
//!
//! Three limits shape every dispatch plan: the loop iterations a driver runs per invocation
//! (Mesa's llvmpipe silently cuts loops short past 65,535 in all, measured by each context),
//! the workgroups per dispatch dimension (65,535), and the bytes per storage binding (128 MiB
//! on lavapipe). Where the real limit is too large to reach in CI, `GpuOptions` lowers it so
//! that the splitting, folding and windowing run at small sizes; where the real limit is
//! reachable (the loop limit, the reductions past 65,535 x 64 values), the tests run there.

mod common;

use std::sync::OnceLock;

use common::*;
use ndarray::{Array1, Array2};
use softmax_ce::train::{SoftmaxRegression, TrainOptions};
use softmax_ce::{
    CrossEntropyOptions, Device, Error, GpuContext, GpuOptions, Labels, Loss, Reduction, cpu,
};

/// The smallest loop budget a context accepts (`softmax_ce::gpu::MIN_LOOP_BUDGET`).
const SMALL_BUDGET: u32 = 256;

/// Contexts whose limits are lowered so that small data crosses them: a small loop budget, few
/// workgroups per dimension (with small bindings too, so that windows and folds meet).
fn lowered() -> Vec<(&'static str, &'static GpuContext)> {
    static ALL: OnceLock<Vec<(&'static str, GpuContext)>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        let variants = [
            (
                "loops",
                GpuOptions::default().max_loop_iterations(SMALL_BUDGET),
            ),
            (
                "loops-no-subgroups",
                GpuOptions::default()
                    .max_loop_iterations(SMALL_BUDGET)
                    .subgroups(false),
            ),
            (
                "groups",
                GpuOptions::default()
                    .max_workgroups_per_dimension(3)
                    .max_binding_bytes(1 << 14),
            ),
            (
                "groups-only",
                GpuOptions::default().max_workgroups_per_dimension(3),
            ),
        ];
        variants
            .into_iter()
            .filter_map(|(name, opts)| match GpuContext::with_options(&opts) {
                Ok(g) => Some((name, g)),
                Err(e) => {
                    // The default context decides whether a missing adapter fails the test.
                    assert!(gpu().is_none(), "{name}: {e}");
                    None
                }
            })
            .collect()
    });
    all.iter().map(|(n, g)| (*n, g)).collect()
}

fn sum_f64(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x)).sum()
}

/// Units in the last place of `right` (as an f32) between `got` and `right`.
fn ulps(got: f32, right: f64) -> f64 {
    (f64::from(got) - right).abs() / (f64::from(f32::EPSILON) * right.abs().max(f64::MIN_POSITIVE))
}

fn gpu_sum(gpu: &GpuContext, v: &Array1<f32>) -> f32 {
    let on = gpu.upload_vector(v.view()).unwrap();
    gpu.download_vector(&gpu.sum(&on).unwrap()).unwrap()[0]
}

#[test]
fn a_sum_of_1e8_equal_values_is_within_a_few_ulp() {
    let gpu = require_gpu!();
    let n = 100_000_000;
    let value = std::f32::consts::LN_2;
    let got = gpu_sum(gpu, &Array1::from_elem(n, value));
    let right = n as f64 * f64::from(value);
    assert!(ulps(got, right) <= 4.0, "{got} vs {right}");
}

#[test]
fn sums_around_the_old_single_workgroup_limit_are_right() {
    // One workgroup of 64 threads looping over 65,535 x 64 values was the old sum: lavapipe
    // stopped its loops there and returned about half of the sum, silently.
    let gpu = require_gpu!();
    for n in [64 * 65_535 - 1, 64 * 65_535, 64 * 65_535 + 1, 5_000_000] {
        let v = logits(n, 1, 1.0, n as u64)
            .into_shape_with_order(n)
            .unwrap();
        let v = v.mapv(|x| x + 1.5); // positive, so the relative error is meaningful
        let (got, right) = (gpu_sum(gpu, &v), sum_f64(v.as_slice().unwrap()));
        assert!(ulps(got, right) <= 8.0, "n = {n}: {got} vs {right}");
    }
}

#[test]
fn cross_entropy_over_5m_rows_reduces_to_the_f64_sum() {
    let gpu = require_gpu!();
    let rows = 5_000_000;
    let x = logits(rows, 2, 2.0, 11);
    let y = labels(rows, 2, 0, 11);
    let (gx, gy) = (
        gpu.upload(x.view()).unwrap(),
        gpu.upload_labels(&y).unwrap(),
    );
    let per_row = |reduction| {
        let opts = CrossEntropyOptions::default().reduction(reduction);
        gpu.download_loss(&gpu.cross_entropy(&gx, &gy, &opts).unwrap())
            .unwrap()
    };
    let Loss::PerRow(values) = per_row(Reduction::None) else {
        panic!("none gives per-row losses")
    };
    let right = sum_f64(values.as_slice().unwrap());
    let sum = per_row(Reduction::Sum).scalar().unwrap();
    let mean = per_row(Reduction::Mean).scalar().unwrap();
    assert!(ulps(sum, right) <= 8.0, "sum {sum} vs {right}");
    assert!(ulps(mean, right / rows as f64) <= 8.0, "mean {mean}");
    // And the per-row values are the CPU reference's.
    let opts = CrossEntropyOptions::default().reduction(Reduction::Sum);
    let cpu_sum = cpu::cross_entropy(x.view(), &y, &opts)
        .unwrap()
        .scalar()
        .unwrap();
    assert!(
        (sum - cpu_sum).abs() <= 1e-6 * cpu_sum.abs(),
        "{sum} vs {cpu_sum}"
    );
}

#[test]
fn sums_cross_block_window_and_fold_boundaries() {
    let mut contexts = configs();
    contexts.extend(lowered());
    for (name, gpu) in contexts {
        for n in [
            0, 1, 2, 63, 64, 65, 255, 256, 257, 1023, 1024, 1025, 4095, 4096, 4097, 12_289, 65_537,
        ] {
            let v = logits(n, 1, 4.0, n as u64)
                .into_shape_with_order(n)
                .unwrap();
            let (got, right) = (gpu_sum(gpu, &v), sum_f64(v.as_slice().unwrap()));
            let scale = sum_f64(&v.mapv(f32::abs).to_vec()).max(1.0);
            assert!(
                (f64::from(got) - right).abs() <= 32.0 * f64::from(f32::EPSILON) * scale,
                "{name}, n = {n}: {got} vs {right}"
            );
        }
    }
}

#[test]
fn sums_propagate_infinities_and_nan() {
    let gpu = require_gpu!();
    let mut v = Array1::from_elem(10_000, 1.0f32);
    v[7777] = f32::INFINITY;
    assert_eq!(gpu_sum(gpu, &v), f32::INFINITY);
    v[123] = f32::NAN;
    assert!(gpu_sum(gpu, &v).is_nan());
}

/// The smallest `cols` of the form `4 j + offset` (up to `max`) at which `op` on one row fails
/// with [`Error::LoopLimit`], found by bisection; `None` when nothing up to `max` fails. Rows
/// of whole vec4s (offset 0) and the others (scalar loads) have limits of their own. `op`
/// checks every result it computes against the CPU.
fn loop_boundary(
    max: usize,
    offset: usize,
    op: impl Fn(usize) -> Result<(), Error>,
) -> Option<usize> {
    let fails = |cols: usize| match op(cols) {
        Ok(()) => false,
        Err(Error::LoopLimit { .. }) => true,
        Err(e) => panic!("{cols} columns: {e}"),
    };
    let (mut ok, mut bad) = (4 + offset, max / 4 * 4 + offset);
    if !fails(bad) {
        return None;
    }
    assert!(!fails(ok), "one row of {ok} columns must run");
    while bad - ok > 4 {
        let mid = ((ok + bad) / 2) / 4 * 4 + offset;
        if fails(mid) {
            bad = mid;
        } else {
            ok = mid;
        }
    }
    Some(bad)
}

/// Softmax, log-softmax, cross-entropy with its gradient and probability targets, and the
/// softmax backward pass on one row of `cols` logits, each checked against the CPU when it runs.
fn row_ops(gpu: &GpuContext, cols: usize, which: &str) -> Result<(), Error> {
    let x = logits(1, cols, 4.0, cols as u64);
    let gx = gpu.upload(x.view())?;
    let case = |what: &str| format!("{which} {what} at {cols} columns");
    // Relative tolerances only: in a row of millions every probability is tiny, and an
    // element a cut-short loop never wrote (0) would pass any absolute one.
    let close = |got: Array2<f32>, want: Array2<f32>, what: &str| {
        assert_close(got.view(), want.view(), 1e-30, 1e-3, &case(what));
    };
    match which {
        "softmax" => {
            let got = gpu.download(&gpu.softmax(&gx)?)?;
            let total = sum_f64(got.as_slice().unwrap());
            assert!((total - 1.0).abs() < 1e-3, "{}: sums to {total}", case("p"));
            close(got, cpu::softmax(x.view())?, "p");
        }
        "cross_entropy" => {
            let y = Labels::new([(cols / 3) as i64], cols, -100)?;
            let opts = CrossEntropyOptions::default();
            let (loss, grad) = gpu.cross_entropy_with_grad(&gx, &gpu.upload_labels(&y)?, &opts)?;
            let loss = gpu.download_loss(&loss)?.scalar().unwrap();
            let right = cpu::cross_entropy(x.view(), &y, &opts)?.scalar().unwrap();
            assert_close_scalar(loss, right, 0.0, 1e-5, &case("loss"));
            close(
                gpu.download(&grad)?,
                cpu::cross_entropy_grad(x.view(), &y, &opts)?,
                "grad",
            );
        }
        "soft" => {
            let t = cpu::softmax(logits(1, cols, 1.0, 5).view())?;
            let opts = CrossEntropyOptions::default();
            let (loss, grad) =
                gpu.cross_entropy_soft_with_grad(&gx, &gpu.upload(t.view())?, &opts)?;
            let loss = gpu.download_loss(&loss)?.scalar().unwrap();
            let right = cpu::cross_entropy_soft(x.view(), t.view(), &opts)?
                .scalar()
                .unwrap();
            assert_close_scalar(loss, right, 0.0, 1e-4, &case("loss"));
            let right = cpu::cross_entropy_soft_grad(x.view(), t.view(), &opts)?;
            // The gradient p - t cancels where p and t are close: judge it against |p| + |t|.
            let got = gpu.download(&grad)?;
            let p = cpu::softmax(x.view())?;
            for (((g, r), p), t) in got.iter().zip(&right).zip(&p).zip(&t) {
                assert!(
                    (g - r).abs() <= 1e-3 * (p.abs() + t.abs()),
                    "{}",
                    case("grad")
                );
            }
        }
        "backward" => {
            let p = cpu::softmax(x.view())?;
            let dy = logits(1, cols, 1.0, 9).mapv(|v| v + 2.0);
            let got = gpu.softmax_backward(&gpu.upload(p.view())?, &gpu.upload(dy.view())?)?;
            let right = cpu::softmax_backward(p.view(), dy.view())?;
            let got = gpu.download(&got)?;
            for ((g, r), p) in got.iter().zip(&right).zip(&p) {
                // dx = p (dy - <dy, p>): its error scales with p |dy|.
                assert!((g - r).abs() <= 1e-3 * p * 4.0, "{}", case("dx"));
            }
        }
        other => unreachable!("{other}"),
    }
    Ok(())
}

const ROW_OPS: [&str; 4] = ["softmax", "cross_entropy", "soft", "backward"];

#[test]
fn rows_past_a_small_loop_budget_are_errors_and_rows_below_it_are_right() {
    for (name, gpu) in lowered()
        .into_iter()
        .filter(|(n, _)| n.starts_with("loops"))
    {
        for which in ROW_OPS {
            for offset in [0, 1, 3] {
                let boundary = loop_boundary(1 << 20, offset, |cols| row_ops(gpu, cols, which))
                    .unwrap_or_else(|| panic!("{name}: {which} never reached the loop budget"));
                // Right just below the boundary, and an error, never a wrong number, past it.
                row_ops(gpu, boundary - 4, which).unwrap();
                for cols in [boundary, boundary + 4, boundary + 64, 2 * boundary] {
                    assert!(
                        matches!(row_ops(gpu, cols, which), Err(Error::LoopLimit { .. })),
                        "{name}: {which} at {cols} columns"
                    );
                }
            }
        }
    }
}

#[test]
fn rows_at_the_drivers_own_loop_limit_are_right() {
    // Where the driver cuts loops short (lavapipe), the widest row the planner accepts must
    // still be computed right: an undercounted loop would be a wrong number here.
    let gpu = require_gpu!();
    if gpu.driver_loop_limit().is_none() {
        eprintln!("no driver loop limit on {}", gpu.adapter_info().name);
        return;
    }
    // Rows past one binding are refused for another reason; the loop limit must come first
    // for the kernels that walk their rows twice or more.
    let max_cols = (gpu.limits().max_storage_buffer_binding_size / 4) as usize / 4 * 4 - 64;
    for which in ["softmax", "soft"] {
        let Some(boundary) = loop_boundary(max_cols, 0, |cols| row_ops(gpu, cols, which)) else {
            panic!("{which}: no loop limit below one binding");
        };
        row_ops(gpu, boundary - 4, which).unwrap();
    }
}

/// `a` (m x k) times `b` (k x n), both ways the kernels take it, against ndarray in f64.
fn check_products(gpu: &GpuContext, m: usize, k: usize, n: usize, case: &str) -> Result<(), Error> {
    let a = logits(m, k, 1.0, (m * k) as u64);
    let b = logits(k, n, 1.0, (k * n + 1) as u64);
    let right = a.mapv(f64::from).dot(&b.mapv(f64::from)).mapv(|v| v as f32);
    let bound = 2e-6 * (k as f32 + 1.0);
    let got = gpu.download(&gpu.matmul(&gpu.upload(a.view())?, &gpu.upload(b.view())?)?)?;
    assert_close(
        got.view(),
        right.view(),
        bound,
        0.0,
        &format!("{case}: A B"),
    );
    let at = a.t().as_standard_layout().into_owned();
    let got = gpu.download(&gpu.matmul_tn(&gpu.upload(at.view())?, &gpu.upload(b.view())?)?)?;
    assert_close(
        got.view(),
        right.view(),
        bound,
        0.0,
        &format!("{case}: A^T B"),
    );
    Ok(())
}

#[test]
fn products_split_or_refuse_inner_dimensions_past_the_loop_budget() {
    for (name, gpu) in lowered()
        .into_iter()
        .filter(|(n, _)| n.starts_with("loops"))
    {
        // The inner dimension of A^T B is cut into windows within the budget, so any k runs;
        // A B walks rows of A whole (W = 4 where rows are whole vec4s).
        for k in [1, 64, 127, 128, 129, 255, 256, 257, 511, 512, 513, 1000] {
            let case = format!("{name}, k = {k}");
            match check_products(gpu, 9, k, 12, &case) {
                Ok(()) => {}
                Err(Error::LoopLimit { .. }) => {
                    // Only A B may refuse; A^T B must then still be right.
                    let a = logits(k, 9, 1.0, 1);
                    let b = logits(k, 12, 1.0, 2);
                    let right = a
                        .t()
                        .mapv(f64::from)
                        .dot(&b.mapv(f64::from))
                        .mapv(|v| v as f32);
                    let got = gpu
                        .download(
                            &gpu.matmul_tn(
                                &gpu.upload(a.view()).unwrap(),
                                &gpu.upload(b.view()).unwrap(),
                            )
                            .unwrap(),
                        )
                        .unwrap();
                    assert_close(got.view(), right.view(), 2e-6 * k as f32, 0.0, &case);
                    assert!(k > 128, "{case}: refused below the budget");
                }
                Err(e) => panic!("{case}: {e}"),
            }
        }
    }
}

#[test]
fn products_split_past_a_small_workgroup_limit() {
    let (name, gpu) = match lowered().into_iter().find(|(n, _)| *n == "groups-only") {
        Some(c) => c,
        None => return,
    };
    // 3 workgroups per dimension, tiles of 64 x 64: A B splits rows and columns into further
    // dispatches; A^T B splits columns and refuses more than 3 tiles of rows.
    for (m, n) in [
        (1, 1),
        (64, 192),
        (192, 193),
        (193, 64),
        (130, 500),
        (700, 257),
    ] {
        let k = 33;
        let case = format!("{name}: {m} x {k} x {n}");
        let a = logits(m, k, 1.0, 3);
        let b = logits(k, n, 1.0, 4);
        let right = a.mapv(f64::from).dot(&b.mapv(f64::from)).mapv(|v| v as f32);
        let (ga, gb) = (gpu.upload(a.view()).unwrap(), gpu.upload(b.view()).unwrap());
        let got = gpu.download(&gpu.matmul(&ga, &gb).unwrap()).unwrap();
        assert_close(got.view(), right.view(), 1e-4, 0.0, &format!("{case}: A B"));
        let at = gpu.upload(a.t().as_standard_layout().view()).unwrap();
        match gpu.matmul_tn(&at, &gb) {
            Ok(c) => {
                let got = gpu.download(&c).unwrap();
                assert_close(
                    got.view(),
                    right.view(),
                    1e-4,
                    0.0,
                    &format!("{case}: A^T B"),
                );
            }
            Err(Error::TooManyWorkgroups { .. }) => assert!(m > 3 * 64, "{case}: refused"),
            Err(e) => panic!("{case}: {e}"),
        }
    }
}

#[test]
fn ops_fold_and_split_past_a_small_workgroup_limit() {
    let (name, gpu) = match lowered().into_iter().find(|(n, _)| *n == "groups") {
        Some(c) => c,
        None => return,
    };
    // 3 workgroups per dimension: dispatches of 4 to 9 groups fold into y.
    for rows in [1, 63, 64, 65, 128, 192, 193, 256, 500, 575, 576] {
        let x = adversarial(rows, 5, rows as u64);
        let y = labels(rows, 5, 4, rows as u64);
        let case = format!("{name}, {rows} rows");
        // Past 9 groups a dispatch covers no more rows: windows split the rest.
        match gpu.softmax(&gpu.upload(x.view()).unwrap()) {
            Ok(p) => {
                let got = gpu.download(&p).unwrap();
                assert_close(
                    got.view(),
                    cpu::softmax(x.view()).unwrap().view(),
                    1e-5,
                    1e-4,
                    &case,
                );
                let opts = CrossEntropyOptions::default();
                let gx = gpu.upload(x.view()).unwrap();
                let (loss, grad) = gpu
                    .cross_entropy_with_grad(&gx, &gpu.upload_labels(&y).unwrap(), &opts)
                    .unwrap();
                let loss = gpu.download_loss(&loss).unwrap().scalar().unwrap();
                let right = cpu::cross_entropy(x.view(), &y, &opts)
                    .unwrap()
                    .scalar()
                    .unwrap();
                assert_close_scalar(loss, right, 1e-5, 1e-5, &case);
                let right = cpu::cross_entropy_grad(x.view(), &y, &opts).unwrap();
                assert_close(
                    gpu.download(&grad).unwrap().view(),
                    right.view(),
                    1e-5,
                    1e-4,
                    &case,
                );
            }
            Err(e) => panic!("{case}: {e}"),
        }
    }
    // Sums fold and window too, and stay right.
    let v = Array1::from_elem(20_000, 0.25f32);
    assert_eq!(gpu_sum(gpu, &v), 5000.0);
}

/// `rows x features` points with labels cycling through the first `used` of `classes`.
fn wide_problem(rows: usize, features: usize, used: usize) -> (Array2<f32>, Vec<i64>) {
    let x = logits(rows, features, 1.0, 42);
    let ys = (0..rows).map(|i| ((i * 7 + i / 3) % used) as i64).collect();
    (x, ys)
}

fn train_against_cpu(
    gpu: &GpuContext,
    (classes, features, batch): (usize, usize, usize),
    epochs: usize,
    case: &str,
) {
    let (x, ys) = wide_problem(400, features, 3.min(classes));
    let y = Labels::new(ys, classes, -100).unwrap();
    let opts = TrainOptions::default().lr(0.5).batch(batch);
    let mut on_gpu = SoftmaxRegression::new(gpu, (x.view(), &y), None, opts.clone()).unwrap();
    let mut on_cpu = SoftmaxRegression::new(&Device::Cpu, (x.view(), &y), None, opts).unwrap();
    for epoch in 0..epochs {
        let g = on_gpu.fit_epoch().unwrap();
        let c = on_cpu.fit_epoch().unwrap();
        assert!(
            (g.train_loss - c.train_loss).abs() <= 1e-4 * c.train_loss.abs().max(1.0),
            "{case}, epoch {epoch}: loss gpu {} cpu {}",
            g.train_loss,
            c.train_loss
        );
        assert!(
            (g.train_err - c.train_err).abs() <= 0.01,
            "{case}, epoch {epoch}: error"
        );
    }
    let (tg, tc) = (on_gpu.theta().unwrap(), on_cpu.theta().unwrap());
    assert_close(tg.view(), tc.view(), 1e-5, 1e-3, &format!("{case}: theta"));
}

#[test]
fn training_with_65536_classes_matches_the_cpu_epoch_by_epoch() {
    // Three loops over the classes per thread once stopped at 65,535 / 3 = 21,845 classes on
    // lavapipe: theta's columns past it were never updated and the metrics were wrong.
    let gpu = require_gpu!();
    for classes in [21_844, 21_845, 65_536] {
        train_against_cpu(gpu, (classes, 5, 100), 2, &format!("{classes} classes"));
    }
    // The untrained model's loss is ln C exactly: every logit is 0.
    let (x, ys) = wide_problem(200, 5, 3);
    let y = Labels::new(ys, 65_536, -100).unwrap();
    let model = SoftmaxRegression::new(gpu, (x.view(), &y), None, TrainOptions::default()).unwrap();
    let (loss, _) = model.evaluate(x.view(), &y).unwrap();
    assert!((loss - (65_536f32).ln()).abs() < 1e-5, "{loss}");
}

#[test]
fn training_plans_within_a_small_loop_budget_match_the_cpu() {
    // Past the budget the fused step gives way to the three-dispatch step, whose A^T B splits
    // the batch into windows within it.
    for (name, gpu) in lowered() {
        for shape in [
            (3, 20, 50),
            (3, 20, 200),
            (10, 120, 50),
            (17, 64, 200),
            (300, 8, 130),
        ] {
            let case = format!("{name}: (classes, features, batch) {shape:?}");
            train_against_cpu(gpu, shape, 2, &case);
        }
    }
    // Features past it are refused by the forward product (texture or storage), with an error.
    for (name, gpu) in lowered()
        .into_iter()
        .filter(|(n, _)| n.starts_with("loops"))
    {
        let (x, ys) = wide_problem(100, 600, 3);
        let y = Labels::new(ys, 5, -100).unwrap();
        let made = SoftmaxRegression::new(gpu, (x.view(), &y), None, TrainOptions::default())
            .and_then(|mut m| m.fit_epoch().map(|_| ()));
        assert!(
            matches!(made, Err(Error::LoopLimit { .. })),
            "{name}: {made:?}"
        );
    }
}

#[test]
fn a_billion_classes_is_an_error_not_an_abort() {
    // Labels may claim any class count; sizes follow from them only through checked,
    // fallible allocations.
    let (x, mut ys) = wide_problem(200, 784, 3);
    ys[17] = 999_999_999;
    let y = Labels::new(ys, 1_000_000_000, -100).unwrap();
    let cpu = SoftmaxRegression::new(&Device::Cpu, (x.view(), &y), None, TrainOptions::default());
    assert!(
        matches!(cpu, Err(Error::InvalidArgument { .. })),
        "cpu: {:?}",
        cpu.err()
    );
    let gpu = require_gpu!();
    // Uploading such labels costs their rows, not their classes.
    let on = gpu.upload_labels(&y).unwrap();
    assert_eq!(on.len(), 200);
    let trained = SoftmaxRegression::new(gpu, (x.view(), &y), None, TrainOptions::default());
    assert!(
        matches!(trained, Err(Error::TooLarge { .. })),
        "gpu: {:?}",
        trained.err()
    );
}
