//! The CPU reference against values derived by hand and against finite differences. It is the
//! oracle of every GPU test, so it is checked independently of any GPU.

mod common;

use common::*;
use ndarray::{Array1, Array2, ArrayView2, array};
use rand::Rng;
use softmax_ce::{CrossEntropyOptions, Error, Labels, Reduction, cpu, f16};

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

// Half precision. An f16 matrix is computed exactly as the same values in f32 (every f16 is an
// f32 and an f64), and each output element is rounded once, from f64, to f16. The oracles below
// are written here, in f64, rather than taken from the crate, and so is the rounding.

/// The f16 nearest `v`, ties to even: bisection over the ordered bit patterns, then one
/// comparison with the exact midpoint (every midpoint of two f16s is an f64). It shares nothing
/// with the crate's conversion nor with `half`'s.
fn nearest_f16(v: f64) -> f16 {
    if v.is_nan() {
        return f16::NAN;
    }
    let a = v.abs();
    // Infinity stands for 2^16 as the upper end of a midpoint: IEEE's overflow threshold,
    // f16::MAX plus half an ulp, is then an ordinary tie to even.
    let value = |b: u16| {
        if b == 0x7C00 {
            65536.0
        } else {
            f16::from_bits(b).to_f64()
        }
    };
    let bits = if a >= 65536.0 {
        0x7C00
    } else {
        let (mut lo, mut hi) = (0u16, 0x7C00u16);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if value(mid) <= a { lo = mid } else { hi = mid }
        }
        let mid = (value(lo) + value(hi)) / 2.0;
        if a < mid || (a == mid && lo % 2 == 0) {
            lo
        } else {
            hi
        }
    };
    f16::from_bits(bits | if v.is_sign_negative() { 0x8000 } else { 0 })
}

/// A row's maximum and `sum exp(x - m)` (shifted by 0 when `m = -inf`), in f64.
fn stats_f64(row: &[f64]) -> (f64, f64) {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let shift = if m == f64::NEG_INFINITY { 0.0 } else { m };
    (m, row.iter().map(|&v| (v - shift).exp()).sum())
}

/// PyTorch's softmax of one row, in f64: NaN for a row holding NaN or `+inf`, or all `-inf`.
fn softmax_f64(row: &[f64]) -> Vec<f64> {
    let (m, s) = stats_f64(row);
    row.iter().map(|&v| (v - m).exp() / s).collect()
}

fn log_softmax_f64(row: &[f64]) -> Vec<f64> {
    let (m, s) = stats_f64(row);
    row.iter().map(|&v| v - m - s.ln()).collect()
}

/// `torch.logsumexp`: the maximum itself when it is infinite.
fn logsumexp_f64(row: &[f64]) -> f64 {
    let (m, s) = stats_f64(row);
    if m.is_infinite() { m } else { m + s.ln() }
}

/// `f` applied to each row of `x`, widened exactly to f64.
fn per_row(x: &Array2<f16>, f: impl Fn(&[f64]) -> Vec<f64>) -> Array2<f64> {
    let mut out = Array2::zeros(x.raw_dim());
    for (mut o, row) in out.rows_mut().into_iter().zip(x.rows()) {
        let row: Vec<f64> = row.iter().map(|v| v.to_f64()).collect();
        o.assign(&Array1::from(f(&row)));
    }
    out
}

/// Asserts `got` is `want` rounded once to f16, bit for bit (any NaN matches any NaN).
fn assert_rounded_f16(got: ArrayView2<f16>, want: &Array2<f64>, case: &str) {
    assert_eq!(got.dim(), want.dim(), "{case}: shapes differ");
    let bad: Vec<String> = got
        .indexed_iter()
        .zip(want.iter())
        .filter(|&((_, g), &w)| {
            let w = nearest_f16(w);
            !(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()))
        })
        .map(|((idx, g), &w)| format!("{idx:?}: got {g:e}, want {w:e} -> {:e}", nearest_f16(w)))
        .collect();
    assert!(
        bad.is_empty(),
        "{case}: {} of {} elements are not the f64 value rounded once; first: {}",
        bad.len(),
        want.len(),
        bad[..bad.len().min(4)].join("; ")
    );
}

