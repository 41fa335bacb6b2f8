//! Validated integer class labels.
//!
//! Labels are checked once, when a [`Labels`] is built, so that no op, on the CPU or the GPU,
//! ever sees a label outside `[0, classes)`: such a label would otherwise index past the end of a
//! row and give a silently wrong loss. A label equal to the ignore index marks a row that adds
//! nothing to a loss and gets a zero gradient (PyTorch's `ignore_index`).

use crate::error::{Error, Result};

/// PyTorch's default `ignore_index`.
pub const DEFAULT_IGNORE_INDEX: i64 = -100;

/// How an ignored row is stored on the device. Keep in sync with `IGNORED` in the WGSL prelude
/// (`src/gpu/shaders.rs`).
pub(crate) const IGNORED: u32 = u32::MAX;

/// What the kernels decode a label outside `[0, classes)` to (one an application wrote on the
/// device, which the host never validated). Keep in sync with `INVALID` in the WGSL prelude.
pub(crate) const INVALID: u32 = u32::MAX - 1;

/// One class label per row, each in `[0, classes)` or equal to the ignore index.
///
/// ```
/// use softmax_ce::Labels;
/// let y = Labels::new([2, 0, -100, 1], 3, -100)?;
/// assert_eq!(y.len(), 4);
/// assert_eq!(y.get(2), None); // ignored
/// assert_eq!(y.active_count(), 3);
/// assert!(Labels::new([3], 3, -100).is_err()); // out of range
/// # Ok::<(), softmax_ce::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    /// The label of each row, or [`IGNORED`].
    values: Vec<u32>,
    classes: usize,
    ignore_index: i64,
    active: usize,
}

impl Labels {
    /// Validates `labels` against `classes` and builds the label set.
    ///
    /// # Errors
    /// [`Error::Empty`] when `classes` is zero, [`Error::InvalidArgument`] when it does not fit
    /// the device's 32-bit indices, and [`Error::LabelOutOfRange`] for the first label that is
    /// neither in `[0, classes)` nor `ignore_index`.
    pub fn new(
        labels: impl IntoIterator<Item = i64>,
        classes: usize,
        ignore_index: i64,
    ) -> Result<Self> {
        const OP: &str = "labels";
        if classes == 0 {
            return Err(Error::Empty {
                op: OP,
                what: "the class dimension",
            });
        }
        if classes >= INVALID as usize {
            return Err(Error::invalid(
                OP,
                format!("{classes} classes do not fit 32-bit labels"),
            ));
        }
        let mut active = 0;
        let values = labels
            .into_iter()
            .enumerate()
            .map(|(row, label)| {
                if label == ignore_index {
                    Ok(IGNORED)
                } else if (0..classes as i64).contains(&label) {
                    active += 1;
                    Ok(label as u32)
                } else {
                    Err(Error::LabelOutOfRange {
                        op: OP,
                        row,
                        label,
                        classes,
                        ignore_index,
                    })
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Labels {
            values,
            classes,
            ignore_index,
            active,
        })
    }

    /// Number of rows (ignored ones included).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no rows at all.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Number of classes the labels were validated against.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The ignore index the labels were validated with.
    pub fn ignore_index(&self) -> i64 {
        self.ignore_index
    }

    /// Number of rows that are not ignored: the denominator of an unweighted `mean`.
    pub fn active_count(&self) -> usize {
        self.active
    }

    /// The class of `row`, or `None` when the row is ignored or out of bounds.
    pub fn get(&self, row: usize) -> Option<usize> {
        self.values
            .get(row)
            .filter(|&&v| v != IGNORED)
            .map(|&v| v as usize)
    }

    /// Each row's class, `None` for ignored rows.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Option<usize>> + '_ {
        self.values
            .iter()
            .map(|&v| (v != IGNORED).then_some(v as usize))
    }

    /// The device representation: one `u32` per row, [`IGNORED`] for ignored rows.
    pub(crate) fn raw(&self) -> &[u32] {
        &self.values
    }

    /// Rows `range` as a new label set (used to cut batches and chunks).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `range` is reversed or reaches past the last row.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Result<Labels> {
        let values = self.values.get(range.clone()).ok_or_else(|| {
            Error::invalid(
                "labels",
                format!(
                    "rows {}..{} are not within the {} rows",
                    range.start,
                    range.end,
                    self.len()
                ),
            )
        })?;
        let active = values.iter().filter(|&&v| v != IGNORED).count();
        Ok(Labels {
            values: values.to_vec(),
            classes: self.classes,
            ignore_index: self.ignore_index,
            active,
        })
    }

    /// Checks that these labels fit logits of shape `rows x cols`.
    pub(crate) fn check_fits(&self, op: &'static str, rows: usize, cols: usize) -> Result<()> {
        if self.len() != rows || self.classes != cols {
            return Err(Error::shape(
                op,
                format!("{rows} labels over {cols} classes (the logits' shape)"),
                format!("{} labels over {} classes", self.len(), self.classes),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_index_inside_the_class_range_wins() {
        let y = Labels::new([0, 1, 2], 3, 1).unwrap();
        assert_eq!(y.iter().collect::<Vec<_>>(), [Some(0), None, Some(2)]);
        assert_eq!(y.active_count(), 2);
    }

    #[test]
    fn out_of_range_names_row_and_value() {
        let err = Labels::new([0, -1], 3, -100).unwrap_err().to_string();
        assert!(err.contains("label -1 at row 1"), "{err}");
        assert!(err.contains("[0, 3)"), "{err}");
    }

    #[test]
    fn zero_classes_is_an_error() {
        assert!(matches!(Labels::new([], 0, -100), Err(Error::Empty { .. })));
    }

    #[test]
    fn slice_recounts_active_rows() {
        let y = Labels::new([0, -100, 1, -100], 2, -100).unwrap();
        let s = y.slice(1..3).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.active_count(), 1);
        assert_eq!(y.slice(4..4).unwrap().len(), 0);
    }

    #[test]
    fn slice_out_of_range_is_an_error() {
        let y = Labels::new([0, 1, 0], 2, -100).unwrap();
        for range in [0..4, 3..5, 7..9] {
            let err = y.slice(range).unwrap_err().to_string();
            assert!(err.contains("within the 3 rows"), "{err}");
        }
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 2..1;
        assert!(y.slice(reversed).is_err());
    }
}
