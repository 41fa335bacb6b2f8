//! The linear cross-entropy blocked over the vocabulary, on the CPU: the loss of `z = H W^T + b`
//! and its gradients without ever holding the `N x V` logits. Each block of rows meets each
//! block of classes in a small product (`ROWS x CLASSES` logits, through matrixmultiply), whose
//! per-row statistics merge by the online-softmax operator; the backward pass recomputes the
//! blocks from the merged statistics. Memory beyond the inputs and outputs is one block of
//! logits per thread, whatever `V`.
//!
//! The same statistics merge across vocabulary shards ([`ShardStats::merge`]): a caller that
//! splits `W` by rows over several devices (Megatron-LM's vocabulary-parallel cross-entropy)
//! computes each shard's statistics, merges them (a few floats per row), and each shard's
//! gradients from the merged statistics ([`shard_grads`]); the result is the unsharded one.
//!
//! Every output element is computed by one task in a fixed order, so two runs give the same
//! bits. Held to the materialising reference ([`linear_cross_entropy`](super::linear_cross_entropy))
//! by tests/linear_cross_entropy.rs.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, Zip, s};

use crate::cpu::LinearGrads;
use crate::cpu::fast::exp_nonpositive;
use crate::error::{Error, Result};
use crate::labels::Labels;
use crate::loss::{LinearCrossEntropyOptions, Loss, Reduction};
use crate::par::*;

/// Rows of `H` per block.
const ROWS: usize = 64;
/// Classes per block: a block of logits is `ROWS x CLASSES` floats (512 KiB).
const CLASSES: usize = 2048;
/// The logits of one block, `ROWS x CLASSES`: each task holds one such (two with a softcap:
/// before and after the cap), the path's workspace beyond its inputs and outputs.
pub const BLOCK_LOGITS: usize = ROWS * CLASSES;

/// A vocabulary shard: rows `first_class..first_class + classifier.nrows()` of `W` (and of the
/// bias), of a vocabulary of `labels.classes()` classes.
#[derive(Clone, Copy, Debug)]
pub struct Shard<'a> {
    /// The shard's rows of `W`, `V_shard x D`.
    pub classifier: ArrayView2<'a, f32>,
    /// The shard's part of the bias, `V_shard`.
    pub bias: Option<ArrayView1<'a, f32>>,
    /// The vocabulary index of the shard's first class.
    pub first_class: usize,
}

/// Per-row statistics of a shard's (soft-capped) logits, which merge over disjoint shards into
/// those of their union.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardStats {
    /// The row's largest logit in the shard.
    pub max: Array1<f32>,
    /// `sum_j exp(z_j - max)` over the shard.
    pub sumexp: Array1<f32>,
    /// The logit of the row's label where the shard holds it, else 0 (so that the merge adds).
    pub label_logit: Array1<f32>,
    /// `sum_j w_j (max - z_j)` over the shard (the label-smoothing term's sum).
    pub smooth: Array1<f32>,
    /// `sum_j w_j` over the shard's classes (1 per class without weights).
    pub weight: f32,
    /// The classes the statistics cover: a shard's, or the union of adjacent shards'.
    pub classes: std::ops::Range<usize>,
}

