//! Keeping the rayon pool's other threads polling for jobs through a burst of
//! short ops (a sampling loop), instead of letting them go to sleep between ops.
//!
//! A batch-1 forward of a small U-Net is about a hundred parallel ops of 5 to
//! 100 µs each, issued one after another from one thread. Between two of them an
//! idle rayon worker yields to the OS and soon sleeps; on a virtual machine an idle
//! vCPU may then be descheduled, and each op waits for the other threads to come
//! back. Polling workers pick up each op's jobs at once: on the 2-vCPU development
//! machine a digits step at batch 1 went from 6.2 to 5.95 ms (four A/B pairs; see
//! `with_busy_workers`' callers for where it is used).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// `spin_loop` hints between two looks for a job: a fraction of a microsecond, so
/// a job waits little while the owner's deque is not hammered by the pollers.
const PAUSES_PER_POLL: usize = 16;

thread_local! {
    /// Whether this thread is already polling (a poller that picks up another
    /// poller's job runs it as a no-op).
    static POLLING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `work` on the calling thread while every other thread of the current
/// rayon pool polls for jobs until `work` returns (or unwinds). Outside a rayon
/// pool, or with one thread, it just runs `work`.
pub fn with_busy_workers(work: &mut dyn FnMut()) {
    let owner = rayon::current_thread_index();
    let threads = rayon::current_num_threads();
    if owner.is_none() || threads < 2 || POLLING.with(Cell::get) {
        work();
        return;
    }
    let stop = AtomicBool::new(false);
    rayon::in_place_scope(|scope| {
        for _ in 1..threads {
            scope.spawn(|_| poll_for_jobs(&stop, owner));
        }
        let _release = Release(&stop);
        work();
    });
}

/// Sets the flag when dropped, so the pollers stop even if `work` panics (the
/// scope waits for them before the panic propagates).
struct Release<'a>(&'a AtomicBool);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Executes the pool's jobs as they appear until `stop` is set. The owner's own
/// thread returns at once (it may pop a poller job while it waits for a stolen
/// half of one of its joins), as does a thread that is already polling.
fn poll_for_jobs(stop: &AtomicBool, owner: Option<usize>) {
    if rayon::current_thread_index() == owner || POLLING.with(|p| p.replace(true)) {
        return;
    }
    while !stop.load(Ordering::Acquire) {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            for _ in 0..PAUSES_PER_POLL {
                std::hint::spin_loop();
            }
        }
    }
    POLLING.with(|p| p.set(false));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn work_runs_once_with_parallel_ops_and_the_pollers_stop() {
        for threads in [1, 2, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let mut runs = 0;
            let mut sums = Vec::new();
            pool.install(|| {
                with_busy_workers(&mut || {
                    runs += 1;
                    for n in [1usize, 7, 1000] {
                        sums.push((0..n).into_par_iter().map(|i| i as u64).sum::<u64>());
                    }
                    // Nested: runs inline.
                    with_busy_workers(&mut || sums.push(1));
                });
            });
            assert_eq!(runs, 1);
            assert_eq!(sums, [0, 21, 499_500, 1]);
        }
    }

    #[test]
    fn a_panic_in_work_stops_the_pollers_and_propagates() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool");
        let caught = pool.install(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                with_busy_workers(&mut || panic!("inside work"))
            }))
        });
        assert!(caught.is_err());
        // The pool is still usable: every poller returned.
        assert_eq!(
            pool.install(|| (0..100u32).into_par_iter().sum::<u32>()),
            4950
        );
    }
}
