//! The CPU reference against values derived by hand and against finite differences. It is the
//! oracle of every GPU test, so it is checked independently of any GPU.

mod common;

use common::*;
use ndarray::{Array1, Array2, array};
use softmax_ce::{CrossEntropyOptions, Error, Labels, Reduction, cpu};

/// softmax([1, 2, 3]) = e^k / (e + e^2 + e^3), k = 1, 2, 3.
#[test]
fn softmax_of_one_two_three() {
    let e = std::f64::consts::E;
    let z = e + e * e + e * e * e;
    let want = array![[(e / z) as f32, (e * e / z) as f32, (e * e * e / z) as f32]];
    let got = cpu::softmax(array![[1.0f32, 2.0, 3.0]].view()).unwrap();
    assert_close(got.view(), want.view(), 0.0, 1e-7, "softmax [1,2,3]");
    // Known digits: 0.09003057, 0.24472847, 0.66524096.
    assert_close(
        got.view(),
        array![[0.09003057f32, 0.24472847, 0.66524096]].view(),
        0.0,
        1e-7,
        "digits",
    );
}

/// Softmax is shift-invariant, so rows at +-1e4 and 1e30 give the same answer as small ones.
#[test]
fn softmax_is_shift_invariant_at_extreme_offsets() {
    let base = array![[0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0]];
    let want = cpu::softmax(base.view()).unwrap();
    for shift in [-1e4f32, 1e4] {
        let got = cpu::softmax((&base + shift).view()).unwrap();
        assert_close(
            got.view(),
            want.view(),
            0.0,
            1e-3,
            &format!("shift {shift}"),
        );
    }
    let big = array![[1e30f32, 1e30, -1e30]];
    assert_eq!(
        cpu::softmax(big.view()).unwrap(),
        array![[0.5f32, 0.5, 0.0]]
    );
}

#[test]
fn softmax_rows_sum_to_one_and_equal_rows_are_uniform() {
    let x = logits(40, 77, 20.0, 3);
    let p = cpu::softmax(x.view()).unwrap();
    for row in p.rows() {
        assert!((row.sum() - 1.0).abs() < 1e-5, "{}", row.sum());
    }
    let equal = Array2::from_elem((3, 8), 7.0f32);
    let p = cpu::softmax(equal.view()).unwrap();
    assert!(p.iter().all(|&v| v == 0.125));
}

/// One dominant logit takes all the mass, exactly (candle's 4096-wide case).
#[test]
fn dominant_entry_is_exactly_one() {
    let mut x = Array2::from_elem((1, 4096), -1e4f32);
    x[[0, 4095]] = 1e4;
    let p = cpu::softmax(x.view()).unwrap();
    assert_eq!(p[[0, 4095]], 1.0);
    assert!(p.iter().take(4095).all(|&v| v == 0.0));
}

/// Infinities follow PyTorch: -inf entries get 0, an all -inf row or a +inf entry gives NaN,
/// and logsumexp returns the infinite maximum itself.
#[test]
fn infinities_follow_pytorch() {
    let inf = f32::INFINITY;
    let x = array![[-inf, 0.0, 1.0], [-inf, -inf, -inf], [inf, 1.0, 2.0]];
    let p = cpu::softmax(x.view()).unwrap();
    assert_eq!(p[[0, 0]], 0.0);
    assert!((p[[0, 2]] - 0.7310586).abs() < 1e-7);
    assert!(p.row(1).iter().all(|v| v.is_nan()));
    assert!(p.row(2).iter().all(|v| v.is_nan()));
    let lse = cpu::logsumexp(x.view()).unwrap();
    assert!((lse[0] - 1.3132616).abs() < 1e-6);
    assert_eq!(lse[1], -inf);
    assert_eq!(lse[2], inf);
    assert_eq!(cpu::row_max(x.view()).unwrap(), array![1.0f32, -inf, inf]);
    assert_eq!(
        cpu::row_sumexp(x.view(), array![1.0f32, -inf, inf].view()).unwrap()[1],
        0.0
    );
}

