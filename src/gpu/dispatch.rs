//! Every workgroup-count and row-window formula, as pure functions.
//!
//! Two device limits shape a dispatch. A storage binding holds at most
//! `max_storage_buffer_binding_size` bytes (128 MiB on lavapipe and by wgpu's default), so a
//! larger matrix is processed in *windows* of whole rows, each bound at an aligned offset with
//! the remainder passed to the shader as a base index. And a dispatch has at most
//! `max_compute_workgroups_per_dimension` groups along each axis (65,535), so long windows fold
//! their groups into `y`: the shader recovers its group as `wid.x + wid.y * num_workgroups.x`.
//! This is the only file that divides by a workgroup size.

use std::ops::Range;

use crate::error::{Error, Result};

/// Byte geometry of the device that windows must respect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Largest storage binding, in bytes.
    pub max_binding: u64,
    /// Required alignment of a binding's offset, in bytes (a power of two, at least 16 so that a
    /// window of `vec4`s starts on a whole vector).
    pub align: u64,
    /// Largest workgroup count along one dispatch dimension.
    pub max_groups_per_dim: u32,
    /// Loop iterations one invocation may run in all its loops together (Mesa's llvmpipe
    /// silently cuts every loop short past 65,535; see `shaders/probe.wgsl`).
    pub loop_budget: u64,
}

/// Loop iterations a row kernel spends outside its passes over the row, at most: the team
/// reductions' halvings (log2 of the workgroup, a few reductions per kernel) and the matmul's
/// stores (8 x 8). Generous on purpose: an undercount would be a silent wrong answer.
pub(crate) const FIXED_TRIPS: u64 = 128;

/// Bytes of one `f32` or `u32`.
const ELEM: u64 = 4;

impl Geometry {
    /// Splits `rows` rows of `row_elems` elements into windows that each fit one binding.
    ///
    /// A window's binding starts up to `align - 4` bytes before its first row, so a window may
    /// hold `(max_binding - align) / row_bytes` rows. Fails when not even one row fits.
    pub(crate) fn windows(
        &self,
        op: &'static str,
        rows: usize,
        row_elems: usize,
    ) -> Result<Vec<Range<usize>>> {
        self.windows_capped(op, rows, row_elems, u64::MAX)
    }

    /// [`windows`](Self::windows) of at most `max_rows` rows each: what one dispatch can cover
    /// when its workgroups, folded into `y`, would otherwise pass the limit of both dimensions
    /// (see [`dispatch_rows`](Self::dispatch_rows)).
    pub(crate) fn windows_capped(
        &self,
        op: &'static str,
        rows: usize,
        row_elems: usize,
        max_rows: u64,
    ) -> Result<Vec<Range<usize>>> {
        let row_bytes = (row_elems as u64).saturating_mul(ELEM);
        let per_window =
            (self.max_binding.saturating_sub(self.align) / row_bytes.max(1)).min(max_rows);
        if per_window == 0 {
            return Err(Error::TooLarge {
                op,
                what: format!("one row of {row_elems} elements (a row cannot be split)"),
                bytes: row_bytes,
                limit: self.max_binding.saturating_sub(self.align),
            });
        }
        let per_window = per_window as usize;
        Ok((0..rows.div_ceil(per_window))
            .map(|w| w * per_window..((w + 1) * per_window).min(rows))
            .collect())
    }

    /// Where rows `window` of a buffer of `row_elems`-element rows are bound: `(offset, size)`
    /// in bytes, and the index of the window's first element inside that binding.
    #[cfg(test)]
    pub(crate) fn slice(&self, window: &Range<usize>, row_elems: usize) -> (u64, u64, u32) {
        self.slice_at(0, window, row_elems)
    }

    /// [`slice`](Self::slice) of an array that starts `origin` bytes into its buffer (a
    /// multiple of `align`, so that every array of a dispatch sees its window at the same index
    /// inside its binding).
    pub(crate) fn slice_at(
        &self,
        origin: u64,
        window: &Range<usize>,
        row_elems: usize,
    ) -> (u64, u64, u32) {
        debug_assert_eq!(origin % self.align, 0, "arrays start at aligned offsets");
        let start = origin + window.start as u64 * row_elems as u64 * ELEM;
        let end = origin + window.end as u64 * row_elems as u64 * ELEM;
        let offset = start - start % self.align;
        // Never bind zero bytes: an empty window still binds one element it does not read.
        let size = (end - offset).max(ELEM);
        (offset, size, ((start - offset) / ELEM) as u32)
    }

