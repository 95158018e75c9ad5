//! The per-process change sequence: odd while a change to the mappings is in flight, even when
//! stable, 64-bit so that it never wraps into an ABA.
//!
//! [`SeqSource`] is the reading side the resolver uses, `mmap_lock_speculate_try_begin` /
//! `_retry` in the kernel. [`UserSeq`] is a writer-driven implementation for tests, benches
//! and, until the BPF change tracker exists, for callers that learn of changes themselves. Its
//! layout — an open-addressed table of `{pid, generation, seq}` slots — is also what a BPF mmapable
//! array could hold, so a BPF-backed source can reuse the same reading protocol.

use super::{
    proc_key::ProcKey,
    sync::{AtomicU32, AtomicU64, Ordering, fence},
};

/// Reads a process's change sequence, seqcount-style.
///
/// The resolver is generic over this trait (not `dyn`) so both calls inline into its fast path.
pub trait SeqSource: Send + Sync {
    /// Starts a speculative read: the current sequence if it is even (no change in flight),
    /// `None` if a change is in flight or the source does not know `proc`.
    fn try_begin(&self, proc: ProcKey) -> Option<u64>;

    /// Ends a speculative read: `true` if the sequence moved since `try_begin` returned `seq`,
    /// i.e. whatever was read in between must not be trusted.
    fn retry(&self, proc: ProcKey, seq: u64) -> bool;

    /// Tells the source's producer that a full picture of `proc` at `seq` is held (lock
    /// mode: BPF then lets hits stamped `seq` skip their captures). Sources without such a
    /// producer ignore it.
    fn publish(&self, _proc: ProcKey, _seq: u64) {}
}

impl<T: SeqSource + ?Sized> SeqSource for &T {
    #[inline]
    fn try_begin(&self, proc: ProcKey) -> Option<u64> {
        (**self).try_begin(proc)
    }

    #[inline]
    fn retry(&self, proc: ProcKey, seq: u64) -> bool {
        (**self).retry(proc, seq)
    }

    fn publish(&self, proc: ProcKey, seq: u64) {
        (**self).publish(proc, seq);
    }
}

impl<T: SeqSource + ?Sized> SeqSource for std::sync::Arc<T> {
    #[inline]
    fn try_begin(&self, proc: ProcKey) -> Option<u64> {
        (**self).try_begin(proc)
    }

    #[inline]
    fn retry(&self, proc: ProcKey, seq: u64) -> bool {
        (**self).retry(proc, seq)
    }

    fn publish(&self, proc: ProcKey, seq: u64) {
        (**self).publish(proc, seq);
    }
}

/// Why a [`UserSeq`] write was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SeqError {
    /// Every slot holds another pid.
    #[error("sequence table full ({capacity} slots)")]
    Full {
        /// Number of slots.
        capacity: usize,
    },
    /// The process is not registered (or a newer generation holds its pid).
    #[error("process {0} is not registered")]
    Unknown(ProcKey),
    /// `end_change` without a matching `begin_change`.
    #[error("no change in flight for process {0}")]
    NotInFlight(ProcKey),
}

/// Marks a slot whose pid currently belongs to no registered process.
const VACANT: u64 = u64::MAX;

/// One pid's sequence. Padded to a cache line so a change to one process does not slow the
/// readers of another.
#[repr(align(64))]
struct Slot {
    /// The pid owning this slot; 0 = never used. Once set it never changes, so a reader that
    /// found its pid here can never be looking at another pid's sequence.
    pid: AtomicU32,
    /// Generation of the registered holder of `pid`, or [`VACANT`]. Written only while `seq`
    /// is odd.
    generation: AtomicU64,
    /// The sequence. Keeps counting across generations, so it never repeats for a slot and a
    /// reader racing with pid reuse always sees it move.
    seq: AtomicU64,
}

/// A userspace-driven [`SeqSource`]: writers bracket every mapping change with
/// [`begin_change`](Self::begin_change) / [`end_change`](Self::end_change) (or hold a
/// [`ChangeGuard`]); readers never lock and never write.
pub struct UserSeq {
    slots: Box<[Slot]>,
}

