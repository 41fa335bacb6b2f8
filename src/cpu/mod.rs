//! The CPU reference path: every op of the crate on ndarray, written to be obviously right.
//!
//! This is the oracle the GPU kernels are tested against, so it favours plain loops over speed:
//! per-row sums and logarithms are taken in `f64` and rounded once, at the end. The functions
//! have the names of the GPU ops and the same semantics (PyTorch's; see `docs/semantics.md`).
//!
//! # Element types
//!
//! The row ops take matrices of any [`Element`], `f32` or [`f16`](crate::f16), and return
//! matrices (probabilities, log-probabilities, gradients) of the same type; per-row and reduced
//! results ([`Loss`], [`logsumexp`], [`row_max`], [`row_sumexp`]) are always `f32`, as PyTorch
//! computes a float16 tensor's reductions in float32. Every `f16` is exactly an `f64`, so an
//! `f16` row is computed exactly as the same values in `f32` would be, and each output element
//! is rounded once, from `f64` straight to its type: never through `f32` first, which would
//! round twice and could land on the other side of an `f16` tie. Class weights, label smoothing
//! and the upstream gradient of [`cross_entropy_grad_upstream`] stay `f32`. The binary
//! cross-entropy and the n-dimensional (`_nd`) functions are `f32` only.
//!
//! Every row op works on an `N x C` matrix of logits, one row per sample, and rejects `C == 0`.
//! Per row, with `m = max_j x_j`:
//!
//! | function | result |
//! |---|---|
//! | [`row_max`] | `m` |
//! | [`row_sumexp`] | `s = sum_j exp(x_j - m)`, or 0 when `m = -inf` |
//! | [`logsumexp`] | `m + ln s`, or `m` itself when `m` is infinite (as PyTorch) |
//! | [`softmax`] | `exp(x_j - m) / s` |
//! | [`log_softmax`] | `x_j - m - ln s` |
//! | [`cross_entropy`] | `(m - x_y) + ln s`, reduced |
//! | [`cross_entropy_grad`] | `(softmax - onehot(y)) * scale` |
//! | [`one_hot_subtract`] | `(p - onehot(y)) * scale`, from probabilities |

pub mod fast;
mod linear;
pub mod vocab;

pub use linear::{LinearGrads, linear_cross_entropy, linear_cross_entropy_grad, linear_logits};

use ndarray::{Array1, Array2, ArrayD, ArrayView1, ArrayView2, ArrayViewD, Axis, IxDyn, Zip};

use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::labels::Labels;
use crate::loss::{BceOptions, CrossEntropyOptions, Loss, Reduction};

/// Rejects matrices with no columns, for which a row op is undefined.
pub(crate) fn check_classes<T>(op: &'static str, x: ArrayView2<T>) -> Result<()> {
    if x.ncols() == 0 {
        return Err(Error::Empty {
            op,
            what: "the class dimension",
        });
    }
    Ok(())
}

/// `m` of a row, and `s = sum exp(x - m)` in f64 (0 for an all `-inf` row, so that the pair
/// merges correctly; NaN when `m = +inf`, as the subtraction `inf - inf` gives). `m` is one of
/// the row's elements, exactly: it is an `f32` (and a `T`) as well as an `f64`.
fn stats<T: Element>(row: ArrayView1<T>) -> (f64, f64) {
    let m = row
        .iter()
        .map(|v| v.to_f64())
        .fold(f64::NEG_INFINITY, f64::max);
    // A NaN entry is skipped by `f64::max` but still poisons the sum, as it does in PyTorch.
    (m, sum_exp(row, m))
}

/// `sum exp(x - m)` in f64, shifted by `m` unless it is `-inf` (an all `-inf` row, whose sum is
/// then 0 rather than the NaN of `-inf - -inf`).
fn sum_exp<T: Element>(row: ArrayView1<T>, m: f64) -> f64 {
    let shift = if m == f64::NEG_INFINITY { 0.0 } else { m };
    row.iter().map(|v| (v.to_f64() - shift).exp()).sum()
}

/// Row-wise maximum. A row containing NaN gives NaN, as `torch.max` does.
pub fn row_max<T: Element>(x: ArrayView2<T>) -> Result<Array1<f32>> {
    check_classes("row_max", x)?;
    Ok(x.map_axis(Axis(1), |row| {
        if row.iter().any(|v| v.to_f64().is_nan()) {
            f32::NAN
        } else {
            // Exact: the maximum is one of the elements.
            stats(row).0 as f32
        }
    }))
}

/// Row-wise `sum_j exp(x_j - m_i)`, given the row maxima `m` (see [`row_max`]).
///
/// A row whose maximum is `-inf` sums to 0, so that partial sums over column chunks merge
/// exactly (see the crate docs on mergeable statistics).
pub fn row_sumexp<T: Element>(x: ArrayView2<T>, m: ArrayView1<f32>) -> Result<Array1<f32>> {
    const OP: &str = "row_sumexp";
    check_classes(OP, x)?;
    if m.len() != x.nrows() {
        return Err(Error::shape(
            OP,
            format!("{} row maxima", x.nrows()),
            format!("{}", m.len()),
        ));
    }
    let mut out = Array1::zeros(x.nrows());
    Zip::from(&mut out)
        .and(x.rows())
        .and(m)
        .for_each(|o, row, &m| *o = sum_exp(row, m as f64) as f32);
    Ok(out)
}

