//! Recycled CPU buffers. A U-Net forward allocates and frees the same few dozen
//! activation sizes every step; handing those megabyte buffers back to the system
//! allocator means fresh pages (a page fault and zeroing per 4 KiB) every time,
//! which cost a fifth of a forward on the development machine. Dropped CPU tensors
//! leave their buffers here instead, and the CPU backend takes its outputs from here.

use std::sync::Mutex;

/// Smaller buffers are cheap for the allocator to reuse on its own.
const MIN_FLOATS: usize = 1 << 14;
/// At most this many floats (1 GiB) are kept.
const MAX_FLOATS: usize = 1 << 28;
/// At most this many buffers are kept.
const MAX_BUFFERS: usize = 96;

struct Pool {
    buffers: Vec<Vec<f32>>,
    floats: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    buffers: Vec::new(),
    floats: 0,
});

/// A buffer of `len` zeros, recycled when one of a fitting size is free.
pub fn zeroed(len: usize) -> Vec<f32> {
    let mut v = take(len).unwrap_or_default();
    v.clear();
    v.resize(len, 0.0);
    v
}

/// A buffer of `len` floats with unspecified (but initialised) contents, for
/// outputs that the caller writes in full: a recycled buffer is not cleared.
pub fn for_overwrite(len: usize) -> Vec<f32> {
    match take(len) {
        Some(mut v) => {
            if v.len() >= len {
                v.truncate(len);
            } else {
                v.resize(len, 0.0);
            }
            v
        }
        None => vec![0.0; len],
    }
}

/// Keeps `v`'s memory for a later [`zeroed`] call (or frees it when the pool is full).
pub fn recycle(v: Vec<f32>) {
    let cap = v.capacity();
    if cap < MIN_FLOATS {
        return;
    }
    if let Ok(mut pool) = POOL.lock() {
        if pool.buffers.len() < MAX_BUFFERS && pool.floats + cap <= MAX_FLOATS {
            pool.floats += cap;
            pool.buffers.push(v);
        }
    }
}

/// Frees every kept buffer (for embedders that want the memory back between jobs).
pub fn release_cached_buffers() {
    if let Ok(mut pool) = POOL.lock() {
        pool.buffers = Vec::new();
        pool.floats = 0;
    }
}

/// The smallest kept buffer that holds `len` floats without wasting more than half.
fn take(len: usize) -> Option<Vec<f32>> {
    if len < MIN_FLOATS {
        return None;
    }
    let mut pool = POOL.lock().ok()?;
    let best = pool
        .buffers
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= len && b.capacity() / 2 <= len)
        .min_by_key(|(_, b)| b.capacity())
        .map(|(i, _)| i)?;
    let v = pool.buffers.swap_remove(best);
    pool.floats -= v.capacity();
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_buffers_come_back_zeroed_and_at_the_asked_length() {
        let mut v = zeroed(MIN_FLOATS * 3);
        v.iter_mut().for_each(|x| *x = 7.0);
        recycle(v);
        let w = zeroed(MIN_FLOATS * 2);
        assert_eq!(w.len(), MIN_FLOATS * 2);
        assert!(w.iter().all(|&x| x == 0.0));
        let tiny = zeroed(10);
        assert_eq!(tiny, vec![0.0; 10]);
    }
}
