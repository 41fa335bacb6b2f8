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
}

impl CrossEntropyOptions {
    /// Sets [`reduction`](Self::reduction).
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
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
