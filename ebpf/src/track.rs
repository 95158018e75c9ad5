//! Address-space change tracking: a per-process 64-bit sequence (see `probed_common::SeqSlot`)
//! bumped around every syscall that can change a process's mappings, a report of each
//! finished change (what range, what is mapped there now) so the daemon can replay the
//! address space without /proc, and a generation that tells successive processes holding one
//! pid apart.
//!
//! Why syscall enter/exit tracepoints (see ARCHITECTURE.md for the evidence): they bracket
//! the whole change, including `mmap_write_downgrade()` paths (munmap, mremap) that end a
//! write section without a write-release event, and they fire in the changing thread, so the
//! pid is the current task's and the arguments say what changes.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    EbpfContext,
    bindings::pt_regs,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{
            bpf_find_vma, bpf_get_current_task, bpf_get_current_task_btf, bpf_task_pt_regs,
        },
    },
    programs::{ProbeContext, TracePointContext},
};
use probed_common::{
    CHANGE_OVERLAP, CHANGE_VMA, CHANGE_VMA_FILE, CHANGE_VMA_FROM_ARGS, ChangeEvent, EVENT_CHANGE,
    EVENT_PROC, FileKey, KernelOffsets, NAME_LEN, OP_BRK, OP_MMAP, OP_MPROTECT, OP_MREMAP,
    OP_MUNMAP, PAGE_SHIFT, PAGE_SIZE, PROC_EXEC, PROC_EXIT, PROC_FORK, ProcEvent, SeqSlot, VM_EXEC,
    VM_HUGETLB, VM_READ, VM_SHARED, VM_WRITE, VmaInfo, seq_of, seq_slot, stable_seq,
};

use crate::{
    kread,
    maps::{
        INFLIGHT, InFlight, LOST_REPORTS, PROBED_FILES, PROC_GEN, SEQS, TRACK_CONFIG, TRACK_ERRORS,
        TRACKED,
    },
    path,
    ring::Ring,
};

/// mmap flags and the vm_flags they become.
const MAP_SHARED: u64 = 0x01;
const MAP_SHARED_VALIDATE: u64 = 0x03;
const MAP_ANONYMOUS: u64 = 0x20;
const PROT_EXEC: u64 = 0x4;
const MAP_HUGETLB: u64 = 0x4_0000;

/// Lock mode: `LOCK_HELD` was full (the slot is left odd on purpose).
pub use probed_common::TRACK_ERR_LOCK_HELD_FULL as ERR_LOCK_HELD_FULL;
/// `TRACK_ERRORS` indices (shared with the daemon, which reports them).
use probed_common::{
    TRACK_ERR_EXIT_MISSED as ERR_EXIT_MISSED, TRACK_ERR_INFLIGHT_FULL as ERR_INFLIGHT_FULL,
    TRACK_ERR_REPORT_LOST as ERR_CHANGE_LOST, TRACK_ERR_TRACKED_FULL as ERR_TRACKED_FULL,
};

/// Whether `tgid`'s changes are tracked.
#[inline(always)]
pub fn is_tracked(tgid: u32) -> bool {
    // SAFETY: only the presence of the key is used.
    unsafe { TRACKED.get(&tgid) }.is_some()
}

/// Starts tracking `tgid` (no-op if it is).
#[inline(always)]
pub fn track(tgid: u32) {
    if is_tracked(tgid) {
        return;
    }
    // probed's own processes are never tracked: their mapping changes would be reported
    // to probed, whose handling maps memory in turn (called in the task of `tgid` or, for a
    // fork, of its parent, which runs the same executable).
    if crate::self_filter::is_probed(tgid) {
        return;
    }
    // BPF_NOEXIST: another CPU may have just done it.
    if TRACKED.insert(&tgid, &1, 1).is_err() && !is_tracked(tgid) {
        count_error(ERR_TRACKED_FULL);
    }
}

/// Whether the file behind `info` (the `struct file` at `file`) is one a probe is attached
/// to: by its own identity, or, for an overlayfs backing file, by the overlay file's (the
/// identity the daemon's stat of a probe's path gives).
#[inline(always)]
fn is_probed_file(info: &VmaInfo, file: u64) -> bool {
    if info.ino == 0 {
        return false;
    }
    let key = FileKey {
        dev: info.dev,
        ino: info.ino,
    };
    // SAFETY: only the presence of the key is used.
    if unsafe { PROBED_FILES.get(&key) }.is_some() {
        return true;
    }
    let Some((dev, ino)) = path::user_identity(file) else {
        return false;
    };
    // SAFETY: as above.
    unsafe { PROBED_FILES.get(&FileKey { dev, ino }) }.is_some()
}