/// `v`'s place among the f16s in order: adjacent f16s are one apart, and both zeros are 0.
fn ordered(v: f16) -> i32 {
    let magnitude = i32::from(v.to_bits() & 0x7FFF);
    if v.is_sign_negative() {
        -magnitude
    } else {
        magnitude
    }
}

/// Asserts two f32 arrays are equal bit for bit, any NaN matching any NaN.
fn assert_same_f32<D: ndarray::Dimension>(
    got: ndarray::ArrayView<f32, D>,
    want: ndarray::ArrayView<f32, D>,
    case: &str,
) {
    assert_eq!(got.shape(), want.shape(), "{case}: shapes differ");
    for ((idx, &g), &w) in got.indexed_iter().zip(want.iter()) {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{case}: {idx:?}: got {g:e}, want {w:e}"
        );
    }
}

/// Rows that break naive f16 softmax; row `i` is case `i % 11`: values up to f16's largest
/// finite, 65504, -inf entries, all -inf, equal rows, a dominant entry, +inf, NaN.
fn adversarial_f16(rows: usize, cols: usize, seed: u64) -> Array2<f16> {
    let mut r = rng(seed);
    let mut x = Array2::from_elem((rows, cols), f16::ZERO);
    for (i, mut row) in x.rows_mut().into_iter().enumerate() {
        let mut uniform = |scale: f32| f16::from_f32(r.random_range(-scale..scale));
        match i % 11 {
            0 => row.mapv_inplace(|_| uniform(6e4)),
            1 => row.fill(f16::MAX), // all equal, at the largest finite
            2 => row.mapv_inplace(|_| {
                if uniform(1.0) > f16::ZERO {
                    f16::MAX
                } else {
                    f16::MIN
                }
            }),
            3 => {
                row.mapv_inplace(|_| {
                    if uniform(1.0) > f16::ZERO {
                        f16::NEG_INFINITY
                    } else {
                        uniform(4.0)
                    }
                });
                row[cols / 2] = f16::from_f32(0.5);
            }
            4 => row.fill(f16::NEG_INFINITY), // NaN softmax
            5 => row.fill(f16::from_f32(7.0)),
            6 => {
                row.fill(f16::from_f32(-6e4)); // one dominant entry
                row[cols - 1] = f16::from_f32(6e4);
            }
            7 => {
                row.mapv_inplace(|_| uniform(3.0));
                row[0] = f16::INFINITY; // NaN, as in PyTorch
            }
            8 => {
                row.mapv_inplace(|_| uniform(3.0));
                row[cols / 2] = f16::NAN;
            }
            9 => row.fill(f16::MIN), // all equal, at the most negative finite
            _ => row.mapv_inplace(|_| uniform(8.0)),
        }
    }
    x
}