    /// Where rows `window` of a matrix of `cols`-element rows, `stride` elements apart, from
    /// byte `origin` of its buffer, are bound: `(offset, size)` in bytes, and the index of the
    /// window's first element inside that binding. The binding ends with the window's last
    /// element, not its last row's stride, so a view that ends at the end of its buffer binds.
    ///
    /// `elem` is the bytes of one element (4, or 2 for `f16`); a binding's size is a whole
    /// number of 4-byte words, so an `f16` binding may end 2 bytes past the last element
    /// (the buffers are sized for it).
    pub(crate) fn slice_rows(
        &self,
        origin: u64,
        window: &Range<usize>,
        (stride, cols): (usize, usize),
        elem: u64,
    ) -> (u64, u64, u32) {
        debug_assert_eq!(origin % self.align, 0, "arrays start at aligned offsets");
        let start = origin + window.start as u64 * stride as u64 * elem;
        let end = if window.is_empty() {
            start
        } else {
            origin + ((window.end as u64 - 1) * stride as u64 + cols as u64) * elem
        };
        let offset = start - start % self.align;
        (
            offset,
            (end - offset).max(ELEM).next_multiple_of(ELEM),
            ((start - offset) / elem) as u32,
        )
    }

    /// Fails unless a thread whose loops run `trips` iterations in all stays within the loop
    /// budget. `what` says what the thread walks, for the message.
    pub(crate) fn check_trips(&self, op: &'static str, trips: u64, what: &str) -> Result<()> {
        if trips <= self.loop_budget {
            return Ok(());
        }
        Err(Error::LoopLimit {
            op,
            what: what.to_string(),
            trips,
            limit: self.loop_budget,
        })
    }

    /// Rows one dispatch can cover at `rows_per_group` rows per workgroup: its groups folded
    /// into `x` and `y`, each within the per-dimension limit.
    pub(crate) fn dispatch_rows(&self, rows_per_group: u64) -> u64 {
        let max = u64::from(self.max_groups_per_dim);
        (max * max).saturating_mul(rows_per_group)
    }

    /// Workgroup counts for `groups` groups, folded into `y` past the per-dimension limit.
    pub(crate) fn fold(&self, op: &'static str, groups: u64) -> Result<[u32; 3]> {
        let max = self.max_groups_per_dim as u64;
        let x = groups.clamp(1, max);
        let y = groups.div_ceil(x).max(1);
        if y > max {
            return Err(Error::TooManyWorkgroups {
                op,
                what: "one dispatch".into(),
                groups,
                limit: max * max,
            });
        }
        Ok([x as u32, y as u32, 1])
    }
}

/// Threads that share one row of `lanes` vector lanes in a workgroup of `wg` threads: enough
/// that every thread has at least one lane to load, a power of two for the tree reduction, and
/// at most the workgroup. Narrow rows thus pack several rows into one workgroup.
pub(crate) fn threads_per_row(lanes: usize, wg: u32) -> u32 {
    (lanes.max(1).next_power_of_two() as u64).min(wg as u64) as u32
}