impl UserSeq {
    /// A table for up to `capacity` distinct pids (rounded up to a power of two).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(2).next_power_of_two();
        let slots = (0..capacity)
            .map(|_| Slot {
                pid: AtomicU32::new(0),
                generation: AtomicU64::new(VACANT),
                seq: AtomicU64::new(0),
            })
            .collect();
        Self { slots }
    }

    /// The slot holding `pid`, if any: linear probing from a hash of the pid.
    #[inline]
    fn find(&self, pid: u32) -> Option<&Slot> {
        let mask = self.slots.len() - 1;
        let i = (pid.wrapping_mul(0x9e37_79b9) as usize) & mask;
        // The common case, kept branch-light for the fast path: the pid sits where it hashes.
        let first = &self.slots[i];
        if first.pid.load(Ordering::Acquire) == pid {
            return Some(first);
        }
        self.probe(pid, i)
    }

    /// The rest of the linear probe, after the first slot missed.
    #[cold]
    fn probe(&self, pid: u32, mut i: usize) -> Option<&Slot> {
        let mask = self.slots.len() - 1;
        for _ in 0..self.slots.len() {
            let slot = &self.slots[i];
            match slot.pid.load(Ordering::Acquire) {
                p if p == pid => return Some(slot),
                0 => return None,
                _ => i = (i + 1) & mask,
            }
        }
        None
    }

    /// The slot for `pid`, claiming a free one if it has none.
    fn claim(&self, pid: u32) -> Result<&Slot, SeqError> {
        assert_ne!(pid, 0, "pid 0 is not a process");
        let mask = self.slots.len() - 1;
        let mut i = (pid.wrapping_mul(0x9e37_79b9) as usize) & mask;
        for _ in 0..self.slots.len() {
            let slot = &self.slots[i];
            match slot
                .pid
                .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(slot),
                Err(p) if p == pid => return Ok(slot),
                Err(_) => i = (i + 1) & mask,
            }
        }
        Err(SeqError::Full {
            capacity: self.slots.len(),
        })
    }

    /// Makes the slot's sequence odd, waiting for another writer's change to finish first.
    /// Returns the even value it left.
    fn lock_slot(slot: &Slot) -> u64 {
        let mut seq = slot.seq.load(Ordering::Relaxed);
        loop {
            if seq & 1 == 1 {
                std::hint::spin_loop();
                #[cfg(probed_loom)]
                loom::thread::yield_now();
                seq = slot.seq.load(Ordering::Relaxed);
                continue;
            }
            match slot
                .seq
                .compare_exchange_weak(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => seq = now,
            }
        }
        // Orders the odd value before every write of the change (crossbeam's seq_lock):
        // a reader that sees any of those writes then sees the sequence odd or moved.
        fence(Ordering::Release);
        seq
    }

    /// Registers `proc` (a new process, or the new holder of a reused pid): its sequence
    /// moves on from the slot's, so it is even and larger than anything a reader of an
    /// earlier holder of the pid saw.
    pub fn register(&self, proc: ProcKey) -> Result<u64, SeqError> {
        assert_ne!(proc.generation, VACANT, "generation u64::MAX is reserved");
        let slot = self.claim(proc.pid)?;
        let seq = Self::lock_slot(slot);
        slot.generation.store(proc.generation, Ordering::Relaxed);
        slot.seq.store(seq + 2, Ordering::Release);
        Ok(seq + 2)
    }

    /// Forgets `proc` (it exited): readers get `None` from then on.
    pub fn unregister(&self, proc: ProcKey) -> Result<(), SeqError> {
        let slot = self.live_slot(proc)?;
        let seq = Self::lock_slot(slot);
        if slot.generation.load(Ordering::Relaxed) == proc.generation {
            slot.generation.store(VACANT, Ordering::Relaxed);
        }
        slot.seq.store(seq + 2, Ordering::Release);
        Ok(())
    }

    fn live_slot(&self, proc: ProcKey) -> Result<&Slot, SeqError> {
        self.find(proc.pid)
            .filter(|s| s.generation.load(Ordering::Relaxed) == proc.generation)
            .ok_or(SeqError::Unknown(proc))
    }

    /// Marks a change to `proc`'s mappings as in flight (the sequence becomes odd); waits if
    /// another writer's change is in flight. Returns the odd value.
    pub fn begin_change(&self, proc: ProcKey) -> Result<u64, SeqError> {
        let slot = self.live_slot(proc)?;
        Ok(Self::lock_slot(slot) + 1)
    }

    /// Marks the change as finished (the sequence becomes even). Returns the new value.
    pub fn end_change(&self, proc: ProcKey) -> Result<u64, SeqError> {
        let slot = self.live_slot(proc)?;
        let seq = slot.seq.load(Ordering::Relaxed);
        if seq & 1 == 0 {
            return Err(SeqError::NotInFlight(proc));
        }
        // Release: every write of the change happens before a reader sees the new even value.
        slot.seq.store(seq + 1, Ordering::Release);
        Ok(seq + 1)
    }

    /// Begins a change that ends when the guard drops, however the scope is left.
    pub fn change(&self, proc: ProcKey) -> Result<ChangeGuard<'_>, SeqError> {
        self.begin_change(proc)?;
        Ok(ChangeGuard { seq: self, proc })
    }

    /// The current sequence of `proc`, odd or even; `None` if unknown.
    pub fn current(&self, proc: ProcKey) -> Option<u64> {
        let slot = self.live_slot(proc).ok()?;
        Some(slot.seq.load(Ordering::Acquire))
    }
}