/// Softmax, log-softmax and the row statistics of f16 rows, against the f64 oracle rounded
/// once, and against the f32 path on the same values, for every adversarial case over widths
/// that are not multiples of a lane and row counts that are not multiples of a workgroup.
#[test]
fn f16_row_ops_are_the_f64_values_rounded_once() {
    for (k, cols) in [1, 2, 3, 4, 5, 7, 8, 31, 33, 1000].into_iter().enumerate() {
        for rows in [0, 1, 11 + 3 * k] {
            let case = format!("{rows} x {cols}");
            let x = adversarial_f16(rows, cols, 40 + k as u64);
            let x32 = x.mapv(f16::to_f32);

            let want = per_row(&x, softmax_f64);
            assert_rounded_f16(cpu::softmax(x.view()).unwrap().view(), &want, &case);
            let f32_path = cpu::softmax(x32.view()).unwrap();
            assert_same_f32(f32_path.view(), want.mapv(|v| v as f32).view(), &case);

            let want = per_row(&x, log_softmax_f64);
            assert_rounded_f16(cpu::log_softmax(x.view()).unwrap().view(), &want, &case);
            let f32_path = cpu::log_softmax(x32.view()).unwrap();
            assert_same_f32(f32_path.view(), want.mapv(|v| v as f32).view(), &case);

            // Per-row results are f32 whatever the storage, and the same as for f32 storage.
            let lse = cpu::logsumexp(x.view()).unwrap();
            assert_same_f32(
                lse.view(),
                cpu::logsumexp(x32.view()).unwrap().view(),
                &case,
            );
            let want: Array1<f32> = x
                .rows()
                .into_iter()
                .map(|r| logsumexp_f64(&r.iter().map(|v| v.to_f64()).collect::<Vec<_>>()) as f32)
                .collect();
            assert_same_f32(lse.view(), want.view(), &case);
            let (m, s) = cpu::lse_stats(x.view()).unwrap();
            let (m32, s32) = cpu::lse_stats(x32.view()).unwrap();
            assert_same_f32(m.view(), m32.view(), &case);
            assert_same_f32(s.view(), s32.view(), &case);
            assert_same_f32(m.view(), cpu::row_max(x.view()).unwrap().view(), &case);
            let sumexp = cpu::row_sumexp(x.view(), m.view()).unwrap();
            assert_same_f32(sumexp.view(), s.view(), &case);
        }
    }
}

#[test]
fn f16_values_derived_by_hand() {
    let h = f16::from_f32;
    // f16(ln 3) = 1.0986328125, so p = [0.2499962, 0.7500038]: 0.25 and 0.75 once rounded.
    let x = array![[h(0.0), h(3f32.ln())]];
    assert_eq!(cpu::softmax(x.view()).unwrap(), array![[h(0.25), h(0.75)]]);
    let p = cpu::softmax(Array2::from_elem((2, 8), h(-3.5)).view()).unwrap();
    assert!(p.iter().all(|&v| v == h(0.125)));
    // 1/3 = 1365.33 / 4096, so 1365 / 4096.
    let p = cpu::softmax(Array2::from_elem((1, 3), h(1.0)).view()).unwrap();
    assert!(p.iter().all(|v| v.to_bits() == 0x3555), "{p}");
    // -ln 4 = -1419.57 / 1024, so -1420 / 1024.
    let lp = cpu::log_softmax(Array2::from_elem((1, 4), h(2.0)).view()).unwrap();
    assert!(lp.iter().all(|&v| v == h(-1.386_718_8)), "{lp}");

    let (max, inf) = (f16::MAX, f16::INFINITY);
    let x = array![
        [max, max],
        [max, f16::MIN],
        [f16::NEG_INFINITY, h(0.0)],
        [f16::NEG_INFINITY, f16::NEG_INFINITY],
        [inf, h(0.0)]
    ];
    let p = cpu::softmax(x.view()).unwrap();
    assert_eq!(p.row(0), array![h(0.5), h(0.5)]);
    assert_eq!(p.row(1), array![h(1.0), h(0.0)]);
    assert_eq!(p.row(2), array![h(0.0), h(1.0)]);
    assert!(p.row(3).iter().chain(p.row(4)).all(|v| v.is_nan()));
    // The per-row results leave f16's range: 65504 + ln 2 is an f32.
    let lse = cpu::logsumexp(x.view()).unwrap();
    assert_eq!(lse[0], (65504.0 + 2f64.ln()) as f32);
    assert!(lse[0] > 65504.0);
    assert_eq!(
        (lse[1], lse[2], lse[3], lse[4]),
        (65504.0, 0.0, f32::NEG_INFINITY, f32::INFINITY)
    );
    let labels = Labels::new([0, 1, 1, -100, -100], 2, -100).unwrap();
    let none = CrossEntropyOptions::default().reduction(Reduction::None);
    let loss = cpu::cross_entropy(x.view(), &labels, &none).unwrap();
    assert_eq!(
        loss.per_row().unwrap(),
        &array![(2f64.ln()) as f32, 131_008.0, 0.0, 0.0, 0.0]
    );
}