/// The number of reports lost so far (see `ChangeEvent::lost_reports`).
#[inline(always)]
pub fn lost_reports() -> u32 {
    // SAFETY: `p` points into the live LOST_REPORTS map value.
    LOST_REPORTS
        .get_ptr(0)
        .map_or(0, |p| unsafe { load(p) } as u32)
}

/// Counts a report that could not be delivered. Called before the change's `ends`
/// increment, so any hit that sees the change also sees the new count.
#[inline(always)]
fn report_lost() {
    count_error(ERR_CHANGE_LOST);
    if let Some(p) = LOST_REPORTS.get_ptr_mut(0) {
        // SAFETY: `p` points into the live LOST_REPORTS map value, only updated atomically.
        unsafe { bump(p) };
    }
}

#[inline(always)]
pub fn count_error(index: u32) {
    if let Some(n) = TRACK_ERRORS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; this CPU is its only writer while the program runs.
        unsafe { *n += 1 };
    }
}

/// The slot of `tgid` as a pointer into the shared array.
#[inline(always)]
pub fn slot(tgid: u32) -> Option<*mut SeqSlot> {
    SEQS.get_ptr_mut(seq_slot(tgid))
}

/// Atomically adds 1 and returns the new value.
///
/// # Safety
/// `counter` must point to an aligned u64 inside a live map value (the kernel keeps it
/// mapped while the program runs) that every writer updates atomically.
#[inline(always)]
pub unsafe fn bump(counter: *mut u64) -> u64 {
    // core's AtomicU64 has no fetch_add on BPF (rustc does not claim CAS there), so the
    // intrinsic is used directly; it compiles to a BPF atomic fetch-add (cpu v3).
    // SAFETY: the caller guarantees `counter` is a live, aligned, atomically updated u64.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(counter, 1) + 1 }
}

/// Atomically subtracts 1.
///
/// # Safety
/// As for [`bump`].
#[inline(always)]
pub unsafe fn unbump(counter: *mut u64) {
    // SAFETY: the caller guarantees `counter` is a live, aligned, atomically updated u64.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(counter, u64::MAX) };
}

/// Lock mode: the daemon's published picture of the process in slot `s` — (`mirror`,
/// `mirror_pid`), each read once (the daemon stores them atomically).
///
/// # Safety
/// `s` must point to a live `SEQS` map value.
#[inline(always)]
pub unsafe fn published(s: *const SeqSlot) -> (u64, u32) {
    // SAFETY: the caller guarantees `s` points into a live map value; both fields are
    // aligned (common asserts SeqSlot's offsets).
    unsafe {
        (
            load(&raw const (*s).mirror),
            (&raw const (*s).mirror_pid).read_volatile(),
        )
    }
}

/// A volatile load of a slot counter (single-copy atomic: aligned u64).
///
/// # Safety
/// `counter` must point to an aligned u64 inside a live map value.
#[inline(always)]
pub unsafe fn load(counter: *const u64) -> u64 {
    // SAFETY: the caller guarantees `counter` is a live, aligned u64.
    unsafe { counter.read_volatile() }
}

