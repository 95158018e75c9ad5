//! [`BpfSeq`]: the BPF-maintained change sequence, read through a shared memory mapping.

use std::{
    mem::offset_of,
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU32, AtomicU64, Ordering, fence},
};

use aya::maps::MapData;
use memmap2::{MmapMut, MmapOptions};
use probed_common::{SEQ_SLOTS, SeqSlot, seq_of, seq_slot, stable_seq};

use crate::resolve::{ProcKey, SeqSource};

/// Why the sequence array could not be mapped.
#[derive(Debug, thiserror::Error)]
#[error("cannot map the BPF sequence array (SEQS) into memory")]
pub struct MapSeqError(#[source] std::io::Error);

/// Reads per-process change sequences straight out of the BPF `SEQS` array.
///
/// The kernel writes each slot's counters with atomic adds; this side reads them with atomic
/// loads through a `MAP_SHARED` mapping of the map's memory, so a sequence read costs two
/// loads and never a syscall (invariant 3). The mapping is writable for one reason: lock mode
/// publishes, per slot, the sequence of the picture the daemon holds (`SeqSlot::mirror`),
/// which only this side writes (atomic stores) and BPF only reads.
pub struct BpfSeq {
    /// The mapping of `SEQS`; `SEQ_SLOTS` slots of [`SeqSlot`].
    mmap: MmapMut,
    /// Keeps the map's file descriptor (and so the map) alive as long as the mapping.
    _map: MapData,
}

impl BpfSeq {
    /// Maps the `SEQS` array (created with BPF_F_MMAPABLE).
    pub fn new(map: MapData) -> Result<Self, MapSeqError> {
        let len = SEQ_SLOTS as usize * size_of::<SeqSlot>();
        // SAFETY: the BPF array map's memory stays valid while its fd (kept in `_map`) is
        // open; it is only ever accessed below through atomics, which is sound for memory
        // another agent (the kernel) updates concurrently with atomic adds.
        let mmap = unsafe {
            MmapOptions::new()
                .len(len)
                .map_mut(map.fd().as_fd().as_raw_fd())
        }
        .map_err(MapSeqError)?;
        Ok(Self { mmap, _map: map })
    }

    /// The first u64 word of `pid`'s slot (a [`SeqSlot`]).
    #[inline(always)]
    fn words(&self, pid: u32) -> *const AtomicU64 {
        let index = seq_slot(pid) as usize;
        // SAFETY: index < SEQ_SLOTS and the mapping holds SEQ_SLOTS slots, so the slot is in
        // bounds; slots are 8-byte aligned (common asserts SeqSlot's size and alignment) in a
        // page-aligned mapping.
        unsafe {
            self.mmap
                .as_ptr()
                .add(index * size_of::<SeqSlot>())
                .cast::<AtomicU64>()
        }
    }

    #[inline(always)]
    fn slot(&self, pid: u32) -> (&AtomicU64, &AtomicU64) {
        let base = self.words(pid);
        // SAFETY: the slot's `begins` and `ends` fields, at their `repr(C)` offsets inside the
        // slot (see `words`), in bounds and 8-byte aligned; AtomicU64 has the layout of u64.
        unsafe {
            (
                &*base.byte_add(offset_of!(SeqSlot, begins)),
                &*base.byte_add(offset_of!(SeqSlot, ends)),
            )
        }
    }

    /// Lock mode: tells BPF that the daemon holds a picture of `pid` at sequence `seq`, so
    /// hits of `pid` stamped `seq` need not capture their mappings (ebpf/src/capture.rs).
    /// A race with another process sharing the slot only costs captures or counted
    /// fallbacks: the resolver answers a hit only from a picture of its own sequence.
    pub fn publish(&self, pid: u32, seq: u64) {
        let base = self.words(pid);
        // SAFETY: the slot's `mirror` (8-byte aligned) and `mirror_pid` (4-byte aligned)
        // fields, at their `repr(C)` offsets inside the slot (see `words`); only this side
        // writes them.
        unsafe {
            let mirror = &*base.byte_add(offset_of!(SeqSlot, mirror));
            let mirror_pid = &*base
                .byte_add(offset_of!(SeqSlot, mirror_pid))
                .cast::<AtomicU32>();
            mirror.store(u64::MAX, Ordering::Release);
            mirror_pid.store(pid, Ordering::Release);
            mirror.store(seq, Ordering::Release);
        }
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
    fn publish(&self, proc: ProcKey, seq: u64) {
        BpfSeq::publish(self, proc.pid, seq);
    }

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
        stable_seq(begins.load(Ordering::Relaxed)) != seq
    }
}
