//! A global allocator that counts live heap bytes and the peak since a reset, so a test binary
//! can bound the memory a piece of work holds. Each binary that uses it declares
//! `#[global_allocator] static ALLOCATOR: PeakCounting = PeakCounting;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct PeakCounting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged and only counts sizes.
unsafe impl GlobalAlloc for PeakCounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

/// The count is process-wide: the tests of a binary that measure take turns through this.
pub static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `f` and returns how many bytes above the starting point it held at its peak.
pub fn peak_bytes_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let value = f();
    (value, PEAK.load(Ordering::SeqCst).saturating_sub(base))
}

/// Heap bytes in use now (signed, so two readings subtract either way).
pub fn live_bytes() -> isize {
    LIVE.load(Ordering::SeqCst) as isize
}
