//! The fast CPU path: what a careful engineer would ship on the CPU, so that CPU-against-GPU
//! comparisons are fair. The [reference](crate::cpu) is written to be obviously right; this is
//! written to be quick, and the tests hold it to the reference.
//!
//! - Rows run in parallel (rayon, with the `parallel` feature), each row start to finish on one thread while it is in cache.
//! - Each row is read twice from memory at most: once for its maximum, once for the
//!   exponentials; the second pass writes the result, and a row of up to a few hundred KiB is
//!   still in cache when it is rescaled.
//! - `exp` is a branch-free polynomial (Cephes' `expf`, within 2 ulp) over lanes of 8, which
//!   the compiler vectorises; on x86-64 the row loop is compiled twice, for the baseline and
//!   for AVX2 + FMA, and the second is picked at run time when the CPU has them.
//! - Sums of exponentials are taken in f32 lanes over blocks of 512 elements and in f64 across
//!   blocks, which keeps them as accurate as the reference's f64 sums to within f32 rounding.
//!
//! Semantics are the reference's (PyTorch's), including NaN rows for `+inf` or all-`-inf`
//! input and zero gradients for ignored rows.

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, Zip};

use crate::cpu::{check_classes, reduction_scale};
use crate::error::Result;
use crate::labels::Labels;
use crate::loss::{CrossEntropyOptions, Loss, Reduction};

const LANES: usize = 8;
/// Elements summed in f32 before the running sum moves to f64.
const BLOCK: usize = 512;

/// `exp(x)` for `x <= 0` (the shifted logits of a softmax), branch-free so that it vectorises:
/// Cephes' `expf` range reduction `x = n ln 2 + r` and its degree-6 polynomial for `e^r`.
/// Below `-87.3` (where `e^x` leaves the normal range) it gives 0; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a rounding
    // instruction (SSE2 has none).
    const ROUND: f32 = 12_582_912.0;
    // Not `max`, which would drop a NaN: NaN fails the comparison, stays, and poisons the
    // polynomial, so NaN comes out without a branch of its own.
    let clamped = if x < -87.0 { -87.0 } else { x };
    let shifted = clamped * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let poly = p * r2 + r + 1.0;
    // The integer n sits in the low mantissa bits of `shifted`; taking it from there avoids a
    // float-to-int conversion (saturating in Rust, and slow to vectorise).
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    // Below the clamp the true value is under 2^-126.
    if x < -87.0 { 0.0 } else { poly * scale }
}

#[inline(always)]
fn row_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        let c: &[f32; LANES] = c.try_into().expect("chunks of LANES");
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let mut m = tail.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for a in acc {
        m = m.max(a);
    }
    m
}

/// Writes `exp(x - m)` to `out` and returns the sum, in f64. A plain map, then a sum over
/// lanes: shapes the compiler vectorises (a fused loop carrying eight sums did not).
#[inline(always)]
fn exp_store(x: &[f32], m: f32, out: &mut [f32]) -> f64 {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp_nonpositive(v - m);
    }
    sum(out)
}

/// The sum of `exp(x - m)`, in f64, through a small buffer that stays in L1.
#[inline(always)]
fn exp_sum(x: &[f32], m: f32) -> f64 {
    let mut buf = [0.0f32; BLOCK];
    x.chunks(BLOCK)
        .map(|block| exp_store(block, m, &mut buf[..block.len()]))
        .sum()
}