/// Row-wise `log sum_j exp(x_j)`, computed stably. A row whose maximum is infinite gives that
/// maximum (`-inf` for an all `-inf` row), as `torch.logsumexp` does.
pub fn logsumexp<T: Element>(x: ArrayView2<T>) -> Result<Array1<f32>> {
    check_classes("logsumexp", x)?;
    Ok(x.map_axis(Axis(1), |row| {
        let (m, s) = stats(row);
        if m.is_infinite() {
            m as f32
        } else {
            (m + s.ln()) as f32
        }
    }))
}

/// Row-wise softmax, `exp(x_j - m) / sum_k exp(x_k - m)`.
///
/// A row that contains `+inf` or NaN, or that is all `-inf`, gives NaN, as in PyTorch.
pub fn softmax<T: Element>(x: ArrayView2<T>) -> Result<Array2<T>> {
    check_classes("softmax", x)?;
    Ok(map_rows(x, |v, m, s| (v - m).exp() / s))
}

/// Row-wise log-softmax, `x_j - m - log sum_k exp(x_k - m)`.
pub fn log_softmax<T: Element>(x: ArrayView2<T>) -> Result<Array2<T>> {
    check_classes("log_softmax", x)?;
    Ok(map_rows(x, |v, m, s| v - m - s.ln()))
}

/// Applies `f(x_j, m, s)` in f64 to every element, with its row's statistics, and rounds the
/// result once to `T`. `m` is the raw maximum (not the shifted one [`stats`] sums with):
/// `x - m` is then NaN exactly where PyTorch's is.
fn map_rows<T: Element>(x: ArrayView2<T>, f: impl Fn(f64, f64, f64) -> f64) -> Array2<T> {
    let mut out = Array2::zeros(x.raw_dim());
    Zip::from(out.rows_mut())
        .and(x.rows())
        .for_each(|mut o, row| {
            let (m, s) = stats(row);
            Zip::from(&mut o)
                .and(row)
                .for_each(|o, &v| *o = T::from_f64(f(v.to_f64(), m, s)));
        });
    out
}

/// One row's cross-entropy terms, in f64: `(ce, z)`, the (weighted, smoothed) cross-entropy
/// and the z-loss, before the reduction's scales; `(0, 0)` for an ignored row.
fn cross_entropy_terms<T: Element>(
    row: ArrayView1<T>,
    y: Option<usize>,
    opts: &CrossEntropyOptions,
) -> (f64, f64) {
    let Some(y) = y else { return (0.0, 0.0) };
    let (m, s) = stats(row);
    let ln_s = s.ln();
    let eps = opts.label_smoothing as f64;
    // (m - x) first: next to m = 1e30, even f64 would round ln s away.
    let mut ce = (1.0 - eps) * opts.w(y) * ((m - row[y].to_f64()) + ln_s);
    if eps > 0.0 {
        let c = row.len() as f64;
        let smooth: f64 = row
            .iter()
            .enumerate()
            .map(|(j, v)| opts.w(j) * ((m - v.to_f64()) + ln_s))
            .sum();
        ce += eps / c * smooth;
    }
    let z = if opts.z_loss > 0.0 {
        let lse = m + ln_s;
        opts.z_loss as f64 * lse * lse
    } else {
        0.0
    };
    (ce, z)
}

/// The factor the per-row losses and gradients are multiplied by for `reduction`: `1/D` for a
/// mean over `D` rows not ignored (infinite when `D = 0`, which makes the mean NaN as in
/// PyTorch), 1 otherwise.
pub(crate) fn reduction_scale(reduction: Reduction, labels: &Labels) -> f64 {
    match reduction {
        Reduction::Mean => 1.0 / labels.active_count() as f64,
        Reduction::Sum | Reduction::None => 1.0,
    }
}

/// Cross-entropy of `x` (`N x C` logits) against integer `labels`, as PyTorch's
/// `F.cross_entropy(x, y, weight=.., reduction=.., ignore_index=.., label_smoothing=..)`, plus
/// the z-loss of [`CrossEntropyOptions::z_loss`].
///
/// Per row not ignored, with `lse = m + ln s`, weights `w` (1 without) and smoothing `e`:
/// `(1 - e) w_y (lse - x_y) + (e / C) sum_j w_j (lse - x_j) + S lse^2`. Ignored rows contribute 0
/// whatever their logits hold; a `mean` divides the cross-entropy terms by the summed weights of
/// the rows not ignored and the z-loss terms by their number, and is NaN when there are none
/// (PyTorch's result).
pub fn cross_entropy<T: Element>(
    x: ArrayView2<T>,
    labels: &Labels,
    opts: &CrossEntropyOptions,
) -> Result<Loss> {
    const OP: &str = "cross_entropy";
    check_classes(OP, x)?;
    labels.check_fits(OP, x.nrows(), x.ncols())?;
    opts.validate(OP, x.ncols())?;
    let terms: Vec<(f64, f64)> = x
        .rows()
        .into_iter()
        .zip(labels.iter())
        .map(|(row, y)| cross_entropy_terms(row, y, opts))
        .collect();
    Ok(match opts.reduction {
        Reduction::None => Loss::PerRow(terms.iter().map(|&(ce, z)| (ce + z) as f32).collect()),
        reduction => {
            if reduction == Reduction::Mean && labels.active_count() == 0 {
                Loss::Reduced(f32::NAN)
            } else {
                let (ce_scale, z_scale) = opts.scales(labels);
                let ce: f64 = terms.iter().map(|t| t.0).sum();
                let z: f64 = terms.iter().map(|t| t.1).sum();
                let z = if opts.z_loss > 0.0 { z * z_scale } else { 0.0 };
                Loss::Reduced((ce * ce_scale + z) as f32)
            }
        }
    })
}

