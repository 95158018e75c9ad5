//! Lock mode's change sequence: write sections of a tracked process's `mmap_lock`.
//!
//! Every change of a process's mappings happens under its `mmap_lock` held for writing. The
//! kernel fires `mmap_lock_acquire_returned(mm, write=true, success)` once the write lock is
//! taken (before any change) and `mmap_lock_released(mm, write=true)` before it lets it go
//! (after every change); `mmap_write_downgrade()` (munmap, mremap, brk) ends the write
//! section with `acquire_returned(mm, write=false, success=true)` instead. These are raw
//! tracepoints behind static keys: unlike syscall tracepoints they put nobody's syscalls on
//! the slow path, and every process that is not tracked pays a `write` test (and, for write
//! acquires, one `TRACKED` lookup).
//!
//! A write section of a tracked process, in the thread that holds the lock, with the
//! process's own mm (not a remote access: exec's new mm, exit_mmap after `current->mm` is
//! gone), makes the process's slot odd (`begins`) at the acquire and even again at the
//! release or downgrade (`ends`), after a report the daemon takes as "changed, rescan"
//! (`OP_OTHER`). What changed is not reported: hits whose sequence the daemon has no picture
//! of carry the kernel's own mapping of their addresses (capture.rs).
//!
//! Costs per tracked section, kept low because a process that maps and unmaps all the time
//! pays them on every change: the open section is recorded in the process's own `SEQS` slot
//! (`holder_tid`, claimed by compare-and-swap; the `LOCK_HELD` hash only when another process
//! sharing the slot holds it), and the report is skipped when the daemon already knows its
//! picture is behind (`daemon_already_told`). Measured (`cargo xtask bench tracker`, tracked
//! mmap/munmap churn over none): 0.63 with a hash entry and a report per section, 0.71 with
//! coalesced reports, 0.80 with the slot record.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, generated::bpf_get_current_task};
use probed_common::{seq_slot, stable_seq};

use crate::{
    kread,
    maps::{LOCK_HELD, LockHeld, OPEN_WRITES},
    track,
};

/// Raw tracepoint mmap_lock_acquire_returned(mm, write, success).
#[inline(always)]
pub fn acquired(mm: u64, write: u64, success: u64) {
    // bool arguments: only the low byte is defined.
    if success & 0xff == 0 {
        return;
    }
    if write & 0xff == 0 {
        // A read acquire: a downgrade only if a tracked write section is open anywhere
        // (readers cannot take the lock while a writer holds it, so a successful read
        // acquire by the section's own thread on its mm is the downgrade).
        if open_writes() != 0 {
            end_section(mm);
        }
        return;
    }
    begin_section(mm);
}

/// Raw tracepoint mmap_lock_released(mm, write).
#[inline(always)]
pub fn released(mm: u64, write: u64) {
    if write & 0xff == 0 || open_writes() == 0 {
        return;
    }
    end_section(mm);
}

#[inline(always)]
fn open_writes() -> u64 {
    // SAFETY: `p` points into the live OPEN_WRITES map value, an aligned u64.
    OPEN_WRITES
        .get_ptr(0)
        .map_or(0, |p| unsafe { track::load(p) })
}

#[inline(always)]
fn begin_section(mm: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if !track::is_tracked(tgid) {
        return;
    }
    let Some(o) = kread::offsets() else { return };
    // SAFETY: bpf_get_current_task has no preconditions; used only as an address to read.
    let task = unsafe { bpf_get_current_task() };
    if kread::read_u64(task, o.task_mm) != mm {
        // Another address space (exec building the new one, a remote access): not a
        // change of this process's current mappings.
        return;
    }
    let Some(s) = track::slot(tgid) else { return };
    // SAFETY: `s` points into a live SEQS map value; `begins` is an aligned u64 only updated
    // atomically.
    let ticket = unsafe { track::bump(&raw mut (*s).begins) };
    // SAFETY: `s` points into a live SEQS map value.
    if unsafe { claim(s, tid) } {
        // The section is recorded in the process's own slot: no hash update. Only this
        // thread reads these two words back (while `holder_tid` is its tid).
        // SAFETY: `s` points into a live map value; aligned fields.
        unsafe {
            (&raw mut (*s).holder_ticket).write_volatile(ticket);
            (&raw mut (*s).holder_mm).write_volatile(mm);
        }
    } else {
        // Another process sharing the slot has a section open: the hash keeps this one.
        let held = LockHeld {
            mm,
            ticket,
            slot: seq_slot(tgid),
            _reserved: 0,
        };
        if LOCK_HELD.insert(&tid, &held, 0).is_err() {
            // Without the marker the release cannot close the section: the slot stays odd,
            // so the daemon never trusts a picture of it again (fallbacks, counted).
            track::count_error(track::ERR_LOCK_HELD_FULL);
            return;
        }
    }
    if let Some(n) = OPEN_WRITES.get_ptr_mut(0) {
        // SAFETY: `n` points into the live OPEN_WRITES map value, only updated atomically.
        unsafe { track::bump(n) };
    }
}

