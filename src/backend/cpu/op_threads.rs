//! How many threads one op may count on when it chooses how finely to cut its work.
//!
//! Normally that is the whole rayon pool. While a model call runs as several
//! concurrent parts (`Backend::run_parts`), each part's ops share the pool with the
//! others, and cutting them for every thread only adds work: a Winograd
//! convolution with one chunk of tiles would split its output channels into panels
//! and transform its inputs once per panel. Inside a part, ops plan for their share
//! of the pool; idle threads still steal their chunks.

use std::cell::Cell;

thread_local! {
    /// The share of the pool the op running on this thread plans for (0: the pool).
    static SHARE: Cell<usize> = const { Cell::new(0) };
}

/// The number of threads an op issued from this thread plans its work for.
pub fn op_threads() -> usize {
    match SHARE.with(Cell::get) {
        0 => rayon::current_num_threads(),
        share => share,
    }
}

/// Runs `f` with ops issued from this thread planning for `threads` threads.
pub fn with_op_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            SHARE.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SHARE.with(|s| s.replace(threads.max(1))));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_applies_inside_and_is_restored_after() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool");
        pool.install(|| {
            assert_eq!(op_threads(), 3);
            let inner = with_op_threads(1, || {
                let nested = with_op_threads(2, op_threads);
                (op_threads(), nested)
            });
            assert_eq!(inner, (1, 2));
            assert_eq!(op_threads(), 3);
            let caught = std::panic::catch_unwind(|| with_op_threads(1, || panic!("inside")));
            assert!(caught.is_err());
            assert_eq!(op_threads(), 3);
        });
    }
}
