//! Per-thread scratch buffers, so hot paths do not allocate (and page-fault) on every call.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

thread_local! {
    static POOL: RefCell<Vec<Vec<u64>>> = const { RefCell::new(Vec::new()) };
}

/// At most this many idle buffers are kept per thread.
const MAX_POOLED: usize = 48;

/// A buffer borrowed from the current thread's pool; returned to it on drop. Only public
/// data (ciphertexts, evaluation keys) passes through the pool: secret-key operations,
/// plaintexts and keys never use it.
pub(crate) struct Scratch(Vec<u64>);

/// The smallest pooled buffer with capacity for `len` words (so buffers are not regrown,
/// which would touch fresh pages), or a new one.
fn take(len: usize) -> Vec<u64> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let best =
            p.iter().enumerate().filter(|(_, v)| v.capacity() >= len).min_by_key(|(_, v)| v.capacity()).map(|(i, _)| i);
        match best {
            Some(i) => p.swap_remove(i),
            None => Vec::with_capacity(len),
        }
    })
}

/// A vector of `len` words with unspecified contents (stale ciphertext data, never
/// uninitialized memory), from the pool when one fits: for outputs that are fully written.
pub(crate) fn vec_overwritten(len: usize) -> Vec<u64> {
    let mut v = take(len);
    v.resize(len, 0);
    v
}

/// A vector of `len` zeros, from the pool when one fits.
pub(crate) fn vec_zeroed(len: usize) -> Vec<u64> {
    let mut v = take(len);
    v.clear();
    v.resize(len, 0);
    v
}

/// Returns a ciphertext polynomial's buffer to the pool (dropped if the pool is full).
/// Reusing buffers avoids the page faults of fresh allocations, which the allocator would
/// otherwise return to the operating system and take back on every operation.
pub(crate) fn recycle(v: Vec<u64>) {
    if v.capacity() == 0 {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < MAX_POOLED {
            p.push(v);
        }
    });
}

impl Scratch {
    /// A buffer of `len` words whose contents are unspecified (stale data from an earlier
    /// use, never uninitialized memory): for outputs that are fully overwritten.
    pub(crate) fn overwritten(len: usize) -> Self {
        let mut v = take(len);
        v.resize(len, 0);
        Self(v)
    }

    /// A buffer holding a copy of `src`.
    pub(crate) fn copy_of(src: &[u64]) -> Self {
        let mut v = take(src.len());
        v.clear();
        v.extend_from_slice(src);
        Self(v)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.0));
    }
}

impl Deref for Scratch {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        &self.0
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [u64] {
        &mut self.0
    }
}
