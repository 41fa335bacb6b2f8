//! Label smoothing, class weights, the z-loss and per-row upstream gradients: the reference
//! against hand-derived values and finite differences, the GPU against the reference.

mod common;

use common::*;
use ndarray::{Array1, Array2, array};
use softmax_ce::{CrossEntropyOptions, Error, Labels, Reduction, cpu};

/// Every combination of the options, on top of each reduction.
fn combinations(classes: usize) -> Vec<(String, CrossEntropyOptions)> {
    let weights = Array1::from_shape_fn(classes, |j| 0.5 + (j % 3) as f32);
    let mut out = Vec::new();
    for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        for smoothing in [0.0, 0.1] {
            for weighted in [false, true] {
                for z in [0.0, 1e-3] {
                    let mut o = CrossEntropyOptions::default()
                        .reduction(reduction)
                        .label_smoothing(smoothing)
                        .z_loss(z);
                    if weighted {
                        o = o.weight(weights.clone());
                    }
                    let name = format!("{reduction} e={smoothing} w={weighted} z={z}");
                    out.push((name, o));
                }
            }
        }
    }
    out
}

/// A hand computation: two rows over 2 classes, smoothing 0.2, weights (1, 3), z-loss 0.5.
#[test]
fn the_reference_matches_hand_values() {
    let x = array![[0.0f32, 0.0], [1.0, 0.0]];
    let labels = Labels::new([1, 0], 2, -100).unwrap();
    let opts = CrossEntropyOptions::default()
        .label_smoothing(0.2)
        .weight(array![1.0f32, 3.0])
        .z_loss(0.5)
        .reduction(Reduction::None);
    // Row 0: lse = ln 2; nll = ln 2; smoothing sum_j w_j (lse - x_j) = 4 ln 2.
    let ln2 = std::f64::consts::LN_2;
    let row0 = 0.8 * 3.0 * ln2 + 0.1 * 4.0 * ln2 + 0.5 * ln2 * ln2;
    // Row 1: lse = ln(e + 1); nll = lse - 1; smoothing = 1 (lse - 1) + 3 lse.
    let lse = (1f64.exp() + 1.0).ln();
    let row1 = 0.8 * 1.0 * (lse - 1.0) + 0.1 * ((lse - 1.0) + 3.0 * lse) + 0.5 * lse * lse;
    let got = cpu::cross_entropy(x.view(), &labels, &opts).unwrap();
    let got = got.per_row().unwrap();
    assert!((got[0] as f64 - row0).abs() < 1e-6, "{} vs {row0}", got[0]);
    assert!((got[1] as f64 - row1).abs() < 1e-6, "{} vs {row1}", got[1]);
    // Mean: the cross-entropy terms over the label weights (3 + 1), the z-loss over 2 rows.
    let mean = cpu::cross_entropy(x.view(), &labels, &opts.clone().reduction(Reduction::Mean))
        .unwrap()
        .scalar()
        .unwrap();
    let z = 0.5 * (ln2 * ln2 + lse * lse);
    let want = ((row0 + row1) - z) / 4.0 + z / 2.0;
    assert!((mean as f64 - want).abs() < 1e-6, "{mean} vs {want}");
}

#[test]
fn the_reference_gradient_matches_finite_differences() {
    let x = logits(3, 5, 2.0, 1);
    let labels = Labels::new([4, 0, -100], 5, -100).unwrap();
    for (name, opts) in combinations(5) {
        if opts.reduction == Reduction::None {
            continue;
        }
        let grad = cpu::cross_entropy_grad(x.view(), &labels, &opts).unwrap();
        let h = 1e-2f32;
        for ((i, j), &g) in grad.indexed_iter() {
            let loss = |d: f32| {
                let mut y = x.clone();
                y[[i, j]] += d;
                cpu::cross_entropy(y.view(), &labels, &opts)
                    .unwrap()
                    .scalar()
                    .unwrap() as f64
            };
            let numeric = (loss(h) - loss(-h)) / (2.0 * h as f64);
            assert!(
                (g as f64 - numeric).abs() < 1e-3,
                "{name} ({i},{j}): {g} vs {numeric}"
            );
        }
    }
}