/// The gradient of [`cross_entropy`] with respect to the logits. Per row not ignored, with
/// `p = softmax(x)`:
/// `ce_scale ((1 - e) w_y (p - onehot(y)) + (e / C)(W p - w)) + z_scale 2 S lse p`, where `W` is
/// the sum of the weights and the scales are those of the reduction (1 for `sum` and `none`;
/// for `none` it is the gradient of the sum of the per-row losses). Ignored rows get a zero
/// gradient whatever their logits hold (PyTorch lets a NaN logit in an ignored row through as
/// NaN; we deliberately do not).
pub fn cross_entropy_grad<T: Element>(
    x: ArrayView2<T>,
    labels: &Labels,
    opts: &CrossEntropyOptions,
) -> Result<Array2<T>> {
    grad_rows("cross_entropy_grad", x, labels, opts, |_| 1.0)
}

/// [`cross_entropy_grad`] with row `i` multiplied by `factor(i)` before the one rounding to
/// `T`, so that an upstream gradient costs no second rounding.
fn grad_rows<T: Element>(
    op: &'static str,
    x: ArrayView2<T>,
    labels: &Labels,
    opts: &CrossEntropyOptions,
    factor: impl Fn(usize) -> f64,
) -> Result<Array2<T>> {
    check_classes(op, x)?;
    labels.check_fits(op, x.nrows(), x.ncols())?;
    opts.validate(op, x.ncols())?;
    let (ce_scale, z_scale) = opts.scales(labels);
    let eps = opts.label_smoothing as f64;
    let c = x.ncols() as f64;
    let total_weight: f64 = (0..x.ncols()).map(|j| opts.w(j)).sum();
    let mut g = Array2::zeros(x.raw_dim());
    let rows = g.rows_mut().into_iter().zip(x.rows()).zip(labels.iter());
    for (i, ((mut g, row), y)) in rows.enumerate() {
        let u = factor(i);
        let Some(y) = y else {
            // Exactly 0, whatever the row's logits or upstream gradient hold (a NaN or inf
            // upstream value of a padding row included): an ignored row never contaminates
            // the gradient, as on the GPU (docs/semantics.md).
            continue;
        };
        // In f64 throughout: p - 1 next to p = 1 - 1e-7 would keep only p's f32 rounding.
        let (m, s) = stats(row);
        let lse = m + s.ln();
        let a = ce_scale * (1.0 - eps) * opts.w(y);
        let b = ce_scale * eps / c;
        let z = z_scale * 2.0 * opts.z_loss as f64 * lse;
        for (j, (g, v)) in g.iter_mut().zip(row).enumerate() {
            let p = (v.to_f64() - m).exp() / s;
            let onehot = if j == y { 1.0 } else { 0.0 };
            let mut d = a * (p - onehot);
            if eps > 0.0 {
                d += b * (total_weight * p - opts.w(j));
            }
            if opts.z_loss > 0.0 {
                d += z * p;
            }
            *g = T::from_f64(d * u);
        }
    }
    Ok(g)
}

/// The one-hot-subtract gradient: `(p - onehot(y)) * scale` for each row not ignored, 0 for
/// ignored rows. `p` is usually [`softmax`] of the logits.
pub fn one_hot_subtract<T: Element>(
    p: ArrayView2<T>,
    labels: &Labels,
    scale: f32,
) -> Result<Array2<T>> {
    const OP: &str = "one_hot_subtract";
    check_classes(OP, p)?;
    labels.check_fits(OP, p.nrows(), p.ncols())?;
    let mut g = Array2::zeros(p.raw_dim());
    for ((mut g, p), y) in g.rows_mut().into_iter().zip(p.rows()).zip(labels.iter()) {
        // An ignored row stays 0: its probabilities are never read, so NaN cannot leak in.
        if let Some(y) = y {
            for (j, (g, p)) in g.iter_mut().zip(p).enumerate() {
                let onehot = if j == y { 1.0 } else { 0.0 };
                *g = T::from_f64((p.to_f64() - onehot) * scale as f64);
            }
        }
    }
    Ok(g)
}

/// Per-row log-sum-exp statistics of a block of columns: the maximum `m` and the sum
/// `s = sum_j exp(x_j - m)` ([`row_max`] and [`row_sumexp`] of the block). Two such pairs over
/// disjoint column blocks merge exactly ([`merge_lse_stats`]), so the class dimension can be
/// split into chunks, or across devices as in Megatron-LM's vocabulary-parallel cross-entropy,
/// and the loss still computed exactly. On the GPU, `gpu.staged().row_max` and `row_sumexp`
/// give the same pair.
///
/// ```
/// use ndarray::{array, s};
/// use softmax_ce::{cpu, CrossEntropyOptions, Labels, Reduction};
///
/// let x = array![[1.0f32, 4.0, -2.0, 0.5], [3.0, -1.0, 2.5, 7.0]];
/// let labels = [1usize, 3];
/// // Split the vocabulary of 4 classes in two halves, as two devices would hold them.
/// let left = cpu::lse_stats(x.slice(s![.., ..2]))?;
/// let right = cpu::lse_stats(x.slice(s![.., 2..]))?;
/// let (m, s) = cpu::merge_lse_stats(&left, &right)?;
/// for (i, &y) in labels.iter().enumerate() {
///     // Each half knows its own logits; the label's logit comes from the half that holds it.
///     let loss = m[i] + s[i].ln() - x[[i, y]];
///     let whole = cpu::cross_entropy(
///         x.slice(s![i..i + 1, ..]),
///         &Labels::new([y as i64], 4, -100)?,
///         &CrossEntropyOptions::default().reduction(Reduction::Sum),
///     )?
///     .scalar()
///     .unwrap();
///     assert!((loss - whole).abs() < 1e-6);
/// }
/// # Ok::<(), softmax_ce::Error>(())
/// ```
pub fn lse_stats<T: Element>(x: ArrayView2<T>) -> Result<(Array1<f32>, Array1<f32>)> {
    let m = row_max(x)?;
    let s = row_sumexp(x, m.view())?;
    Ok((m, s))
}

