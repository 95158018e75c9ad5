//! Lock and kseq modes: hits capture what the daemon cannot otherwise answer.
//!
//! Kseq mode (kseq.rs) captures every address no capture at the hit's counter value holds,
//! marks a capture validated at that value `CAPTURE_FOUND_AT_SEQ` and puts it in the cache
//! after its record is submitted; a stack frame the cache holds is `CAPTURE_CACHED`.
//!
//! The lock tracker (lock.rs) says *that* a process's mappings changed, not *what* changed.
//! The daemon rescans a changed process and publishes the sequence of the picture it holds
//! (`SeqSlot::mirror`, `mirror_pid`). A hit stamped with exactly that sequence is recorded
//! as in syscall mode: the daemon has the picture of its time. Any other hit carries, for its
//! address and each frame of its user stack, the mapping the kernel has at the hit
//! (`bpf_find_vma`: start, pgoff, flags, file identity), and a file the daemon may not know
//! is named first, in its own record (`FileNameEvent`), once (`KNOWN_FILES`).
//!
//! `bpf_find_vma` only try-locks the address space: while another thread of the process
//! holds it for writing, the capture fails (`CAPTURE_FAILED`) and the daemon counts the
//! address under a named reason; it never guesses.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::generated::{
        bpf_find_vma, bpf_get_current_task_btf, bpf_get_stack, bpf_loop, bpf_probe_read_kernel,
    },
};
use probed_common::{
    CAPTURE_CACHED, CAPTURE_FAILED, CAPTURE_FOUND, CAPTURE_FOUND_AT_SEQ, CAPTURE_UNMAPPED,
    CapturedHitEvent, CapturedStackEvent, EVENT_CAPTURED_HIT, EVENT_CAPTURED_STACK,
    EVENT_FILE_NAME, EVENT_STACK_HIT, FileKey, HitEvent, MAX_FRAMES, ProbeStats, StackHitEvent,
    TRACK_MODE_LOCK, VmaInfo,
};

use crate::{
    kread,
    kseq::{self, Kseq},
    maps::{CAPTURE_SCRATCH, KNOWN_FILES, NAME_SCRATCH, PROBE_STATS, TRACK_MODE},
    path,
    ring::{self, Ring},
    track,
};

/// `-ENOENT` from bpf_find_vma: no mapping contains the address.
const ENOENT: i64 = -2;

/// Whether a hit of `tgid` stamped `seq` must capture its mappings: lock mode, and the
/// daemon's published picture of this process is not at `seq`.
#[inline(always)]
pub fn needed(tgid: u32, seq: u64) -> bool {
    if TRACK_MODE.get(0).copied().unwrap_or(0) != TRACK_MODE_LOCK {
        return false;
    }
    let Some(s) = track::slot(tgid) else {
        return true;
    };
    // SAFETY: `s` points into a live SEQS map value.
    let published = unsafe { track::published(s) };
    published != (seq, tgid)
}

/// What the capture callback fills in (on the BPF stack, as bpf_find_vma requires). Smaller
/// than the tracker's `VmaCtx` (no name: a `FileNameEvent` carries the full path), because
/// a stack capture runs deep in a call chain the verifier bounds to 512 bytes of stack.
#[repr(C)]
struct CaptureCtx {
    vma: VmaInfo,
    /// The mapping's `struct file`, 0 if anonymous.
    fptr: u64,
    /// 1: found; 2: found, and the address space's counter read `want` (kseq mode).
    found: u64,
    /// Kseq mode: where the address space's counter is (0 otherwise), and the hit's value.
    seq_addr: u64,
    want: u64,
}

