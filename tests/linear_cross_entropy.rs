//! The linear cross-entropy's CPU reference (the oracle of issue 15's fused kernels): hand
//! values, every option against finite differences of its own loss, and its errors.

mod common;

use common::*;
use ndarray::{Array1, Array2, array};
use softmax_ce::{CrossEntropyOptions, Labels, LinearCrossEntropyOptions, Loss, Reduction, cpu};

/// The loss as one number: the reduced value, or the sum of the per-row losses for `none`
/// (whose gradient the reference returns).
fn total(loss: Loss) -> f64 {
    match loss {
        Loss::Reduced(v) => f64::from(v),
        Loss::PerRow(v) => v.iter().map(|&l| f64::from(l)).sum(),
    }
}

/// A soft-capped row by hand: the loss of `c tanh(z / c)`.
#[test]
fn softcap_is_applied_before_the_loss() {
    let h = array![[2.0f32, -1.0]];
    let w = array![[1.0f32, 1.0], [3.0, 0.0], [0.0, -2.0]];
    let b = array![0.5f32, -0.25, 0.0];
    let y = Labels::new([1], 3, -100).unwrap();
    let c = 2.5f64;
    let z = [2.0 - 1.0 + 0.5, 6.0 - 0.25, 2.0];
    let capped: Vec<f64> = z.iter().map(|&z| c * (z / c).tanh()).collect();
    let lse = capped.iter().map(|v| v.exp()).sum::<f64>().ln();
    let want = lse - capped[1];
    let opts = LinearCrossEntropyOptions::default().softcap(c as f32);
    let got = cpu::linear_cross_entropy(h.view(), w.view(), Some(b.view()), &y, &opts).unwrap();
    assert!((total(got) - want).abs() < 1e-6, "{want}");
    let logits = cpu::linear_logits(h.view(), w.view(), Some(b.view()), Some(c as f32)).unwrap();
    for (got, want) in logits.iter().zip(&capped) {
        assert!((f64::from(*got) - want).abs() < 1e-6);
    }
}

/// Every option and their combinations: the analytic gradients with respect to H, W and b
/// against central differences of the reference's own loss.
#[test]
fn gradients_match_finite_differences_under_every_option() {
    let (n, d, v) = (5, 4, 7);
    let h = logits(n, d, 1.0, 1);
    let w = logits(v, d, 1.0, 2);
    let bias = logits(1, v, 0.5, 3).row(0).to_owned();
    let y = Labels::new([0, 6, -100, 3, 3], v, -100).unwrap();
    let weights = Array1::from_iter((0..v).map(|j| 0.5 + j as f32 / 4.0));
    let mut cases = Vec::new();
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let base = CrossEntropyOptions::default().reduction(reduction);
        for (name, loss) in [
            ("plain", base.clone()),
            ("smoothing", base.clone().label_smoothing(0.2)),
            ("weights", base.clone().weight(weights.clone())),
            ("z-loss", base.clone().z_loss(0.1)),
            (
                "all",
                base.clone()
                    .label_smoothing(0.1)
                    .weight(weights.clone())
                    .z_loss(0.05),
            ),
        ] {
            for softcap in [None, Some(1.5f32)] {
                let mut opts = LinearCrossEntropyOptions::default().loss(loss.clone());
                opts.softcap = softcap;
                cases.push((format!("{name} {reduction} softcap {softcap:?}"), opts));
            }
        }
    }
    for (case, opts) in &cases {
        let loss_at = |h: &Array2<f32>, w: &Array2<f32>, b: &Array1<f32>| {
            total(cpu::linear_cross_entropy(h.view(), w.view(), Some(b.view()), &y, opts).unwrap())
        };
        let g = cpu::linear_cross_entropy_grad(h.view(), w.view(), Some(bias.view()), &y, opts)
            .unwrap();
        let step = 1e-2f32;
        let check = |analytic: f32, plus: f64, minus: f64, what: String| {
            let numeric = (plus - minus) / (2.0 * f64::from(step));
            assert!(
                (f64::from(analytic) - numeric).abs() < 2e-3 + 2e-2 * numeric.abs(),
                "{case}, {what}: analytic {analytic}, numeric {numeric}"
            );
        };
        for i in 0..n {
            for k in 0..d {
                let (mut hp, mut hm) = (h.clone(), h.clone());
                hp[[i, k]] += step;
                hm[[i, k]] -= step;
                let (p, m) = (loss_at(&hp, &w, &bias), loss_at(&hm, &w, &bias));
                check(g.hidden[[i, k]], p, m, format!("dH[{i}, {k}]"));
            }
        }
        for j in 0..v {
            for k in 0..d {
                let (mut wp, mut wm) = (w.clone(), w.clone());
                wp[[j, k]] += step;
                wm[[j, k]] -= step;
                let (p, m) = (loss_at(&h, &wp, &bias), loss_at(&h, &wm, &bias));
                check(g.classifier[[j, k]], p, m, format!("dW[{j}, {k}]"));
            }
            let (mut bp, mut bm) = (bias.clone(), bias.clone());
            bp[j] += step;
            bm[j] -= step;
            let (p, m) = (loss_at(&h, &w, &bp), loss_at(&h, &w, &bm));
            check(g.bias.as_ref().unwrap()[j], p, m, format!("db[{j}]"));
        }
        // The ignored row (2) adds nothing to dH.
        assert!(g.hidden.row(2).iter().all(|&v| v == 0.0), "{case}");
    }
}