/// Reads a slot's sequence: `ends` first, then `begins` (see `SeqSlot`).
#[inline(always)]
pub fn read_seq(tgid: u32) -> u64 {
    let Some(s) = slot(tgid) else { return 1 };
    // The compiler keeps two volatile loads in order, and the CPUs BPF runs on (x86-64 here)
    // do not reorder loads with loads.
    // SAFETY: `s` points into a live map value for the whole program run; `ends` and
    // `begins` are aligned u64s.
    let (ends, begins) = unsafe { (load(&raw const (*s).ends), load(&raw const (*s).begins)) };
    seq_of(ends, begins)
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

/// Offset of the first u64 argument in a syscalls:sys_enter_* record.
const ARGS_OFFSET: usize = 16;
/// Offset of `ret` in a syscalls:sys_exit_* record.
const RET_OFFSET: usize = 16;

/// The first `N` arguments of a syscalls:sys_enter_* record (the rest zero), read directly
/// from the record (context loads the verifier bounds-checks) rather than through
/// bpf_probe_read_kernel: a helper call per argument was a large part of the tracker's cost.
#[inline(always)]
pub fn tracepoint_args<const N: usize>(ctx: &TracePointContext) -> [u64; 6] {
    let mut args = [0u64; 6];
    let base = ctx.as_ptr().cast::<u8>();
    let mut i = 0;
    while i < N && i < 6 {
        // SAFETY: the record holds the syscall's N u64 arguments from ARGS_OFFSET and the
        // context stays valid for the whole program run.
        args[i] = unsafe { base.add(ARGS_OFFSET + 8 * i).cast::<u64>().read() };
        i += 1;
    }
    args
}

/// The return value of a syscalls:sys_exit_* record.
#[inline(always)]
pub fn tracepoint_ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: every sys_exit record holds the return value at RET_OFFSET.
    unsafe {
        ctx.as_ptr()
            .cast::<u8>()
            .add(RET_OFFSET)
            .cast::<i64>()
            .read()
    }
}

/// Where the six syscall arguments start in the user `struct pt_regs` (x86-64): `r10` at
/// word 7, then r9, r8, ax, cx, dx, si, di — one read of these 8 words gives all six.
const PT_REGS_R10: usize = 7 * 8;

/// The arguments of the syscall whose `__x64_sys_*` function a kprobe fired on. Those
/// functions take the user registers (`const struct pt_regs *`) as their only argument; the
/// syscall's own arguments are in di, si, dx, r10, r8, r9.
#[inline(always)]
pub fn kprobe_syscall_args(ctx: &ProbeContext) -> [u64; 6] {
    let Some(regs) = ctx.arg::<u64>(0) else {
        return [0; 6];
    };
    // SAFETY: bpf_probe_read_kernel checks the address; a failed read gives zeros, which
    // describe no mapping (an exec mmap needs PROT_EXEC, a munmap a length).
    let w = unsafe { bpf_probe_read_kernel((regs as usize + PT_REGS_R10) as *const [u64; 8]) }
        .unwrap_or([0; 8]);
    // [r10, r9, r8, ax, cx, dx, si, di] → (di, si, dx, r10, r8, r9).
    [w[7], w[6], w[5], w[0], w[2], w[1]]
}

/// A thread's previous change never saw its exit (kprobe mode: a kretprobe that found no free
/// instance skips its handler; the syscall itself went on). The thread has left that syscall
/// — it is entering another one, or exiting — so the change is over: counted, the daemon told
/// that a report is missing (it stops trusting replayed pictures and rescans), and the slot
/// closed so it does not stay odd forever.
#[inline(always)]
pub fn close_missed_exit(tid: u32) {
    // SAFETY: a plain struct copied out at once.
    let Some(flight) = (unsafe { INFLIGHT.get(&tid) }).copied() else {
        return;
    };
    let _ = INFLIGHT.remove(&tid);
    count_error(ERR_EXIT_MISSED);
    report_lost();
    if let Some(s) = SEQS.get_ptr_mut(flight.slot) {
        // SAFETY: `s` points into a live SEQS map value; `ends` is an aligned u64 only
        // updated atomically.
        unsafe { bump(&raw mut (*s).ends) };
    }
}

/// A mapping-changing syscall begins: make the slot odd, take a ticket, remember the
/// arguments for the exit.
#[inline(always)]
pub fn syscall_enter(a: &[u64; 6], op: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if !(is_tracked(tgid) || (op == OP_MMAP && maps_probed_file(a))) {
        return;
    }
    close_missed_exit(tid);
    let index = seq_slot(tgid);
    let Some(s) = slot(tgid) else { return };
    // SAFETY: `s` points into a live SEQS map value; `begins` and `ends` are aligned u64s
    // only updated atomically.
    let (ticket, ends) = unsafe { (bump(&raw mut (*s).begins), load(&raw const (*s).ends)) };
    // Each op reads only the arguments its syscall has: the kernel refuses to attach a
    // program that reads past the end of a tracepoint's record.
    let args = match op {
        OP_MMAP | OP_MREMAP => [a[0], a[1], a[2], a[3]],
        OP_MUNMAP => [a[0], a[1], 0, 0],
        OP_MPROTECT => [a[0], a[1], a[2], 0],
        OP_BRK => {
            let (old, start) = heap_bounds();
            [a[0], old, start, 0]
        }
        _ => [0; 4],
    };
    // An executable mmap of a file: remember the file now, while the descriptor surely holds
    // it, in case the exit cannot read the new mapping. Other mmaps need no file identity
    // (the resolver keeps only executable file mappings).
    let (file, offset) = match (op, kread::offsets()) {
        (OP_MMAP, Some(o)) if args[3] & MAP_ANONYMOUS == 0 && args[2] & PROT_EXEC != 0 => {
            (kread::file_of_fd(o, a[4]), a[5])
        }
        (OP_MMAP, _) => (0, a[5]),
        _ => (0, 0),
    };
    let flight = InFlight {
        slot: index,
        op,
        ticket,
        overlap: u32::from(ends != ticket - 1),
        _reserved: 0,
        args,
        file,
        offset,
    };
    if INFLIGHT.insert(&tid, &flight, 0).is_err() {
        // Without the marker the exit cannot close the change, so the slot stays odd: the
        // daemon falls back to locked rescans for these pids instead of trusting a stale
        // snapshot. Counted so it is visible.
        count_error(ERR_INFLIGHT_FULL);
    }
}