/// Merges the [`lse_stats`] of two disjoint column blocks of the same rows into the statistics
/// of their union: `m = max(m1, m2)`, `s = s1 exp(m1 - m) + s2 exp(m2 - m)`, with a block whose
/// maximum is `-inf` (all `-inf`, `s = 0`) adding nothing.
pub fn merge_lse_stats(
    a: &(Array1<f32>, Array1<f32>),
    b: &(Array1<f32>, Array1<f32>),
) -> Result<(Array1<f32>, Array1<f32>)> {
    const OP: &str = "merge_lse_stats";
    let n = a.0.len();
    if [a.1.len(), b.0.len(), b.1.len()].iter().any(|&l| l != n) {
        return Err(Error::shape(
            OP,
            format!("four vectors of {n} rows"),
            format!(
                "({}, {}) and ({}, {})",
                a.0.len(),
                a.1.len(),
                b.0.len(),
                b.1.len()
            ),
        ));
    }
    // Re-expressing a sum relative to a larger maximum; equal maxima (two -inf included, where
    // the difference would be NaN) leave it as it is.
    let rescale = |s: f32, from: f32, to: f32| {
        if from == to {
            s as f64
        } else {
            s as f64 * (from as f64 - to as f64).exp()
        }
    };
    let mut m = Array1::zeros(n);
    let mut s = Array1::zeros(n);
    for i in 0..n {
        let mm = a.0[i].max(b.0[i]);
        m[i] = mm;
        s[i] = (rescale(a.1[i], a.0[i], mm) + rescale(b.1[i], b.0[i], mm)) as f32;
    }
    Ok((m, s))
}

fn check_same_shape<A, B>(
    op: &'static str,
    a: ArrayView2<A>,
    b: ArrayView2<B>,
    what: &str,
) -> Result<()> {
    if a.dim() != b.dim() {
        return Err(Error::shape(
            op,
            format!("{what} of shape {:?}", a.dim()),
            format!("{:?}", b.dim()),
        ));
    }
    Ok(())
}

/// The softmax backward pass (vector-Jacobian product), as PyTorch's: given the probabilities
/// `p = softmax(x)` and the upstream gradient `dy`, `dx = p * (dy - sum_j dy_j p_j)` per row,
/// the product of `dy` with the Jacobian `diag(p) - p p^T`.
pub fn softmax_backward<T: Element>(p: ArrayView2<T>, dy: ArrayView2<T>) -> Result<Array2<T>> {
    const OP: &str = "softmax_backward";
    check_classes(OP, p)?;
    check_same_shape(OP, p, dy, "an upstream gradient")?;
    let mut dx = Array2::zeros(p.raw_dim());
    for ((mut dx, p), dy) in dx.rows_mut().into_iter().zip(p.rows()).zip(dy.rows()) {
        let dot: f64 = p.iter().zip(dy).map(|(p, d)| p.to_f64() * d.to_f64()).sum();
        for ((dx, p), d) in dx.iter_mut().zip(p).zip(dy) {
            *dx = T::from_f64(p.to_f64() * (d.to_f64() - dot));
        }
    }
    Ok(dx)
}

/// The log-softmax backward pass, as PyTorch's: given the log-probabilities `lp` and the
/// upstream gradient `dy`, `dx = dy - exp(lp) * sum_j dy_j` per row.
pub fn log_softmax_backward<T: Element>(lp: ArrayView2<T>, dy: ArrayView2<T>) -> Result<Array2<T>> {
    const OP: &str = "log_softmax_backward";
    check_classes(OP, lp)?;
    check_same_shape(OP, lp, dy, "an upstream gradient")?;
    let mut dx = Array2::zeros(lp.raw_dim());
    for ((mut dx, lp), dy) in dx.rows_mut().into_iter().zip(lp.rows()).zip(dy.rows()) {
        let total: f64 = dy.iter().map(|d| d.to_f64()).sum();
        for ((dx, lp), d) in dx.iter_mut().zip(lp).zip(dy) {
            *dx = T::from_f64(d.to_f64() - lp.to_f64().exp() * total);
        }
    }
    Ok(dx)
}

