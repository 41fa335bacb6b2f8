//! What a loss call asks for and what it returns, shared by the CPU and GPU paths.

use ndarray::{Array1, ArrayD, IxDyn};
use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// How per-row losses are combined, as in PyTorch's `reduction=`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// One loss per row; ignored rows hold 0.
    None,
    /// The sum of the per-row losses divided by the number of rows not ignored (or, with class
    /// weights, by the summed weights of their labels). NaN when every row is ignored, as in
    /// PyTorch.
    #[default]
    Mean,
    /// The sum of the per-row losses.
    Sum,
}

impl Reduction {
    /// The name used by PyTorch and by the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Reduction::None => "none",
            Reduction::Mean => "mean",
            Reduction::Sum => "sum",
        }
    }
}

impl fmt::Display for Reduction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Reduction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "none" => Ok(Reduction::None),
            "mean" => Ok(Reduction::Mean),
            "sum" => Ok(Reduction::Sum),
            other => Err(Error::invalid(
                "reduction",
                format!("{other:?} is not one of none, mean, sum"),
            )),
        }
    }
}

/// Options of the linear cross-entropy (the loss of a classifier layer `z = H W^T + b`): every
/// option of the cross-entropy, applied to the soft-capped logits.
///
/// ```
/// use softmax_ce::{CrossEntropyOptions, LinearCrossEntropyOptions, Reduction};
/// let opts = LinearCrossEntropyOptions::default()
///     .loss(CrossEntropyOptions::default().reduction(Reduction::Sum))
///     .softcap(30.0);
/// assert_eq!(opts.softcap, Some(30.0));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct LinearCrossEntropyOptions {
    /// The cross-entropy's options, over the soft-capped logits.
    pub loss: CrossEntropyOptions,
    /// Logit soft-capping (Gemma 2, Liger's `softcap`): each logit `z` becomes
    /// `c tanh(z / c)` before the loss, for a finite `c > 0`.
    pub softcap: Option<f32>,
}

impl LinearCrossEntropyOptions {
    /// Sets [`loss`](Self::loss).
    pub fn loss(mut self, loss: CrossEntropyOptions) -> Self {
        self.loss = loss;
        self
    }

    /// Sets [`softcap`](Self::softcap).
    pub fn softcap(mut self, cap: f32) -> Self {
        self.softcap = Some(cap);
        self
    }

    /// Checks the options against `classes`.
    pub(crate) fn validate(&self, op: &'static str, classes: usize) -> crate::Result<()> {
        if let Some(c) = self.softcap
            && !(c.is_finite() && c > 0.0)
        {
            return Err(crate::Error::invalid(
                op,
                format!("softcap {c} is not a finite number > 0"),
            ));
        }
        self.loss.validate(op, classes)
    }
}

/// Options of the cross-entropy loss, defaulting to PyTorch's `F.cross_entropy` defaults.
///
/// ```
/// use softmax_ce::{CrossEntropyOptions, Reduction};
/// let opts = CrossEntropyOptions::default().reduction(Reduction::Sum);
/// assert_eq!(opts.reduction, Reduction::Sum);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct CrossEntropyOptions {
    /// How per-row losses are combined.
    pub reduction: Reduction,
    /// PyTorch's `label_smoothing`, in `[0, 1]`: the target is `(1 - e) onehot(y) + e / C`.
    pub label_smoothing: f32,
    /// PyTorch's `weight`: one finite, non-negative weight per class. A row's loss is scaled by
    /// its label's weight (and the smoothing term by each class's), and `mean` divides by the
    /// summed weights of the rows not ignored.
    pub weight: Option<Array1<f32>>,
    /// The z-loss strength `S` (PaLM, Liger): adds `S * lse^2` per row not ignored, unweighted;
    /// `mean` divides that sum by the number of rows not ignored.
    pub z_loss: f32,
}

impl CrossEntropyOptions {
    /// Sets [`reduction`](Self::reduction).
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Sets [`label_smoothing`](Self::label_smoothing).
    pub fn label_smoothing(mut self, epsilon: f32) -> Self {
        self.label_smoothing = epsilon;
        self
    }

    /// Sets [`weight`](Self::weight).
    pub fn weight(mut self, weight: Array1<f32>) -> Self {
        self.weight = Some(weight);
        self
    }

    /// Sets [`z_loss`](Self::z_loss).
    pub fn z_loss(mut self, strength: f32) -> Self {
        self.z_loss = strength;
        self
    }

    /// Whether only the reduction (and the labels' ignore index) is set: what the staged
    /// kernels and the fast CPU path implement.
    pub fn is_plain(&self) -> bool {
        self.label_smoothing == 0.0 && self.weight.is_none() && self.z_loss == 0.0
    }

    /// Checks the options against `classes`.
    pub(crate) fn validate(&self, op: &'static str, classes: usize) -> crate::Result<()> {
        use crate::Error;
        let e = self.label_smoothing;
        if !(0.0..=1.0).contains(&e) {
            return Err(Error::invalid(
                op,
                format!("label smoothing {e} is not in [0, 1]"),
            ));
        }
        if !self.z_loss.is_finite() || self.z_loss < 0.0 {
            return Err(Error::invalid(
                op,
                format!(
                    "z-loss strength {} is not a finite number >= 0",
                    self.z_loss
                ),
            ));
        }
        if let Some(w) = &self.weight {
            if w.len() != classes {
                return Err(Error::shape(
                    op,
                    format!("{classes} class weights"),
                    format!("{}", w.len()),
                ));
            }
            if let Some((j, v)) = w
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite() || **v < 0.0)
            {
                return Err(Error::invalid(
                    op,
                    format!("class weight {v} of class {j} is not a finite number >= 0"),
                ));
            }
        }
        Ok(())
    }

    /// The weight of class `j` (1 without weights).
    pub(crate) fn w(&self, j: usize) -> f64 {
        self.weight.as_ref().map_or(1.0, |w| f64::from(w[j]))
    }

    /// The scales of the cross-entropy and z-loss terms under the reduction: for a mean, one
    /// over the summed label weights and one over the rows not ignored; 1 otherwise.
    pub(crate) fn scales(&self, labels: &crate::Labels) -> (f64, f64) {
        match self.reduction {
            Reduction::Mean => {
                let weights: f64 = labels.iter().flatten().map(|y| self.w(y)).sum();
                (1.0 / weights, 1.0 / labels.active_count() as f64)
            }
            Reduction::Sum | Reduction::None => (1.0, 1.0),
        }
    }
}