/// Whether this mmap maps a probed file executable (a process that does so becomes tracked
/// from this change on; the daemon scans it when it sees the report).
#[inline(always)]
fn maps_probed_file(a: &[u64; 6]) -> bool {
    if a[3] & MAP_ANONYMOUS != 0 || a[2] & PROT_EXEC == 0 {
        return false;
    }
    let Some(o) = kread::offsets() else {
        return false;
    };
    let file = kread::file_of_fd(o, a[4]);
    if file == 0 {
        return false;
    }
    let (dev, ino) = kread::file_identity(o, file);
    // SAFETY: only the presence of the key is used.
    if unsafe { PROBED_FILES.get(&FileKey { dev, ino }) }.is_none() {
        return false;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    track(tgid);
    // Not tracked after all if the process is probed itself (self_filter.rs).
    is_tracked(tgid)
}

/// The heap's current end and start (`mm->brk`, `mm->start_brk`), or zeros.
#[inline(always)]
fn heap_bounds() -> (u64, u64) {
    let Some(o) = kread::offsets() else {
        return (0, 0);
    };
    // SAFETY: bpf_get_current_task has no preconditions; the result is only used as an
    // address for bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let mm = kread::read_u64(task, o.task_mm);
    (
        kread::read_u64(mm, o.mm_brk),
        kread::read_u64(mm, o.mm_start_brk),
    )
}

/// What the find_vma callback fills in (on the BPF stack, as the helper requires).
#[repr(C)]
struct VmaCtx {
    vma: VmaInfo,
    name: [u8; NAME_LEN],
    /// The mapping's `struct file` (0 if anonymous), named after the callback returns.
    fptr: u64,
    file: u32,
    found: u32,
}

/// bpf_find_vma's callback: copies the mapping the kernel found.
extern "C" fn vma_callback(_task: *mut c_void, vma: *mut c_void, ctx: *mut c_void) -> i64 {
    let Some(o) = kread::offsets() else { return 0 };
    // SAFETY: `ctx` is the `VmaCtx` find_vma_at passed, alive on its stack for this call.
    let out = unsafe { &mut *ctx.cast::<VmaCtx>() };
    out.file = u32::from(kread::read_vma(o, vma as u64, &mut out.vma, &mut out.name));
    out.fptr = kread::read_u64(vma as u64, o.vma_file);
    out.found = 1;
    0
}

/// The mapping containing `addr` in the current process, if any.
#[inline(always)]
fn find_vma_at(addr: u64, out: &mut VmaCtx) -> bool {
    out.found = 0;
    // SAFETY: bpf_get_current_task_btf returns the current task, valid for this program run;
    // the callback is a static function and `out` a live stack object, as the helper needs.
    unsafe {
        let task = bpf_get_current_task_btf();
        bpf_find_vma(
            task,
            addr,
            vma_callback as *mut c_void,
            (out as *mut VmaCtx).cast::<c_void>(),
            0,
        );
    }
    out.found == 1
}

/// A mapping-changing syscall ends: report what changed, then close the change.
#[inline(always)]
pub fn syscall_exit(ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // SAFETY: a plain struct copied out at once.
    let Some(flight) = (unsafe { INFLIGHT.get(&tid) }).copied() else {
        return;
    };
    let _ = INFLIGHT.remove(&tid);
    let Some(s) = SEQS.get_ptr_mut(flight.slot) else {
        return;
    };
    // SAFETY: `s` points into a live SEQS map value; `begins` is an aligned u64.
    let begins_now = unsafe { load(&raw const (*s).begins) };
    let mut flags = if flight.overlap != 0 || begins_now != flight.ticket {
        CHANGE_OVERLAP
    } else {
        0
    };
    let mut found = new_vma_ctx();
    let ok = !(-4095..0).contains(&ret);
    // The kernel's own mapping is read (bpf_find_vma) only where its identity matters: an
    // executable file mmap (exact even on overlayfs, where the descriptor's file is not the
    // mapped one) and mremap (which has no descriptor). Anonymous and non-executable mmaps
    // are described from their arguments: cheaper, and exact for what the resolver keeps.
    let exec_file_mmap = flight.op == OP_MMAP
        && flight.args[3] & MAP_ANONYMOUS == 0
        && flight.args[2] & PROT_EXEC != 0;
    if ok && flight.op == OP_MMAP && !exec_file_mmap {
        flags |= CHANGE_VMA
            | CHANGE_VMA_FROM_ARGS
            | mapping_from_args(None, &flight, ret as u64, &mut found);
    } else if ok && (flight.op == OP_MMAP || flight.op == OP_MREMAP) {
        if find_vma_at(ret as u64, &mut found) {
            flags |= CHANGE_VMA;
            if found.file != 0 {
                flags |= CHANGE_VMA_FILE;
            }
        } else if flight.op == OP_MMAP
            && let Some(o) = kread::offsets()
        {
            flags |= CHANGE_VMA
                | CHANGE_VMA_FROM_ARGS
                | mapping_from_args(Some(o), &flight, ret as u64, &mut found);
        }
    } else if ret == 0 && flight.op == OP_MPROTECT && flight.args[2] & PROT_EXEC != 0 {
        // A mapping made executable may become one the resolver keeps, whose file the
        // picture does not know: report the mapping now at the range's start.
        if find_vma_at(flight.args[0], &mut found) {
            flags |= CHANGE_VMA;
            if found.file != 0 {
                flags |= CHANGE_VMA_FILE;
            }
        }
    }
    let ring = Ring::of(tgid);
    match ring.reserve::<ChangeEvent>() {
        Some((mut entry, wake)) => {
            let e = entry.as_mut_ptr();
            // Written in place: the event is too big to build on the BPF stack as well.
            // SAFETY: `e` points to a reserved, writable record of ChangeEvent's size.
            unsafe {
                (&raw mut (*e).event).write(EVENT_CHANGE);
                (&raw mut (*e).op).write(flight.op);
                (&raw mut (*e).pid).write(tgid);
                (&raw mut (*e).tid).write(tid);
                (&raw mut (*e).ticket).write(flight.ticket);
                (&raw mut (*e).proc_gen).write(generation(tgid));
                (&raw mut (*e).ts_ns).write(bpf_ktime_get_ns());
                (&raw mut (*e).ret).write(ret);
                (&raw mut (*e).args).write(flight.args);
                (&raw mut (*e).flags).write(flags);
                (&raw mut (*e).lost_reports).write(lost_reports());
                (&raw mut (*e).vma).write(found.vma);
                (&raw mut (*e).name).write(found.name);
                // The file's name now, while it is the file mapped there (see path.rs).
                path::read_file_path(found.fptr, &raw mut (*e).path);
            }
            entry.submit(wake);
        }
        // The daemon sees the counter move and stops trusting replayed pictures.
        None => report_lost(),
    }
    // After the report: a hit that sees this change completed is reserved after it.
    // SAFETY: `s` points into a live SEQS map value; `ends` is an aligned u64 only updated
    // atomically.
    unsafe { bump(&raw mut (*s).ends) };
}

/// Lock mode: a write section of `tgid`'s address space ended (see lock.rs): reports it as a
/// change the daemon cannot replay (it rescans), then closes it (`ends`), in that order, as
/// a syscall exit does.
///
/// # Safety
/// `s` must point to a live `SEQS` map value.
#[inline(always)]
pub unsafe fn report_rescan(tgid: u32, tid: u32, ticket: u64, s: *mut SeqSlot) {
    let ring = Ring::of(tgid);
    match ring.reserve::<probed_common::LockChangeEvent>() {
        Some((mut entry, wake)) => {
            entry.write(probed_common::LockChangeEvent {
                event: probed_common::EVENT_LOCK_CHANGE,
                pid: tgid,
                tid,
                lost_reports: lost_reports(),
                ticket,
                proc_gen: generation(tgid),
                // SAFETY: no preconditions.
                ts_ns: unsafe { bpf_ktime_get_ns() },
            });
            entry.submit(wake);
        }
        None => report_lost(),
    }
    // SAFETY: the caller guarantees `s` points into a live SEQS map value; `ends` is an
    // aligned u64 only updated atomically.
    unsafe { bump(&raw mut (*s).ends) };
}

/// Describes an mmap's mapping from its arguments and, if known, the file behind its
/// descriptor; returns `CHANGE_VMA_FILE` if it is file-backed. A file mapping whose file was
/// not read (not executable) is reported file-backed with dev = ino = 0.
#[inline(always)]
fn mapping_from_args(
    o: Option<&KernelOffsets>,
    flight: &InFlight,
    addr: u64,
    out: &mut VmaCtx,
) -> u32 {
    let [_, len, prot, mflags] = flight.args;
    out.vma.start = addr;
    out.vma.end = addr + ((len + (PAGE_SIZE - 1)) & !(PAGE_SIZE - 1));
    out.vma.pgoff = flight.offset >> PAGE_SHIFT;
    // PROT_READ/WRITE/EXEC are VM_READ/WRITE/EXEC; MAP_SHARED(_VALIDATE) is VM_SHARED.
    let mut vm = prot & (VM_READ | VM_WRITE | VM_EXEC);
    if mflags & 3 == MAP_SHARED || mflags & 3 == MAP_SHARED_VALIDATE {
        vm |= VM_SHARED;
    }
    if mflags & MAP_HUGETLB != 0 {
        vm |= VM_HUGETLB;
    }
    out.vma.flags = vm;
    if mflags & MAP_ANONYMOUS != 0 {
        return 0;
    }
    if let Some(o) = o {
        kread::read_file(o, flight.file, &mut out.vma, &mut out.name);
        out.fptr = flight.file;
    }
    CHANGE_VMA_FILE
}

/// A whole-address-space event (exec, exit): one complete change; returns its slot (null if
/// none) and its ticket.
#[inline(always)]
fn instant_change(tgid: u32) -> (*mut SeqSlot, u64) {
    match slot(tgid) {
        // SAFETY: `s` points into a live SEQS map value; `begins` is an aligned u64 only
        // updated atomically.
        Some(s) => (s, unsafe { bump(&raw mut (*s).begins) }),
        None => (core::ptr::null_mut(), 0),
    }
}

/// Ends the change [`instant_change`] began.
///
/// # Safety
/// `s` must be null or point to a live `SEQS` map value (what `instant_change` returns).
#[inline(always)]
unsafe fn finish_instant(s: *mut SeqSlot) {
    if !s.is_null() {
        // SAFETY: the caller guarantees a non-null `s` points into a live SEQS map value;
        // `ends` is an aligned u64 only updated atomically.
        unsafe { bump(&raw mut (*s).ends) };
    }
}

/// sched_process_exec: a new address space, so a new generation; reports the new program's
/// text mapping and the mapping of its first instruction (the dynamic loader), the two
/// executable file mappings the kernel creates without an mmap syscall.
#[inline(always)]
pub fn exec() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // SAFETY: no preconditions.
    let fresh = unsafe { bpf_ktime_get_ns() };
    let _ = PROC_GEN.insert(&tgid, &fresh, 0);
    let Some(o) = kread::offsets() else {
        if is_tracked(tgid) {
            let (s, ticket) = instant_change(tgid);
            emit_exec(tgid, tid, fresh, ticket, None, None);
            // SAFETY: `s` is what `instant_change` returned.
            unsafe { finish_instant(s) };
        }
        return;
    };
    let (start_code, ip) = exec_addresses(o);
    let mut exe = new_vma_ctx();
    let have_exe = find_vma_at(start_code, &mut exe);
    // A new program that is probed is tracked from its first instruction; a tracked process
    // stays tracked across exec.
    if have_exe && is_probed_file(&exe.vma, exe.fptr) {
        track(tgid);
    }
    if !is_tracked(tgid) {
        return;
    }
    let (s, ticket) = instant_change(tgid);
    emit_exec(tgid, tid, fresh, ticket, have_exe.then_some(&exe), Some(ip));
    // SAFETY: `s` is what `instant_change` returned.
    unsafe { finish_instant(s) };
    // A tracked process that became probed (a traced shell running `probed ctl`): its old
    // address space ends with this report, and the new one is not tracked.
    if crate::self_filter::is_probed(tgid) {
        let _ = TRACKED.remove(&tgid);
    }
}

