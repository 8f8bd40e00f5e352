//! Recycled f32 buffers for the hand-written ops' large temporaries (tens of megabytes per layer
//! and step at the reference size). A fresh `vec![0.0; n]` zeroes every byte, or faults in
//! fresh pages, every step: together ~7 % of a training step in `perf`. A recycled buffer is
//! handed out with stale values, so only buffers that are written in full before any read come
//! from here; each call site says why that holds.

use std::sync::Mutex;

/// At most this many buffers wait for reuse: two layers' worth of an LSTM's step buffers (six
/// or seven each) plus the output layer's, with room to spare, so a steady training loop takes
/// and gives without allocating.
const KEPT: usize = 24;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A buffer of `len` values whose contents are unspecified (stale, but initialised, floats).
pub fn take(len: usize) -> Vec<f32> {
    let recycled = POOL.lock().ok().and_then(|mut pool| {
        let best = choose(&pool, len)?;
        Some(pool.swap_remove(best))
    });
    match recycled {
        Some(mut buffer) => {
            // Within capacity: `resize` only writes values past the old length.
            buffer.resize(len, 0.0);
            buffer.truncate(len);
            buffer
        }
        None => vec![0.0; len],
    }
}

/// Which of `pool` serves a request for `len` values: among buffers at most 25 % larger, the
/// smallest whose initialised values cover it, else the smallest that fits; none is a miss (a
/// fresh buffer, which then joins the pool). Values past `len` are dropped when the buffer is
/// handed out and are zero-filled again when a longer request next takes it: unbounded, a 16 MB
/// buffer lent for 6 MB of output probabilities came back short and 10 MB of zeros were written
/// every step at the bundled size; within twice the size, 2 MB still were (a 6 MB buffer lent
/// for 4 MB).
fn choose(pool: &[Vec<f32>], len: usize) -> Option<usize> {
    let within = |size: usize| size >= len && size - len <= len / 4;
    let by_len = pool
        .iter()
        .enumerate()
        .filter(|(_, b)| within(b.len()))
        .min_by_key(|(_, b)| b.len());
    let by_capacity = || {
        pool.iter()
            .enumerate()
            .filter(|(_, b)| within(b.capacity()))
            .min_by_key(|(_, b)| b.capacity())
    };
    by_len.or_else(by_capacity).map(|(i, _)| i)
}

/// Returns a buffer for reuse; when the pool is full the smallest buffer is freed instead.
pub fn give(buffer: Vec<f32>) {
    if buffer.capacity() == 0 {
        return;
    }
    let Ok(mut pool) = POOL.lock() else {
        return;
    };
    pool.push(buffer);
    if pool.len() > KEPT
        && let Some(smallest) = (0..pool.len()).min_by_key(|&i| pool[i].capacity())
    {
        pool.swap_remove(smallest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_with_the_asked_length_and_the_pool_stays_bounded() {
        let a = take(1000);
        assert_eq!(a.len(), 1000);
        let capacity = a.capacity();
        give(a);
        let b = take(10);
        assert_eq!(b.len(), 10);
        let c = take(1000);
        assert_eq!(c.len(), 1000);
        give(b);
        give(c);
        for n in 0..3 * KEPT {
            give(vec![1.0; n + 1]);
        }
        assert!(POOL.lock().unwrap().len() <= KEPT);
        assert!(capacity >= 1000);
    }

    #[test]
    fn a_request_gets_a_buffer_near_its_size_whose_values_already_cover_it() {
        let mut used_short = Vec::with_capacity(9_000);
        used_short.resize(100, 0.0);
        let pool = vec![vec![0f32; 10_000], used_short, vec![0f32; 50]];
        // 10,000 values already cover 8,500: nothing to fill; the smaller capacity would fill
        // 8,400.
        assert_eq!(choose(&pool, 8_500), Some(0));
        // Only the capacity of the second is near 7,500.
        assert_eq!(choose(&pool, 7_500), Some(1));
        assert_eq!(choose(&pool, 45), Some(2));
        // Nothing fits, or only buffers over 25 % larger: a miss.
        assert_eq!(choose(&pool, 10_001), None);
        assert_eq!(choose(&pool, 7_000), None);
        assert_eq!(choose(&pool, 39), None);
    }
}