/// Binary cross-entropy with logits, as `F.binary_cross_entropy_with_logits(z, t, reduction=..)`
/// (seed 002's logistic regression), elementwise over `z` and targets `t` of the same shape,
/// computed stably as `max(z, 0) - z t + log(1 + exp(-|z|))` (see [`bce_with_logits_nd`], of
/// which this is the 2-D, unweighted case). `none` gives one loss per element; `mean` divides
/// the sum by the number of elements (NaN when there are none, as in PyTorch).
pub fn bce_with_logits<T: Element>(
    z: ArrayView2<T>,
    t: ArrayView2<T>,
    reduction: Reduction,
) -> Result<BceLoss> {
    const OP: &str = "bce_with_logits";
    check_same_shape(OP, z, t, "targets")?;
    let loss = bce_with_logits_nd(
        z.into_dyn(),
        t.into_dyn(),
        &BceOptions::default().reduction(reduction),
    )?;
    Ok(match reduction {
        Reduction::None => BceLoss::PerElement(
            loss.into_dimensionality()
                .expect("none keeps the logits' 2-D shape"),
        ),
        Reduction::Mean | Reduction::Sum => {
            BceLoss::Reduced(*loss.first().expect("a reduced loss is one value"))
        }
    })
}

/// The gradient of [`bce_with_logits`] with respect to the logits: `(sigmoid(z) - t)`, divided
/// by the number of elements for `mean`, in the logits' precision.
pub fn bce_with_logits_grad<T: Element>(
    z: ArrayView2<T>,
    t: ArrayView2<T>,
    reduction: Reduction,
) -> Result<Array2<T>> {
    const OP: &str = "bce_with_logits_grad";
    check_same_shape(OP, z, t, "targets")?;
    let g = bce_with_logits_nd_grad(
        z.into_dyn(),
        t.into_dyn(),
        &BceOptions::default().reduction(reduction),
    )?;
    Ok(g.into_dimensionality()
        .expect("the gradient has the logits' shape"))
}

/// One element of the binary cross-entropy with logits `z`, target `t`, weight `w` and positive
/// weight `pw`, in f64: the loss `w ((1 - t) z + c softplus(-z))` with `c = 1 + (pw - 1) t`
/// (PyTorch's formula), and its derivative `w ((1 - t) sigmoid(z) - pw t sigmoid(-z))`, which is
/// `w ((pw t + 1 - t) sigmoid(z) - pw t)`.
///
/// Stable for every `z`: with `e = exp(-|z|)` (never the exp of a positive number),
/// `softplus(-z) = max(-z, 0) + log1p(e)`, so the loss is `(1 - t) z + c log1p(e)` for `z >= 0`
/// and `pw t (-z) + c log1p(e)` below: a product and a small logarithm, never the difference of
/// two large numbers. A coefficient of exactly 0 in front of an infinite logit gives 0 (the
/// limit), where PyTorch's `0 * inf` gives NaN.
fn bce_element(z: f64, t: f64, w: f64, pw: f64) -> (f64, f64) {
    let e = (-z.abs()).exp();
    let c = 1.0 + (pw - 1.0) * t;
    let positive = z >= 0.0;
    let coef = if positive { 1.0 - t } else { pw * t };
    let linear = if coef == 0.0 { 0.0 } else { coef * z.abs() };
    let loss = w * (linear + c * e.ln_1p());
    // sigmoid(z) and sigmoid(-z) from the same e, each without a cancellation.
    let (s_pos, s_neg) = if positive {
        (1.0 / (1.0 + e), e / (1.0 + e))
    } else {
        (e / (1.0 + e), 1.0 / (1.0 + e))
    };
    let grad = w * ((1.0 - t) * s_pos - pw * t * s_neg);
    (loss, grad)
}

/// The per-element losses and unscaled gradients of [`bce_with_logits_nd`], in f64.
fn bce_elements<T: Element>(
    op: &'static str,
    z: ArrayViewD<T>,
    t: ArrayViewD<T>,
    opts: &BceOptions,
) -> Result<(ArrayD<f64>, ArrayD<f64>)> {
    let (w, pw) = opts.broadcast(op, z.shape(), t.shape())?;
    let one = ArrayD::from_elem(IxDyn(&[]), 1.0f32);
    let ones = one
        .broadcast(z.raw_dim())
        .expect("a 0-d array broadcasts to any shape");
    let w = w.unwrap_or_else(|| ones.clone());
    let pw = pw.unwrap_or(ones);
    let mut loss = ArrayD::zeros(z.raw_dim());
    let mut grad = ArrayD::zeros(z.raw_dim());
    Zip::from(&mut loss)
        .and(&mut grad)
        .and(&z)
        .and(&t)
        .and(&w)
        .and(&pw)
        .for_each(|l, g, z, t, &w, &pw| {
            (*l, *g) = bce_element(z.to_f64(), t.to_f64(), w as f64, pw as f64);
        });
    Ok((loss, grad))
}