/// Reports an exec: the program's text mapping (`exe`) and the mapping holding `ip`.
#[inline(always)]
fn emit_exec(
    tgid: u32,
    tid: u32,
    proc_gen: u64,
    ticket: u64,
    exe: Option<&VmaCtx>,
    ip: Option<u64>,
) {
    let ring = Ring::of(tgid);
    let Some((mut entry, wake)) = ring.reserve::<ProcEvent>() else {
        report_lost();
        return;
    };
    let e = entry.as_mut_ptr();
    // Fields are written in place: the event is too big for the 512-byte BPF stack.
    // SAFETY: `e` points to a reserved, writable ring buffer record of ProcEvent's size.
    unsafe {
        write_proc_header(e, PROC_EXEC, tgid, tid, proc_gen, ticket);
        (&raw mut (*e).flags).write(0);
        (&raw mut (*e).exe).write(VmaInfo::default());
        (&raw mut (*e).entry).write(VmaInfo::default());
        (&raw mut (*e).exe_name).write([0; NAME_LEN]);
        (&raw mut (*e).entry_name).write([0; NAME_LEN]);
    }
    if let (Some(exe), Some(ip)) = (exe, ip) {
        // SAFETY: as above.
        unsafe {
            (&raw mut (*e).exe).write(exe.vma);
            (&raw mut (*e).exe_name).write(exe.name);
            path::read_file_path(exe.fptr, &raw mut (*e).exe_path);
        }
        let mut found = new_vma_ctx();
        if find_vma_at(ip, &mut found) {
            // SAFETY: as above.
            unsafe {
                (&raw mut (*e).entry).write(found.vma);
                (&raw mut (*e).entry_name).write(found.name);
                path::read_file_path(found.fptr, &raw mut (*e).entry_path);
                (&raw mut (*e).flags).write(CHANGE_VMA);
            }
        }
    }
    entry.submit(wake);
}

