//! Cross-entropy over logits `(N, C, d1, ..., dk)` with labels `(N, d1, ..., dk)` (PyTorch's
//! per-pixel form) and over one unbatched row `(C,)`: the reference against the 2-D reference
//! position by position, hand values and finite differences; the GPU against the reference.

mod common;

use common::*;
use ndarray::{Array1, Array2, ArrayD, Axis, Dimension, IxDyn, array};
use rand::Rng;
use softmax_ce::{CrossEntropyOptions, Device, DeviceKind, Error, Labels, Reduction, cpu};

fn options(classes: usize) -> Vec<(String, CrossEntropyOptions)> {
    let weights = Array1::from_shape_fn(classes, |j| 0.5 + (j % 3) as f32);
    let mut out = Vec::new();
    for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        for (smoothing, weighted, z) in [
            (0.0, false, 0.0),
            (0.1, false, 0.0),
            (0.0, true, 0.0),
            (0.0, false, 1e-3),
            (0.2, true, 1e-3),
        ] {
            let mut o = CrossEntropyOptions::default()
                .reduction(reduction)
                .label_smoothing(smoothing)
                .z_loss(z);
            if weighted {
                o = o.weight(weights.clone());
            }
            out.push((format!("{reduction} e={smoothing} w={weighted} z={z}"), o));
        }
    }
    out
}

/// Logits `(N, C, d...)` and labels `(N, d...)`, every 4th position ignored.
fn problem(shape: &[usize], seed: u64) -> (ArrayD<f32>, ArrayD<i64>) {
    let mut r = rng(seed);
    let x = ArrayD::from_shape_fn(IxDyn(shape), |_| r.random_range(-4.0f32..4.0));
    let c = shape[1];
    let positions: Vec<usize> = std::iter::once(shape[0])
        .chain(shape[2..].iter().copied())
        .collect();
    let mut i = 0;
    let y = ArrayD::from_shape_fn(IxDyn(&positions), |_| {
        i += 1;
        if i % 4 == 0 {
            -100
        } else {
            r.random_range(0..c as i64)
        }
    });
    (x, y)
}

/// Row `(n, :, rest)` of `x` for every position in C order, and the labels in that order: what
/// the N-d op must compute, built without it.
fn rows_by_hand(x: &ArrayD<f32>, y: &ArrayD<i64>) -> (Array2<f32>, Vec<i64>) {
    let c = x.shape()[1];
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for (pos, &label) in y.indexed_iter() {
        let pos = pos.slice().to_vec();
        for j in 0..c {
            let mut idx = vec![pos[0], j];
            idx.extend_from_slice(&pos[1..]);
            rows.push(x[IxDyn(&idx)]);
        }
        labels.push(label);
    }
    (
        Array2::from_shape_vec((labels.len(), c), rows).unwrap(),
        labels,
    )
}

#[test]
fn nd_reference_is_the_2d_reference_per_position() {
    for shape in [vec![2, 3, 4, 5], vec![3, 4, 1], vec![1, 2, 3, 1, 2]] {
        let (x, y) = problem(&shape, shape.len() as u64);
        let (rows, ys) = rows_by_hand(&x, &y);
        let c = shape[1];
        let labels = Labels::new(ys, c, -100).unwrap();
        for (name, opts) in options(c) {
            let case = format!("{shape:?} {name}");
            let got = cpu::cross_entropy_nd(x.view(), y.view(), -100, &opts).unwrap();
            let want = cpu::cross_entropy(rows.view(), &labels, &opts).unwrap();
            match opts.reduction {
                Reduction::None => {
                    assert_eq!(got.shape(), y.shape(), "{case}");
                    let want = want.per_row().unwrap();
                    assert_eq!(
                        got.iter().copied().collect::<Vec<_>>(),
                        want.to_vec(),
                        "{case}"
                    );
                }
                _ => assert_eq!(got[[]], want.scalar().unwrap(), "{case}"),
            }
            let got = cpu::cross_entropy_nd_grad(x.view(), y.view(), -100, &opts).unwrap();
            let want = cpu::cross_entropy_grad(rows.view(), &labels, &opts).unwrap();
            assert_eq!(got.shape(), x.shape(), "{case}");
            // Position r's gradient row is x's layout's (n, :, rest): compare by hand.
            for (r, (pos, _)) in y.indexed_iter().enumerate() {
                let pos = pos.slice().to_vec();
                for j in 0..c {
                    let mut idx = vec![pos[0], j];
                    idx.extend_from_slice(&pos[1..]);
                    assert_eq!(got[IxDyn(&idx)], want[[r, j]], "{case} grad {idx:?}");
                }
            }
        }
    }
}

