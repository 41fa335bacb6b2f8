//! Data parallelism for the CPU paths, written once for both builds: rayon's parallel iterators
//! with the `parallel` feature, and without it (the browser, where wasm32 has no threads) the
//! same method names on std's sequential iterators, which give the same results in the same
//! order.

#[cfg(feature = "parallel")]
pub(crate) use ndarray::parallel::prelude::*;

#[cfg(not(feature = "parallel"))]
pub(crate) use sequential::*;

#[cfg(not(feature = "parallel"))]
mod sequential {
    /// `into_par_iter()` as `into_iter()`.
    pub(crate) trait IntoParallelIterator: IntoIterator + Sized {
        fn into_par_iter(self) -> Self::IntoIter {
            self.into_iter()
        }
    }

    impl<I: IntoIterator> IntoParallelIterator for I {}

    /// `par_iter()` as `iter()`.
    pub(crate) trait IntoParallelRefIterator<T> {
        fn par_iter(&self) -> std::slice::Iter<'_, T>;
    }

    impl<T> IntoParallelRefIterator<T> for [T] {
        fn par_iter(&self) -> std::slice::Iter<'_, T> {
            self.iter()
        }
    }
}