/// Sum in f32 lanes over blocks of [`BLOCK`] elements, in f64 across blocks.
#[inline(always)]
fn sum(v: &[f32]) -> f64 {
    let mut total = 0.0f64;
    for block in v.chunks(BLOCK) {
        let mut acc = [0.0f32; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for c in &mut chunks {
            let c: &[f32; LANES] = c.try_into().expect("chunks of LANES");
            for i in 0..LANES {
                acc[i] += c[i];
            }
        }
        total += acc.iter().map(|&a| f64::from(a)).sum::<f64>()
            + chunks
                .remainder()
                .iter()
                .map(|&a| f64::from(a))
                .sum::<f64>();
    }
    total
}

/// What one row computes.
#[derive(Clone, Copy)]
enum RowOp {
    Softmax,
    LogSoftmax,
    /// The cross-entropy gradient `(softmax - onehot(y)) * scale`; the row's loss is returned.
    CrossEntropy {
        label: Option<usize>,
        scale: f32,
    },
}

/// One row, start to finish: returns its loss for [`RowOp::CrossEntropy`], else 0.
#[inline(always)]
fn row(op: RowOp, x: &[f32], out: &mut [f32]) -> f64 {
    match op {
        RowOp::Softmax => {
            let m = row_max(x);
            let s = exp_store(x, m, out);
            let inv = (1.0 / s) as f32;
            out.iter_mut().for_each(|o| *o *= inv);
            0.0
        }
        RowOp::LogSoftmax => {
            let m = row_max(x);
            let s = exp_sum(x, m);
            let ln_s = s.ln() as f32;
            // (x - m) first, as the reference: exact next to the maximum.
            out.iter_mut()
                .zip(x)
                .for_each(|(o, &v)| *o = (v - m) - ln_s);
            0.0
        }
        RowOp::CrossEntropy { label: None, .. } => {
            out.fill(0.0);
            0.0
        }
        RowOp::CrossEntropy {
            label: Some(y),
            scale,
        } => {
            let m = row_max(x);
            let s = exp_store(x, m, out);
            let k = (scale as f64 / s) as f32;
            out.iter_mut().for_each(|o| *o *= k);
            out[y] -= scale;
            (m as f64 - x[y] as f64) + s.ln()
        }
    }
}

/// [`row`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(op: RowOp, x: &[f32], out: &mut [f32]) -> f64 {
    row(op, x, out)
}

fn run_row(op: RowOp, x: &[f32], out: &mut [f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: both features were just detected on this CPU.
            return unsafe { row_avx2(op, x, out) };
        }
    }
    row(op, x, out)
}

/// Runs `op_of(i)` on every row of `x` in parallel into the same row of `out`; returns the
/// per-row results. Rows of both must be contiguous (each a slice).
fn rows_into(
    x: ArrayView2<f32>,
    mut out: ArrayViewMut2<f32>,
    op_of: impl Fn(usize) -> RowOp + Sync,
) -> Vec<f64> {
    let x = x.as_standard_layout();
    let mut per_row = vec![0.0f64; x.nrows()];
    let mut per_row_view = ndarray::ArrayViewMut1::from(&mut per_row[..]);
    let rows = Zip::indexed(out.axis_iter_mut(Axis(0)))
        .and(x.axis_iter(Axis(0)))
        .and(&mut per_row_view);
    let row = |i, mut o: ArrayViewMut1<f32>, r: ArrayView1<f32>, l: &mut f64| {
        let (o, r) = (
            o.as_slice_mut()
                .expect("checked: rows of out are contiguous"),
            r.as_slice().expect("rows of a standard-layout array"),
        );
        *l = run_row(op_of(i), r, o);
    };
    #[cfg(feature = "parallel")]
    rows.par_for_each(row);
    #[cfg(not(feature = "parallel"))]
    rows.for_each(row);
    per_row
}

/// Fails unless `out` can take the result for `x`: the same shape, each row contiguous.
fn check_out(op: &'static str, x: ArrayView2<f32>, out: &ArrayViewMut2<f32>) -> Result<()> {
    if out.dim() != x.dim() {
        return Err(crate::Error::shape(
            op,
            format!("an output of shape {:?} (the input's)", x.dim()),
            format!("{:?}", out.dim()),
        ));
    }
    if out.ncols() > 1 && out.strides()[1] != 1 {
        return Err(crate::Error::invalid(
            op,
            format!(
                "an output whose rows are not contiguous (strides {:?}): each row is written as one run",
                out.strides()
            ),
        ));
    }
    Ok(())
}