/// 2-D logits are today's op; one unbatched row `(C,)` with a 0-d label is a batch of one, and
/// `none` gives a 0-d loss, as in PyTorch.
#[test]
fn two_d_and_one_d_logits_behave_as_pytorch() {
    let x = logits(5, 4, 3.0, 1);
    let y = array![0i64, 3, -100, 1, 2];
    let labels = Labels::new(y.iter().copied(), 4, -100).unwrap();
    for (name, opts) in options(4) {
        let got =
            cpu::cross_entropy_nd(x.view().into_dyn(), y.view().into_dyn(), -100, &opts).unwrap();
        let want = cpu::cross_entropy(x.view(), &labels, &opts)
            .unwrap()
            .into_array();
        assert_eq!(got, want, "2-D {name}");
        let got = cpu::cross_entropy_nd_grad(x.view().into_dyn(), y.view().into_dyn(), -100, &opts)
            .unwrap();
        let want = cpu::cross_entropy_grad(x.view(), &labels, &opts).unwrap();
        assert_eq!(got, want.into_dyn(), "2-D grad {name}");
    }
    let row = array![1.0f32, 2.0, 0.5];
    let label = ndarray::arr0(1i64);
    let none = CrossEntropyOptions::default().reduction(Reduction::None);
    let got =
        cpu::cross_entropy_nd(row.view().into_dyn(), label.view().into_dyn(), -100, &none).unwrap();
    assert_eq!(got.ndim(), 0);
    let lse = (1f64.exp() + 2f64.exp() + 0.5f64.exp()).ln();
    assert!((got[[]] as f64 - (lse - 2.0)).abs() < 1e-6);
    let grad = cpu::cross_entropy_nd_grad(
        row.view().into_dyn(),
        label.view().into_dyn(),
        -100,
        &CrossEntropyOptions::default(),
    )
    .unwrap();
    assert_eq!(grad.shape(), &[3]);
    let p1 = (2.0 - lse).exp();
    assert!((grad[[1]] as f64 - (p1 - 1.0)).abs() < 1e-6);
    // An ignored unbatched row: a mean over no positions is NaN, its gradient 0.
    let ignored = ndarray::arr0(-100i64);
    let mean = cpu::cross_entropy_nd(
        row.view().into_dyn(),
        ignored.view().into_dyn(),
        -100,
        &CrossEntropyOptions::default(),
    )
    .unwrap();
    assert!(mean[[]].is_nan());
}

/// The gradient is the derivative of the loss, every option on, in the logits' layout.
#[test]
fn nd_gradient_matches_finite_differences() {
    let (x, y) = problem(&[2, 3, 2, 2], 7);
    let opts = CrossEntropyOptions::default()
        .reduction(Reduction::Sum)
        .label_smoothing(0.1)
        .weight(array![1.0f32, 2.0, 0.5])
        .z_loss(1e-2);
    let got = cpu::cross_entropy_nd_grad(x.view(), y.view(), -100, &opts).unwrap();
    let none = opts.clone().reduction(Reduction::None);
    let h = 1e-2f32;
    for (idx, &g) in got.indexed_iter() {
        // Only the position of x[idx] depends on it: difference that position's loss.
        let pos: Vec<usize> = std::iter::once(idx[0])
            .chain(idx.slice()[2..].iter().copied())
            .collect();
        let at = |d: f32| {
            let mut xx = x.clone();
            xx[&idx] += d;
            cpu::cross_entropy_nd(xx.view(), y.view(), -100, &none).unwrap()[IxDyn(&pos)] as f64
        };
        let want = (at(h) - at(-h)) / (2.0 * h as f64);
        assert!(
            (g as f64 - want).abs() < 1e-3 * want.abs() + 1e-4,
            "{idx:?}: {g} vs {want}"
        );
    }
}

/// Probability targets of the logits' shape, class axis 1.
#[test]
fn nd_soft_targets_are_the_2d_op_per_position() {
    let (x, _) = problem(&[2, 3, 4], 9);
    let mut t = x.mapv(|v| v.exp());
    let sums = t.sum_axis(Axis(1)).insert_axis(Axis(1));
    t /= &sums;
    let (rows, _) = rows_by_hand(&x, &ArrayD::zeros(IxDyn(&[2, 4])));
    let (trows, _) = rows_by_hand(&t, &ArrayD::zeros(IxDyn(&[2, 4])));
    for (name, opts) in options(3) {
        let got = cpu::cross_entropy_soft_nd(x.view(), t.view(), &opts).unwrap();
        let want = cpu::cross_entropy_soft(rows.view(), trows.view(), &opts).unwrap();
        let want = match want {
            softmax_ce::Loss::PerRow(v) => v.into_shape_with_order(IxDyn(&[2, 4])).unwrap(),
            softmax_ce::Loss::Reduced(v) => ndarray::arr0(v).into_dyn(),
        };
        assert_eq!(got, want, "{name}");
        let g = cpu::cross_entropy_soft_nd_grad(x.view(), t.view(), &opts).unwrap();
        let want = cpu::cross_entropy_soft_grad(rows.view(), trows.view(), &opts).unwrap();
        assert_eq!(g[[1, 2, 3]], want[[7, 2]], "{name}");
        assert_eq!(g[[0, 1, 2]], want[[2, 1]], "{name}");
    }
}

