//! Address-space change tracking: a per-process 64-bit sequence (see `probed_common::SeqSlot`)
//! bumped around every syscall that can change a process's mappings, and a generation that
//! tells successive processes holding one pid apart.
//!
//! Why syscall enter/exit tracepoints (see ARCHITECTURE.md for the evidence): they bracket
//! the whole change, including `mmap_write_downgrade()` paths (munmap, mremap) that end a
//! write section without a write-release event, and they fire in the changing thread, so the
//! pid is the current task's.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    programs::TracePointContext,
};
use probed_common::{EVENT_PROC, PROC_EXEC, PROC_EXIT, ProcEvent, SeqSlot, seq_of, seq_slot};

use crate::maps::{EVENTS, INFLIGHT, PROC_GEN, SEQS, TRACK_CONFIG, TRACK_ERRORS};

/// The slot of `tgid` as a pointer into the shared array.
#[inline(always)]
fn slot(tgid: u32) -> Option<*mut SeqSlot> {
    SEQS.get_ptr_mut(seq_slot(tgid))
}

#[inline(always)]
fn bump(counter: *mut u64) {
    // core's AtomicU64 has no fetch_add on BPF (rustc does not claim CAS there), so the
    // intrinsic is used directly; it compiles to a BPF atomic add.
    // SAFETY: `counter` points into a live map value; the kernel keeps it mapped while the
    // program runs, and every writer updates it atomically.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(counter, 1) };
}

/// Reads a slot's sequence: `ends` first, then `begins` (see `SeqSlot`).
#[inline(always)]
pub fn read_seq(tgid: u32) -> u64 {
    let Some(s) = slot(tgid) else { return 1 };
    // Two volatile loads: the compiler keeps them in this order, and the CPUs BPF runs on
    // (x86-64 here) do not reorder loads with loads. Aligned u64 loads are single-copy
    // atomic, so neither value can be torn by a concurrent atomic add.
    // SAFETY: `s` points into a live map value for the whole program run.
    unsafe {
        let ends = (&raw const (*s).ends).read_volatile();
        let begins = (&raw const (*s).begins).read_volatile();
        seq_of(ends, begins)
    }
}

/// The generation of `tgid`, assigned at first sight. `bpf_ktime_get_ns()` makes a fine
/// generation: two processes holding the same pid cannot both be first seen at the same
/// nanosecond, since the first must exit before the pid is reused.
#[inline(always)]
pub fn generation(tgid: u32) -> u64 {
    // SAFETY: the value is a plain u64 copied out at once.
    if let Some(g) = unsafe { PROC_GEN.get(&tgid) } {
        return *g;
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let fresh = unsafe { bpf_ktime_get_ns() };
    // BPF_NOEXIST: if another CPU assigned one meanwhile, keep and return theirs.
    if PROC_GEN.insert(&tgid, &fresh, 1).is_ok() {
        return fresh;
    }
    // SAFETY: as above.
    unsafe { PROC_GEN.get(&tgid) }.copied().unwrap_or(fresh)
}

/// A mapping-changing syscall begins: make the slot odd and remember it for the exit.
#[inline(always)]
pub fn syscall_enter() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let index = seq_slot(tgid);
    let Some(s) = slot(tgid) else { return };
    // SAFETY: `s` points into a live map value.
    bump(unsafe { &raw mut (*s).begins });
    if INFLIGHT.insert(&tid, &index, 0).is_err() {
        // Without the marker the exit cannot close the change, so the slot stays odd: the
        // daemon falls back to locked rescans for these pids instead of trusting a stale
        // snapshot. Counted so it is visible.
        if let Some(n) = TRACK_ERRORS.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, this CPU is its only writer while the program runs.
            unsafe { *n += 1 };
        }
    }
}

/// A mapping-changing syscall ends: close the change its entry opened, if any.
#[inline(always)]
pub fn syscall_exit() {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: a plain u32 copied out at once.
    let Some(index) = (unsafe { INFLIGHT.get(&tid) }).copied() else {
        return;
    };
    let _ = INFLIGHT.remove(&tid);
    if let Some(s) = SEQS.get_ptr_mut(index) {
        // SAFETY: `s` points into a live map value.
        bump(unsafe { &raw mut (*s).ends });
    }
}

/// A whole-address-space event (exec, exit): one complete change, and an event for the
/// daemon.
#[inline(always)]
fn instant_change(tgid: u32) {
    if let Some(s) = slot(tgid) {
        // SAFETY: `s` points into a live map value.
        unsafe {
            bump(&raw mut (*s).begins);
            bump(&raw mut (*s).ends);
        }
    }
}

fn emit(what: u32, tgid: u32, tid: u32, proc_gen: u64) {
    let Some(mut entry) = EVENTS.reserve::<ProcEvent>(0) else {
        return;
    };
    entry.write(ProcEvent {
        event: EVENT_PROC,
        what,
        pid: tgid,
        tid,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        proc_gen,
        seq: read_seq(tgid),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(0);
}

/// sched_process_exec: a new address space, so a new generation.
#[inline(always)]
pub fn exec() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // SAFETY: no preconditions.
    let fresh = unsafe { bpf_ktime_get_ns() };
    let _ = PROC_GEN.insert(&tgid, &fresh, 0);
    instant_change(tgid);
    emit(PROC_EXEC, tgid, tid, fresh);
}

/// sched_process_exit: when the last thread goes, the process (and its generation) ends.
#[inline(always)]
pub fn exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let offset = TRACK_CONFIG.get(0).map_or(0, |c| c.exit_group_dead_offset);
    let group_dead = if offset == 0 {
        tid == tgid
    } else {
        // SAFETY: the offset comes from this kernel's tracepoint format; read_at copies one
        // byte out of the tracepoint record with bpf_probe_read_kernel.
        unsafe { ctx.read_at::<u8>(offset as usize) }.is_ok_and(|b| b != 0)
    };
    if !group_dead {
        return;
    }
    // SAFETY: a plain u64 copied out at once.
    let Some(gen_) = (unsafe { PROC_GEN.get(&tgid) }).copied() else {
        return;
    };
    let _ = PROC_GEN.remove(&tgid);
    instant_change(tgid);
    emit(PROC_EXIT, tgid, tid, gen_);
}