impl ShardStats {
    /// The statistics of the union of two adjacent shards of the same rows (in either order),
    /// so that a tree of merges over contiguous shards covers each class once.
    ///
    /// # Errors
    /// [`Error::Shape`] when the two have different row counts; [`Error::InvalidArgument`]
    /// when their classes are not adjacent (overlapping statistics would count classes twice).
    pub fn merge(&self, other: &ShardStats) -> Result<ShardStats> {
        const OP: &str = "merge_shard_stats";
        let n = self.max.len();
        self.check_rows(OP, n)?;
        other.check_rows(OP, n)?;
        let (a, b) = (&self.classes, &other.classes);
        let classes = if a.end == b.start {
            a.start..b.end
        } else if b.end == a.start {
            b.start..a.end
        } else {
            return Err(Error::invalid(
                OP,
                format!(
                    "statistics of classes {a:?} and {b:?}: only adjacent shards merge, each class once"
                ),
            ));
        };
        let mut out = ShardStats {
            max: Array1::zeros(n),
            sumexp: Array1::zeros(n),
            label_logit: &self.label_logit + &other.label_logit,
            smooth: Array1::zeros(n),
            weight: self.weight + other.weight,
            classes,
        };
        for i in 0..n {
            let (ma, mb) = (f64::from(self.max[i]), f64::from(other.max[i]));
            let m = ma.max(mb);
            // Equal maxima (two -inf included, where the difference is NaN) rescale nothing.
            let rescale = |s: f32, from: f64| {
                if from == m {
                    f64::from(s)
                } else {
                    f64::from(s) * (from - m).exp()
                }
            };
            out.max[i] = m as f32;
            out.sumexp[i] = (rescale(self.sumexp[i], ma) + rescale(other.sumexp[i], mb)) as f32;
            // sum w (m - z) = sum w (m_shard - z) + W_shard (m - m_shard); a shard of no
            // weight adds nothing (not 0 * inf, where its maximum is -inf).
            let shift = |w: f32, from: f64| {
                if from == m || w == 0.0 {
                    0.0
                } else {
                    f64::from(w) * (m - from)
                }
            };
            out.smooth[i] = (f64::from(self.smooth[i])
                + shift(self.weight, ma)
                + f64::from(other.smooth[i])
                + shift(other.weight, mb)) as f32;
        }
        Ok(out)
    }

    /// Fails unless all four vectors hold one value per row of `rows`.
    fn check_rows(&self, op: &'static str, rows: usize) -> Result<()> {
        let lens = [
            self.max.len(),
            self.sumexp.len(),
            self.label_logit.len(),
            self.smooth.len(),
        ];
        if lens.iter().any(|&l| l != rows) {
            return Err(Error::shape(
                op,
                format!("statistics of {rows} rows (max, sumexp, label_logit, smooth)"),
                format!("{lens:?}"),
            ));
        }
        Ok(())
    }

    /// Fails unless the statistics cover the whole vocabulary of `classes`: the loss and the
    /// gradients need every shard's part.
    fn check_whole(&self, op: &'static str, classes: usize) -> Result<()> {
        check_covers(op, &self.classes, classes)
    }

    /// Each row's log-sum-exp, `max + ln sumexp`.
    pub fn lse(&self) -> Array1<f32> {
        Zip::from(&self.max)
            .and(&self.sumexp)
            .map_collect(|&m, &s| (f64::from(m) + f64::from(s).ln()) as f32)
    }
}

/// `c tanh(z / c)` where capped.
fn cap(z: f32, softcap: Option<f32>) -> f32 {
    match softcap {
        Some(c) => c * (z / c).tanh(),
        None => z,
    }
}

/// Fails unless a shard of `rows` classes from `first_class` holds at least one class and ends
/// inside a vocabulary of `classes`, and its bias (of `bias_len` values) has one per class: the
/// checks of a shard on either device.
pub(crate) fn check_shard(
    op: &'static str,
    (first_class, rows): (usize, usize),
    bias_len: Option<usize>,
    classes: usize,
) -> Result<()> {
    let end = first_class.checked_add(rows);
    if rows == 0 || end.is_none_or(|e| e > classes) {
        return Err(Error::invalid(
            op,
            format!(
                "a shard of classes {}..{} of a vocabulary of {classes}: a shard holds at least one class and ends inside the vocabulary",
                first_class,
                first_class.saturating_add(rows)
            ),
        ));
    }
    if let Some(len) = bias_len
        && len != rows
    {
        return Err(Error::shape(
            op,
            format!("a bias of {rows} values (one per row of W)"),
            format!("{len}"),
        ));
    }
    Ok(())
}

/// Fails unless statistics of `covered` classes are the whole vocabulary of `classes`: the
/// loss and the gradients need every shard's part.
pub(crate) fn check_covers(
    op: &'static str,
    covered: &std::ops::Range<usize>,
    classes: usize,
) -> Result<()> {
    if *covered != (0..classes) {
        return Err(Error::invalid(
            op,
            format!(
                "statistics of classes {covered:?} of a vocabulary of {classes}: merge every shard's first"
            ),
        ));
    }
    Ok(())
}

