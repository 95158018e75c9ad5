//! The stack-copy record (`--stack=auto|dwarf`): the registers an unwinder starts from and
//! a copy of the user stack, written straight into the ring buffer record (16 KiB does not
//! fit the 512-byte BPF stack). The daemon unwinds it with the modules' `.eh_frame`.

use aya_ebpf::{bindings::pt_regs, helpers::generated::bpf_probe_read_user};
use probed_common::{HitEvent, ProbeStats, STACK_COPY_PAGES, STACK_PAGE, StackCopyHitEvent};

use crate::maps::EVENTS;

/// Reserves, fills and submits a [`StackCopyHitEvent`] for `hit`; counts a loss if the ring
/// buffer is full.
#[inline(always)]
pub fn record(hit: HitEvent, regs: &pt_regs, stats: *mut ProbeStats) {
    let Some(mut entry) = EVENTS.reserve::<StackCopyHitEvent>(0) else {
        // SAFETY: `stats` is this CPU's slot of the per-CPU stats array (see hit.rs).
        unsafe { (*stats).lost += 1 };
        return;
    };
    let e = entry.as_mut_ptr();
    // The copy starts at the page holding sp (everything below sp on that page is mapped
    // too) and goes up whole pages: constant-size reads the verifier accepts, and the first
    // read that fails (the top of the stack mapping) ends the copy.
    let base = regs.rsp & !(STACK_PAGE as u64 - 1);
    // SAFETY: `e` points to a reserved, writable record of StackCopyHitEvent's size; every
    // page written lies inside its `stack` array (constant offsets below STACK_COPY_BYTES);
    // bpf_probe_read_user never faults, it returns an error for unreadable memory.
    unsafe {
        (&raw mut (*e).hit).write(hit);
        (&raw mut (*e).ip).write(regs.rip);
        (&raw mut (*e).sp).write(regs.rsp);
        (&raw mut (*e).bp).write(regs.rbp);
        (&raw mut (*e).stack_base).write(base);
        (&raw mut (*e)._reserved).write(0);
        let stack = (&raw mut (*e).stack).cast::<u8>();
        let mut len = 0u32;
        for page in 0..STACK_COPY_PAGES {
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
        (&raw mut (*e).stack_len).write(len);
    }
    entry.submit(crate::maps::wakeup::flags());
}
