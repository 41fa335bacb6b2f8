//! Softmax and log-softmax backward and binary cross-entropy with logits: the CPU reference
//! against hand values and finite differences, the GPU against the CPU.

mod common;

use common::*;
use ndarray::{Array2, array};
use softmax_ce::cpu::{self, BceLoss};
use softmax_ce::{Error, Reduction};

/// Central differences of `f` at `x`, in f64 on an f32 grid (h large enough for f32 inputs).
fn numeric_grad(x: &Array2<f32>, f: impl Fn(&Array2<f32>) -> f64) -> Array2<f64> {
    let h = 1e-2f32;
    Array2::from_shape_fn(x.raw_dim(), |(i, j)| {
        let (mut up, mut down) = (x.clone(), x.clone());
        up[[i, j]] += h;
        down[[i, j]] -= h;
        (f(&up) - f(&down)) / (2.0 * h as f64)
    })
}

fn assert_grad(got: &Array2<f32>, want: &Array2<f64>, case: &str) {
    for ((idx, &g), &w) in got.indexed_iter().zip(want) {
        assert!(
            (g as f64 - w).abs() < 1e-3 * w.abs().max(1.0),
            "{case} {idx:?}: {g} vs {w}"
        );
    }
}

#[test]
fn softmax_backward_is_the_gradient_of_dy_dot_softmax() {
    let x = logits(3, 7, 2.0, 1);
    let dy = logits(3, 7, 1.0, 2);
    let p = cpu::softmax(x.view()).unwrap();
    let got = cpu::softmax_backward(p.view(), dy.view()).unwrap();
    let want = numeric_grad(&x, |x| {
        let p = cpu::softmax(x.view()).unwrap();
        p.iter().zip(&dy).map(|(&p, &d)| p as f64 * d as f64).sum()
    });
    assert_grad(&got, &want, "softmax_backward");
}

#[test]
fn log_softmax_backward_is_the_gradient_of_dy_dot_log_softmax() {
    let x = logits(3, 7, 2.0, 3);
    let dy = logits(3, 7, 1.0, 4);
    let lp = cpu::log_softmax(x.view()).unwrap();
    let got = cpu::log_softmax_backward(lp.view(), dy.view()).unwrap();
    let want = numeric_grad(&x, |x| {
        let lp = cpu::log_softmax(x.view()).unwrap();
        lp.iter().zip(&dy).map(|(&l, &d)| l as f64 * d as f64).sum()
    });
    assert_grad(&got, &want, "log_softmax_backward");
}

/// Hand values: with uniform p over 2 classes and dy = (1, 0), the Jacobian row gives
/// dx = p (dy - p . dy) = (0.5 * 0.5, 0.5 * -0.5).
#[test]
fn backward_hand_values() {
    let p = array![[0.5f32, 0.5]];
    let dy = array![[1.0f32, 0.0]];
    assert_eq!(
        cpu::softmax_backward(p.view(), dy.view()).unwrap(),
        array![[0.25f32, -0.25]]
    );
    let lp = p.mapv(f32::ln);
    // dy - exp(lp) * sum(dy) = (1 - 0.5, 0 - 0.5)
    assert_eq!(
        cpu::log_softmax_backward(lp.view(), dy.view()).unwrap(),
        array![[0.5f32, -0.5]]
    );
}

#[test]
fn bce_hand_values_and_stability() {
    let z = array![[0.0f32, 100.0, -100.0, 2.0]];
    let t = array![[1.0f32, 1.0, 1.0, 0.25]];
    let BceLoss::PerElement(l) = cpu::bce_with_logits(z.view(), t.view(), Reduction::None).unwrap()
    else {
        panic!("none gives per-element losses");
    };
    assert!((l[[0, 0]] - std::f32::consts::LN_2).abs() < 1e-7);
    assert!(
        l[[0, 1]] < 1e-30,
        "a confident right answer costs nothing: {}",
        l[[0, 1]]
    );
    assert_eq!(
        l[[0, 2]],
        100.0,
        "a confident wrong answer costs |z|, never inf"
    );
    // max(z,0) - z t + log(1 + e^-|z|) = 2 - 0.5 + log(1 + e^-2)
    assert!((l[[0, 3]] as f64 - (1.5 + (1.0 + (-2.0f64).exp()).ln())).abs() < 1e-6);
    let g = cpu::bce_with_logits_grad(z.view(), t.view(), Reduction::Sum).unwrap();
    assert_eq!(g[[0, 0]], -0.5);
    let BceLoss::Reduced(mean) = cpu::bce_with_logits(z.view(), t.view(), Reduction::Mean).unwrap()
    else {
        panic!("mean is reduced");
    };
    assert!((mean - l.sum() / 4.0).abs() < 1e-6);
    let empty = Array2::<f32>::zeros((0, 3));
    let BceLoss::Reduced(nan) =
        cpu::bce_with_logits(empty.view(), empty.view(), Reduction::Mean).unwrap()
    else {
        panic!();
    };
    assert!(nan.is_nan(), "a mean over nothing is NaN, as in PyTorch");
}

