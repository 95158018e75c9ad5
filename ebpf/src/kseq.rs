//! Kseq mode: no hook on address-space changes; the kernel's own sequence instead.
//!
//! Since Linux 6.14 every `mm_struct` carries `mm_lock_seq`, a seqcount that
//! `mmap_write_lock` makes odd and the write section's end makes even again — the counter
//! the kernel's own speculative uprobe lookup (`find_active_uprobe_speculative`) validates
//! against. Every mapping change happens inside such a section, so while the counter reads
//! the same even value, the process's mappings are the same.
//!
//! A hit is stamped with that counter (`hit.seq`). It captures the mapping of each of its
//! addresses (capture.rs) unless this module's cache says an earlier capture of the same
//! address space, at the same counter value, holds the address: then the daemon, which
//! received that capture earlier in the ring, answers from it. A capture enters the cache
//! only if the counter still read the hit's value while `bpf_find_vma` held the address
//! space (`CAPTURE_FOUND_AT_SEQ`), and only after its record was submitted, so a hit that
//! skips its capture is always behind the record it relies on.
//!
//! The cache is written by several CPUs without a lock (threads of one process): a torn
//! entry can only make a hit skip a capture the daemon then cannot answer from its own
//! store, which holds nothing but validated captures — a counted `no_snapshot_at_seq`,
//! never a wrong mapping.

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use probed_common::TRACK_MODE_KSEQ;

use crate::{
    kread,
    maps::{TRACK_CONFIG, TRACK_MODE},
};

/// Mappings remembered per process (the text segments a stack usually spans: the
/// executable, libc, the loader, an interpreter and a few of its libraries).
pub const CACHE_RANGES: usize = 8;

/// The mappings captured at one value of one address space's counter.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KseqCache {
    /// The `mm_struct` (an exec'd process has another; the counter restarts there).
    pub mm: u64,
    /// The counter's value the ranges hold at.
    pub seq: u64,
    /// Where the next range goes (round robin).
    pub next: u64,
    /// `[start, end)` of each range; empty when both are 0.
    pub start: [u64; CACHE_RANGES],
    pub end: [u64; CACHE_RANGES],
}

/// Kseq mode: per process (tgid), mappings captured at its address space's current counter.
#[map(name = "KSEQ_CACHE")]
pub static KSEQ_CACHE: LruHashMap<u32, KseqCache> = LruHashMap::with_max_entries(16384, 0);

/// Room for building a fresh [`KseqCache`] (per CPU).
#[map(name = "KSEQ_SCRATCH")]
pub static KSEQ_SCRATCH: PerCpuArray<KseqCache> = PerCpuArray::with_max_entries(1, 0);

/// The current task's address space and its counter.
#[derive(Clone, Copy)]
pub struct Kseq {
    pub mm: u64,
    pub seq: u64,
}

/// Whether the tracker runs in kseq mode.
#[inline(always)]
pub fn enabled() -> bool {
    TRACK_MODE.get(0).copied().unwrap_or(0) == TRACK_MODE_KSEQ
}

/// `mm->mm_lock_seq` of the current task's address space `mm` (its process's, kept in
/// proc_facts.rs), if the daemon found the counter's offset.
#[inline(always)]
pub fn read(mm: u64) -> Option<Kseq> {
    let config = TRACK_CONFIG.get(0)?;
    if config.mm_lock_seq == 0 || config.offsets.valid != 1 || mm == 0 {
        return None;
    }
    // One 4-byte load (the kernel's raw_read_seqcount); x86-64 does not reorder it with the
    // loads that follow.
    let seq = u64::from(kread::read_u32(mm, config.mm_lock_seq));
    Some(Kseq { mm, seq })
}

/// The address of `mm->mm_lock_seq.sequence`, for re-reading it under the address space's
/// lock (capture.rs); 0 if unknown.
#[inline(always)]
pub fn counter_addr(mm: u64) -> u64 {
    match TRACK_CONFIG.get(0) {
        Some(c) if c.mm_lock_seq != 0 && mm != 0 => mm + u64::from(c.mm_lock_seq),
        _ => 0,
    }
}

/// Whether an earlier capture of `tgid`'s address space `k.mm`, at counter `k.seq`, holds
/// `addr`. Never while a write section is open (odd counter).
#[inline(never)]
pub fn cached(tgid: u32, k: Kseq, addr: u64) -> bool {
    if k.seq & 1 != 0 {
        return false;
    }
    // SAFETY: the value is read field by field while the program runs; a concurrent writer
    // can tear it, which the module docs show to be safe.
    let Some(c) = (unsafe { KSEQ_CACHE.get(&tgid) }) else {
        return false;
    };
    if c.mm != k.mm || c.seq != k.seq {
        return false;
    }
    let mut i = 0;
    while i < CACHE_RANGES {
        if c.start[i] <= addr && addr < c.end[i] {
            return true;
        }
        i += 1;
    }
    false
}

/// Remembers that `[start, end)` is mapped in `tgid`'s address space `k.mm` at counter
/// `k.seq` (the capture was validated at that value and its record submitted).
#[inline(never)]
pub fn remember(tgid: u32, k: Kseq, start: u64, end: u64) {
    if let Some(c) = KSEQ_CACHE.get_ptr_mut(&tgid) {
        // SAFETY: `c` points into a live map value for this program run; plain stores (a
        // torn read elsewhere is safe, module docs).
        unsafe {
            if (*c).mm == k.mm && (*c).seq == k.seq {
                let i = ((*c).next % CACHE_RANGES as u64) as usize;
                if i < CACHE_RANGES {
                    (*c).start[i] = start;
                    (*c).end[i] = end;
                }
                (*c).next += 1;
                return;
            }
        }
    }
    // A new counter value (or process): a fresh entry, built in the per-CPU scratch since
    // the capture chain's stack has no room for it.
    let Some(fresh) = KSEQ_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch value, only ours while the program runs.
    unsafe {
        (*fresh).mm = k.mm;
        (*fresh).seq = k.seq;
        (*fresh).next = 1;
        (*fresh).start = [0; CACHE_RANGES];
        (*fresh).end = [0; CACHE_RANGES];
        (*fresh).start[0] = start;
        (*fresh).end[0] = end;
        let _ = KSEQ_CACHE.insert(&tgid, &*fresh, 0);
    }
}
