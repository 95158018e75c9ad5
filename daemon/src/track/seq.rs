//! [`BpfSeq`]: the BPF-maintained change sequence, read through a shared memory mapping.

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU64, Ordering, fence},
};

use aya::maps::MapData;
use memmap2::{Mmap, MmapOptions};
use probed_common::{SEQ_SLOTS, SeqSlot, seq_of, seq_slot};

use crate::resolve::{ProcKey, SeqSource};

/// Why the sequence array could not be mapped.
#[derive(Debug, thiserror::Error)]
#[error("cannot map the BPF sequence array (SEQS) into memory")]
pub struct MapSeqError(#[source] std::io::Error);

/// Reads per-process change sequences straight out of the BPF `SEQS` array.
///
/// The kernel writes each slot with atomic adds; this side reads them with atomic loads
/// through a `MAP_SHARED`, read-only mapping of the map's memory, so a sequence read costs
/// two loads and never a syscall (invariant 3).
pub struct BpfSeq {
    /// The mapping of `SEQS`; `SEQ_SLOTS` slots of [`SeqSlot`].
    mmap: Mmap,
    /// Keeps the map's file descriptor (and so the map) alive as long as the mapping.
    _map: MapData,
}

impl BpfSeq {
    /// Maps the `SEQS` array (created with BPF_F_MMAPABLE) read-only.
    pub fn new(map: MapData) -> Result<Self, MapSeqError> {
        let len = SEQ_SLOTS as usize * size_of::<SeqSlot>();
        // SAFETY: the BPF array map's memory stays valid while its fd (kept in `_map`) is
        // open; it is only ever accessed below through atomic loads, which is sound for
        // memory another agent (the kernel) updates concurrently with atomic adds.
        let mmap = unsafe {
            MmapOptions::new()
                .len(len)
                .map(map.fd().as_fd().as_raw_fd())
        }
        .map_err(MapSeqError)?;
        Ok(Self { mmap, _map: map })
    }

    #[inline(always)]
    fn slot(&self, pid: u32) -> (&AtomicU64, &AtomicU64) {
        let index = seq_slot(pid) as usize;
        let base = self.mmap.as_ptr().cast::<AtomicU64>();
        // SAFETY: index < SEQ_SLOTS and the mapping holds SEQ_SLOTS slots of two u64 each,
        // page-aligned, so both pointers are in bounds and 8-byte aligned; AtomicU64 has the
        // layout of u64.
        unsafe { (&*base.add(index * 2), &*base.add(index * 2 + 1)) }
    }

    /// The current sequence of `pid`'s slot, even or odd.
    pub fn current(&self, pid: u32) -> u64 {
        let (begins, ends) = self.slot(pid);
        let e = ends.load(Ordering::Acquire);
        let b = begins.load(Ordering::Acquire);
        seq_of(e, b)
    }
}

impl SeqSource for BpfSeq {
    #[inline(always)]
    fn try_begin(&self, proc: ProcKey) -> Option<u64> {
        let (begins, ends) = self.slot(proc.pid);
        // `ends` first: if it equals `begins` read afterwards, no change was in flight at the
        // moment `ends` was read (ends <= begins always holds).
        let e = ends.load(Ordering::Acquire);
        let b = begins.load(Ordering::Acquire);
        (e == b).then(|| seq_of(e, b))
    }

    #[inline(always)]
    fn retry(&self, proc: ProcKey, seq: u64) -> bool {
        // Order the caller's reads of the snapshot before the re-read of the sequence.
        fence(Ordering::Acquire);
        let (begins, _) = self.slot(proc.pid);
        begins.load(Ordering::Relaxed).wrapping_mul(2) != seq
    }
}
