//! The record of a hit with a copy of the user stack, for unwinding in the daemon with the
//! modules' call frame information (`--stack=auto|dwarf`).
//!
//! Kept apart from `StackHitEvent` (the kernel's frame-pointer walk, `--stack=fp`): the two
//! records have different sizes, and ring-buffer reservations have constant sizes.

use crate::HitEvent;

/// First field of every ring buffer item: a [`StackCopyHitEvent`].
pub const EVENT_STACK_COPY_HIT: u32 = 9;

/// `PROBE_FLAGS` bit: with [`crate::PROBE_FLAG_STACK`], write a [`StackCopyHitEvent`]
/// (registers and a stack copy) instead of the kernel's frame-pointer walk.
pub const PROBE_FLAG_STACK_COPY: u32 = 8;

/// Bytes of one page of the copy. The copy starts at the page holding the stack pointer and
/// goes up page by page, so each read has a constant size and stops cleanly at the top of
/// the stack mapping (a read crossing into an unmapped page fails as a whole). The page size
/// ([`crate::PAGE_SIZE`]): the stack mapping's bounds are page-aligned.
pub const STACK_PAGE: usize = crate::PAGE_SIZE as usize;

/// Pages copied at most: 16 KiB from the page of the stack pointer, i.e. 12–16 KiB of live
/// stack above it. Chosen by measurement (README, "Stacks without frame pointers"): Debian's
/// python3.11 from `malloc` to `_start` used 1.5 KiB for a plain script (15 frames) and
/// 4.7 KiB with five Python calls nested through C (40 frames, ~650 bytes a level); 16 KiB
/// holds about 20 such levels. A deeper stack ends with the stop reason `stack_copy_end`.
pub const STACK_COPY_PAGES: usize = 4;

/// The hit ring buffer of a run that copies stacks: a record (16.2 KiB) would fit only 250
/// times in the default 4 MiB ring, which a burst of hits fills before the daemon's next
/// batch (measured: a 5,000-hit churn kept 354–808 hits with 4 MiB on a loaded machine);
/// 32 MiB holds about 2,000.
pub const STACK_COPY_RING_BYTES: u32 = 1 << 25;

/// The hit ring of a run whose usual size is `base`: at least [`STACK_COPY_RING_BYTES`] when
/// it copies stacks (`probed trace --stack`, a daemon with copying probes).
pub const fn ring_bytes(base: u32, copies_stacks: bool) -> u32 {
    if copies_stacks && base < STACK_COPY_RING_BYTES {
        STACK_COPY_RING_BYTES
    } else {
        base
    }
}

/// Bytes of the copy.
pub const STACK_COPY_BYTES: usize = STACK_PAGE * STACK_COPY_PAGES;

/// A hit with the registers the unwinder starts from and a copy of the user stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackCopyHitEvent {
    /// The hit; its `event` is [`EVENT_STACK_COPY_HIT`].
    pub hit: HitEvent,
    /// The user instruction pointer: the probed instruction (entry probes), the address
    /// returned to (return probes).
    pub ip: u64,
    /// The user stack pointer.
    pub sp: u64,
    /// The user frame pointer register (`rbp`), whatever it holds.
    pub bp: u64,
    /// The user address `stack[0]` was copied from: the page holding `sp`.
    pub stack_base: u64,
    /// Valid bytes of `stack` (whole pages; 0 if even the first page could not be read).
    pub stack_len: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// The user stack from `stack_base` up.
    pub stack: [u8; STACK_COPY_BYTES],
}

#[cfg(feature = "user")]
// SAFETY: StackCopyHitEvent is #[repr(C)], integers and byte arrays only, no padding (size
// asserted below), so every bit pattern is a valid value.
unsafe impl aya::Pod for StackCopyHitEvent {}

const _: () = assert!(
    core::mem::size_of::<StackCopyHitEvent>()
        == core::mem::size_of::<HitEvent>() + 40 + STACK_COPY_BYTES
);

// Every PROBE_FLAGS bit is its own (lib.rs defines the others).
const _: () = {
    let bits = [
        crate::PROBE_FLAG_STACK,
        crate::PROBE_FLAG_RATE_LIMIT,
        crate::PROBE_FLAG_PIDNS,
        crate::PROBE_FLAG_PID,
        PROBE_FLAG_STACK_COPY,
        crate::PROBE_FLAG_ARGS,
        crate::PROBE_FLAG_ARG_STRINGS,
    ];
    let mut seen = 0u32;
    let mut i = 0;
    while i < bits.len() {
        assert!(bits[i].count_ones() == 1 && seen & bits[i] == 0);
        seen |= bits[i];
        i += 1;
    }
};