/// Values that lie so near an f16 tie that rounding them to f32 first lands on the tie, after
/// which ties-to-even goes the wrong way: the reference rounds the f64 value once. Every
/// finite f16 `a` is tried in rows `[0, a]`, and the test insists that each op meets some such
/// values, so that it cannot pass by never meeting one.
#[test]
fn f16_outputs_are_rounded_once_not_through_f32() {
    let finite: Vec<f16> = (0..0x7C00u16)
        .chain(0x8000..0xFC00)
        .map(f16::from_bits)
        .collect();
    let mut x = Array2::from_elem((finite.len(), 2), f16::ZERO);
    x.column_mut(1).assign(&Array1::from(finite));
    let x64 = x.mapv(|v| v.to_f64());
    let labels = Labels::new(vec![0i64; x.nrows()], 2, -100).unwrap();
    let sum = CrossEntropyOptions::default().reduction(Reduction::Sum);
    let minus_onehot = |mut g: Vec<f64>| {
        g[0] -= 1.0;
        g
    };
    let p = cpu::softmax(x.view()).unwrap();
    let lp = cpu::log_softmax(x.view()).unwrap();
    // The upstream gradient of the backward ops: the row itself, so that it spans f16's range.
    let (p64, lp64) = (p.mapv(|v| v.to_f64()), lp.mapv(|v| v.to_f64()));
    let mut softmax_vjp = Array2::zeros(x.raw_dim());
    let mut log_softmax_vjp = Array2::zeros(x.raw_dim());
    for i in 0..x.nrows() {
        let dy = x64.row(i);
        let dot = p64[[i, 0]] * dy[0] + p64[[i, 1]] * dy[1];
        let total = dy[0] + dy[1];
        for j in 0..2 {
            softmax_vjp[[i, j]] = p64[[i, j]] * (dy[j] - dot);
            log_softmax_vjp[[i, j]] = dy[j] - lp64[[i, j]].exp() * total;
        }
    }
    let ops: Vec<(&str, Array2<f16>, Array2<f64>)> = vec![
        ("softmax", p.clone(), per_row(&x, softmax_f64)),
        ("log_softmax", lp.clone(), per_row(&x, log_softmax_f64)),
        (
            "cross_entropy_grad",
            cpu::cross_entropy_grad(x.view(), &labels, &sum).unwrap(),
            per_row(&x, |row| minus_onehot(softmax_f64(row))),
        ),
        (
            "one_hot_subtract",
            // A scale that is not a power of 2: p - 1 of an f16 p is nearly always an f32.
            cpu::one_hot_subtract(p.view(), &labels, 0.3).unwrap(),
            (p64.clone() - array![[1.0, 0.0]]) * (0.3f32 as f64),
        ),
        (
            "softmax_backward",
            cpu::softmax_backward(p.view(), x.view()).unwrap(),
            softmax_vjp,
        ),
        (
            "log_softmax_backward",
            cpu::log_softmax_backward(lp.view(), x.view()).unwrap(),
            log_softmax_vjp,
        ),
    ];
    for (op, got, want) in ops {
        let twice = want
            .iter()
            .filter(|&&v| nearest_f16(v) != nearest_f16(v as f32 as f64))
            .count();
        assert!(twice > 0, "{op}: no value where rounding twice differs");
        assert_rounded_f16(got.view(), &want, op);
    }
}