#[test]
fn gpu_matches_the_reference_for_every_combination() {
    for (config, gpu) in configs() {
        for (rows, cols) in [(1, 1), (3, 7), (17, 64), (65, 33), (4, 1025), (2, 4099)] {
            if config == "windows" && cols * 4 > 4000 {
                continue;
            }
            let x = logits(rows, cols, 5.0, (rows * 31 + cols) as u64);
            let labels = labels(rows, cols, 3, rows as u64);
            let (gx, gy) = (
                gpu.upload(x.view()).unwrap(),
                gpu.upload_labels(&labels).unwrap(),
            );
            for (name, opts) in combinations(cols) {
                let case = format!("{config} {rows}x{cols} {name}");
                let (loss, grad) = gpu.cross_entropy_with_grad(&gx, &gy, &opts).unwrap();
                let got = gpu.download_loss(&loss).unwrap().into_array();
                let want = cpu::cross_entropy(x.view(), &labels, &opts)
                    .unwrap()
                    .into_array();
                assert_close(
                    got.view(),
                    want.view(),
                    LOG_ABS,
                    LOG_REL,
                    &format!("{case} loss"),
                );
                let alone = gpu
                    .download_loss(&gpu.cross_entropy(&gx, &gy, &opts).unwrap())
                    .unwrap();
                assert_close(
                    alone.into_array().view(),
                    want.view(),
                    LOG_ABS,
                    LOG_REL,
                    &format!("{case} loss alone"),
                );
                let got = gpu.download(&grad).unwrap();
                let want = cpu::cross_entropy_grad(x.view(), &labels, &opts).unwrap();
                assert_close(got.view(), want.view(), 1e-6, 1e-4, &format!("{case} grad"));
            }
        }
    }
}

#[test]
fn ignored_rows_stay_clean_under_every_option() {
    let gpu = require_gpu!();
    let mut x = logits(4, 6, 2.0, 2);
    x.row_mut(0).fill(f32::NAN);
    x.row_mut(1).fill(f32::INFINITY);
    let labels = Labels::new([-100, -100, 2, 5], 6, -100).unwrap();
    let (gx, gy) = (
        gpu.upload(x.view()).unwrap(),
        gpu.upload_labels(&labels).unwrap(),
    );
    for (name, opts) in combinations(6) {
        let (loss, grad) = gpu.cross_entropy_with_grad(&gx, &gy, &opts).unwrap();
        let loss = gpu.download_loss(&loss).unwrap().into_array();
        assert!(loss.iter().all(|v| v.is_finite()), "{name}: {loss}");
        let grad = gpu.download(&grad).unwrap();
        assert!(grad.iter().all(|v| v.is_finite()), "{name}");
        assert!(
            grad.row(0)
                .iter()
                .chain(grad.row(1).iter())
                .all(|&v| v == 0.0),
            "{name}"
        );
    }
}