/// Without a softcap the op is the cross-entropy of `H W^T + b`, and with no bias it has no
/// bias gradient; an all-ignored mean is NaN with zero gradients.
#[test]
fn it_is_the_cross_entropy_of_the_product() {
    let (h, w) = (logits(6, 5, 2.0, 4), logits(9, 5, 2.0, 5));
    let y = labels(6, 9, 3, 6);
    let opts = LinearCrossEntropyOptions::default();
    let z = h.dot(&w.t());
    let want = cpu::cross_entropy(z.view(), &y, &opts.loss).unwrap();
    let got = cpu::linear_cross_entropy(h.view(), w.view(), None, &y, &opts).unwrap();
    assert_loss(got, want, "no bias");
    let g = cpu::linear_cross_entropy_grad(h.view(), w.view(), None, &y, &opts).unwrap();
    assert!(g.bias.is_none());
    let dz = cpu::cross_entropy_grad(z.view(), &y, &opts.loss).unwrap();
    assert_close(g.hidden.view(), dz.dot(&w).view(), 1e-6, 1e-5, "dH = G W");
    assert_close(
        g.classifier.view(),
        dz.t().dot(&h).view(),
        1e-6,
        1e-5,
        "dW = G^T H",
    );

    let ignored = Labels::new([-100; 6], 9, -100).unwrap();
    let loss = cpu::linear_cross_entropy(h.view(), w.view(), None, &ignored, &opts).unwrap();
    assert!(total(loss).is_nan());
    let g = cpu::linear_cross_entropy_grad(h.view(), w.view(), None, &ignored, &opts).unwrap();
    assert!(g.hidden.iter().chain(&g.classifier).all(|&v| v == 0.0));
}

#[test]
fn bad_shapes_and_options_are_errors_naming_the_values() {
    let (h, w) = (logits(3, 4, 1.0, 7), logits(5, 4, 1.0, 8));
    let y = labels(3, 5, 0, 9);
    let opts = LinearCrossEntropyOptions::default();
    let err = |r: softmax_ce::Result<Loss>| r.unwrap_err().to_string();
    let narrow = logits(5, 3, 1.0, 10);
    let e = err(cpu::linear_cross_entropy(
        h.view(),
        narrow.view(),
        None,
        &y,
        &opts,
    ));
    assert!(
        e.contains("a classifier of 4 columns") && e.contains("5 x 3"),
        "{e}"
    );
    let b = Array1::zeros(4);
    let e = err(cpu::linear_cross_entropy(
        h.view(),
        w.view(),
        Some(b.view()),
        &y,
        &opts,
    ));
    assert!(e.contains("a bias of 5 values"), "{e}");
    let e = err(cpu::linear_cross_entropy(
        h.view(),
        w.view(),
        None,
        &labels(2, 5, 0, 1),
        &opts,
    ));
    assert!(e.contains('3') && e.contains('2'), "{e}");
    for c in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        let bad = LinearCrossEntropyOptions::default().softcap(c);
        let e = err(cpu::linear_cross_entropy(
            h.view(),
            w.view(),
            None,
            &y,
            &bad,
        ));
        assert!(e.contains("softcap"), "{e}");
    }
    let empty = Array2::<f32>::zeros((0, 4));
    let e = cpu::linear_logits(h.view(), empty.view(), None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("class dimension"), "{e}");
}