/// The cross-entropy of f16 logits is that of the same values as f32 logits, bit for bit
/// (every f16 is an f32, and the loss is f32 either way), for every option; ignored rows are
/// those whose logits would make the loss NaN.
#[test]
fn f16_cross_entropy_equals_the_f32_loss_of_the_same_values() {
    let (rows, cols) = (33, 7);
    let x = adversarial_f16(rows, cols, 9);
    let x32 = x.mapv(f16::to_f32);
    let ys: Vec<i64> = (0..rows)
        .map(|i| match i % 11 {
            4 | 7 | 8 => -100,
            3 => (cols / 2) as i64,
            _ => (i * 5 % cols) as i64,
        })
        .collect();
    let labels = Labels::new(ys, cols, -100).unwrap();
    let weight = Array1::from_shape_fn(cols, |j| 0.5 + j as f32 / 4.0);
    let targets = cpu::softmax(adversarial_f16(rows, cols, 10).view()).unwrap();
    let targets = targets.mapv(|v| if v.is_nan() { f16::ZERO } else { v });
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let plain = CrossEntropyOptions::default().reduction(reduction);
        for opts in [
            plain.clone(),
            plain.clone().label_smoothing(0.1),
            plain.clone().weight(weight.clone()),
            plain.clone().z_loss(1e-4),
        ] {
            let case = format!("{opts:?}");
            let loss = cpu::cross_entropy(x.view(), &labels, &opts).unwrap();
            let want = cpu::cross_entropy(x32.view(), &labels, &opts).unwrap();
            assert_same_f32(loss.into_array().view(), want.into_array().view(), &case);
            let soft = cpu::cross_entropy_soft(x.view(), targets.view(), &opts).unwrap();
            let t32 = targets.mapv(f16::to_f32);
            let want = cpu::cross_entropy_soft(x32.view(), t32.view(), &opts).unwrap();
            assert_same_f32(soft.into_array().view(), want.into_array().view(), &case);
        }
    }
    // The reduced loss is finite: rows that give NaN are there, and ignored, not averaged in.
    assert!(cpu::softmax(x.view()).unwrap().iter().any(|v| v.is_nan()));
    let mean = cpu::cross_entropy(x.view(), &labels, &CrossEntropyOptions::default()).unwrap();
    assert!(mean.scalar().unwrap().is_finite());
}

/// The gradients of f16 logits: the f64 value of the documented formula, rounded once, for the
/// reductions and every option together; and within half an f16 ulp of the f32 path's.
#[test]
fn f16_cross_entropy_grad_is_the_f64_gradient_rounded_once() {
    let (rows, cols) = (44, 31);
    let x = adversarial_f16(rows, cols, 12);
    let ys: Vec<i64> = (0..rows)
        .map(|i| match i % 11 {
            4 | 7 | 8 => -100,
            3 => (cols / 2) as i64,
            _ => (i * 3 % cols) as i64,
        })
        .collect();
    let labels = Labels::new(ys, cols, -100).unwrap();
    let weight = Array1::from_shape_fn(cols, |j| 0.5 + j as f32 / 8.0);
    let (eps, z_loss) = (0.1f32, 1e-4f32);
    let w = |j: usize| weight[j] as f64;
    let total_weight: f64 = (0..cols).map(w).sum();
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let opts = CrossEntropyOptions::default()
            .reduction(reduction)
            .label_smoothing(eps)
            .weight(weight.clone())
            .z_loss(z_loss);
        let (ce_scale, z_scale) = match reduction {
            Reduction::Mean => (
                1.0 / labels.iter().flatten().map(w).sum::<f64>(),
                1.0 / labels.active_count() as f64,
            ),
            _ => (1.0, 1.0),
        };
        let (eps, z_loss) = (eps as f64, z_loss as f64);
        let mut want = Array2::zeros((rows, cols));
        for ((mut g, row), y) in want.rows_mut().into_iter().zip(x.rows()).zip(labels.iter()) {
            let Some(y) = y else { continue };
            let row: Vec<f64> = row.iter().map(|v| v.to_f64()).collect();
            let p = softmax_f64(&row);
            let lse = logsumexp_f64(&row);
            for j in 0..cols {
                let onehot = if j == y { 1.0 } else { 0.0 };
                g[j] = ce_scale
                    * ((1.0 - eps) * w(y) * (p[j] - onehot)
                        + eps / cols as f64 * (total_weight * p[j] - w(j)))
                    + z_scale * 2.0 * z_loss * lse * p[j];
            }
        }
        let case = format!("{reduction}");
        let got = cpu::cross_entropy_grad(x.view(), &labels, &opts).unwrap();
        assert_rounded_f16(got.view(), &want, &case);
        let f32_path = cpu::cross_entropy_grad(x.mapv(f16::to_f32).view(), &labels, &opts).unwrap();
        // Rounding twice is at most one f16 ulp off rounding once.
        for (&g, &r) in got.iter().zip(&f32_path) {
            let apart = (ordered(g) - ordered(nearest_f16(r as f64))).abs();
            assert!(apart <= 1, "{case}: {g} against the f32 path's {r}");
        }

        if reduction == Reduction::None {
            let up = Array1::from_shape_fn(rows, |i| i as f32 / 3.0 - 5.0);
            let got =
                cpu::cross_entropy_grad_upstream(x.view(), &labels, &opts, up.view()).unwrap();
            let mut scaled = want.clone();
            for (i, (mut row, &u)) in scaled.rows_mut().into_iter().zip(&up).enumerate() {
                // An ignored row stays exactly +0, whatever its upstream value.
                if labels.get(i).is_some() {
                    row *= u as f64;
                }
            }
            assert_rounded_f16(got.view(), &scaled, "upstream");
        }
    }
}