#[inline(always)]
fn new_vma_ctx() -> VmaCtx {
    VmaCtx {
        vma: VmaInfo::default(),
        name: [0; NAME_LEN],
        fptr: 0,
        file: 0,
        found: 0,
    }
}

/// Writes the fields every ProcEvent has.
///
/// # Safety
/// `e` must point to writable memory of ProcEvent's size.
#[inline(always)]
unsafe fn write_proc_header(
    e: *mut ProcEvent,
    what: u32,
    tgid: u32,
    tid: u32,
    proc_gen: u64,
    ticket: u64,
) {
    // SAFETY: the caller guarantees `e` is writable; every write stays inside it.
    unsafe {
        (&raw mut (*e).event).write(EVENT_PROC);
        (&raw mut (*e).what).write(what);
        (&raw mut (*e).pid).write(tgid);
        (&raw mut (*e).tid).write(tid);
        (&raw mut (*e).ts_ns).write(bpf_ktime_get_ns());
        (&raw mut (*e).proc_gen).write(proc_gen);
        (&raw mut (*e).seq).write(stable_seq(ticket));
        (&raw mut (*e).ticket).write(ticket);
        (&raw mut (*e).comm).write(bpf_get_current_comm().unwrap_or([0; 16]));
        (&raw mut (*e).parent_pid).write(0);
        (&raw mut (*e)._reserved).write(0);
        (&raw mut (*e).parent_gen).write(0);
        (&raw mut (*e).parent_seq).write(0);
        (&raw mut (*e).lost_reports).write(lost_reports());
        // No paths unless the event fills them (exec).
        path::read_file_path(0, &raw mut (*e).exe_path);
        path::read_file_path(0, &raw mut (*e).entry_path);
    }
}