/// A loss value: one per row, or reduced to a scalar.
#[derive(Clone, Debug, PartialEq)]
pub enum Loss {
    /// [`Reduction::None`]: one loss per row.
    PerRow(Array1<f32>),
    /// [`Reduction::Mean`] or [`Reduction::Sum`].
    Reduced(f32),
}

impl Loss {
    /// The scalar, when the loss was reduced.
    pub fn scalar(&self) -> Option<f32> {
        match self {
            Loss::Reduced(v) => Some(*v),
            Loss::PerRow(_) => None,
        }
    }

    /// The per-row losses, when the loss was not reduced.
    pub fn per_row(&self) -> Option<&Array1<f32>> {
        match self {
            Loss::PerRow(v) => Some(v),
            Loss::Reduced(_) => None,
        }
    }

    /// As an n-dimensional array the way PyTorch shapes it: `(N,)` per row, `()` reduced.
    pub fn into_array(self) -> ArrayD<f32> {
        match self {
            Loss::PerRow(v) => v.into_dyn(),
            Loss::Reduced(v) => ArrayD::from_elem(IxDyn(&[]), v),
        }
    }
}

/// Options of the binary cross-entropy with logits, defaulting to PyTorch's
/// `F.binary_cross_entropy_with_logits` defaults (mean, no weights).
///
/// Both weights broadcast to the logits' shape by numpy's (and PyTorch's) rules: shapes are
/// aligned at their last axis, and each axis of a weight is 1 or the logits' own length.
/// `pos_weight` is usually one weight per class along the last axis, as in PyTorch.
///
/// ```
/// use ndarray::array;
/// use softmax_ce::{BceOptions, Reduction};
/// let opts = BceOptions::default()
///     .reduction(Reduction::Sum)
///     .pos_weight(array![3.0f32, 1.0]);
/// assert_eq!(opts.pos_weight.unwrap().shape(), &[2]);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct BceOptions {
    /// How the per-element losses are combined; `mean` is over all elements.
    pub reduction: Reduction,
    /// PyTorch's `weight`: each element's loss (and gradient) is multiplied by it. Finite.
    pub weight: Option<ArrayD<f32>>,
    /// PyTorch's `pos_weight`: the weight of the positive term, `t log sigmoid(z)`. Finite.
    pub pos_weight: Option<ArrayD<f32>>,
}

impl BceOptions {
    /// Sets [`reduction`](Self::reduction).
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Sets [`weight`](Self::weight), of any shape that broadcasts to the logits'.
    pub fn weight<D: ndarray::Dimension>(mut self, weight: ndarray::Array<f32, D>) -> Self {
        self.weight = Some(weight.into_dyn());
        self
    }

    /// Sets [`pos_weight`](Self::pos_weight), of any shape that broadcasts to the logits'.
    pub fn pos_weight<D: ndarray::Dimension>(mut self, pos_weight: ndarray::Array<f32, D>) -> Self {
        self.pos_weight = Some(pos_weight.into_dyn());
        self
    }

    /// Checks the targets' shape against the logits' and each weight's shape and values; returns
    /// the weights broadcast to `shape` (the logits').
    pub(crate) fn broadcast<'a>(
        &'a self,
        op: &'static str,
        shape: &[usize],
        targets: &[usize],
    ) -> crate::Result<(Option<WeightView<'a>>, Option<WeightView<'a>>)> {
        if targets != shape {
            return Err(Error::shape(
                op,
                format!("targets of the logits' shape {shape:?}"),
                format!("{targets:?}"),
            ));
        }
        let one = |w: &'a Option<ArrayD<f32>>, what: &str| {
            w.as_ref()
                .map(|w| broadcast_weight(op, what, w, shape))
                .transpose()
        };
        Ok((
            one(&self.weight, "weight")?,
            one(&self.pos_weight, "pos_weight")?,
        ))
    }
}

/// A weight broadcast to the logits' shape.
pub(crate) type WeightView<'a> = ndarray::ArrayViewD<'a, f32>;

/// `w` broadcast to `shape` by numpy's rules, after checking that its values are finite; an
/// `Err` naming the op and both shapes when it does not broadcast.
pub(crate) fn broadcast_weight<'a>(
    op: &'static str,
    what: &str,
    w: &'a ArrayD<f32>,
    shape: &[usize],
) -> crate::Result<ndarray::ArrayViewD<'a, f32>> {
    if let Some((idx, v)) = w.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::invalid(
            op,
            format!(
                "{what} {v} at index {:?} is not finite",
                ndarray::Dimension::slice(&idx)
            ),
        ));
    }
    w.broadcast(IxDyn(shape)).ok_or_else(|| {
        Error::shape(
            op,
            format!("a {what} that broadcasts to the logits' shape {shape:?}"),
            format!("{what} of shape {:?}", w.shape()),
        )
    })
}
