//! The stack-copy record (`--stack=auto|dwarf`): the registers an unwinder starts from and
//! a copy of the user stack, written straight into the ring buffer record (4–64 KiB do not
//! fit the 512-byte BPF stack). The daemon unwinds it with the modules' `.eh_frame`.

use aya_ebpf::{bindings::pt_regs, helpers::generated::bpf_probe_read_user};
use probed_common::{
    HitEvent, ProbeStats, STACK_PAGE, StackCopyHitEvent, StackCopyRecord, stack_copy_pages,
};

use crate::ring::Ring;

/// Reserves, fills and submits the stack-copy record of `hit`, of the size `flags` (the
/// probe's) say; counts a loss if the ring buffer is full. A reservation's size must be a
/// constant the verifier knows: one path per size.
#[inline(always)]
pub fn record(hit: HitEvent, regs: &pt_regs, stats: *mut ProbeStats, flags: u32) {
    match stack_copy_pages(flags) {
        1 => record_sized::<{ STACK_PAGE }>(hit, regs, stats),
        2 => record_sized::<{ 2 * STACK_PAGE }>(hit, regs, stats),
        8 => record_sized::<{ 8 * STACK_PAGE }>(hit, regs, stats),
        16 => record_sized::<{ 16 * STACK_PAGE }>(hit, regs, stats),
        _ => record_sized::<{ 4 * STACK_PAGE }>(hit, regs, stats),
    }
}

/// [`record`] with a copy of at most `BYTES` bytes.
#[inline(always)]
fn record_sized<const BYTES: usize>(hit: HitEvent, regs: &pt_regs, stats: *mut ProbeStats) {
    let ring = Ring::of(hit.pid);
    let Some((mut entry, wake)) = ring.reserve::<StackCopyRecord<BYTES>>() else {
        // SAFETY: `stats` is this CPU's slot of the per-CPU stats array (see hit.rs).
        unsafe { (*stats).lost += 1 };
        return;
    };
    let e = entry.as_mut_ptr();
    // The copy starts at the page holding sp (everything below sp on that page is mapped
    // too) and goes up whole pages: constant-size reads the verifier accepts, and the first
    // read that fails (the top of the stack mapping) ends the copy.
    let base = regs.rsp & !(STACK_PAGE as u64 - 1);
    // SAFETY: `e` points to a reserved, writable record of StackCopyRecord<BYTES>'s size;
    // every page written lies inside its `stack` array (constant offsets below BYTES);
    // bpf_probe_read_user never faults, it returns an error for unreadable memory.
    unsafe {
        (&raw mut (*e).head).write(StackCopyHitEvent {
            hit,
            ip: regs.rip,
            sp: regs.rsp,
            bp: regs.rbp,
            stack_base: base,
            stack_len: 0,
            _reserved: 0,
        });
        let stack = (&raw mut (*e).stack).cast::<u8>();
        let mut len = 0u32;
        for page in 0..BYTES / STACK_PAGE {
            let off = page * STACK_PAGE;
            let got = bpf_probe_read_user(
                stack.add(off).cast(),
                STACK_PAGE as u32,
                (base + off as u64) as *const core::ffi::c_void,
            );
            if got != 0 {
                break;
            }
            len += STACK_PAGE as u32;
        }
        (&raw mut (*e).head.stack_len).write(len);
    }
    entry.submit(wake);
}