#[test]
fn an_upstream_gradient_scales_each_row() {
    let x = logits(9, 13, 3.0, 5);
    let labels = labels(9, 13, 4, 5);
    let up = Array1::from_shape_fn(9, |i| i as f32 - 3.0);
    let opts = CrossEntropyOptions::default()
        .reduction(Reduction::None)
        .label_smoothing(0.05);
    let want = cpu::cross_entropy_grad_upstream(x.view(), &labels, &opts, up.view()).unwrap();
    let plain = cpu::cross_entropy_grad(x.view(), &labels, &opts).unwrap();
    assert_eq!(want.row(3), plain.row(3).mapv(|v| v * 0.0));
    if let Some(gpu) = gpu() {
        let (gx, gy) = (
            gpu.upload(x.view()).unwrap(),
            gpu.upload_labels(&labels).unwrap(),
        );
        let gu = gpu.upload_vector(up.view()).unwrap();
        let (_, grad) = gpu
            .cross_entropy_with_grad_upstream(&gx, &gy, &opts, &gu)
            .unwrap();
        assert_close(
            gpu.download(&grad).unwrap().view(),
            want.view(),
            1e-6,
            1e-4,
            "upstream",
        );
        let mean = opts.clone().reduction(Reduction::Mean);
        assert!(
            gpu.cross_entropy_with_grad_upstream(&gx, &gy, &mean, &gu)
                .is_err()
        );
    }
    let short = Array1::<f32>::zeros(3);
    assert!(cpu::cross_entropy_grad_upstream(x.view(), &labels, &opts, short.view()).is_err());

    // A NaN or infinite upstream value: NaN through a row that counts, nothing through an
    // ignored one (row 3 is ignored), on both paths.
    let mut bad = up.clone();
    bad[3] = f32::NAN;
    bad[5] = f32::INFINITY;
    bad[6] = f32::NAN;
    let want = cpu::cross_entropy_grad_upstream(x.view(), &labels, &opts, bad.view()).unwrap();
    assert!(
        want.row(3).iter().all(|&v| v == 0.0),
        "ignored row: {}",
        want.row(3)
    );
    assert!(
        want.row(6).iter().all(|v| v.is_nan()),
        "row 6: {}",
        want.row(6)
    );
    if let Some(gpu) = gpu() {
        let (gx, gy) = (
            gpu.upload(x.view()).unwrap(),
            gpu.upload_labels(&labels).unwrap(),
        );
        let gu = gpu.upload_vector(bad.view()).unwrap();
        let (_, grad) = gpu
            .cross_entropy_with_grad_upstream(&gx, &gy, &opts, &gu)
            .unwrap();
        assert_close(
            gpu.download(&grad).unwrap().view(),
            want.view(),
            1e-6,
            1e-4,
            "non-finite upstream",
        );
    }
}

#[test]
fn bad_options_are_errors_naming_the_values() {
    let x = Array2::<f32>::zeros((2, 3));
    let labels = Labels::new([0, 1], 3, -100).unwrap();
    let cases = [
        (
            CrossEntropyOptions::default().label_smoothing(1.5),
            "label smoothing 1.5",
        ),
        (
            CrossEntropyOptions::default().z_loss(f32::NAN),
            "z-loss strength NaN",
        ),
        (
            CrossEntropyOptions::default().weight(array![1.0f32, -1.0, 1.0]),
            "class weight -1",
        ),
        (
            CrossEntropyOptions::default().weight(array![1.0f32, 1.0]),
            "3 class weights",
        ),
    ];
    for (opts, want) in &cases {
        let err = cpu::cross_entropy(x.view(), &labels, opts).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
        if let Some(gpu) = gpu() {
            let (gx, gy) = (
                gpu.upload(x.view()).unwrap(),
                gpu.upload_labels(&labels).unwrap(),
            );
            let err = gpu.cross_entropy_with_grad(&gx, &gy, opts).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
            // The staged kernels check the options as the fused ones do, before saying that
            // they implement the plain loss only.
            let err = gpu.staged().cross_entropy(&gx, &gy, opts).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
        }
    }
    // Valid options the staged kernels do not implement: refused, naming the path that has them.
    if let Some(gpu) = gpu() {
        let (gx, gy) = (
            gpu.upload(x.view()).unwrap(),
            gpu.upload_labels(&labels).unwrap(),
        );
        let opts = CrossEntropyOptions::default().label_smoothing(0.1);
        let err = gpu.staged().cross_entropy(&gx, &gy, &opts).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        assert!(err.to_string().contains("fused"), "{err}");
    }
}

/// Random probability rows.
fn distributions(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut t = logits(rows, cols, 1.0, seed).mapv(|v| v + 1.0);
    for mut row in t.rows_mut() {
        let s = row.sum();
        row /= s;
    }
    t
}

