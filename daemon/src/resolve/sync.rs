//! The synchronization primitives the resolver's concurrency protocol is made of, swapped for
//! loom's under `cfg(probed_loom)` so that the loom tests check the very code that runs in production.
//!
//! Only what takes part in the protocol goes through this shim (the sequence slots, the
//! per-process publication slot, the locks). Statistics counters and the `Arc<Path>` inside a
//! VMA use `std` directly: they carry no ordering obligations, and keeping them out of loom keeps
//! its state space small.

#[cfg(probed_loom)]
pub(crate) use loom::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicU32, AtomicU64, Ordering, fence},
};
#[cfg(not(probed_loom))]
pub(crate) use std::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicU32, AtomicU64, Ordering, fence},
};

/// A slot holding the latest published `Arc<T>` (or none), replaced atomically.
///
/// Outside loom it is an [`arc_swap::ArcSwapOption`]: loads take no lock and never block a
/// store, and an old value is freed only when its last holder drops it (the counterpart of
/// RCU-delayed freeing). arc-swap cannot run under loom, so there the slot is a mutex around
/// the same `Option<Arc<T>>`; the code around it, which is what the loom tests check, is
/// identical.
pub(crate) struct Published<T> {
    #[cfg(not(probed_loom))]
    inner: arc_swap::ArcSwapOption<T>,
    #[cfg(probed_loom)]
    inner: Mutex<Option<Arc<T>>>,
}

impl<T> Published<T> {
    /// A slot holding `value`.
    pub(crate) fn new(value: Option<Arc<T>>) -> Self {
        Self {
            #[cfg(not(probed_loom))]
            inner: arc_swap::ArcSwapOption::new(value),
            #[cfg(probed_loom)]
            inner: Mutex::new(value),
        }
    }

    /// The current value, with its own reference count (so the caller may keep it).
    pub(crate) fn load_full(&self) -> Option<Arc<T>> {
        #[cfg(not(probed_loom))]
        {
            self.inner.load_full()
        }
        #[cfg(probed_loom)]
        {
            lock(&self.inner).clone()
        }
    }

    /// Replaces the value; readers see either the old or the new one, never a mix.
    pub(crate) fn store(&self, value: Option<Arc<T>>) {
        #[cfg(not(probed_loom))]
        {
            self.inner.store(value);
        }
        #[cfg(probed_loom)]
        {
            *lock(&self.inner) = value;
        }
    }
}

/// Locks `mutex`, ignoring poisoning: every critical section in the resolver leaves its data
/// consistent at each step (it only swaps in fully built values), so a panic in one holder
/// does not leave anything half-updated for the next.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
