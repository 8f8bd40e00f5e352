//! A fixed team of threads that walks a recurrence step by step, meeting at a barrier after
//! every step.
//!
//! Why not rayon: a step of the reference model is ~0.2 ms of work, and forking and joining a
//! rayon job per step (or two: one for the product, one for the gates) costs a visible share of
//! that, while these threads keep the same slice of the weights, in the same core's cache, for
//! the whole sequence. Scoped OS threads (not the rayon pool) also mean two teams started by
//! concurrent callers can never wait on each other.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A reusable barrier that spins briefly, then yields (teams are as large as the machine, so a
/// waiting thread almost always has its partner running on another core).
pub struct SpinBarrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    /// Set when a member panicked: the others would otherwise wait for it forever.
    broken: AtomicBool,
}

impl SpinBarrier {
    pub fn new(threads: usize) -> Self {
        SpinBarrier {
            threads,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
        }
    }

    pub fn wait(&self) {
        if self.threads <= 1 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let stopwatch = super::team_waits::Stopwatch::start();
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.broken.load(Ordering::Relaxed) {
                panic!("a member of the team panicked");
            }
            if spins < 20_000 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
        stopwatch.stop();
    }
}

/// How many threads a team should have for `work_items` indivisible pieces of work.
pub fn team_size(work_items: usize) -> usize {
    // Asked once: the standard library reads three cgroup files per call, and every layer of
    // every training step asks.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    cores
        .min(rayon::current_num_threads())
        .min(work_items)
        .max(1)
}

/// Runs `body(index, barrier)` on `threads` threads (the caller's thread is index 0) and returns
/// when all have finished.
pub fn run_team<F>(threads: usize, body: F)
where
    F: Fn(usize, &SpinBarrier) + Sync,
{
    let barrier = SpinBarrier::new(threads);
    let member = |index: usize| {
        // Breaks the barrier if `body` unwinds, so the others panic too instead of spinning.
        struct Guard<'a>(&'a SpinBarrier);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.broken.store(true, Ordering::Relaxed);
                }
            }
        }
        let _guard = Guard(&barrier);
        body(index, &barrier);
    };
    std::thread::scope(|scope| {
        for index in 1..threads {
            let member = &member;
            scope.spawn(move || member(index));
        }
        member(0);
    });
}

/// The half-open range of `items` that member `index` of a team of `threads` owns.
pub fn share(items: usize, index: usize, threads: usize) -> std::ops::Range<usize> {
    (index * items / threads)..((index + 1) * items / threads)
}

/// `cols` columns cut into one contiguous part per rayon thread, each a whole number of 16-float
/// cache lines (the last may be shorter): for sums over the rows of a row-major matrix that each
/// thread keeps in its own part of every row, in row order, so the bits do not depend on the
/// number of threads.
pub fn column_parts(cols: usize) -> Vec<std::ops::Range<usize>> {
    if cols == 0 {
        return Vec::new();
    }
    let part = cols
        .div_ceil(rayon::current_num_threads().max(1))
        .next_multiple_of(16);
    (0..cols)
        .step_by(part)
        .map(|c0| c0..(c0 + part).min(cols))
        .collect()
}

/// A buffer that team members write in disjoint parts.
///
/// Every use states which part a member owns and which barrier orders its writes before the
/// other members' reads; the type only carries the pointer across threads.
pub struct SharedMut<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: access goes through `slice`/`slice_mut`, whose callers guarantee disjointness.
unsafe impl Send for SharedMut<'_> {}
unsafe impl Sync for SharedMut<'_> {}

impl<'a> SharedMut<'a> {
    pub fn new(buffer: &'a mut [f32]) -> Self {
        SharedMut {
            ptr: buffer.as_mut_ptr(),
            len: buffer.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// # Safety
    /// No other member writes `range` until a barrier both sides pass.
    pub unsafe fn slice(&self, range: std::ops::Range<usize>) -> &[f32] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (asserted); the caller guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(self.ptr.add(range.start), range.len()) }
    }

    /// # Safety
    /// No other member reads or writes `range` until a barrier both sides pass.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, range: std::ops::Range<usize>) -> &mut [f32] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (asserted); the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::super::team_waits;
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn barrier_orders_every_step() {
        // Each member adds its step number; after every barrier all members must see the full sum.
        let threads = 3;
        let total = AtomicU64::new(0);
        run_team(threads, |_, barrier| {
            for step in 1..=200u64 {
                total.fetch_add(step, Ordering::SeqCst);
                barrier.wait();
                let expect: u64 = (1..=step).sum::<u64>() * threads as u64;
                assert_eq!(total.load(Ordering::SeqCst), expect);
                barrier.wait();
            }
        });
    }

    #[test]
    fn a_panicking_member_does_not_leave_the_others_waiting() {
        let outcome = std::panic::catch_unwind(|| {
            run_team(2, |member, barrier| {
                if member == 1 {
                    panic!("member 1 fails");
                }
                barrier.wait();
            })
        });
        assert!(outcome.is_err());
    }

    #[test]
    fn the_wait_ledger_counts_a_late_partner() {
        // Other tests' teams may add to the ledger while it is on: only lower bounds hold.
        let before = team_waits::totals();
        team_waits::keep(true);
        run_team(2, |member, barrier| {
            if member == 1 {
                std::thread::sleep(std::time::Duration::from_millis(30));
            }
            barrier.wait();
        });
        team_waits::keep(false);
        let added = team_waits::totals().since(before);
        assert!(added.waits >= 1, "{added:?}");
        assert!(
            added.wall >= std::time::Duration::from_millis(25),
            "{added:?}"
        );
        if let Some(on_cpu) = added.on_cpu {
            assert!(
                on_cpu <= added.wall + std::time::Duration::from_millis(5),
                "{added:?}"
            );
        }
    }

    #[test]
    fn shares_cover_everything_once() {
        for threads in 1..5 {
            let mut next = 0;
            for i in 0..threads {
                let r = share(17, i, threads);
                assert_eq!(r.start, next);
                next = r.end;
            }
            assert_eq!(next, 17);
        }
    }
}
