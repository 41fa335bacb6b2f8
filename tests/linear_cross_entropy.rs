//! The linear cross-entropy's CPU reference (the oracle of issue 15's fused kernels): hand
//! values, every option against finite differences of its own loss, and its errors.

mod common;

use common::linear::{assert_grads_close, option_cases};
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

/// The CPU blocked path's gradients: f32 blocks, sums in f64.
const CPU_TOL: (f32, f32) = (1e-4, 1e-6);

/// The vocabulary-blocked path against the materialising reference: shapes that are not
/// multiples of its blocks of rows (64) or classes (2048), 1x1x1, and every kind of option.
#[test]
fn the_blocked_path_matches_the_reference() {
    for (n, d, v) in [(1, 1, 1), (37, 19, 1001), (70, 9, 4100)] {
        let h = logits(n, d, 1.0, 11);
        let w = logits(v, d, 1.0, 12);
        let b = logits(1, v, 1.0, 13).row(0).to_owned();
        let y = labels(n, v, 5, 14);
        for (case, opts) in option_cases(v) {
            let case = format!("{n}x{d}x{v}, {case}");
            let (loss, grads) = cpu::vocab::linear_cross_entropy(
                h.view(),
                w.view(),
                Some(b.view()),
                &y,
                &opts,
                true,
            )
            .unwrap();
            let want =
                cpu::linear_cross_entropy(h.view(), w.view(), Some(b.view()), &y, &opts).unwrap();
            assert_loss(loss, want, &case);
            let want =
                cpu::linear_cross_entropy_grad(h.view(), w.view(), Some(b.view()), &y, &opts)
                    .unwrap();
            assert_grads_close(&grads.unwrap(), &want, CPU_TOL, &case);
        }
    }
}

/// W split over shards at ragged boundaries: the merged statistics (in either order) give the
/// unsharded loss, and each shard's gradients from the merged log-sum-exp the unsharded ones;
/// two runs give the same bits.
#[test]
fn shards_merge_into_the_unsharded_result() {
    use cpu::vocab::{Shard, loss_from_stats, shard_grads, shard_stats};
    let (n, d, v) = (67, 13, 3001);
    let h = logits(n, d, 1.5, 21);
    let w = logits(v, d, 1.5, 22);
    let b = logits(1, v, 1.0, 23).row(0).to_owned();
    let y = labels(n, v, 4, 24);
    for (case, opts) in option_cases(v) {
        let (whole, whole_grads) =
            cpu::vocab::linear_cross_entropy(h.view(), w.view(), Some(b.view()), &y, &opts, true)
                .unwrap();
        let whole_grads = whole_grads.unwrap();
        for cuts in [vec![0, 1500, v], vec![0, 1, 2049, 2050, v]] {
            let shards: Vec<Shard<'_>> = cuts
                .windows(2)
                .map(|c| Shard {
                    classifier: w.slice(ndarray::s![c[0]..c[1], ..]),
                    bias: Some(b.slice(ndarray::s![c[0]..c[1]])),
                    first_class: c[0],
                })
                .collect();
            let stats: Vec<_> = shards
                .iter()
                .map(|s| shard_stats(h.view(), s, &y, &opts).unwrap())
                .collect();
            let forward = stats[1..]
                .iter()
                .fold(stats[0].clone(), |acc, s| acc.merge(s).unwrap());
            let backward = stats[..stats.len() - 1]
                .iter()
                .rev()
                .fold(stats[stats.len() - 1].clone(), |acc, s| {
                    acc.merge(s).unwrap()
                });
            let case = format!("{case}, cuts {cuts:?}");
            for merged in [&forward, &backward] {
                let loss = loss_from_stats(merged, &y, &opts).unwrap();
                assert_loss(loss, whole.clone(), &case);
            }
            let mut hidden = Array2::<f32>::zeros((n, d));
            let mut classifier = Vec::new();
            let mut bias = Vec::new();
            for s in &shards {
                let g = shard_grads(h.view(), s, &y, &opts, &forward).unwrap();
                hidden += &g.hidden;
                classifier.push(g.classifier);
                bias.extend(g.bias.unwrap());
            }
            let views: Vec<_> = classifier.iter().map(|c| c.view()).collect();
            let sharded = cpu::LinearGrads {
                hidden,
                classifier: ndarray::concatenate(ndarray::Axis(0), &views).unwrap(),
                bias: Some(Array1::from(bias)),
            };
            assert_grads_close(&sharded, &whole_grads, CPU_TOL, &case);
        }
        let (again, again_grads) =
            cpu::vocab::linear_cross_entropy(h.view(), w.view(), Some(b.view()), &y, &opts, true)
                .unwrap();
        assert_eq!(
            format!("{again:?}"),
            format!("{whole:?}"),
            "{case}: not deterministic"
        );
        assert_eq!(
            again_grads.unwrap(),
            whole_grads,
            "{case}: not deterministic"
        );
    }
    // A shard past the vocabulary, or of no classes, is an error naming it.
    let opts = LinearCrossEntropyOptions::default();
    let past = Shard {
        classifier: w.slice(ndarray::s![..10, ..]),
        bias: None,
        first_class: v - 5,
    };
    let e = shard_stats(h.view(), &past, &y, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "classes {}..{} of a vocabulary of {v}",
            v - 5,
            v + 5
        )),
        "{e}"
    );
}