/// Claims slot `s`'s holder word for thread `tid` (compare-and-swap from 0).
///
/// # Safety
/// `s` must point to a live `SEQS` map value.
#[inline(always)]
unsafe fn claim(s: *mut probed_common::SeqSlot, tid: u32) -> bool {
    // SAFETY: the caller guarantees `s` points into a live map value; `holder_tid` is 4-byte
    // aligned and only ever changed atomically (this compare-and-swap) or by its holder (the
    // release below).
    let (_, ok) = unsafe {
        atomic_cxchg::<u32, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*s).holder_tid,
            0,
            tid,
        )
    };
    ok
}

#[inline(always)]
fn end_section(mm: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if let Some(s) = track::slot(tgid)
        // SAFETY: `s` points into a live map value; aligned field.
        && unsafe { (&raw const (*s).holder_tid).read_volatile() } == tid
    {
        // SAFETY: as above; this thread wrote both words when it claimed the slot.
        let (held_mm, ticket) = unsafe {
            (
                (&raw const (*s).holder_mm).read_volatile(),
                (&raw const (*s).holder_ticket).read_volatile(),
            )
        };
        if held_mm != mm {
            return;
        }
        // SAFETY: as above; only the holder clears its claim.
        unsafe { (&raw mut (*s).holder_tid).write_volatile(0) };
        if let Some(n) = OPEN_WRITES.get_ptr_mut(0) {
            // SAFETY: `n` points into the live OPEN_WRITES map value, only updated atomically.
            unsafe { track::unbump(n) };
        }
        // SAFETY: `s` points into a live SEQS map value.
        unsafe { finish_section(tgid, tid, ticket, s) };
        return;
    }
    // SAFETY: a plain struct copied out at once.
    let Some(held) = (unsafe { LOCK_HELD.get(&tid) }).copied() else {
        return;
    };
    if held.mm != mm {
        return;
    }
    let _ = LOCK_HELD.remove(&tid);
    if let Some(n) = OPEN_WRITES.get_ptr_mut(0) {
        // SAFETY: `n` points into the live OPEN_WRITES map value, only updated atomically.
        unsafe { track::unbump(n) };
    }
    let Some(s) = crate::maps::SEQS.get_ptr_mut(held.slot) else {
        return;
    };
    // SAFETY: `s` points into a live SEQS map value.
    unsafe { finish_section(tgid, tid, held.ticket, s) };
}

/// Ends section `ticket` of `tgid` in slot `s`: reports it unless the daemon already knows its
/// picture is behind, then makes the slot even again.
///
/// # Safety
/// `s` must point to a live `SEQS` map value.
#[inline(always)]
unsafe fn finish_section(tgid: u32, tid: u32, ticket: u64, s: *mut probed_common::SeqSlot) {
    // SAFETY: the caller guarantees `s` points into a live SEQS map value.
    if unsafe { daemon_already_told(s, tgid, ticket) } {
        // SAFETY: as above; `ends` is an aligned u64 only updated atomically.
        unsafe { track::bump(&raw mut (*s).ends) };
        return;
    }
    // SAFETY: as above.
    unsafe { track::report_rescan(tgid, tid, ticket, s) };
}

/// Whether the daemon already knows its picture of `tgid` is behind, so this section's report
/// would only repeat it: the daemon's published picture (`mirror`, for `mirror_pid`) is older
/// than the sequence this section began from (`2 × (ticket − 1)`). Then an earlier section,
/// the one that moved the sequence past the published picture, saw that picture still current
/// and reported. Reports only trigger rescans; exactness never rests on them: BPF lets a hit
/// skip its capture only if its sequence *is* the published one, whose picture the daemon
/// holds. A process whose rescan could not publish (it changed during the read) is reported
/// again by its next captured hit (`Pipeline::handle_captured`). Coalescing a churning
/// process's reports this way takes its ring records and the daemon's work per change down
/// to one per rescan. When in doubt (no picture published for this process, or the slot
/// published for another process sharing it) the section reports.
///
/// # Safety
/// `s` must point to a live `SEQS` map value.
#[inline(always)]
unsafe fn daemon_already_told(s: *mut probed_common::SeqSlot, tgid: u32, ticket: u64) -> bool {
    // SAFETY: the caller guarantees `s` points into a live SEQS map value.
    let (mirror, pid) = unsafe { track::published(s) };
    let before = stable_seq(ticket.wrapping_sub(1));
    pid == tgid && mirror != u64::MAX && mirror < before
}
