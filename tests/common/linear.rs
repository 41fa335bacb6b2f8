//! The linear cross-entropy's test cases and comparisons, shared by its CPU and GPU tests.

use ndarray::{Array1, Array2};
use softmax_ce::{CrossEntropyOptions, LinearCrossEntropyOptions, Reduction, cpu};

use super::assert_close;

/// Options of every kind and their combination, each with and without a soft cap: the cases
/// both blocked paths (CPU and GPU) are held to the reference on.
pub fn option_cases(classes: usize) -> Vec<(String, LinearCrossEntropyOptions)> {
    let weights = Array1::from_iter((0..classes).map(|j| 0.25 + (j % 7) as f32 / 3.0));
    let mut cases = Vec::new();
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let base = CrossEntropyOptions::default().reduction(reduction);
        for (name, loss) in [
            ("plain", base.clone()),
            ("smoothing", base.clone().label_smoothing(0.1)),
            ("weights", base.clone().weight(weights.clone())),
            ("z-loss", base.clone().z_loss(1e-3)),
            (
                "smoothing, weights, z-loss",
                base.clone()
                    .label_smoothing(0.1)
                    .weight(weights.clone())
                    .z_loss(1e-3),
            ),
        ] {
            for softcap in [None, Some(4.0f32)] {
                let mut opts = LinearCrossEntropyOptions::default().loss(loss.clone());
                opts.softcap = softcap;
                cases.push((format!("{name}, {reduction}, softcap {softcap:?}"), opts));
            }
        }
    }
    cases
}

/// Gradients against the reference's: `rel` relative, and `rel / 10` of the largest entry
/// absolute (an entry near 0 carries the rounding of the terms it sums); `db` within
/// `db_abs` absolute.
pub fn assert_grads_close(
    got: &cpu::LinearGrads,
    want: &cpu::LinearGrads,
    (rel, db_abs): (f32, f32),
    case: &str,
) {
    let tol = |want: &Array2<f32>| rel / 10.0 * want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    assert_close(
        got.hidden.view(),
        want.hidden.view(),
        tol(&want.hidden),
        rel,
        &format!("{case}: dH"),
    );
    assert_close(
        got.classifier.view(),
        want.classifier.view(),
        tol(&want.classifier),
        rel,
        &format!("{case}: dW"),
    );
    match (&got.bias, &want.bias) {
        (Some(g), Some(w)) => assert_close(g.view(), w.view(), db_abs, rel, &format!("{case}: db")),
        (None, None) => {}
        _ => panic!("{case}: a bias gradient on one side only"),
    }
}
