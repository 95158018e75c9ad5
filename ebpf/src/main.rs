//! probed's BPF programs. Entry points only; the logic lives in the modules.
//!
//! One entry program (`probed_entry`) is shared by every uprobe and one return program
//! (`probed_return`) by every uretprobe; the attach cookie tells them which probe fired.
#![no_std]
#![no_main]
// Atomic add and compare-and-swap on map values (track.rs, limit.rs): core's atomics lack
// fetch_add and compare_exchange on the BPF target.
#![feature(core_intrinsics)]
#![allow(internal_features)]
// Map keys and values are passed to aya-ebpf's `get`/`insert`/`remove` (`impl Borrow<K>`) by
// reference, as the helpers take them. Passing them by value, as this lint asks, is not a
// no-op here: measured, the object built with them by value differs from this one (stack
// slots and register allocation, from the uprobe hit path on), and the verifier-checked shape
// of these programs should not change for a style lint when only the BPF integration tests
// could check it.
#![allow(clippy::needless_borrows_for_generic_args)]

mod args;
mod capture;
mod hit;
mod kread;
mod kseq;
mod limit;
mod lock;
mod maps;
mod path;
mod proc_facts;
mod ring;
mod self_filter;
mod stack;
mod track;

use aya_ebpf::{
    EbpfContext,
    macros::{kprobe, kretprobe, raw_tracepoint, tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext, TracePointContext},
};
use probed_common::{OP_BRK, OP_MMAP, OP_MPROTECT, OP_MREMAP, OP_MUNMAP, OP_OTHER};

/// Every uprobe probed attaches runs this.
#[uprobe]
pub fn probed_entry(ctx: ProbeContext) -> u32 {
    entry(&ctx, false)
}

/// Every uprobe with typed arguments runs this (`PROBE_ARGS`, args.rs): a program of its own,
/// loaded only when such a probe is attached (see hit::record_entry).
#[uprobe]
pub fn probed_entry_typed(ctx: ProbeContext) -> u32 {
    entry(&ctx, true)
}

/// Every uretprobe probed attaches runs this.
#[uretprobe]
pub fn probed_return(ctx: RetProbeContext) -> u32 {
    ret(&ctx, false)
}

/// Every uretprobe with a typed return value runs this.
#[uretprobe]
pub fn probed_return_typed(ctx: RetProbeContext) -> u32 {
    ret(&ctx, true)
}

/// A uprobe's hit, then its capture if it waits for one (a separate call chain: see
/// hit::record_entry).
#[inline(always)]
fn entry(ctx: &ProbeContext, typed: bool) -> u32 {
    if hit::record_entry(ctx, typed) {
        capture::record_pending(ctx.as_ptr());
    }
    0
}

/// The same for a uretprobe.
#[inline(always)]
fn ret(ctx: &RetProbeContext, typed: bool) -> u32 {
    if hit::record_return(ctx, typed) {
        capture::record_pending(ctx.as_ptr());
    }
    0
}

/// The entry programs of the tracked syscalls, one per argument count: each reads only the
/// arguments its syscall's tracepoint record holds (the kernel refuses to attach a program
/// that may read past the end of the record). Syscall tracepoints, not fentry on the syscall
/// functions: the machines probed runs on here have no BPF trampolines (no kfunc support).
macro_rules! syscall_enter {
    ($($name:ident: $op:expr, $nargs:literal, $doc:literal;)*) => {$(
        #[doc = $doc]
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            track::syscall_enter(&track::tracepoint_args::<$nargs>(&ctx), $op);
            0
        }
    )*};
}

syscall_enter! {
    probed_mmap_enter: OP_MMAP, 6, "Attached to syscalls:sys_enter_mmap.";
    probed_munmap_enter: OP_MUNMAP, 2, "Attached to syscalls:sys_enter_munmap.";
    probed_mprotect_enter: OP_MPROTECT, 3, "Attached to syscalls:sys_enter_{mprotect,pkey_mprotect}.";
    probed_mremap_enter: OP_MREMAP, 4, "Attached to syscalls:sys_enter_mremap.";
    probed_brk_enter: OP_BRK, 1, "Attached to syscalls:sys_enter_brk.";
    probed_other_enter: OP_OTHER, 0, "Attached to syscalls:sys_enter_{shmat,shmdt,remap_file_pages}: changes that are not replayed (the daemon rescans).";
}

/// Attached to every syscalls:sys_exit_* of the tracked syscalls.
#[tracepoint]
pub fn probed_mm_exit(ctx: TracePointContext) -> u32 {
    track::syscall_exit(track::tracepoint_ret(&ctx));
    0
}

/// Kprobe mode: the same entries on the syscalls' own functions (`__x64_sys_mmap`, …), which
/// only the tracked syscalls pass through — no syscall tracepoint is enabled, so no thread's
/// syscalls take the slow path. Their arguments come from the user registers the functions
/// are given.
macro_rules! kprobe_enter {
    ($($name:ident: $op:expr, $doc:literal;)*) => {$(
        #[doc = $doc]
        #[kprobe]
        pub fn $name(ctx: ProbeContext) -> u32 {
            track::syscall_enter(&track::kprobe_syscall_args(&ctx), $op);
            0
        }
    )*};
}

kprobe_enter! {
    probed_kmmap_enter: OP_MMAP, "Kprobe on __x64_sys_mmap.";
    probed_kmunmap_enter: OP_MUNMAP, "Kprobe on __x64_sys_munmap.";
    probed_kmprotect_enter: OP_MPROTECT, "Kprobe on __x64_sys_{mprotect,pkey_mprotect}.";
    probed_kmremap_enter: OP_MREMAP, "Kprobe on __x64_sys_mremap.";
    probed_kbrk_enter: OP_BRK, "Kprobe on __x64_sys_brk.";
    probed_kother_enter: OP_OTHER, "Kprobe on __x64_sys_{shmat,shmdt,remap_file_pages}.";
}

/// Kprobe mode: kretprobe on every function of `probed_k*_enter` (the syscall's return value).
#[kretprobe]
pub fn probed_kmm_exit(ctx: RetProbeContext) -> u32 {
    track::syscall_exit(ctx.ret::<i64>());
    0
}

/// Attached to sched:sched_process_exec.
#[tracepoint]
pub fn probed_exec(_ctx: TracePointContext) -> u32 {
    track::exec();
    0
}

/// Attached to sched:sched_process_exit.
#[tracepoint]
pub fn probed_exit(ctx: TracePointContext) -> u32 {
    track::exit(&ctx);
    0
}

/// Attached to the raw tracepoint sched_process_fork (its arguments are task pointers,
/// which the regular tracepoint record does not carry: needed to tell a process from a
/// thread).
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn probed_fork(ctx: RawTracePointContext) -> i32 {
    track::fork(ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    0
}

/// Lock mode: attached to the raw tracepoint mmap_lock_acquire_returned(mm, write, success).
#[raw_tracepoint(tracepoint = "mmap_lock_acquire_returned")]
pub fn probed_lock_acquired(ctx: RawTracePointContext) -> i32 {
    lock::acquired(ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2));
    0
}

/// Lock mode: attached to the raw tracepoint mmap_lock_released(mm, write).
#[raw_tracepoint(tracepoint = "mmap_lock_released")]
pub fn probed_lock_released(ctx: RawTracePointContext) -> i32 {
    lock::released(ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it exists only to link.
    loop {}
}

/// The kernel refuses GPL-only helpers (bpf_probe_read_user, bpf_get_stack…) to programs
/// under other licenses.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