/// One-hot soft targets give the integer-label loss; a hand value for a uniform target.
#[test]
fn soft_targets_reduce_to_labels_and_hand_values() {
    let x = logits(5, 4, 3.0, 9);
    let labels = Labels::new([0, 3, 1, 1, 2], 4, -100).unwrap();
    let mut onehot = Array2::<f32>::zeros((5, 4));
    for (i, y) in labels.iter().enumerate() {
        onehot[[i, y.unwrap()]] = 1.0;
    }
    for (name, opts) in combinations(4) {
        // With weights the mean's denominators differ (N against the label weights).
        if opts.weight.is_some() && opts.reduction == Reduction::Mean {
            continue;
        }
        let soft = cpu::cross_entropy_soft(x.view(), onehot.view(), &opts)
            .unwrap()
            .into_array();
        let hard = cpu::cross_entropy(x.view(), &labels, &opts)
            .unwrap()
            .into_array();
        assert_close(soft.view(), hard.view(), 1e-6, 1e-6, &name);
        let soft = cpu::cross_entropy_soft_grad(x.view(), onehot.view(), &opts).unwrap();
        let hard = cpu::cross_entropy_grad(x.view(), &labels, &opts).unwrap();
        assert_close(
            soft.view(),
            hard.view(),
            1e-7,
            1e-6,
            &format!("{name} grad"),
        );
    }
    // A uniform target over 2 equal logits costs ln 2.
    let x = array![[3.0f32, 3.0]];
    let t = array![[0.5f32, 0.5]];
    let loss =
        cpu::cross_entropy_soft(x.view(), t.view(), &CrossEntropyOptions::default()).unwrap();
    assert!((loss.scalar().unwrap() - std::f32::consts::LN_2).abs() < 1e-7);
}

#[test]
fn soft_target_gradient_matches_finite_differences() {
    let x = logits(3, 5, 2.0, 11);
    let t = distributions(3, 5, 12);
    for (name, opts) in combinations(5) {
        if opts.reduction == Reduction::None {
            continue;
        }
        let grad = cpu::cross_entropy_soft_grad(x.view(), t.view(), &opts).unwrap();
        let h = 1e-2f32;
        for ((i, j), &g) in grad.indexed_iter() {
            let loss = |d: f32| {
                let mut y = x.clone();
                y[[i, j]] += d;
                cpu::cross_entropy_soft(y.view(), t.view(), &opts)
                    .unwrap()
                    .scalar()
                    .unwrap() as f64
            };
            let numeric = (loss(h) - loss(-h)) / (2.0 * h as f64);
            assert!(
                (g as f64 - numeric).abs() < 1e-3,
                "{name} ({i},{j}): {g} vs {numeric}"
            );
        }
    }
}

#[test]
fn soft_targets_on_the_gpu_match_the_reference() {
    for (config, gpu) in configs() {
        for (rows, cols) in [(1, 1), (3, 7), (17, 64), (65, 33), (4, 1025)] {
            if config == "windows" && cols * 4 > 4000 {
                continue;
            }
            let x = logits(rows, cols, 5.0, (rows + cols) as u64);
            let t = distributions(rows, cols, 3);
            let (gx, gt) = (gpu.upload(x.view()).unwrap(), gpu.upload(t.view()).unwrap());
            for (name, opts) in combinations(cols) {
                let case = format!("{config} {rows}x{cols} {name}");
                let (loss, grad) = gpu.cross_entropy_soft_with_grad(&gx, &gt, &opts).unwrap();
                let got = gpu.download_loss(&loss).unwrap().into_array();
                let want = cpu::cross_entropy_soft(x.view(), t.view(), &opts)
                    .unwrap()
                    .into_array();
                assert_close(
                    got.view(),
                    want.view(),
                    LOG_ABS,
                    LOG_REL,
                    &format!("{case} loss"),
                );
                let got = gpu.download(&grad).unwrap();
                let want = cpu::cross_entropy_soft_grad(x.view(), t.view(), &opts).unwrap();
                assert_close(got.view(), want.view(), 1e-6, 1e-4, &format!("{case} grad"));
            }
        }
    }
    if let Some(gpu) = gpu() {
        let x = gpu.upload(logits(3, 4, 1.0, 1).view()).unwrap();
        let t = gpu.upload(distributions(3, 5, 1).view()).unwrap();
        let err = gpu
            .cross_entropy_soft_with_grad(&x, &t, &CrossEntropyOptions::default())
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Shape {
                    op: "cross_entropy_soft",
                    ..
                }
            ),
            "{err}"
        );
    }
}