/// Row-wise softmax, as [`cpu::softmax`](crate::cpu::softmax).
pub fn softmax(x: ArrayView2<f32>) -> Result<Array2<f32>> {
    let mut out = Array2::zeros(x.raw_dim());
    softmax_into(x, out.view_mut())?;
    Ok(out)
}

/// [`softmax`] into `out` (`x`'s shape, rows contiguous), which a caller can reuse from call
/// to call: a fresh output of a large matrix costs its page faults on first write.
pub fn softmax_into(x: ArrayView2<f32>, out: ArrayViewMut2<f32>) -> Result<()> {
    check_classes("softmax", x)?;
    check_out("softmax", x, &out)?;
    rows_into(x, out, |_| RowOp::Softmax);
    Ok(())
}

/// Row-wise log-softmax, as [`cpu::log_softmax`](crate::cpu::log_softmax).
pub fn log_softmax(x: ArrayView2<f32>) -> Result<Array2<f32>> {
    let mut out = Array2::zeros(x.raw_dim());
    log_softmax_into(x, out.view_mut())?;
    Ok(out)
}

/// [`log_softmax`] into `out`, as [`softmax_into`].
pub fn log_softmax_into(x: ArrayView2<f32>, out: ArrayViewMut2<f32>) -> Result<()> {
    check_classes("log_softmax", x)?;
    check_out("log_softmax", x, &out)?;
    rows_into(x, out, |_| RowOp::LogSoftmax);
    Ok(())
}

/// Cross-entropy and its gradient with respect to the logits in one pass over each row, as
/// [`cpu::cross_entropy`](crate::cpu::cross_entropy) and
/// [`cpu::cross_entropy_grad`](crate::cpu::cross_entropy_grad) (reduction and ignore index;
/// the other options are the reference's alone).
pub fn cross_entropy_with_grad(
    x: ArrayView2<f32>,
    labels: &Labels,
    opts: &CrossEntropyOptions,
) -> Result<(Loss, Array2<f32>)> {
    let mut grad = Array2::zeros(x.raw_dim());
    let loss = cross_entropy_with_grad_into(x, labels, opts, grad.view_mut())?;
    Ok((loss, grad))
}

/// [`cross_entropy_with_grad`] with the gradient written into `grad` (`x`'s shape, rows
/// contiguous), every element of it: a training loop passes the same buffer every step.
pub fn cross_entropy_with_grad_into(
    x: ArrayView2<f32>,
    labels: &Labels,
    opts: &CrossEntropyOptions,
    grad: ArrayViewMut2<f32>,
) -> Result<Loss> {
    const OP: &str = "cross_entropy_with_grad";
    check_classes(OP, x)?;
    labels.check_fits(OP, x.nrows(), x.ncols())?;
    check_out(OP, x, &grad)?;
    if !opts.is_plain() {
        return Err(crate::Error::invalid(
            OP,
            "the fast path implements the reduction and ignore_index only; use cpu::cross_entropy for label smoothing, class weights or the z-loss",
        ));
    }
    let scale = reduction_scale(opts.reduction, labels);
    let losses = rows_into(x, grad, |i| RowOp::CrossEntropy {
        label: labels.get(i),
        scale: scale as f32,
    });
    Ok(match opts.reduction {
        Reduction::None => Loss::PerRow(losses.iter().map(|&l| l as f32).collect()),
        Reduction::Mean if labels.active_count() == 0 => Loss::Reduced(f32::NAN),
        _ => Loss::Reduced((losses.iter().sum::<f64>() * scale) as f32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polynomial against f64 `exp` over the whole range it serves, in ulps.
    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp() as f32;
            let got = exp_nonpositive(x);
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).unsigned_abs() as u32;
            worst = worst.max(ulps);
            x += 0.000_731;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-1e30), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }
}
