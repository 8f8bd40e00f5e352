//! Recycled f32 buffers for the hand-written ops' large temporaries (tens of megabytes per layer
//! and step at the reference size). A fresh `vec![0.0; n]` zeroes every byte, or faults in
//! fresh pages, every step: together ~7 % of a training step in `perf`. A recycled buffer is
//! handed out with stale values, so only buffers that are written in full before any read come
//! from here; each call site says why that holds.

use std::sync::Mutex;

/// At most this many buffers wait for reuse: two layers' worth of an LSTM's step buffers plus
/// the output layer's, so a steady training loop takes and gives without allocating.
const KEPT: usize = 16;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A buffer of `len` values whose contents are unspecified (stale, but initialised, floats).
pub fn take(len: usize) -> Vec<f32> {
    let recycled = POOL.lock().ok().and_then(|mut pool| {
        // The smallest that fits, so large buffers stay for large requests.
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)?;
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
}