/// bpf_find_vma's callback for captures.
extern "C" fn capture_callback(_task: *mut c_void, vma: *mut c_void, ctx: *mut c_void) -> i64 {
    let Some(o) = kread::offsets() else { return 0 };
    // SAFETY: `ctx` is the `CaptureCtx` capture() passed, alive on its stack for this call.
    let out = unsafe { &mut *ctx.cast::<CaptureCtx>() };
    let vma = vma as u64;
    kread::read_vma_range(o, vma, &mut out.vma);
    out.fptr = kread::read_u64(vma, o.vma_file);
    if out.fptr != 0 {
        let (dev, ino) = kread::file_identity(o, out.fptr);
        out.vma.dev = dev;
        out.vma.ino = ino;
    }
    // bpf_find_vma holds the address space's lock for reading here, so no write section is
    // open and the counter cannot move: if it still reads the hit's value, this is the
    // mapping of the hit's sequence.
    out.found = if out.seq_addr != 0 && u64::from(kread::read_u32(out.seq_addr, 0)) == out.want {
        2
    } else {
        1
    };
    0
}

/// Reads the mapping at `addr` into `vma`; names its file first if the daemon may not know
/// it. Returns a `CAPTURE_*` status. `seq_addr`, `want`: kseq mode's counter address and the
/// hit's value (`CAPTURE_FOUND_AT_SEQ` if it still reads that), 0 otherwise.
#[inline(never)]
fn capture(addr: u64, vma: &mut VmaInfo, seq_addr: u64, want: u64) -> u8 {
    let mut found = CaptureCtx {
        vma: VmaInfo::default(),
        fptr: 0,
        found: 0,
        seq_addr,
        want,
    };
    // SAFETY: bpf_get_current_task_btf returns the current task, valid for this program run;
    // the callback is a static function and `found` a live stack object, as the helper needs.
    let rc = unsafe {
        bpf_find_vma(
            bpf_get_current_task_btf(),
            addr,
            capture_callback as *mut c_void,
            (&raw mut found).cast::<c_void>(),
            0,
        )
    };
    if rc == ENOENT {
        return CAPTURE_UNMAPPED;
    }
    if rc != 0 || (found.found != 1 && found.found != 2) {
        return CAPTURE_FAILED;
    }
    *vma = found.vma;
    if found.fptr != 0 && vma.ino != 0 {
        name_file(&found.vma, found.fptr);
    }
    if found.found == 2 {
        CAPTURE_FOUND_AT_SEQ
    } else {
        CAPTURE_FOUND
    }
}

/// Writes a `FileNameEvent` for the file `fptr` (mapped as `vma`) to every ring in use
/// unless it is known. Marked known only once every ring has it, and after: a capture that
/// finds it known (and so names no file) comes after the name in whichever ring it goes to.
/// The record is built once in this CPU's scratch and copied into each ring
/// (`bpf_ringbuf_output`): one path walk, and one verification of it.
#[inline(never)]
fn name_file(vma: &VmaInfo, fptr: u64) {
    let key = FileKey {
        dev: vma.dev,
        ino: vma.ino,
    };
    // SAFETY: only the presence of the key is used.
    if unsafe { KNOWN_FILES.get(&key) }.is_some() {
        return;
    }
    let Some(e) = NAME_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `e` is this CPU's map value, only ours while the program runs.
    unsafe {
        (&raw mut (*e).event).write(EVENT_FILE_NAME);
        (&raw mut (*e)._reserved).write(0);
        (&raw mut (*e).vma).write(*vma);
        (&raw mut (*e).name).write([0; probed_common::NAME_LEN]);
        path::read_file_path(fptr, &raw mut (*e).path);
    }
    // One ring at a time in a bpf_loop callback, verified once: a loop here with a count
    // of the rings that took it made the verifier walk every count (1M instructions).
    let mut missed: u64 = 0;
    // SAFETY: the callback is a static function and `missed` a live stack object, as the
    // helper needs.
    unsafe {
        bpf_loop(
            ring::count(),
            name_in_ring as *mut c_void,
            (&raw mut missed).cast::<c_void>(),
            0,
        );
    }
    // A full ring: not marked known, the next capture tries again (the daemon names the
    // file by identity if it can meanwhile, else counts the frame `unnamed`).
    if missed == 0 {
        let _ = KNOWN_FILES.insert(&key, &1, 0);
    }
}

