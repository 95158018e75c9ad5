//! Resolver statistics: how often each path answered, and why the fast path was missed.
//!
//! Each [`Reader`](super::Reader) owns a cache-line-aligned block it alone writes (a plain
//! load and store, no read-modify-write, no line shared with another thread), so counting
//! costs the fast path about a nanosecond and does not stop two readers from scaling. The
//! resolver sums the blocks when asked.

use std::sync::atomic::{AtomicU64, Ordering};

use super::outcome::Reason;

/// Why a resolution did not take the fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// The reader had no snapshot of the process yet.
    NoSnapshot,
    /// A change was in flight (or the sequence source did not know the process).
    InFlight,
    /// The reader's snapshot was of another sequence than the current one.
    SeqMismatch,
    /// The hit's sequence was not the current one.
    HitSeq,
    /// The sequence moved during the lookup.
    Changed,
}

/// Counter slots, in block order.
#[derive(Clone, Copy)]
pub(crate) enum Slot {
    Fast,
    FallbackNoSnapshot,
    FallbackInFlight,
    FallbackSeqMismatch,
    FallbackHitSeq,
    FallbackChanged,
    FromMirror,
    Retained,
    Replayed,
    Rescans,
    RescanRetries,
    RescanFailures,
    ChangesReplayed,
    ChangesUnreplayable,
    ExitedDropped,
}

const SLOTS: usize = Slot::ExitedDropped as usize + 1;
const REASONS: usize = Reason::ALL.len();

impl From<Fallback> for Slot {
    fn from(f: Fallback) -> Self {
        match f {
            Fallback::NoSnapshot => Slot::FallbackNoSnapshot,
            Fallback::InFlight => Slot::FallbackInFlight,
            Fallback::SeqMismatch => Slot::FallbackSeqMismatch,
            Fallback::HitSeq => Slot::FallbackHitSeq,
            Fallback::Changed => Slot::FallbackChanged,
        }
    }
}

/// One writer's counters. Two cache lines of alignment so the hardware's adjacent-line
/// prefetcher does not pair it with a neighbour's block.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Block {
    slots: [AtomicU64; SLOTS],
    unresolved: [AtomicU64; REASONS],
}

impl Block {
    /// Adds one, for a block with a single writer (the owning reader): not an atomic
    /// read-modify-write, just a load and a store that other threads may read concurrently.
    #[inline]
    pub(crate) fn bump(&self, slot: Slot) {
        let c = &self.slots[slot as usize];
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Counts an unresolved address (single writer, like [`Block::bump`]).
    #[inline]
    pub(crate) fn bump_reason(&self, reason: Reason) {
        let c = &self.unresolved[reason.index()];
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Adds `n`, for a block shared by several writers.
    pub(crate) fn add_shared(&self, slot: Slot, n: u64) {
        self.slots[slot as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Adds every counter of `other` into this (shared) block.
    pub(crate) fn absorb(&self, other: &Block) {
        for (a, b) in self.slots.iter().zip(&other.slots) {
            a.fetch_add(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for (a, b) in self.unresolved.iter().zip(&other.unresolved) {
            a.fetch_add(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Adds this block's values into `sum`.
    pub(crate) fn add_to(&self, sum: &mut Counters) {
        let v = |s: Slot| self.slots[s as usize].load(Ordering::Relaxed);
        sum.fast += v(Slot::Fast);
        sum.fallback_no_snapshot += v(Slot::FallbackNoSnapshot);
        sum.fallback_in_flight += v(Slot::FallbackInFlight);
        sum.fallback_seq_mismatch += v(Slot::FallbackSeqMismatch);
        sum.fallback_hit_seq += v(Slot::FallbackHitSeq);
        sum.fallback_changed += v(Slot::FallbackChanged);
        sum.from_mirror += v(Slot::FromMirror);
        sum.retained += v(Slot::Retained);
        sum.replayed += v(Slot::Replayed);
        sum.changes_replayed += v(Slot::ChangesReplayed);
        sum.changes_unreplayable += v(Slot::ChangesUnreplayable);
        sum.exited_dropped += v(Slot::ExitedDropped);
        sum.rescans += v(Slot::Rescans);
        sum.rescan_retries += v(Slot::RescanRetries);
        sum.rescan_failures += v(Slot::RescanFailures);
        for (s, c) in sum.unresolved.iter_mut().zip(&self.unresolved) {
            *s += c.load(Ordering::Relaxed);
        }
    }
}

/// A point-in-time copy of a resolver's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Answers from the fast path.
    pub fast: u64,
    /// Fallbacks: the reader had no snapshot of the process yet.
    pub fallback_no_snapshot: u64,
    /// Fallbacks: a change was in flight (odd sequence) or the process was unknown to the
    /// sequence source.
    pub fallback_in_flight: u64,
    /// Fallbacks: the reader's snapshot was older than the current sequence.
    pub fallback_seq_mismatch: u64,
    /// Fallbacks: the hit's sequence was not the current one.
    pub fallback_hit_seq: u64,
    /// Fallbacks: the sequence changed during the lookup.
    pub fallback_changed: u64,
    /// Fallbacks answered from a snapshot another thread had published (no rescan).
    pub from_mirror: u64,
    /// Fallbacks answered from a retained older scanned snapshot.
    pub retained: u64,
    /// Fallbacks answered from a picture replayed from the kernel's change reports.
    pub replayed: u64,
    /// Change reports replayed onto a process's pictures.
    pub changes_replayed: u64,
    /// Change reports that could not be replayed (the chain waits for a rescan).
    pub changes_unreplayable: u64,
    /// Exited processes whose pictures were dropped to stay within `retain_exited`.
    pub exited_dropped: u64,
    /// Rescans of /proc/PID/maps that published a snapshot.
    pub rescans: u64,
    /// Rescan attempts thrown away because the sequence moved (or was odd) around them.
    pub rescan_retries: u64,
    /// Rescans that gave up (process gone, unreadable maps, sequence never stable).
    pub rescan_failures: u64,
    /// Unresolved addresses, indexed like [`Reason::ALL`].
    pub unresolved: [u64; REASONS],
}

impl Counters {
    /// All resolutions that missed the fast path.
    pub fn fallbacks(&self) -> u64 {
        self.fallback_no_snapshot
            + self.fallback_in_flight
            + self.fallback_seq_mismatch
            + self.fallback_hit_seq
            + self.fallback_changed
    }

    /// All resolutions.
    pub fn total(&self) -> u64 {
        self.fast + self.fallbacks()
    }

    /// Unresolved addresses for one reason.
    pub fn unresolved(&self, reason: Reason) -> u64 {
        self.unresolved[reason.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bumps land in the right fields and blocks sum.
    #[test]
    fn bump_and_sum() {
        let a = Block::default();
        let b = Block::default();
        a.bump(Slot::Fast);
        a.bump(Slot::Fast);
        a.bump(Fallback::Changed.into());
        b.bump(Slot::Fast);
        b.bump_reason(Reason::Unmapped);
        b.add_shared(Slot::Rescans, 3);
        let shared = Block::default();
        shared.absorb(&b);
        let mut sum = Counters::default();
        a.add_to(&mut sum);
        shared.add_to(&mut sum);
        assert_eq!(sum.fast, 3);
        assert_eq!(sum.fallback_changed, 1);
        assert_eq!(sum.rescans, 3);
        assert_eq!(sum.unresolved(Reason::Unmapped), 1);
        assert_eq!(sum.total(), 4);
    }
}