/// Workgroups that cover `rows` rows at `tpr` threads per row.
pub(crate) fn row_groups(rows: usize, tpr: u32, wg: u32) -> u64 {
    let rows_per_group = (wg / tpr) as u64;
    (rows as u64).div_ceil(rows_per_group)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const LAVAPIPE: Geometry = Geometry {
        max_binding: 128 * MIB,
        align: 32,
        max_groups_per_dim: 65535,
        loop_budget: 65535,
    };

    #[test]
    fn a_matrix_that_fits_is_one_window() {
        let w = LAVAPIPE.windows("t", 1000, 1000).unwrap();
        assert_eq!(w, vec![0..1000]);
    }

    #[test]
    fn a_512_mib_matrix_splits_into_whole_rows_that_fit() {
        let (rows, cols) = (1024, 131072);
        let w = LAVAPIPE.windows("t", rows, cols).unwrap();
        assert!(w.len() >= 4);
        assert_eq!(w.first().unwrap().start, 0);
        assert_eq!(w.last().unwrap().end, rows);
        for pair in w.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        for win in &w {
            let (offset, size, _) = LAVAPIPE.slice(win, cols);
            assert_eq!(offset % LAVAPIPE.align, 0);
            assert!(size <= LAVAPIPE.max_binding, "{win:?} binds {size}");
        }
    }

    #[test]
    fn a_row_larger_than_a_binding_is_too_large() {
        let err = LAVAPIPE.windows("softmax", 2, 40 << 20).unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { op: "softmax", .. }),
            "{err}"
        );
    }

    #[test]
    fn slices_start_aligned_and_cover_the_window() {
        let g = Geometry {
            max_binding: 1000,
            align: 256,
            max_groups_per_dim: 65535,
            loop_budget: 65535,
        };
        for cols in [1, 3, 7, 64, 100] {
            for win in g.windows("t", 1000, cols).unwrap() {
                let (offset, size, base) = g.slice(&win, cols);
                assert_eq!(offset % 256, 0);
                assert!(size <= g.max_binding);
                let first = offset + base as u64 * 4;
                assert_eq!(first, (win.start * cols * 4) as u64);
                assert_eq!(offset + size, (win.end * cols * 4) as u64);
            }
        }
    }

    #[test]
    fn vec4_rows_get_whole_vector_bases() {
        let g = Geometry {
            max_binding: 4096,
            align: 16,
            max_groups_per_dim: 65535,
            loop_budget: 65535,
        };
        for win in g.windows("t", 500, 12).unwrap() {
            let (_, _, base) = g.slice(&win, 12);
            assert_eq!(base % 4, 0);
        }
    }

    #[test]
    fn groups_fold_into_y_past_the_limit() {
        assert_eq!(LAVAPIPE.fold("t", 1).unwrap(), [1, 1, 1]);
        assert_eq!(LAVAPIPE.fold("t", 65535).unwrap(), [65535, 1, 1]);
        assert_eq!(LAVAPIPE.fold("t", 65536).unwrap(), [65535, 2, 1]);
        let [x, y, _] = LAVAPIPE.fold("t", 200_000).unwrap();
        assert!(x as u64 * y as u64 >= 200_000);
        assert!(LAVAPIPE.fold("t", 65535 * 65535 + 1).is_err());
    }

    #[test]
    fn capped_windows_hold_at_most_the_cap() {
        let w = LAVAPIPE.windows_capped("t", 1000, 3, 96).unwrap();
        assert!(w.iter().all(|r| r.len() <= 96));
        assert_eq!(w.len(), 1000usize.div_ceil(96));
        assert_eq!(w.last().unwrap().end, 1000);
        // The binding still caps when it is the smaller limit.
        let (rows, cols) = (1024, 131072);
        assert_eq!(
            LAVAPIPE.windows_capped("t", rows, cols, u64::MAX).unwrap(),
            LAVAPIPE.windows("t", rows, cols).unwrap()
        );
    }

    #[test]
    fn a_dispatch_covers_the_square_of_the_group_limit() {
        let g = Geometry {
            max_groups_per_dim: 3,
            ..LAVAPIPE
        };
        assert_eq!(g.dispatch_rows(64), 9 * 64);
        assert_eq!(g.fold("t", 9).unwrap(), [3, 3, 1]);
        assert!(g.fold("t", 10).is_err());
        assert_eq!(LAVAPIPE.dispatch_rows(u64::MAX), u64::MAX);
    }

    #[test]
    fn trips_pass_at_the_budget_and_fail_past_it() {
        assert!(LAVAPIPE.check_trips("t", 65_535, "rows").is_ok());
        let err = LAVAPIPE
            .check_trips("softmax", 65_536, "rows of 9 elements")
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::LoopLimit {
                    op: "softmax",
                    trips: 65_536,
                    limit: 65_535,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("rows of 9 elements"), "{err}");
    }

    #[test]
    fn a_huge_empty_row_does_not_wrap() {
        // 2^62 elements of 4 bytes would wrap a u64 byte count to 0.
        assert!(LAVAPIPE.windows("t", 0, 1 << 62).is_err());
        assert!(LAVAPIPE.windows("t", 1, usize::MAX).is_err());
    }

    #[test]
    fn zero_groups_still_dispatch_one() {
        assert_eq!(LAVAPIPE.fold("t", 0).unwrap(), [1, 1, 1]);
    }

    #[test]
    fn threads_per_row_covers_narrow_and_wide_rows() {
        assert_eq!(threads_per_row(1, 64), 1);
        assert_eq!(threads_per_row(3, 64), 4);
        assert_eq!(threads_per_row(63, 64), 64);
        assert_eq!(threads_per_row(64, 64), 64);
        assert_eq!(threads_per_row(100_000, 64), 64);
        assert_eq!(threads_per_row(0, 64), 1);
    }

    #[test]
    fn row_groups_cover_every_row() {
        for (rows, tpr) in [(1, 1), (63, 1), (64, 1), (65, 1), (10, 4), (70_000, 64)] {
            let groups = row_groups(rows, tpr, 64);
            assert!(groups * (64 / tpr as u64) >= rows as u64);
            assert!((groups - 1) * ((64 / tpr) as u64) < rows as u64);
        }
    }
}