#[test]
fn bce_gradient_matches_finite_differences() {
    let z = logits(4, 5, 3.0, 5);
    let t = logits(4, 5, 0.5, 6).mapv(|v| v + 0.5);
    for reduction in [Reduction::Mean, Reduction::Sum] {
        let got = cpu::bce_with_logits_grad(z.view(), t.view(), reduction).unwrap();
        let want = numeric_grad(&z, |z| {
            match cpu::bce_with_logits(z.view(), t.view(), reduction).unwrap() {
                BceLoss::Reduced(v) => v as f64,
                BceLoss::PerElement(_) => unreachable!(),
            }
        });
        assert_grad(&got, &want, &format!("bce {reduction}"));
    }
}

/// Shapes around the workgroup sizes, in every configuration, plain and adversarial.
#[test]
fn gpu_matches_cpu() {
    for (name, gpu) in configs() {
        for (rows, cols) in [
            (1, 1),
            (3, 5),
            (17, 33),
            (64, 64),
            (65, 257),
            (5, 1025),
            (2, 4099),
        ] {
            if name == "windows" && cols * 4 > 4000 {
                continue;
            }
            let case = format!("{name} {rows}x{cols}");
            let x = logits(rows, cols, 4.0, (rows * cols) as u64);
            let dy = logits(rows, cols, 1.0, 7);
            let p = cpu::softmax(x.view()).unwrap();
            let lp = cpu::log_softmax(x.view()).unwrap();
            let (gp, gdy) = (
                gpu.upload(p.view()).unwrap(),
                gpu.upload(dy.view()).unwrap(),
            );
            let got = gpu
                .download(&gpu.softmax_backward(&gp, &gdy).unwrap())
                .unwrap();
            let want = cpu::softmax_backward(p.view(), dy.view()).unwrap();
            assert_close(
                got.view(),
                want.view(),
                1e-6,
                1e-4,
                &format!("{case} softmax_backward"),
            );
            let glp = gpu.upload(lp.view()).unwrap();
            let got = gpu
                .download(&gpu.log_softmax_backward(&glp, &gdy).unwrap())
                .unwrap();
            let want = cpu::log_softmax_backward(lp.view(), dy.view()).unwrap();
            assert_close(
                got.view(),
                want.view(),
                1e-5,
                1e-4,
                &format!("{case} log_softmax_backward"),
            );

            let mut z = adversarial(rows, cols, 3).mapv(|v| v.clamp(-1e4, 1e4));
            z.mapv_inplace(|v| if v.is_nan() { 0.0 } else { v });
            let t = logits(rows, cols, 0.5, 8).mapv(|v| v + 0.5);
            let (gz, gt) = (gpu.upload(z.view()).unwrap(), gpu.upload(t.view()).unwrap());
            for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
                let (loss, grad) = gpu.bce_with_logits_with_grad(&gz, &gt, reduction).unwrap();
                let got = gpu.download_bce(&loss).unwrap().into_array();
                let want = cpu::bce_with_logits(z.view(), t.view(), reduction)
                    .unwrap()
                    .into_array();
                assert_close(
                    got.view(),
                    want.view(),
                    1e-5,
                    1e-5,
                    &format!("{case} bce {reduction}"),
                );
                let got = gpu.download(&grad).unwrap();
                let want = cpu::bce_with_logits_grad(z.view(), t.view(), reduction).unwrap();
                assert_close(
                    got.view(),
                    want.view(),
                    1e-7,
                    1e-5,
                    &format!("{case} bce grad {reduction}"),
                );
            }
        }
    }
}

#[test]
fn mismatched_shapes_are_errors() {
    let a = logits(3, 4, 1.0, 1);
    let b = logits(3, 5, 1.0, 2);
    let err = cpu::softmax_backward(a.view(), b.view()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                op: "softmax_backward",
                ..
            }
        ),
        "{err}"
    );
    let err = cpu::bce_with_logits(a.view(), b.view(), Reduction::Mean).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                op: "bce_with_logits",
                ..
            }
        ),
        "{err}"
    );
    if let Some(gpu) = gpu() {
        let (ga, gb) = (gpu.upload(a.view()).unwrap(), gpu.upload(b.view()).unwrap());
        let err = gpu.log_softmax_backward(&ga, &gb).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Shape {
                    op: "log_softmax_backward",
                    ..
                }
            ),
            "{err}"
        );
        let err = gpu
            .bce_with_logits_with_grad(&ga, &gb, Reduction::Sum)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Shape {
                    op: "bce_with_logits",
                    ..
                }
            ),
            "{err}"
        );
    }
}