#[test]
fn nd_bad_inputs_are_errors() {
    let (x, y) = problem(&[2, 3, 4], 1);
    let wrong = ArrayD::<i64>::zeros(IxDyn(&[2, 3]));
    let err = cpu::cross_entropy_nd(x.view(), wrong.view(), -100, &Default::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            Error::Shape {
                op: "cross_entropy",
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("[2, 4]") && msg.contains("[2, 3, 4]") && msg.contains("[2, 3]"),
        "{msg}"
    );
    let scalar = ndarray::arr0(1.0f32).into_dyn();
    let err =
        cpu::cross_entropy_nd(scalar.view(), y.view(), -100, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("0-d"), "{err}");
    let mut bad = y.clone();
    bad[[1, 2]] = 3;
    let err = cpu::cross_entropy_nd(x.view(), bad.view(), -100, &Default::default()).unwrap_err();
    let msg = err.to_string();
    // Positions are numbered in C order over (N, d1, ...): (1, 2) is position 6.
    assert!(
        msg.contains("label 3 at row 6") && msg.contains("[0, 3)"),
        "{msg}"
    );
    let t = ArrayD::<f32>::zeros(IxDyn(&[2, 4, 3]));
    let err = cpu::cross_entropy_soft_nd(x.view(), t.view(), &Default::default()).unwrap_err();
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

/// The GPU (class axis moved on the host, the fused kernels on the rows) against the
/// reference, on shapes around the workgroup and vector sizes, with adversarial logits.
#[test]
fn nd_gpu_matches_cpu() {
    if gpu().is_none() {
        return;
    }
    let (device, _) = Device::select(Some(DeviceKind::Gpu)).unwrap();
    for shape in [
        vec![3],
        vec![65],
        vec![4, 5],
        vec![1, 3, 1],
        vec![2, 5, 3, 4],
        vec![3, 64, 5],
        vec![2, 65, 3],
        vec![1, 4, 63],
        vec![2, 7, 257],
        vec![2, 3, 0],
    ] {
        let (x, y) = if shape.len() == 1 {
            let x = logits(1, shape[0], 4.0, 3)
                .into_shape_with_order(IxDyn(&shape))
                .unwrap();
            (x, ndarray::arr0(2i64).into_dyn())
        } else {
            problem(&shape, 11)
        };
        // Adversarial values in some positions: +-1e4 and -inf entries in a finite row.
        let mut x = x;
        for (i, v) in x.iter_mut().enumerate() {
            match i % 11 {
                3 => *v = 1e4,
                5 => *v = -1e4,
                7 => *v = f32::NEG_INFINITY,
                _ => {}
            }
        }
        let c = x.shape().get(1).copied().unwrap_or(x.shape()[0]);
        for (name, opts) in options(c) {
            let case = format!("{shape:?} {name}");
            let (got, ggot) = device
                .cross_entropy_nd_with_grad(x.view(), y.view(), -100, &opts)
                .unwrap();
            let want = cpu::cross_entropy_nd(x.view(), y.view(), -100, &opts).unwrap();
            let gwant = cpu::cross_entropy_nd_grad(x.view(), y.view(), -100, &opts).unwrap();
            assert_close(
                got.view(),
                want.view(),
                LOG_ABS,
                1e-4,
                &format!("{case} loss"),
            );
            assert_close(
                ggot.view(),
                gwant.view(),
                1e-6,
                1e-4,
                &format!("{case} grad"),
            );
            let only = device
                .cross_entropy_nd(x.view(), y.view(), -100, &opts)
                .unwrap();
            assert_close(
                only.view(),
                want.view(),
                LOG_ABS,
                1e-4,
                &format!("{case} loss only"),
            );
            if opts.weight.is_none() && shape.len() > 1 {
                // Finite logits: a zero target times an infinite log-probability is NaN.
                let x = x.mapv(|v| if v.is_finite() { v } else { -30.0 });
                let mut t = x.mapv(|v| (v / 1e4).exp());
                let sums = t.sum_axis(Axis(1)).insert_axis(Axis(1));
                t /= &sums;
                let (got, ggot) = device
                    .cross_entropy_soft_nd_with_grad(x.view(), t.view(), &opts)
                    .unwrap();
                let want = cpu::cross_entropy_soft_nd(x.view(), t.view(), &opts).unwrap();
                let gwant = cpu::cross_entropy_soft_nd_grad(x.view(), t.view(), &opts).unwrap();
                assert_close(
                    got.view(),
                    want.view(),
                    LOG_ABS,
                    1e-4,
                    &format!("{case} soft"),
                );
                assert_close(
                    ggot.view(),
                    gwant.view(),
                    1e-6,
                    1e-4,
                    &format!("{case} soft grad"),
                );
            }
        }
    }
}