/// bpf_loop's callback: copies this CPU's file name record into ring `index`; sets the u64
/// at `ctx` (on the caller's stack) to 1 if that ring is full.
extern "C" fn name_in_ring(index: u64, ctx: *mut c_void) -> i64 {
    let Some(e) = NAME_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's map value, filled by name_file; read only here.
    if !ring::output_at(index as u32, unsafe { &*e }) {
        // SAFETY: `ctx` is the caller's live u64 (name_file).
        unsafe { *ctx.cast::<u64>() = 1 };
    }
    0
}

/// Parks `hit` in this CPU's scratch for [`record_pending`]; returns true if it could.
/// `mm`: kseq mode's address space of the hit (its counter value is `hit.seq`), else 0.
#[inline(always)]
pub fn park(hit: &HitEvent, mm: u64) -> bool {
    let Some(scratch) = CAPTURE_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's map value, only ours while the program runs.
    unsafe {
        (&raw mut (*scratch).hit).write(*hit);
        (&raw mut (*scratch).mm).write(mm);
    }
    true
}

/// Kseq mode's context of the parked hit: (tgid, address space and counter), if any.
#[inline(always)]
fn parked_kseq() -> Option<(u32, Kseq)> {
    let scratch = CAPTURE_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's map value, written by `park` in this program run.
    let (mm, tgid, seq) = unsafe { ((*scratch).mm, (*scratch).hit.pid, (*scratch).hit.seq) };
    (mm != 0).then_some((tgid, Kseq { mm, seq }))
}

/// `capture` with the parked hit's kseq context.
#[inline(always)]
fn capture_parked(addr: u64, vma: &mut VmaInfo) -> u8 {
    match parked_kseq() {
        Some((_, k)) => capture(addr, vma, kseq::counter_addr(k.mm), k.seq),
        None => capture(addr, vma, 0, 0),
    }
}

/// Records the hit [`park`] left in this CPU's scratch, with its captures. Called by the
/// entry points after `hit::record_*` returned (see there why).
#[inline(never)]
pub fn record_pending(ctx: *mut c_void) {
    let Some(scratch) = CAPTURE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's map value; `hit` was written by `park` in this program run.
    let hit = unsafe { &(*scratch).hit };
    let Some(stats) = PROBE_STATS.get_ptr_mut(hit.probe_id) else {
        return;
    };
    let with_stack = hit.event == probed_common::EVENT_STACK_HIT;
    if with_stack {
        record_stack(ctx, hit, stats);
    } else {
        record_hit(hit, stats);
    }
}