/// Large logits: the backward pass takes `exp((z - m) - ln s)` from the merged statistics, not
/// `exp(z - lse)` from a rounded log-sum-exp (a logit of 1e7 would lose its probability).
#[test]
fn the_blocked_gradients_keep_large_logits_exact() {
    let h = array![[1e7f32]];
    let w = array![[1.0f32], [1.0]];
    let y = Labels::new([0], 2, -100).unwrap();
    let opts = LinearCrossEntropyOptions::default();
    let (_, g) =
        cpu::vocab::linear_cross_entropy(h.view(), w.view(), None, &y, &opts, true).unwrap();
    // p = (1/2, 1/2): dW = (p - onehot)^T H = (-5e6, 5e6), dH = (p - onehot) W = 0.
    let g = g.unwrap();
    assert_eq!(g.classifier, array![[-5e6f32], [5e6]]);
    assert_eq!(g.hidden, array![[0.0f32]]);
    // Logits in the thousands, every option: still the reference's gradients.
    let (h, w) = (logits(9, 4, 30.0, 61), logits(300, 4, 30.0, 62));
    let y = labels(9, 300, 4, 63);
    for (case, opts) in option_cases(300) {
        let (_, got) =
            cpu::vocab::linear_cross_entropy(h.view(), w.view(), None, &y, &opts, true).unwrap();
        let want = cpu::linear_cross_entropy_grad(h.view(), w.view(), None, &y, &opts).unwrap();
        assert_grads_close(
            &got.unwrap(),
            &want,
            CPU_TOL,
            &format!("logits near 1e3, {case}"),
        );
    }
}

/// A vocabulary shard (or a leading block) whose logits are all -inf adds nothing to the sum
/// of exponentials, as in the reference: ln 2 for two equal live classes, +inf with label
/// smoothing (the masked classes' smoothing terms), whether the mask is one shard of two or
/// inside one shard.
#[test]
fn masked_classes_merge_as_the_reference_does() {
    use cpu::vocab::{Shard, loss_from_stats, shard_stats};
    let h = array![[0.0f32]];
    let w = array![[1.0f32], [1.0], [1.0], [1.0]];
    let b = array![f32::NEG_INFINITY, f32::NEG_INFINITY, 0.0, 0.0];
    let y = Labels::new([2], 4, -100).unwrap();
    let shard = |r: std::ops::Range<usize>| Shard {
        classifier: w.slice(ndarray::s![r.clone(), ..]),
        bias: Some(b.slice(ndarray::s![r.clone()])),
        first_class: r.start,
    };
    for smoothing in [0.0, 0.1] {
        let opts = LinearCrossEntropyOptions::default()
            .loss(CrossEntropyOptions::default().label_smoothing(smoothing));
        let want = cpu::linear_cross_entropy(h.view(), w.view(), Some(b.view()), &y, &opts)
            .unwrap()
            .scalar()
            .unwrap();
        if smoothing == 0.0 {
            assert!((want - 2f32.ln()).abs() < 1e-6, "{want}");
        } else {
            assert_eq!(want, f32::INFINITY);
        }
        let (whole, _) =
            cpu::vocab::linear_cross_entropy(h.view(), w.view(), Some(b.view()), &y, &opts, false)
                .unwrap();
        assert_loss(
            whole,
            Loss::Reduced(want),
            &format!("one shard, smoothing {smoothing}"),
        );
        let (masked, live) = (
            shard_stats(h.view(), &shard(0..2), &y, &opts).unwrap(),
            shard_stats(h.view(), &shard(2..4), &y, &opts).unwrap(),
        );
        for merged in [masked.merge(&live).unwrap(), live.merge(&masked).unwrap()] {
            let loss = loss_from_stats(&merged, &y, &opts).unwrap();
            assert_loss(
                loss,
                Loss::Reduced(want),
                &format!("two shards, smoothing {smoothing}"),
            );
        }
    }
    // Statistics of another row count are an error, not a panic.
    let short = cpu::vocab::ShardStats {
        max: Array1::zeros(2),
        sumexp: Array1::zeros(1),
        label_logit: Array1::zeros(2),
        smooth: Array1::zeros(2),
        weight: 1.0,
        classes: 0..1,
    };
    let e = short.merge(&short).unwrap_err().to_string();
    assert!(e.contains("statistics of 2 rows"), "{e}");
    // Overlapping or partial statistics are errors too: each class counts once, and the loss
    // needs them all.
    let opts = LinearCrossEntropyOptions::default();
    let (low, high) = (
        shard_stats(h.view(), &shard(0..2), &y, &opts).unwrap(),
        shard_stats(h.view(), &shard(2..4), &y, &opts).unwrap(),
    );
    let e = low.merge(&low).unwrap_err().to_string();
    assert!(e.contains("only adjacent shards merge"), "{e}");
    let e = loss_from_stats(&high, &y, &opts).unwrap_err().to_string();
    assert!(
        e.contains("statistics of classes 2..4 of a vocabulary of 4"),
        "{e}"
    );
    let e = cpu::vocab::shard_grads(h.view(), &shard(2..4), &y, &opts, &high)
        .unwrap_err()
        .to_string();
    assert!(e.contains("merge every shard's first"), "{e}");
}