/// `mm->start_code` and the user instruction pointer of the current task.
#[inline(always)]
fn exec_addresses(o: &KernelOffsets) -> (u64, u64) {
    // SAFETY: bpf_get_current_task has no preconditions; used only as an address to read.
    let task = unsafe { bpf_get_current_task() };
    let mm = kread::read_u64(task, o.task_mm);
    let start_code = kread::read_u64(mm, o.mm_start_code);
    // SAFETY: bpf_get_current_task_btf returns the current task; bpf_task_pt_regs returns its
    // user register frame, read here only through bpf_probe_read_kernel.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let ip = kread::read_u64(regs, core::mem::offset_of!(pt_regs, rip) as u32);
    (start_code, ip)
}

/// sched_process_exit: when the last thread goes, the process (and its generation) ends.
#[inline(always)]
pub fn exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // A thread that leaves with a change still open lost its exit (see close_missed_exit).
    close_missed_exit(tid);
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
    process_exit(tgid, tid);
    // After its exit report: every record of the process went to its ring.
    crate::ring::forget(tgid);
}

/// [`exit`] of a whole process: its report, if it is tracked.
#[inline(always)]
fn process_exit(tgid: u32, tid: u32) {
    // SAFETY: a plain u64 copied out at once.
    let Some(gen_) = (unsafe { PROC_GEN.get(&tgid) }).copied() else {
        let _ = TRACKED.remove(&tgid);
        return;
    };
    let _ = PROC_GEN.remove(&tgid);
    if !is_tracked(tgid) {
        return;
    }
    let _ = TRACKED.remove(&tgid);
    let (s, ticket) = instant_change(tgid);
    let ring = Ring::of(tgid);
    if let Some((mut entry, wake)) = ring.reserve::<ProcEvent>() {
        let e = entry.as_mut_ptr();
        // SAFETY: `e` points to a reserved, writable ring buffer record of ProcEvent's size.
        unsafe {
            write_proc_header(e, PROC_EXIT, tgid, tid, gen_, ticket);
            (&raw mut (*e).flags).write(0);
            (&raw mut (*e).exe).write(VmaInfo::default());
            (&raw mut (*e).entry).write(VmaInfo::default());
            (&raw mut (*e).exe_name).write([0; NAME_LEN]);
            (&raw mut (*e).entry_name).write([0; NAME_LEN]);
        }
        entry.submit(wake);
    } else {
        report_lost();
    }
    // SAFETY: `s` is what `instant_change` returned.
    unsafe { finish_instant(s) };
}

