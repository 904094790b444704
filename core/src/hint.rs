//! Cache hints: ask the CPU to start loading memory about to be read.
//!
//! The engine's per-record work is mostly waiting for memory (a host's pid
//! map, the process state, its destinations). Loads issued for the next
//! records while this one is processed overlap those waits. Only hints: they
//! never fault and change nothing the program sees; no-ops off x86-64.

/// Starts loading `bytes`.
#[inline]
pub fn prefetch(bytes: &[u8]) {
    prefetch_raw(bytes.as_ptr(), bytes.len());
}

/// Starts loading the memory of `v` (its own bytes, not what it points to).
#[inline]
pub fn prefetch_val<T>(v: &T) {
    prefetch_raw(std::ptr::from_ref(v).cast::<u8>(), std::mem::size_of::<T>());
}

/// Starts loading the elements of `v`.
#[inline]
pub fn prefetch_slice<T>(v: &[T]) {
    prefetch_raw(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v));
}

#[inline]
fn prefetch_raw(ptr: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..len).step_by(64) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch never faults and reads nothing the program
        // sees; the address is inside the `len` bytes at `ptr`, which the
        // callers take from a live reference.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ptr.wrapping_add(off).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, len);
}