/// The staged and backward ops on f16: one-hot-subtract, the soft-target gradient and the
/// softmax and log-softmax vector-Jacobian products, each the f64 value rounded once.
#[test]
fn f16_backward_ops_are_the_f64_values_rounded_once() {
    let (rows, cols) = (23, 33);
    let x = adversarial_f16(rows, cols, 21);
    let mut r = rng(22);
    let dy = Array2::from_shape_fn((rows, cols), |_| f16::from_f32(r.random_range(-2.0..2.0)));
    let labels = Labels::new((0..rows as i64).map(|i| i % 5 * 6 - 1), cols, -1).unwrap();
    let p = cpu::softmax(x.view()).unwrap();
    let (p64, dy64) = (p.mapv(|v| v.to_f64()), dy.mapv(|v| v.to_f64()));

    let mut want = Array2::zeros((rows, cols));
    for ((mut g, p), y) in want
        .rows_mut()
        .into_iter()
        .zip(p64.rows())
        .zip(labels.iter())
    {
        if let Some(y) = y {
            for j in 0..cols {
                g[j] = (p[j] - if j == y { 1.0 } else { 0.0 }) * 0.3f32 as f64;
            }
        }
    }
    let got = cpu::one_hot_subtract(p.view(), &labels, 0.3).unwrap();
    assert_rounded_f16(got.view(), &want, "one_hot_subtract");

    let mut want = Array2::zeros((rows, cols));
    for ((mut dx, p), dy) in want.rows_mut().into_iter().zip(p64.rows()).zip(dy64.rows()) {
        let dot: f64 = p.iter().zip(dy).map(|(p, d)| p * d).sum();
        for j in 0..cols {
            dx[j] = p[j] * (dy[j] - dot);
        }
    }
    let got = cpu::softmax_backward(p.view(), dy.view()).unwrap();
    assert_rounded_f16(got.view(), &want, "softmax_backward");

    let lp = cpu::log_softmax(x.view()).unwrap();
    let mut want = Array2::zeros((rows, cols));
    for ((mut dx, lp), dy) in want.rows_mut().into_iter().zip(lp.rows()).zip(dy64.rows()) {
        let total: f64 = dy.sum();
        for j in 0..cols {
            dx[j] = dy[j] - lp[j].to_f64().exp() * total;
        }
    }
    let got = cpu::log_softmax_backward(lp.view(), dy.view()).unwrap();
    assert_rounded_f16(got.view(), &want, "log_softmax_backward");

    // Soft targets: the mean's gradient, (sum_k t_k) p_j - t_j over N.
    let t = cpu::softmax(adversarial_f16(rows, cols, 23).view())
        .unwrap()
        .mapv(|v| if v.is_nan() { f16::ZERO } else { v });
    let mut want = Array2::zeros((rows, cols));
    for ((mut g, row), t) in want.rows_mut().into_iter().zip(x.rows()).zip(t.rows()) {
        let row: Vec<f64> = row.iter().map(|v| v.to_f64()).collect();
        let p = softmax_f64(&row);
        let total: f64 = t.iter().map(|v| v.to_f64()).sum();
        for j in 0..cols {
            g[j] = 1.0 / rows as f64 * (total * p[j] - t[j].to_f64());
        }
    }
    let got =
        cpu::cross_entropy_soft_grad(x.view(), t.view(), &CrossEntropyOptions::default()).unwrap();
    assert_rounded_f16(got.view(), &want, "cross_entropy_soft_grad");
}