#[test]
fn log_softmax_is_log_of_softmax() {
    let x = logits(10, 13, 8.0, 5);
    let want = cpu::softmax(x.view()).unwrap().mapv(f32::ln);
    let got = cpu::log_softmax(x.view()).unwrap();
    assert_close(got.view(), want.view(), 1e-6, 1e-6, "log_softmax");
}

/// The loss of one row is -log p_y: [1, 2, 3] with label 2 gives -ln 0.66524096 = 0.40760596.
#[test]
fn cross_entropy_of_a_known_row() {
    let x = array![[1.0f32, 2.0, 3.0], [1.0, 2.0, 3.0]];
    let labels = Labels::new([2, 0], 3, -100).unwrap();
    let none = CrossEntropyOptions::default().reduction(Reduction::None);
    let loss = cpu::cross_entropy(x.view(), &labels, &none).unwrap();
    let got = loss.per_row().unwrap();
    assert!((got[0] - 0.40760596).abs() < 1e-7);
    assert!((got[1] as f64 - 2.40760596).abs() < 1e-6);
    let mean = cpu::cross_entropy(x.view(), &labels, &CrossEntropyOptions::default()).unwrap();
    assert!((mean.scalar().unwrap() as f64 - 1.40760596).abs() < 1e-6);
    let sum = CrossEntropyOptions::default().reduction(Reduction::Sum);
    let sum = cpu::cross_entropy(x.view(), &labels, &sum).unwrap();
    assert!((sum.scalar().unwrap() as f64 - 2.81521192).abs() < 1e-6);
}

/// Ignored rows add nothing and leave the mean's denominator; all ignored gives NaN.
#[test]
fn ignore_index_semantics() {
    let x = array![[1.0f32, 2.0, 3.0], [f32::NAN, 0.0, 0.0], [1.0, 2.0, 3.0]];
    let labels = Labels::new([2, -100, 0], 3, -100).unwrap();
    let mean = cpu::cross_entropy(x.view(), &labels, &CrossEntropyOptions::default()).unwrap();
    assert!((mean.scalar().unwrap() as f64 - 1.40760596).abs() < 1e-6);
    let grad = cpu::cross_entropy_grad(x.view(), &labels, &CrossEntropyOptions::default()).unwrap();
    assert!(grad.row(1).iter().all(|&v| v == 0.0));
    let none = Labels::new([-100, -100, -100], 3, -100).unwrap();
    let mean = cpu::cross_entropy(x.view(), &none, &CrossEntropyOptions::default()).unwrap();
    assert!(mean.scalar().unwrap().is_nan());
}

/// The gradient of the reduced loss, against central differences of the loss itself.
#[test]
fn cross_entropy_grad_matches_finite_differences() {
    let x = logits(4, 5, 2.0, 11);
    let labels = Labels::new([3, -100, 0, 4], 5, -100).unwrap();
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let opts = CrossEntropyOptions::default().reduction(reduction);
        // For `none` the gradient is that of the sum of per-row losses.
        let loss = |x: &Array2<f32>| -> f64 {
            cpu::cross_entropy(x.view(), &labels, &opts)
                .unwrap()
                .into_array()
                .iter()
                .map(|&v| v as f64)
                .sum()
        };
        let grad = cpu::cross_entropy_grad(x.view(), &labels, &opts).unwrap();
        let h = 1e-2f32;
        for i in 0..x.nrows() {
            for j in 0..x.ncols() {
                let mut up = x.clone();
                up[[i, j]] += h;
                let mut down = x.clone();
                down[[i, j]] -= h;
                let fd = (loss(&up) - loss(&down)) / (2.0 * h as f64);
                assert!(
                    (fd - grad[[i, j]] as f64).abs() < 2e-4,
                    "{reduction} [{i},{j}]: finite difference {fd}, gradient {}",
                    grad[[i, j]]
                );
            }
        }
    }
}

