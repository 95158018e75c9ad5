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

/// Pages copied by default: 16 KiB from the page of the stack pointer, i.e. 12–16 KiB of
/// live stack above it. Chosen by measurement (README, "Stacks without frame pointers"):
/// Debian's python3.11 from `malloc` to `_start` used 1.5 KiB for a plain script (15 frames)
/// and 4.7 KiB with five Python calls nested through C (40 frames, ~650 bytes a level); 16 KiB
/// holds about 20 such levels. A deeper stack ends with the stop reason `stack_copy_end`;
/// `--stack-copy-kib` chooses another size.
pub const STACK_COPY_DEFAULT_PAGES: usize = 4;

/// The sizes a copy may have, in pages: 4 to 64 KiB. Ring-buffer reservations have constant
/// sizes, so BPF has one path per size (ebpf/src/stack.rs); the probe's flags say which
/// ([`stack_copy_flags`]).
pub const STACK_COPY_PAGE_CHOICES: [usize; 5] = [1, 2, 4, 8, 16];

/// The largest copy, in pages.
pub const STACK_COPY_MAX_PAGES: usize = 16;

/// `PROBE_FLAGS` bits 16–18: log2 of the copy's pages (0 = one page … 4 = 16 pages).
pub const PROBE_STACK_COPY_SHIFT: u32 = 16;

/// The mask of [`PROBE_STACK_COPY_SHIFT`]'s field.
pub const PROBE_STACK_COPY_MASK: u32 = 7 << PROBE_STACK_COPY_SHIFT;

/// The flags of a stack copy of `pages` pages ([`PROBE_FLAG_STACK_COPY`] and the size), or
/// `None` if `pages` is not one of [`STACK_COPY_PAGE_CHOICES`].
pub const fn stack_copy_flags(pages: usize) -> Option<u32> {
    if !pages.is_power_of_two() || pages > STACK_COPY_MAX_PAGES {
        return None;
    }
    Some(PROBE_FLAG_STACK_COPY | (pages.trailing_zeros() << PROBE_STACK_COPY_SHIFT))
}

/// The pages a probe with `flags` copies.
pub const fn stack_copy_pages(flags: u32) -> usize {
    1 << ((flags & PROBE_STACK_COPY_MASK) >> PROBE_STACK_COPY_SHIFT)
}

/// The hit ring buffer of a run that copies stacks: a default record (16.1 KiB) would fit
/// only 250 times in the default 4 MiB ring, which a burst of hits fills before the daemon's
/// next batch (measured: a 5,000-hit churn kept 354–808 hits with 4 MiB on a loaded machine);
/// 32 MiB holds about 2,000.
pub const STACK_COPY_RING_BYTES: u32 = 1 << 25;

/// The hit ring of a run whose usual size is `base`, that copies stacks of `copy_pages`
/// pages at most (0: none): room for at least 1,000 of the largest records, and at least
/// [`STACK_COPY_RING_BYTES`] — 32 MiB for copies of up to 16 KiB, 64 MiB for 32 KiB, 128 MiB
/// for 64 KiB.
pub const fn ring_bytes(base: u32, copy_pages: usize) -> u32 {
    if copy_pages == 0 {
        return base;
    }
    let record = core::mem::size_of::<StackCopyHitEvent>() + copy_pages * STACK_PAGE;
    let mut ring = STACK_COPY_RING_BYTES as usize;
    while ring < 1000 * record {
        ring *= 2;
    }
    if base as usize > ring {
        base
    } else {
        ring as u32
    }
}

/// A hit with the registers the unwinder starts from; in the ring-buffer record, the copy of
/// the user stack follows it (its pages: [`stack_copy_pages`] of the probe's flags; the
/// record is [`StackCopyRecord`]).
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
}

/// The ring-buffer record of a stack copy of `BYTES` bytes (BPF writes it; the daemon reads
/// the header and as many bytes as the record holds).
#[repr(C)]
pub struct StackCopyRecord<const BYTES: usize> {
    /// The hit and registers.
    pub head: StackCopyHitEvent,
    /// The user stack from `head.stack_base` up.
    pub stack: [u8; BYTES],
}

#[cfg(feature = "user")]
// SAFETY: StackCopyHitEvent is #[repr(C)], integers and byte arrays only, no padding (size
// asserted below), so every bit pattern is a valid value.
unsafe impl aya::Pod for StackCopyHitEvent {}

const _: () =
    assert!(core::mem::size_of::<StackCopyHitEvent>() == core::mem::size_of::<HitEvent>() + 40);
// Each size's flags decode to that size.
const _: () = {
    let mut i = 0;
    while i < STACK_COPY_PAGE_CHOICES.len() {
        let pages = STACK_COPY_PAGE_CHOICES[i];
        match stack_copy_flags(pages) {
            Some(flags) => assert!(stack_copy_pages(flags) == pages),
            None => panic!("a choice without flags"),
        }
        i += 1;
    }
    assert!(stack_copy_flags(3).is_none() && stack_copy_flags(32).is_none());
};

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
    assert!(seen & PROBE_STACK_COPY_MASK == 0);
};