/// Binary cross-entropy with logits of any shape, as
/// `F.binary_cross_entropy_with_logits(z, t, weight=.., pos_weight=.., reduction=..)`: per
/// element `w (-pw t log sigmoid(z) - (1 - t) log(1 - sigmoid(z)))`, with the weights of
/// [`BceOptions`] broadcast to the logits' shape. A 1-D vector of logits with 0/1 targets is
/// logistic regression.
///
/// Returns PyTorch's shape: the logits' for `none`, 0-d for `mean` (over all elements, NaN
/// when there are none) and `sum`, in `f32` for `f16` logits and targets too. Computed in
/// f64 and rounded once; stable for any logit (see
/// `docs/semantics.md`: an infinite logit whose coefficient is 0 gives 0, not PyTorch's NaN).
///
/// ```
/// use ndarray::array;
/// use softmax_ce::{cpu, BceOptions, Reduction};
/// let z = array![0.0f32, 2.0];
/// let t = array![1.0f32, 0.0];
/// let opts = BceOptions::default().reduction(Reduction::None).pos_weight(array![3.0f32]);
/// let loss = cpu::bce_with_logits_nd(z.view().into_dyn(), t.view().into_dyn(), &opts)?;
/// // 3 * ln 2 for the positive, softplus(2) for the negative.
/// assert!((loss[[0]] - 3.0 * std::f32::consts::LN_2).abs() < 1e-6);
/// assert!((loss[[1]] - (1.0 + 2f32.exp()).ln()).abs() < 1e-6);
/// # Ok::<(), softmax_ce::Error>(())
/// ```
///
/// # Errors
/// [`Error::Shape`] when the targets' shape is not the logits' or a weight does not broadcast
/// to it (naming both shapes); [`Error::InvalidArgument`] for a weight that is not finite.
pub fn bce_with_logits_nd<T: Element>(
    z: ArrayViewD<T>,
    t: ArrayViewD<T>,
    opts: &BceOptions,
) -> Result<ArrayD<f32>> {
    let (loss, _) = bce_elements("bce_with_logits", z, t, opts)?;
    Ok(match opts.reduction {
        Reduction::None => loss.mapv(|v| v as f32),
        Reduction::Sum => ndarray::arr0(loss.sum() as f32).into_dyn(),
        Reduction::Mean => ndarray::arr0((loss.sum() / loss.len() as f64) as f32).into_dyn(),
    })
}

/// The gradient of [`bce_with_logits_nd`] with respect to the logits, the logits' shape:
/// `w ((pw t + 1 - t) sigmoid(z) - pw t)` per element, divided by the number of elements for
/// `mean`; for `none`, the gradient of the sum. In the logits' precision, rounded once.
pub fn bce_with_logits_nd_grad<T: Element>(
    z: ArrayViewD<T>,
    t: ArrayViewD<T>,
    opts: &BceOptions,
) -> Result<ArrayD<T>> {
    let (_, grad) = bce_elements("bce_with_logits_grad", z, t, opts)?;
    let scale = match opts.reduction {
        Reduction::Mean => 1.0 / grad.len() as f64,
        Reduction::Sum | Reduction::None => 1.0,
    };
    Ok(grad.mapv(|g| T::from_f64(g * scale)))
}

/// A binary cross-entropy: one value per element, or reduced.
#[derive(Clone, Debug, PartialEq)]
pub enum BceLoss {
    /// `none`: the shape of the logits.
    PerElement(Array2<f32>),
    /// `mean` or `sum`.
    Reduced(f32),
}

impl BceLoss {
    /// As an n-dimensional array: the per-element matrix, or a 0-d array.
    pub fn into_array(self) -> ndarray::ArrayD<f32> {
        match self {
            BceLoss::PerElement(a) => a.into_dyn(),
            BceLoss::Reduced(v) => ndarray::arr0(v).into_dyn(),
        }
    }
}

/// The gradient of the per-row losses ([`Reduction::None`]) with a per-row upstream gradient:
/// row `i` of [`cross_entropy_grad`] times `upstream[i]`, the product taken in f64 and rounded
/// once to `T`.
pub fn cross_entropy_grad_upstream<T: Element>(
    x: ArrayView2<T>,
    labels: &Labels,
    opts: &CrossEntropyOptions,
    upstream: ArrayView1<f32>,
) -> Result<Array2<T>> {
    const OP: &str = "cross_entropy_grad_upstream";
    if opts.reduction != Reduction::None {
        return Err(Error::invalid(
            OP,
            format!(
                "an upstream gradient needs reduction none, not {}",
                opts.reduction
            ),
        ));
    }
    if upstream.len() != x.nrows() {
        return Err(Error::shape(
            OP,
            format!("{} upstream gradients (one per row)", x.nrows()),
            format!("{}", upstream.len()),
        ));
    }
    grad_rows(OP, x, labels, opts, |i| upstream[i] as f64)
}

/// Cross-entropy against probability ("soft") targets `t` (`N x C`, each row a distribution),
/// as `F.cross_entropy(x, t, weight=.., reduction=.., label_smoothing=..)` with a float target:
/// per row `sum_j w_j t'_j (lse - x_j)` with `t' = (1 - e) t + e / C`. `mean` divides by `N`
/// (PyTorch divides by the batch size here, not by the weights). No row is ignored; the z-loss
/// adds `S lse^2` per row as for integer labels.
pub fn cross_entropy_soft<T: Element>(
    x: ArrayView2<T>,
    targets: ArrayView2<T>,
    opts: &CrossEntropyOptions,
) -> Result<Loss> {
    const OP: &str = "cross_entropy_soft";
    check_soft(OP, x, targets, opts)?;
    let rows: Vec<f64> = x
        .rows()
        .into_iter()
        .zip(targets.rows())
        .map(|(row, t)| {
            let (m, s) = stats(row);
            let ln_s = s.ln();
            let ce: f64 = (0..row.len())
                .map(|j| soft_target(opts, t, j) * ((m - row[j].to_f64()) + ln_s))
                .sum();
            let lse = m + ln_s;
            ce + if opts.z_loss > 0.0 {
                opts.z_loss as f64 * lse * lse
            } else {
                0.0
            }
        })
        .collect();
    Ok(match opts.reduction {
        Reduction::None => Loss::PerRow(rows.iter().map(|&l| l as f32).collect()),
        Reduction::Sum => Loss::Reduced(rows.iter().sum::<f64>() as f32),
        Reduction::Mean => Loss::Reduced((rows.iter().sum::<f64>() / rows.len() as f64) as f32),
    })
}