fn assert_rounds(v: f64) {
    let (got, want) = (<f16 as softmax_ce::Element>::from_f64(v), nearest_f16(v));
    assert_eq!(
        got.to_bits(),
        want.to_bits(),
        "{v:e} ({:#018x}): got {got} ({:#06x}), want {want} ({:#06x})",
        v.to_bits(),
        got.to_bits(),
        want.to_bits()
    );
}

/// Values just off every tie of f16, where rounding twice (through f32) or rounding a
/// truncated significand goes the wrong way.
#[test]
fn f64_to_f16_is_correctly_rounded_next_to_every_tie() {
    // Just above the tie between 1 and 1 + 2^-10: through f32 it becomes the tie itself,
    // and ties to even gives 1.
    let v = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
    assert_eq!(
        <f16 as softmax_ce::Element>::from_f64(v),
        f16::from_bits(0x3C01)
    );
    // half-rs issue 116's cases: 0x03ff and 2047, not 0x0400 and 2048.
    assert_eq!(
        <f16 as softmax_ce::Element>::from_f64(2f64.powi(-14) - 2f64.powi(-25) - 2f64.powi(-65))
            .to_bits(),
        0x03FF
    );
    assert_eq!(
        <f16 as softmax_ce::Element>::from_f64(0x1f_fdff_ffffu64 as f64 * 2f64.powi(-26)),
        f16::from_f64_const(2047.0)
    );
    for bits in 0u16..0x7C00 {
        let lo = f16::from_bits(bits).to_f64();
        let hi = if bits == 0x7BFF {
            65536.0
        } else {
            f16::from_bits(bits + 1).to_f64()
        };
        let mid = (lo + hi) / 2.0;
        let ulp = f64::from_bits(mid.to_bits() + 1) - mid;
        for v in [
            lo,
            mid,
            f64::from_bits(mid.to_bits() + 1),
            f64::from_bits(mid.to_bits() - 1),
            mid + 2f64.powi(-30) * mid,
            mid - 2f64.powi(-30) * mid,
            mid + (1u64 << 28) as f64 * ulp,
        ] {
            assert_rounds(v);
            assert_rounds(-v);
        }
    }
    for v in [
        0.0,
        1e-300,
        2f64.powi(-25),
        65519.99,
        65520.0,
        1e300,
        f64::INFINITY,
    ] {
        assert_rounds(v);
        assert_rounds(-v);
    }
    assert!(<f16 as softmax_ce::Element>::from_f64(f64::NAN).is_nan());
    assert!(<f16 as softmax_ce::Element>::from_f64(-0.0).is_sign_negative());
}
