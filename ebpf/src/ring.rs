//! Which ring buffer a record goes to, and when its submission wakes the daemon.
//!
//! One ring (`EVENTS`) unless the daemon runs several consumer threads in kseq mode: then
//! `RING_COUNT` rings, each read by a thread of its own, and every record about a process —
//! its hits, stacks, captures, strings, its exec and exit, the fork that made it — goes to
//! the process's ring. Processes get rings in turn as BPF first writes about them
//! (`RING_OF`, forgotten at exit), as the daemon's dealer gives threads processes: a
//! `tgid % n` would put every process of a spawner that starts a thread per child (pids
//! P, P+2, P+4…) on one ring. A ring is FIFO, so a process's records reach its consumer
//! in the order they were reserved, which is the per-process order the daemon relies on;
//! nothing orders records of different processes, and nothing needs to. A file's name,
//! which any process's capture may refer to once it is known, is written to every ring in
//! use (`capture.rs`).

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    maps::{RingBuf, ring_buf::RingBufEntry},
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::bindings::BPF_NOEXIST;

use crate::maps::{EVENTS, EVENTS1, EVENTS2, EVENTS3, RING_NEXT, RING_OF};

/// Bytes waiting in a ring above which a submission wakes its consumer.
///
/// Nothing wakes the daemon per event: a wake-up (and the context switch it causes) per hit
/// or per mmap would cost more than the event itself. Events are submitted without a
/// wake-up until 32 KiB are waiting, then with a forced one; the daemon also drains each
/// ring on a short timer, which bounds how late an event of a quiet probe is seen.
const WAKE_AT: u64 = 32 * 1024;

/// The ring of one process's records.
#[derive(Clone, Copy)]
pub struct Ring {
    /// The process (tgid) whose records go there. The ring's index is worked out from it
    /// only inside the functions below (see [`reserve_in`]).
    tgid: u32,
}

impl Ring {
    /// The ring of records about process `tgid`.
    #[inline(always)]
    pub fn of(tgid: u32) -> Self {
        Self { tgid }
    }

    /// Reserves a record of `T` (`None`: the ring is full), with the flags to submit it
    /// with (see [`WAKE_AT`]; what waited before it).
    #[inline(always)]
    pub fn reserve<T: 'static>(self) -> Option<(RingBufEntry<T>, u64)> {
        let index = index_of(self.tgid);
        let wake = wake_flags(index);
        reserve_in::<T>(index).map(|entry| (entry, wake))
    }
}

/// Process `tgid` ended (its exit report is written): a process that gets its pid later
/// gets a ring of its own.
#[inline(always)]
pub fn forget(tgid: u32) {
    if count() > 1 {
        let _ = RING_OF.remove(&tgid);
    }
}

/// Copies `record` into ring `index`; false if it is full.
#[inline(always)]
pub fn output_at<T>(index: u32, record: &T) -> bool {
    let map = map(index);
    map.output::<T>(record, flags(map)).is_ok()
}

// The ring is chosen inside functions of their own (BPF subprograms), not inline in every
// record's writer, and the count is a load-time constant: with one ring the verifier sees
// one path (158k instructions per hit program, from 135k before rings); each ring more
// costs it ~14k (183k with two, 266k with eight: hence four at most).

/// The ring of process `tgid`: the one it was given, else the next in turn (given now).
#[inline(never)]
fn index_of(tgid: u32) -> u32 {
    let n = count();
    if n <= 1 {
        return 0;
    }
    // SAFETY: a plain u32 copied out at once.
    if let Some(&i) = unsafe { RING_OF.get(&tgid) } {
        return i % n;
    }
    let Some(next) = RING_NEXT.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: `next` points into the live RING_NEXT value, only ever updated atomically.
    let i =
        (unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(next, 1) } % n as u64) as u32;
    if RING_OF.insert(&tgid, &i, BPF_NOEXIST as u64).is_ok() {
        return i;
    }
    // Another CPU gave it one just now (another thread of the process), or the map is full
    // (evicted entries: processes long quiet).
    // SAFETY: as above.
    unsafe { RING_OF.get(&tgid) }.map_or(i, |&j| j % n)
}

/// [`Ring::reserve`]'s record in ring `index`.
#[inline(never)]
fn reserve_in<T: 'static>(index: u32) -> Option<RingBufEntry<T>> {
    map(index).reserve::<T>(0)
}

/// The flags to submit a record to ring `index` with.
#[inline(never)]
fn wake_flags(index: u32) -> u64 {
    flags(map(index))
}

/// Ring `index` (`EVENTS` for any index out of range).
#[inline(always)]
fn map(index: u32) -> &'static RingBuf {
    match index {
        1 => &EVENTS1,
        2 => &EVENTS2,
        3 => &EVENTS3,
        _ => &EVENTS,
    }
}

/// Flags for submitting a record to `map` (see [`WAKE_AT`]).
#[inline(always)]
fn flags(map: &RingBuf) -> u64 {
    if map.query(BPF_RB_AVAIL_DATA as u64) >= WAKE_AT {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Rings in use, set by the daemon when it loads the object (`EbpfLoader::set_global`).
/// A read-only global, so the verifier reads it as the constant it is: with one ring it
/// verifies one ring's paths, as before rings were chosen (each ring more costs it ~14,000
/// instructions per hit program).
#[unsafe(no_mangle)]
static RING_COUNT: u32 = 1;

/// Rings in use (at least 1).
#[inline(always)]
pub fn count() -> u32 {
    // SAFETY: a plain read of a global; volatile, or the compiler would fold in the 1 the
    // object is built with.
    unsafe { core::ptr::read_volatile(&raw const RING_COUNT) }.max(1)
}