/// The gradient of [`cross_entropy_soft`]: per row
/// `scale ((sum_k w_k t'_k) p_j - w_j t'_j + 2 S lse p_j)`, `scale = 1/N` for mean.
pub fn cross_entropy_soft_grad<T: Element>(
    x: ArrayView2<T>,
    targets: ArrayView2<T>,
    opts: &CrossEntropyOptions,
) -> Result<Array2<T>> {
    const OP: &str = "cross_entropy_soft_grad";
    check_soft(OP, x, targets, opts)?;
    let scale = match opts.reduction {
        Reduction::Mean => 1.0 / x.nrows() as f64,
        Reduction::Sum | Reduction::None => 1.0,
    };
    let mut g = Array2::zeros(x.raw_dim());
    for ((mut g, row), t) in g.rows_mut().into_iter().zip(x.rows()).zip(targets.rows()) {
        let (m, s) = stats(row);
        let lse = m + s.ln();
        let tw: Vec<f64> = (0..row.len()).map(|j| soft_target(opts, t, j)).collect();
        let total: f64 = tw.iter().sum();
        for (j, (g, v)) in g.iter_mut().zip(row).enumerate() {
            let p = (v.to_f64() - m).exp() / s;
            *g = T::from_f64(scale * (total * p - tw[j] + 2.0 * opts.z_loss as f64 * lse * p));
        }
    }
    Ok(g)
}

/// `w_j t'_j`, the weighted, smoothed target of class `j`.
fn soft_target<T: Element>(opts: &CrossEntropyOptions, t: ArrayView1<T>, j: usize) -> f64 {
    let eps = opts.label_smoothing as f64;
    opts.w(j) * ((1.0 - eps) * t[j].to_f64() + eps / t.len() as f64)
}

fn check_soft<T: Element>(
    op: &'static str,
    x: ArrayView2<T>,
    targets: ArrayView2<T>,
    opts: &CrossEntropyOptions,
) -> Result<()> {
    check_classes(op, x)?;
    check_same_shape(op, x, targets, "targets")?;
    opts.validate(op, x.ncols())
}

/// Logits of PyTorch's shapes for `F.cross_entropy`, `(C,)`, `(N, C)` or `(N, C, d1, ..., dk)`
/// (class axis 1), as the rows of an `(N d1 ... dk) x C` matrix: the class axis moved last, so
/// that row `r` is the `r`-th position of `(N, d1, ..., dk)` in C order, where its label is.
#[derive(Debug)]
pub(crate) struct ClassRows<T: Element = f32> {
    /// The rows, one per position, each over the classes.
    pub rows: Array2<T>,
    /// The logits' shape.
    shape: Vec<usize>,
    /// The shape of the labels and of a `none` loss: the logits' without axis 1 (`()` for 1-D
    /// logits).
    pub positions: Vec<usize>,
}

impl<T: Element> ClassRows<T> {
    /// Moves the class axis of `x` last; an `Err` for 0-d logits.
    pub(crate) fn new(op: &'static str, x: ArrayViewD<T>) -> Result<Self> {
        let shape = x.shape().to_vec();
        let (perm, positions): (Vec<usize>, Vec<usize>) = match shape.len() {
            0 => {
                return Err(Error::shape(
                    op,
                    "logits of shape (C,), (N, C) or (N, C, d1, ..., dk)",
                    "a 0-d array",
                ));
            }
            1 => (vec![0], vec![]),
            k => (
                std::iter::once(0).chain(2..k).chain([1]).collect(),
                std::iter::once(shape[0])
                    .chain(shape[2..].iter().copied())
                    .collect(),
            ),
        };
        let classes = *shape.get(1).unwrap_or(&shape[0]);
        let count = positions.iter().product::<usize>();
        let moved = x.permuted_axes(IxDyn(&perm));
        let rows = moved
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((count, classes))
            .expect("a standard-layout array reshapes to its own element count");
        Ok(ClassRows {
            rows,
            shape,
            positions,
        })
    }

    /// Validates labels of shape [`positions`](Self::positions) against the classes.
    pub(crate) fn labels(
        &self,
        op: &'static str,
        labels: ArrayViewD<i64>,
        ignore_index: i64,
    ) -> Result<Labels> {
        if labels.shape() != self.positions.as_slice() {
            return Err(Error::shape(
                op,
                format!(
                    "{} labels of shape {:?} (the logits' shape {:?} without the class axis 1)",
                    self.rows.nrows(),
                    self.positions,
                    self.shape
                ),
                format!("{:?}", labels.shape()),
            ));
        }
        Labels::new(labels.iter().copied(), self.rows.ncols(), ignore_index)
    }

    /// Probability targets of the logits' shape, as rows like the logits'.
    pub(crate) fn targets(&self, op: &'static str, targets: ArrayViewD<T>) -> Result<Array2<T>> {
        if targets.shape() != self.shape.as_slice() {
            return Err(Error::shape(
                op,
                format!("targets of the logits' shape {:?}", self.shape),
                format!("{:?}", targets.shape()),
            ));
        }
        Ok(ClassRows::new(op, targets)?.rows)
    }