/// sched_process_fork (raw tracepoint; args: parent task, child task): a new process starts
/// with a copy of its parent's address space. Threads are ignored (they share the process's
/// address space and slot).
#[inline(always)]
pub fn fork(parent_task: u64, child_task: u64) {
    let Some(o) = kread::offsets() else { return };
    let child_pid = kread::read_u32(child_task, o.task_pid);
    let child_tgid = kread::read_u32(child_task, o.task_tgid);
    if child_pid == 0 || child_pid != child_tgid {
        return;
    }
    let parent_tgid = kread::read_u32(parent_task, o.task_tgid);
    if !is_tracked(parent_tgid) {
        return;
    }
    track(child_tgid);
    let parent_gen = generation(parent_tgid);
    let parent_seq = read_seq(parent_tgid);
    // SAFETY: no preconditions.
    let fresh = unsafe { bpf_ktime_get_ns() };
    let _ = PROC_GEN.insert(&child_tgid, &fresh, 0);
    let (s, ticket) = instant_change(child_tgid);
    // The child's ring: its first record, before any of its hits.
    let ring = Ring::of(child_tgid);
    if let Some((mut entry, wake)) = ring.reserve::<ProcEvent>() {
        let e = entry.as_mut_ptr();
        // SAFETY: `e` points to a reserved, writable ring buffer record of ProcEvent's size.
        unsafe {
            write_proc_header(e, PROC_FORK, child_tgid, child_pid, fresh, ticket);
            (&raw mut (*e).flags).write(0);
            (&raw mut (*e).exe).write(VmaInfo::default());
            (&raw mut (*e).entry).write(VmaInfo::default());
            (&raw mut (*e).exe_name).write([0; NAME_LEN]);
            (&raw mut (*e).entry_name).write([0; NAME_LEN]);
            (&raw mut (*e).parent_pid).write(parent_tgid);
            (&raw mut (*e).parent_gen).write(parent_gen);
            (&raw mut (*e).parent_seq).write(parent_seq);
        }
        entry.submit(wake);
    } else {
        report_lost();
    }
    // SAFETY: `s` is what `instant_change` returned.
    unsafe { finish_instant(s) };
}