impl SeqSource for UserSeq {
    #[inline]
    fn try_begin(&self, proc: ProcKey) -> Option<u64> {
        let slot = self.find(proc.pid)?;
        let seq = slot.seq.load(Ordering::Acquire);
        // Read after the sequence (Acquire), the generation is at least as new as the even
        // interval `seq` names. It may be newer only if the pid is being handed over right
        // now, and then it either differs from `proc`'s (refused here) or the sequence has
        // already moved past `seq`, which the caller's `retry` reports. No second read of the
        // sequence is needed here: nothing read under `seq` is trusted before `retry`.
        if seq & 1 == 1 || slot.generation.load(Ordering::Relaxed) != proc.generation {
            return None;
        }
        Some(seq)
    }

    #[inline]
    fn retry(&self, proc: ProcKey, seq: u64) -> bool {
        let Some(slot) = self.find(proc.pid) else {
            return true;
        };
        // Orders the caller's reads before the re-check (the reader half of seq_lock).
        fence(Ordering::Acquire);
        slot.seq.load(Ordering::Relaxed) != seq
    }
}

/// A change in flight; dropping it ends the change.
#[must_use = "the change ends when the guard drops"]
pub struct ChangeGuard<'a> {
    seq: &'a UserSeq,
    proc: ProcKey,
}

impl Drop for ChangeGuard<'_> {
    fn drop(&mut self) {
        // Cannot fail: the slot was live when the change began and only this guard's owner
        // may unregister it (doing so inside a change would be a caller bug, ignored here).
        let _ = self.seq.end_change(self.proc);
    }
}

#[cfg(all(test, not(probed_loom)))]
mod tests {
    use super::*;

    const P: ProcKey = ProcKey::new(100, 7);

    /// A registered process reads even and stable; a change makes it unreadable until it ends.
    #[test]
    fn begin_end_cycle() {
        let seq = UserSeq::with_capacity(8);
        assert_eq!(seq.try_begin(P), None);
        let s0 = seq.register(P).unwrap();
        assert_eq!(seq.try_begin(P), Some(s0));
        assert!(!seq.retry(P, s0));
        let odd = seq.begin_change(P).unwrap();
        assert_eq!(odd % 2, 1);
        assert_eq!(seq.try_begin(P), None);
        assert!(seq.retry(P, s0), "a change in flight invalidates readers");
        let s1 = seq.end_change(P).unwrap();
        assert_eq!(seq.try_begin(P), Some(s1));
        assert!(s1 > s0 && s1.is_multiple_of(2));
        assert_eq!(seq.end_change(P), Err(SeqError::NotInFlight(P)));
    }

    /// The guard ends its change when dropped.
    #[test]
    fn guard_ends_change() {
        let seq = UserSeq::with_capacity(8);
        seq.register(P).unwrap();
        {
            let _g = seq.change(P).unwrap();
            assert_eq!(seq.try_begin(P), None);
        }
        assert!(seq.try_begin(P).is_some());
    }

    /// A new generation on the same pid is a different process: the old key reads `None`
    /// and the sequence keeps increasing across generations (no ABA).
    #[test]
    fn pid_reuse_never_aliases() {
        let seq = UserSeq::with_capacity(8);
        let old = seq.register(P).unwrap();
        let next = ProcKey::new(P.pid, P.generation + 1);
        seq.unregister(P).unwrap();
        assert_eq!(seq.try_begin(P), None);
        let new = seq.register(next).unwrap();
        assert!(new > old);
        assert_eq!(seq.try_begin(P), None);
        assert_eq!(seq.try_begin(next), Some(new));
        assert!(seq.retry(next, old));
        assert_eq!(seq.begin_change(P), Err(SeqError::Unknown(P)));
    }

    /// Colliding pids probe to separate slots; a full table is an error, not a lost process.
    #[test]
    fn collisions_and_full() {
        let seq = UserSeq::with_capacity(4);
        for pid in 1..=4 {
            seq.register(ProcKey::new(pid, 0)).unwrap();
        }
        for pid in 1..=4 {
            assert!(seq.try_begin(ProcKey::new(pid, 0)).is_some());
        }
        assert_eq!(
            seq.register(ProcKey::new(5, 0)),
            Err(SeqError::Full { capacity: 4 })
        );
        assert_eq!(seq.try_begin(ProcKey::new(5, 0)), None);
    }

    /// Concurrent writers on one process serialize: every change moves the sequence by 2.
    #[test]
    fn concurrent_writers_serialize() {
        let seq = UserSeq::with_capacity(8);
        let s0 = seq.register(P).unwrap();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        let _g = seq.change(P).unwrap();
                    }
                });
            }
        });
        assert_eq!(seq.try_begin(P), Some(s0 + 4000));
    }
}
