//! A ledger of the time team members spend at their barriers, kept only while a benchmark asks
//! for it.
//!
//! Why: on a shared 2-core host, how long a member waits for its partner swings by several times
//! from one run to the next, and most of the swing is the partner's core running something else.
//! A member's thread CPU time across a wait, set beside the wall time, tells the two apart:
//! spinning is on-CPU time; a wait the waiter spends switched out, or the partner's lateness that
//! it has to absorb, is not.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

static KEEPING: AtomicBool = AtomicBool::new(false);
static WAITS: AtomicU64 = AtomicU64::new(0);
static WALL_NS: AtomicU64 = AtomicU64::new(0);
static ON_CPU_NS: AtomicU64 = AtomicU64::new(0);

/// Barrier waits summed over every team since the ledger was switched on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WaitTotals {
    pub waits: u64,
    pub wall: Duration,
    /// The waiting threads' CPU time over the same waits (where the platform reports it).
    pub on_cpu: Option<Duration>,
}

impl WaitTotals {
    /// What was added between `earlier` and `self`.
    pub fn since(self, earlier: WaitTotals) -> WaitTotals {
        WaitTotals {
            waits: self.waits.saturating_sub(earlier.waits),
            wall: self.wall.saturating_sub(earlier.wall),
            on_cpu: self
                .on_cpu
                .zip(earlier.on_cpu)
                .map(|(now, then)| now.saturating_sub(then)),
        }
    }
}

/// Starts (or stops) adding every barrier wait to the ledger; off by default, so a training run
/// pays nothing for it.
pub fn keep(on: bool) {
    KEEPING.store(on, Ordering::Relaxed);
}

/// The ledger so far.
pub fn totals() -> WaitTotals {
    WaitTotals {
        waits: WAITS.load(Ordering::Relaxed),
        wall: Duration::from_nanos(WALL_NS.load(Ordering::Relaxed)),
        on_cpu: thread_cpu_time()
            .is_some()
            .then(|| Duration::from_nanos(ON_CPU_NS.load(Ordering::Relaxed))),
    }
}

/// A wait in progress: [`Stopwatch::start`] before the spin, [`Stopwatch::stop`] after it.
pub struct Stopwatch(Option<(Instant, Option<Duration>)>);

impl Stopwatch {
    pub fn start() -> Stopwatch {
        Stopwatch(
            KEEPING
                .load(Ordering::Relaxed)
                .then(|| (Instant::now(), thread_cpu_time())),
        )
    }

    pub fn stop(self) {
        let Some((wall_from, cpu_from)) = self.0 else {
            return;
        };
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        WAITS.fetch_add(1, Ordering::Relaxed);
        WALL_NS.fetch_add(nanos(wall_from.elapsed()), Ordering::Relaxed);
        if let (Some(from), Some(to)) = (cpu_from, thread_cpu_time()) {
            ON_CPU_NS.fetch_add(nanos(to.saturating_sub(from)), Ordering::Relaxed);
        }
    }
}

/// The calling thread's CPU time.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn thread_cpu_time() -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    (status == 0).then(|| {
        Duration::new(
            u64::try_from(now.tv_sec).unwrap_or(0),
            u32::try_from(now.tv_nsec).unwrap_or(0),
        )
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn thread_cpu_time() -> Option<Duration> {
    None
}