/// Records a hit with the mapping of its address.
#[inline(never)]
fn record_hit(hit: &HitEvent, stats: *mut ProbeStats) {
    let mut vma = VmaInfo::default();
    let status = capture_parked(hit.ip, &mut vma);
    let ring = Ring::of(hit.pid);
    let Some((mut entry, wake)) = ring.reserve::<CapturedHitEvent>() else {
        // SAFETY: a per-CPU array slot, this CPU's only writer while the program runs.
        unsafe { (*stats).lost += 1 };
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to a reserved, writable record of CapturedHitEvent's size.
    unsafe {
        (&raw mut (*e).hit).write(*hit);
        (&raw mut (*e).hit.event).write(EVENT_CAPTURED_HIT);
        (&raw mut (*e).status).write(u32::from(status));
        (&raw mut (*e)._reserved).write(0);
        (&raw mut (*e).vma).write(vma);
    }
    entry.submit(wake);
    // Only now, behind the record the daemon will answer from (kseq.rs).
    if status == CAPTURE_FOUND_AT_SEQ
        && let Some((tgid, k)) = parked_kseq()
    {
        kseq::remember(tgid, k, vma.start, vma.end);
    }
}

/// Captures one address of the parked hit into `status`/`vma`, or, in kseq mode, marks it
/// `CAPTURE_CACHED` when a capture of the hit's sequence holds it. Returns 1 if captured.
#[inline(always)]
fn capture_or_cached(addr: u64, status: &mut u8, vma: &mut VmaInfo) -> u64 {
    if let Some((tgid, k)) = parked_kseq()
        && kseq::cached(tgid, k, addr)
    {
        *status = CAPTURE_CACHED;
        *vma = VmaInfo::default();
        return 0;
    }
    *status = capture_parked(addr, vma);
    1
}

/// bpf_loop's callback: captures frame `index` of the per-CPU scratch. `ctx` points to a u64
/// on the caller's stack: 1 if the innermost frame is a return address too (return probes).
/// Addresses captured (not answered by kseq mode's cache) are counted in the scratch's
/// `uncached`: in map memory, not on the stack, because the verifier would track a stack
/// counter's every value through the loop and the capture (too many states to verify).
extern "C" fn capture_frame(index: u64, ctx: *mut c_void) -> i64 {
    let i = index as usize;
    if i >= MAX_FRAMES {
        return 1;
    }
    let Some(scratch) = CAPTURE_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: `scratch` is this CPU's map value, alive and only ours while the program runs;
    // `i` is below every array's length; `ctx` is record_stack's u64, alive for the loop.
    unsafe {
        let addr = (*scratch).frames[i];
        // Return addresses are looked up one byte back, as the daemon does (a call at the
        // very end of a mapping returns to the first byte after it).
        let back = u64::from(i > 0 || *ctx.cast::<u64>() != 0);
        let mut vma = VmaInfo::default();
        let mut status = CAPTURE_FAILED;
        (*scratch).uncached += capture_or_cached(addr.wrapping_sub(back), &mut status, &mut vma);
        (*scratch).status[i] = status;
        (*scratch).vmas[i] = vma;
    }
    0
}

/// bpf_loop's callback, kseq mode, after the record is submitted: puts frame `index`'s
/// capture in the cache if it was taken at the hit's sequence.
extern "C" fn remember_frame(index: u64, _ctx: *mut c_void) -> i64 {
    let i = index as usize;
    if i > MAX_FRAMES {
        return 1;
    }
    let Some(scratch) = CAPTURE_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let Some((tgid, k)) = parked_kseq() else {
        return 1;
    };
    // SAFETY: as in capture_frame; `i` is at most MAX_FRAMES, the arrays' last index.
    unsafe {
        if (*scratch).status[i] == CAPTURE_FOUND_AT_SEQ {
            let (start, end) = ((*scratch).vmas[i].start, (*scratch).vmas[i].end);
            if !kseq::cached(tgid, k, start) {
                kseq::remember(tgid, k, start, end);
            }
        }
    }
    0
}

/// Records a hit with its user stack and the mapping of every frame (and of `ret_addr`, the
/// caller's return address an entry probe reads from the top of the stack).
#[inline(never)]
fn record_stack(ctx: *mut c_void, hit: &HitEvent, stats: *mut ProbeStats) {
    let Some(scratch) = CAPTURE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `scratch` is this CPU's map value (see capture_frame); bpf_get_stack writes at
    // most the frames array's size into it.
    let got = unsafe {
        bpf_get_stack(
            ctx,
            (&raw mut (*scratch).frames).cast::<c_void>(),
            (MAX_FRAMES * 8) as u32,
            BPF_F_USER_STACK as u64,
        )
    };
    let n = if got > 0 {
        ((got as u64 / 8) as u32).min(MAX_FRAMES as u32)
    } else {
        0
    };
    let mut is_return: u64 = u64::from(hit.kind == probed_common::KIND_RETURN);
    // SAFETY: this CPU's scratch (see above); then a static callback and a context on this
    // stack, alive for the whole loop.
    unsafe {
        (*scratch).uncached = 0;
        bpf_loop(
            n,
            capture_frame as *mut c_void,
            (&raw mut is_return).cast::<c_void>(),
            0,
        );
    }
    // The extra capture: a return probe's function address (its frame 0 is the return
    // address), or an entry probe's caller return address read from the top of the stack.
    let extra = if hit.kind == probed_common::KIND_RETURN {
        hit.ip
    } else {
        hit.ret_addr.wrapping_sub(1)
    };
    if hit.kind == probed_common::KIND_RETURN || hit.ret_addr != 0 {
        let mut vma = VmaInfo::default();
        let mut status = CAPTURE_FAILED;
        let captured = capture_or_cached(extra, &mut status, &mut vma);
        // SAFETY: as above; MAX_FRAMES is the last index of both arrays.
        unsafe {
            (*scratch).uncached += captured;
            (*scratch).status[MAX_FRAMES] = status;
            (*scratch).vmas[MAX_FRAMES] = vma;
        }
    } else {
        // SAFETY: as above.
        unsafe { (*scratch).status[MAX_FRAMES] = CAPTURE_FAILED };
    }
    // SAFETY: as above.
    if unsafe { (*scratch).uncached } == 0 && parked_kseq().is_some() {
        // Kseq mode, every address held by a capture of this sequence: the plain record
        // (1 KiB instead of 7.5), which the daemon answers from those captures.
        record_plain_stack(hit, n, stats);
        return;
    }
    let ring = Ring::of(hit.pid);
    let Some((mut entry, wake)) = ring.reserve::<CapturedStackEvent>() else {
        // SAFETY: a per-CPU array slot, this CPU's only writer while the program runs.
        unsafe { (*stats).lost += 1 };
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to a reserved, writable record of CapturedStackEvent's size; the
    // copies read this CPU's scratch value (kernel memory) of the same sizes.
    unsafe {
        (&raw mut (*e).stack.hit).write(*hit);
        (&raw mut (*e).stack.hit.event).write(EVENT_CAPTURED_STACK);
        (&raw mut (*e).stack.nframes).write(n);
        (&raw mut (*e).stack._reserved).write(0);
        bpf_probe_read_kernel(
            (&raw mut (*e).stack.frames).cast::<c_void>(),
            (MAX_FRAMES * 8) as u32,
            (&raw const (*scratch).frames).cast::<c_void>(),
        );
        bpf_probe_read_kernel(
            (&raw mut (*e).status).cast::<c_void>(),
            (MAX_FRAMES + 1) as u32,
            (&raw const (*scratch).status).cast::<c_void>(),
        );
        bpf_probe_read_kernel(
            (&raw mut (*e).vmas).cast::<c_void>(),
            ((MAX_FRAMES + 1) * core::mem::size_of::<VmaInfo>()) as u32,
            (&raw const (*scratch).vmas).cast::<c_void>(),
        );
    }
    entry.submit(wake);
    if parked_kseq().is_some() {
        // Only now, behind the record the daemon will answer from (kseq.rs).
        // SAFETY: a static callback without context.
        unsafe {
            bpf_loop(n, remember_frame as *mut c_void, core::ptr::null_mut(), 0);
        }
        remember_frame(MAX_FRAMES as u64, core::ptr::null_mut());
    }
}

/// Kseq mode: records a stack hit whose every address a capture of its sequence holds as
/// the plain `StackHitEvent`, frames copied from this CPU's scratch.
#[inline(never)]
fn record_plain_stack(hit: &HitEvent, n: u32, stats: *mut ProbeStats) {
    let Some(scratch) = CAPTURE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let ring = Ring::of(hit.pid);
    let Some((mut entry, wake)) = ring.reserve::<StackHitEvent>() else {
        // SAFETY: a per-CPU array slot, this CPU's only writer while the program runs.
        unsafe { (*stats).lost += 1 };
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to a reserved, writable record of StackHitEvent's size; the copy
    // reads this CPU's scratch frames (kernel memory) of the same size.
    unsafe {
        (&raw mut (*e).hit).write(*hit);
        (&raw mut (*e).hit.event).write(EVENT_STACK_HIT);
        (&raw mut (*e).nframes).write(n);
        (&raw mut (*e)._reserved).write(0);
        bpf_probe_read_kernel(
            (&raw mut (*e).frames).cast::<c_void>(),
            (MAX_FRAMES * 8) as u32,
            (&raw const (*scratch).frames).cast::<c_void>(),
        );
    }
    entry.submit(wake);
}