fn check(
    op: &'static str,
    h: ArrayView2<f32>,
    shard: &Shard<'_>,
    labels: &Labels,
    opts: &LinearCrossEntropyOptions,
) -> Result<()> {
    let w = shard.classifier;
    super::linear::check_hidden_size(op, h, w)?;
    let classes = labels.classes();
    check_shard(
        op,
        (shard.first_class, w.nrows()),
        shard.bias.map(|b| b.len()),
        classes,
    )?;
    labels.check_fits(op, h.nrows(), classes)?;
    opts.validate(op, classes)
}

/// A block of logits: the rows of `h` against the shard's classes `cols` (shard-relative): the
/// logits before the cap where there is one (the backward pass needs them), and the logits the
/// loss sees.
fn block(
    h: ArrayView2<f32>,
    shard: &Shard<'_>,
    cols: std::ops::Range<usize>,
    softcap: Option<f32>,
) -> (Option<Array2<f32>>, Array2<f32>) {
    let mut z = h.dot(&shard.classifier.slice(s![cols.clone(), ..]).t());
    if let Some(b) = shard.bias {
        z += &b.slice(s![cols]);
    }
    match softcap {
        Some(_) => {
            let capped = z.mapv(|v| cap(v, softcap));
            (Some(z), capped)
        }
        None => (None, z),
    }
}

/// The blocks of `len` classes.
fn class_blocks(len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..len.div_ceil(CLASSES)).map(move |b| b * CLASSES..((b + 1) * CLASSES).min(len))
}

/// The statistics of the shard's logits for every row of `H`: one pass over the shard's
/// classes per block of rows, the blocks of rows in parallel.
///
/// # Errors
/// [`Error::Shape`] when `W`'s columns are not `H`'s, the bias is not one per row of the shard
/// or the labels are not one per row of `H`; [`Error::InvalidArgument`] for a shard outside
/// the vocabulary of `labels.classes()` classes, or bad options.
pub fn shard_stats(
    h: ArrayView2<f32>,
    shard: &Shard<'_>,
    labels: &Labels,
    opts: &LinearCrossEntropyOptions,
) -> Result<ShardStats> {
    check("linear_cross_entropy", h, shard, labels, opts)?;
    let n = h.nrows();
    let v0 = shard.first_class;
    let mut stats = ShardStats {
        max: Array1::from_elem(n, f32::NEG_INFINITY),
        sumexp: Array1::zeros(n),
        label_logit: Array1::zeros(n),
        smooth: Array1::zeros(n),
        weight: (0..shard.classifier.nrows())
            .map(|j| opts.loss.w(v0 + j))
            .sum::<f64>() as f32,
        classes: v0..v0 + shard.classifier.nrows(),
    };
    // The summed weights of the shard's classes before each one: what a running smoothing
    // sum carries when its maximum moves.
    let mut before = Vec::with_capacity(shard.classifier.nrows() + 1);
    before.push(0.0f64);
    for j in 0..shard.classifier.nrows() {
        before.push(before[j] + opts.loss.w(v0 + j));
    }
    let row_blocks: Vec<_> = (0..n.div_ceil(ROWS)).collect();
    let per_block: Vec<Vec<[f64; 4]>> = row_blocks
        .par_iter()
        .map(|&rb| {
            let rows = rb * ROWS..((rb + 1) * ROWS).min(n);
            let hb = h.slice(s![rows.clone(), ..]);
            // (m, s, label logit, sum w (m - z)) per row, merged block by block.
            let mut acc = vec![[f64::NEG_INFINITY, 0.0, 0.0, 0.0]; rows.len()];
            for cols in class_blocks(shard.classifier.nrows()) {
                let (_, z) = block(hb, shard, cols.clone(), opts.softcap);
                for (r, (row, a)) in z.rows().into_iter().zip(&mut acc).enumerate() {
                    let m_blk = row
                        .iter()
                        .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
                    let m = a[0].max(m_blk);
                    // The exponentials in f32 (cpu::fast's vectorisable exp, every argument
                    // <= 0), their sum and the smoothing sum in f64.
                    // An all -inf prefix: shifted by 0, its exponentials are 0 (where
                    // -inf - -inf would be NaN), and it has no smoothing sum yet.
                    let m32 = if m == f64::NEG_INFINITY {
                        0.0
                    } else {
                        m as f32
                    };
                    let s: f64 = row
                        .iter()
                        .map(|&v| f64::from(exp_nonpositive(v - m32)))
                        .sum();
                    let smooth: f64 = if opts.loss.label_smoothing > 0.0 && m > f64::NEG_INFINITY {
                        row.iter()
                            .enumerate()
                            .map(|(j, &v)| opts.loss.w(v0 + cols.start + j) * (m - f64::from(v)))
                            .sum()
                    } else {
                        0.0
                    };
                    // What came before, re-expressed against the new maximum: an all -inf
                    // prefix has s = 0 and adds sum w (m - -inf), +inf where it weighs.
                    let (s_old, smooth_old) = if a[0] == m {
                        (a[1], a[3])
                    } else {
                        let w = before[cols.start];
                        let shift = if w == 0.0 { 0.0 } else { w * (m - a[0]) };
                        (a[1] * (a[0] - m).exp(), a[3] + shift)
                    };
                    a[0] = m;
                    a[1] = s_old + s;
                    a[3] = smooth_old + smooth;
                    if let Some(y) = labels.get(rows.start + r)
                        && (v0 + cols.start..v0 + cols.end).contains(&y)
                    {
                        a[2] = f64::from(row[y - v0 - cols.start]);
                    }
                }
            }
            acc
        })
        .collect();
    for (rb, acc) in per_block.into_iter().enumerate() {
        for (r, a) in acc.into_iter().enumerate() {
            let i = rb * ROWS + r;
            stats.max[i] = a[0] as f32;
            stats.sumexp[i] = a[1] as f32;
            stats.label_logit[i] = a[2] as f32;
            stats.smooth[i] = a[3] as f32;
        }
    }
    Ok(stats)
}