    /// A loss in PyTorch's shape: [`positions`](Self::positions) for `none`, else 0-d.
    pub(crate) fn loss(&self, loss: Loss) -> ArrayD<f32> {
        match loss {
            Loss::PerRow(v) => v
                .into_shape_with_order(IxDyn(&self.positions))
                .expect("one loss per position"),
            Loss::Reduced(v) => ndarray::arr0(v).into_dyn(),
        }
    }

    /// A gradient over the rows, back in the logits' layout.
    pub(crate) fn grad(&self, g: Array2<T>) -> ArrayD<T> {
        let k = self.shape.len();
        if k == 1 {
            return g
                .into_shape_with_order(IxDyn(&self.shape))
                .expect("one row of C");
        }
        // Rows are (N, d1, ..., dk, C); axis k - 1 (the classes) goes back to position 1.
        let moved: Vec<usize> = std::iter::once(0)
            .chain(2..k)
            .chain([1])
            .map(|a| self.shape[a])
            .collect();
        let back: Vec<usize> = std::iter::once(0).chain([k - 1]).chain(1..k - 1).collect();
        g.into_shape_with_order(IxDyn(&moved))
            .expect("one row per position")
            .permuted_axes(IxDyn(&back))
            .as_standard_layout()
            .into_owned()
    }
}

/// Cross-entropy of logits of any of PyTorch's shapes against integer labels, as
/// `F.cross_entropy(x, y, ...)` for per-pixel (per-token, per-position) losses: logits
/// `(N, C, d1, ..., dk)` with the classes on axis 1 and labels `(N, d1, ..., dk)`; `(N, C)` with
/// `(N,)` as [`cross_entropy`]; or one unbatched row `(C,)` with a 0-d label. Every option of
/// [`CrossEntropyOptions`] applies as for [`cross_entropy`], over all positions: a `mean`
/// divides by the positions not ignored (or their summed class weights).
///
/// Returns the shape of the labels for `none` (0-d for `(C,)` logits), a 0-d array otherwise.
///
/// ```
/// use ndarray::{array, Array3};
/// use softmax_ce::{cpu, CrossEntropyOptions, Reduction};
/// // One image of 2 x 1 pixels, 3 classes: x[0, c, p] is class c's logit at pixel p.
/// let x = Array3::from_shape_vec((1, 3, 2), vec![2.0f32, 0.0, 1.0, 0.0, 0.0, 0.0])?;
/// let y = array![[0i64, 2]];
/// let opts = CrossEntropyOptions::default().reduction(Reduction::None);
/// let loss = cpu::cross_entropy_nd(x.view().into_dyn(), y.view().into_dyn(), -100, &opts)?;
/// assert_eq!(loss.shape(), &[1, 2]);
/// // Pixel 1's logits are all 0: the loss is ln 3.
/// assert!((loss[[0, 1]] - 3f32.ln()).abs() < 1e-6);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`Error::Shape`] for 0-d logits or labels whose shape is not the logits' without axis 1;
/// the errors of [`Labels::new`] and of [`cross_entropy`] otherwise.
pub fn cross_entropy_nd<T: Element>(
    x: ArrayViewD<T>,
    labels: ArrayViewD<i64>,
    ignore_index: i64,
    opts: &CrossEntropyOptions,
) -> Result<ArrayD<f32>> {
    const OP: &str = "cross_entropy";
    let rows = ClassRows::new(OP, x)?;
    let labels = rows.labels(OP, labels, ignore_index)?;
    Ok(rows.loss(cross_entropy(rows.rows.view(), &labels, opts)?))
}

/// The gradient of [`cross_entropy_nd`] with respect to the logits, in the logits' shape
/// (see [`cross_entropy_grad`] for the formula per position).
pub fn cross_entropy_nd_grad<T: Element>(
    x: ArrayViewD<T>,
    labels: ArrayViewD<i64>,
    ignore_index: i64,
    opts: &CrossEntropyOptions,
) -> Result<ArrayD<T>> {
    const OP: &str = "cross_entropy_grad";
    let rows = ClassRows::new(OP, x)?;
    let labels = rows.labels(OP, labels, ignore_index)?;
    Ok(rows.grad(cross_entropy_grad(rows.rows.view(), &labels, opts)?))
}

/// Cross-entropy against probability targets of the logits' shape, `(C,)`, `(N, C)` or
/// `(N, C, d1, ..., dk)` with the classes on axis 1, as [`cross_entropy_soft`] per position;
/// `mean` divides by the number of positions. The loss has [`cross_entropy_nd`]'s shape.
pub fn cross_entropy_soft_nd<T: Element>(
    x: ArrayViewD<T>,
    targets: ArrayViewD<T>,
    opts: &CrossEntropyOptions,
) -> Result<ArrayD<f32>> {
    const OP: &str = "cross_entropy_soft";
    let rows = ClassRows::new(OP, x)?;
    let t = rows.targets(OP, targets)?;
    Ok(rows.loss(cross_entropy_soft(rows.rows.view(), t.view(), opts)?))
}

/// The gradient of [`cross_entropy_soft_nd`] with respect to the logits, in their shape.
pub fn cross_entropy_soft_nd_grad<T: Element>(
    x: ArrayViewD<T>,
    targets: ArrayViewD<T>,
    opts: &CrossEntropyOptions,
) -> Result<ArrayD<T>> {
    const OP: &str = "cross_entropy_soft_grad";
    let rows = ClassRows::new(OP, x)?;
    let t = rows.targets(OP, targets)?;
    Ok(rows.grad(cross_entropy_soft_grad(rows.rows.view(), t.view(), opts)?))
}
