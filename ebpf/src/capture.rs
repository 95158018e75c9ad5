//! Lock mode: hits capture what the daemon's picture cannot answer.
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
    CAPTURE_FAILED, CAPTURE_FOUND, CAPTURE_UNMAPPED, CapturedHitEvent, CapturedStackEvent,
    EVENT_CAPTURED_HIT, EVENT_CAPTURED_STACK, EVENT_FILE_NAME, FileKey, FileNameEvent, HitEvent,
    MAX_FRAMES, ProbeStats, TRACK_MODE_LOCK, VmaInfo,
};

use crate::{
    kread,
    maps::{CAPTURE_SCRATCH, EVENTS, KNOWN_FILES, PROBE_STATS, TRACK_MODE, wakeup},
    path, track,
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
    found: u64,
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
    out.found = 1;
    0
}

/// Reads the mapping at `addr` into `vma`; names its file first if the daemon may not know
/// it. Returns a `CAPTURE_*` status.
#[inline(never)]
fn capture(addr: u64, vma: &mut VmaInfo) -> u8 {
    let mut found = CaptureCtx {
        vma: VmaInfo::default(),
        fptr: 0,
        found: 0,
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
    if rc != 0 || found.found != 1 {
        return CAPTURE_FAILED;
    }
    *vma = found.vma;
    if found.fptr != 0 && vma.ino != 0 {
        name_file(&found.vma, found.fptr);
    }
    CAPTURE_FOUND
}

/// Writes a `FileNameEvent` for the file `fptr` (mapped as `vma`) unless it is known.
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
    let Some(mut entry) = EVENTS.reserve::<FileNameEvent>(0) else {
        // Not marked known: the next capture tries again. The daemon names it by identity
        // if it can, else counts the frame `unnamed`.
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to a reserved, writable record of FileNameEvent's size.
    unsafe {
        (&raw mut (*e).event).write(EVENT_FILE_NAME);
        (&raw mut (*e)._reserved).write(0);
        (&raw mut (*e).vma).write(*vma);
        (&raw mut (*e).name).write([0; probed_common::NAME_LEN]);
        path::read_file_path(fptr, &raw mut (*e).path);
    }
    entry.submit(wakeup::flags());
    let _ = KNOWN_FILES.insert(&key, &1, 0);
}

/// Parks `hit` in this CPU's scratch for [`record_pending`]; returns true if it could.
#[inline(always)]
pub fn park(hit: &HitEvent) -> bool {
    let Some(scratch) = CAPTURE_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's map value, only ours while the program runs.
    unsafe { (&raw mut (*scratch).hit).write(*hit) };
    true
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
    let status = capture(hit.ip, &mut vma);
    let Some(mut entry) = EVENTS.reserve::<CapturedHitEvent>(0) else {
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
    entry.submit(wakeup::flags());
}

/// bpf_loop's callback: captures frame `index` of the per-CPU scratch. `ctx` points to a u64
/// on the caller's stack: 1 if the innermost frame is a return address too (return probes).
extern "C" fn capture_frame(index: u64, ctx: *mut c_void) -> i64 {
    let i = index as usize;
    if i >= MAX_FRAMES {
        return 1;
    }
    let Some(scratch) = CAPTURE_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: `scratch` is this CPU's map value, alive and only ours while the program runs;
    // `i` is below every array's length.
    unsafe {
        let addr = (*scratch).frames[i];
        // Return addresses are looked up one byte back, as the daemon does (a call at the
        // very end of a mapping returns to the first byte after it).
        let back = u64::from(i > 0 || *ctx.cast::<u64>() != 0);
        let mut vma = VmaInfo::default();
        (*scratch).status[i] = capture(addr.wrapping_sub(back), &mut vma);
        (*scratch).vmas[i] = vma;
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
    // SAFETY: a static callback and a context on this stack, alive for the whole loop.
    unsafe {
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
        let status = capture(extra, &mut vma);
        // SAFETY: as above; MAX_FRAMES is the last index of both arrays.
        unsafe {
            (*scratch).status[MAX_FRAMES] = status;
            (*scratch).vmas[MAX_FRAMES] = vma;
        }
    } else {
        // SAFETY: as above.
        unsafe { (*scratch).status[MAX_FRAMES] = CAPTURE_FAILED };
    }
    let Some(mut entry) = EVENTS.reserve::<CapturedStackEvent>(0) else {
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
    entry.submit(wakeup::flags());
}