/// The loss from the statistics of the whole vocabulary (one shard's, or the merge of all),
/// reduced as [`cross_entropy`](super::cross_entropy) reduces.
pub fn loss_from_stats(
    stats: &ShardStats,
    labels: &Labels,
    opts: &LinearCrossEntropyOptions,
) -> Result<Loss> {
    const OP: &str = "linear_cross_entropy";
    let n = stats.max.len();
    stats.check_rows(OP, n)?;
    stats.check_whole(OP, labels.classes())?;
    if labels.len() != n {
        return Err(Error::shape(
            OP,
            format!("{n} labels (one per row of the statistics)"),
            format!("{}", labels.len()),
        ));
    }
    let o = &opts.loss;
    o.validate(OP, labels.classes())?;
    let eps = f64::from(o.label_smoothing);
    let c = labels.classes() as f64;
    let terms: Vec<(f64, f64)> = (0..n)
        .map(|i| {
            let Some(y) = labels.get(i) else {
                return (0.0, 0.0);
            };
            let m = f64::from(stats.max[i]);
            let ln_s = f64::from(stats.sumexp[i]).ln();
            let mut ce = (1.0 - eps) * o.w(y) * ((m - f64::from(stats.label_logit[i])) + ln_s);
            if eps > 0.0 {
                ce += eps / c * (f64::from(stats.smooth[i]) + f64::from(stats.weight) * ln_s);
            }
            let lse = m + ln_s;
            (ce, f64::from(o.z_loss) * lse * lse)
        })
        .collect();
    Ok(match o.reduction {
        Reduction::None => Loss::PerRow(terms.iter().map(|&(ce, z)| (ce + z) as f32).collect()),
        Reduction::Mean if labels.active_count() == 0 => Loss::Reduced(f32::NAN),
        _ => {
            let (ce_scale, z_scale) = o.scales(labels);
            let ce: f64 = terms.iter().map(|t| t.0).sum();
            let z: f64 = terms.iter().map(|t| t.1).sum();
            let z = if o.z_loss > 0.0 { z * z_scale } else { 0.0 };
            Loss::Reduced((ce * ce_scale + z) as f32)
        }
    })
}