/// The staged pieces compose into the whole: one_hot_subtract(softmax) is the gradient.
#[test]
fn one_hot_subtract_of_softmax_is_the_gradient() {
    let x = logits(6, 4, 3.0, 2);
    let labels = Labels::new([0, 1, 2, 3, -100, 1], 4, -100).unwrap();
    let p = cpu::softmax(x.view()).unwrap();
    let g = cpu::one_hot_subtract(p.view(), &labels, 0.2).unwrap();
    let want = cpu::cross_entropy_grad(x.view(), &labels, &CrossEntropyOptions::default()).unwrap();
    assert_close(g.view(), want.view(), 1e-7, 1e-6, "one_hot_subtract");
    // Each live row of p - onehot sums to 0.
    let g1 = cpu::one_hot_subtract(p.view(), &labels, 1.0).unwrap();
    for row in g1.rows() {
        assert!(row.sum().abs() < 1e-6);
    }
}

/// row_max and row_sumexp are the statistics the other ops are built from.
#[test]
fn logsumexp_is_max_plus_log_sumexp() {
    let x = logits(9, 31, 30.0, 8);
    let m = cpu::row_max(x.view()).unwrap();
    let s = cpu::row_sumexp(x.view(), m.view()).unwrap();
    let want: Array1<f32> = &m + &s.mapv(f32::ln);
    let got = cpu::logsumexp(x.view()).unwrap();
    assert_close(got.view(), want.view(), 1e-5, 1e-6, "lse");
}

#[test]
fn bad_input_is_an_error() {
    let x = logits(3, 4, 1.0, 1);
    let empty = Array2::<f32>::zeros((3, 0));
    assert!(matches!(
        cpu::softmax(empty.view()),
        Err(Error::Empty { op: "softmax", .. })
    ));
    assert!(matches!(
        cpu::logsumexp(empty.view()),
        Err(Error::Empty { .. })
    ));
    let wrong_rows = Labels::new([0, 1], 4, -100).unwrap();
    let err =
        cpu::cross_entropy(x.view(), &wrong_rows, &CrossEntropyOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                op: "cross_entropy",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("3 labels over 4 classes"), "{err}");
    let wrong_classes = Labels::new([0, 1, 2], 5, -100).unwrap();
    assert!(
        cpu::cross_entropy_grad(x.view(), &wrong_classes, &CrossEntropyOptions::default()).is_err()
    );
    assert!(cpu::row_sumexp(x.view(), Array1::zeros(2).view()).is_err());
    let err = Labels::new([0, 7], 4, -100).unwrap_err();
    assert!(matches!(
        err,
        Error::LabelOutOfRange {
            label: 7,
            row: 1,
            classes: 4,
            ..
        }
    ));
}

/// Statistics of column chunks merge into those of the whole row, for any split, including
/// chunks that are all -inf.
#[test]
fn lse_stats_of_chunks_merge_into_the_whole() {
    use ndarray::s;
    let mut x = logits(7, 50, 20.0, 3);
    x.slice_mut(s![2, ..25]).fill(f32::NEG_INFINITY);
    x.row_mut(4).fill(f32::NEG_INFINITY);
    let whole = cpu::lse_stats(x.view()).unwrap();
    for split in [1, 13, 25, 49] {
        let left = cpu::lse_stats(x.slice(s![.., ..split])).unwrap();
        let right = cpu::lse_stats(x.slice(s![.., split..])).unwrap();
        let (m, sum) = cpu::merge_lse_stats(&left, &right).unwrap();
        assert_eq!(m, whole.0, "split {split}: maxima");
        assert_close(
            sum.view(),
            whole.1.view(),
            0.0,
            1e-6,
            &format!("split {split}"),
        );
    }
    let bad = (Array1::zeros(3), Array1::zeros(3));
    assert!(cpu::merge_lse_stats(&whole, &bad).is_err());
}