/// The gradient of the reduced loss with respect to one block of logits, in place over the
/// capped logits `z` (rows `rows` of `H`, shard classes `cols`), given the merged statistics of
/// the whole vocabulary: the formula of [`cross_entropy_grad`](super::cross_entropy_grad),
/// times the cap's derivative.
#[allow(clippy::too_many_arguments)]
fn block_grad(
    z: &mut Array2<f32>,
    raw: Option<&Array2<f32>>,
    rows: std::ops::Range<usize>,
    class0: usize,
    stats: &ShardStats,
    labels: &Labels,
    opts: &LinearCrossEntropyOptions,
    (ce_scale, z_scale, total_weight): (f64, f64, f64),
) {
    let o = &opts.loss;
    let eps = f64::from(o.label_smoothing);
    let c = labels.classes() as f64;
    for (r, mut g) in z.rows_mut().into_iter().enumerate() {
        let i = rows.start + r;
        let Some(y) = labels.get(i) else {
            g.fill(0.0);
            continue;
        };
        // p = exp((z - m) - ln s): (z - m) first, exact next to the maximum, where
        // exp(z - lse) would carry lse's rounding (a logit of 1e7 would lose its p). Every
        // argument is <= 0, so cpu::fast's vectorisable exp serves; f32 as on the GPU.
        let (m, ln_s) = (stats.max[i], f64::from(stats.sumexp[i]).ln());
        let ln_s32 = ln_s as f32;
        let lse = f64::from(m) + ln_s;
        let a = ce_scale * (1.0 - eps) * o.w(y);
        let b = ce_scale * eps / c;
        let zc = z_scale * 2.0 * f64::from(o.z_loss) * lse;
        let (a32, b32, zc32, wsum) = (a as f32, b as f32, zc as f32, total_weight as f32);
        let label = (class0..class0 + g.len()).contains(&y).then(|| {
            // The label's entry in f64: p_y - 1 next to p_y = 1 keeps only f32's rounding.
            let p = ((f64::from(g[y - class0]) - f64::from(m)) - ln_s).exp();
            a * (p - 1.0) + b * (total_weight * p - o.w(y)) + zc * p
        });
        for g in g.iter_mut() {
            *g = exp_nonpositive((*g - m) - ln_s32);
        }
        if eps > 0.0 || o.z_loss > 0.0 {
            for (j, p) in g.iter_mut().enumerate() {
                let w = o.w(class0 + j) as f32;
                *p = a32 * *p + b32 * (wsum * *p - w) + zc32 * *p;
            }
        } else {
            g.iter_mut().for_each(|p| *p *= a32);
        }
        if let Some(d) = label {
            g[y - class0] = d as f32;
        }
        if let (Some(cap), Some(raw)) = (opts.softcap, raw) {
            for (g, &zr) in g.iter_mut().zip(raw.row(r)) {
                let t = (zr / cap).tanh();
                *g *= 1.0 - t * t;
            }
        }
    }
}

/// One shard's part of the gradients, given the statistics of the whole vocabulary (the merge
/// of every shard's [`shard_stats`]): its part of `dH` (the shards' parts add up to `dH`), and
/// `dW` and `db` for its classes. The blocks of rows run in parallel for `dH`, the blocks of
/// classes for `dW` and `db`, each recomputing its logits and accumulating its products in
/// place.
///
/// # Errors
/// Those of [`shard_stats`], and [`Error::Shape`] for statistics that are not one per row.
pub fn shard_grads(
    h: ArrayView2<f32>,
    shard: &Shard<'_>,
    labels: &Labels,
    opts: &LinearCrossEntropyOptions,
    stats: &ShardStats,
) -> Result<LinearGrads> {
    const OP: &str = "linear_cross_entropy_grad";
    check(OP, h, shard, labels, opts)?;
    let n = h.nrows();
    stats.check_rows(OP, n)?;
    stats.check_whole(OP, labels.classes())?;
    let (ce_scale, z_scale) = opts.loss.scales(labels);
    let total_weight: f64 = (0..labels.classes()).map(|j| opts.loss.w(j)).sum();
    let scales = (ce_scale, z_scale, total_weight);
    let v0 = shard.first_class;
    let vs = shard.classifier.nrows();
    let mut hidden = Array2::<f32>::zeros(h.raw_dim());
    hidden
        .axis_chunks_iter_mut(Axis(0), ROWS)
        .into_par_iter()
        .enumerate()
        .for_each(|(rb, mut dh)| {
            let rows = rb * ROWS..(rb * ROWS + dh.nrows());
            let hb = h.slice(s![rows.clone(), ..]);
            for cols in class_blocks(vs) {
                let (raw, mut g) = block(hb, shard, cols.clone(), opts.softcap);
                block_grad(
                    &mut g,
                    raw.as_ref(),
                    rows.clone(),
                    v0 + cols.start,
                    stats,
                    labels,
                    opts,
                    scales,
                );
                let w_blk = shard.classifier.slice(s![cols, ..]);
                general_mat_mul(1.0, &g, &w_blk, 1.0, &mut dh);
            }
        });
    let mut classifier = Array2::<f32>::zeros(shard.classifier.raw_dim());
    let mut bias = Array1::<f32>::zeros(vs);
    classifier
        .axis_chunks_iter_mut(Axis(0), CLASSES)
        .into_par_iter()
        .zip(bias.axis_chunks_iter_mut(Axis(0), CLASSES).into_par_iter())
        .enumerate()
        .for_each(|(cb, (mut dw, mut db))| {
            let cols = cb * CLASSES..cb * CLASSES + dw.nrows();
            for rb in 0..n.div_ceil(ROWS) {
                let rows = rb * ROWS..((rb + 1) * ROWS).min(n);
                let hb = h.slice(s![rows.clone(), ..]);
                let (raw, mut g) = block(hb, shard, cols.clone(), opts.softcap);
                block_grad(
                    &mut g,
                    raw.as_ref(),
                    rows,
                    v0 + cols.start,
                    stats,
                    labels,
                    opts,
                    scales,
                );
                general_mat_mul(1.0, &g.t(), &hb, 1.0, &mut dw);
                db += &g.sum_axis(Axis(0));
            }
        });
    Ok(LinearGrads {
        hidden,
        classifier,
        bias: shard.bias.map(|_| bias),
    })
}

/// The linear cross-entropy of `H` against the whole classifier `W` (`V x D`) and bias, and,
/// `with_grad`, its gradients: [`shard_stats`], [`loss_from_stats`] and [`shard_grads`] over
/// one shard holding every class. The same values as the materialising
/// [`linear_cross_entropy`](super::linear_cross_entropy) and
/// [`linear_cross_entropy_grad`](super::linear_cross_entropy_grad), in memory that does not
/// grow with `V`.
///
/// ```
/// use ndarray::array;
/// use softmax_ce::{cpu, Labels, LinearCrossEntropyOptions};
/// let h = array![[1.0f32, 0.0], [0.0, 2.0]];
/// let w = array![[1.0f32, 0.0], [0.0, 1.0], [0.0, 0.0]];
/// let y = Labels::new([0, 2], 3, -100)?;
/// let opts = LinearCrossEntropyOptions::default();
/// let (loss, grads) = cpu::vocab::linear_cross_entropy(h.view(), w.view(), None, &y, &opts, true)?;
/// let want = cpu::linear_cross_entropy(h.view(), w.view(), None, &y, &opts)?;
/// assert!((loss.scalar().unwrap() - want.scalar().unwrap()).abs() < 1e-6);
/// assert_eq!(grads.unwrap().classifier.dim(), (3, 2));
/// # Ok::<(), softmax_ce::Error>(())
/// ```
pub fn linear_cross_entropy(
    h: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    labels: &Labels,
    opts: &LinearCrossEntropyOptions,
    with_grad: bool,
) -> Result<(Loss, Option<LinearGrads>)> {
    let shard = Shard {
        classifier: w,
        bias,
        first_class: 0,
    };
    let stats = shard_stats(h, &shard, labels, opts)?;
    let loss = loss_from_stats(&stats, labels, opts)?;
    let grads = if with_grad {
        Some(shard_grads(h, &shard, labels, opts, &stats)?)
    } else {
        None
    };
    Ok((loss, grads))
}
