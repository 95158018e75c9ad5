//! Where a captured user stack stops being a stack: the first impossible frame.
//!
//! The kernel's frame-pointer walk (`bpf_get_stack`) follows `rbp` blindly. Through code
//! built without frame pointers (most distribution binaries, Rust release builds) `rbp`
//! holds data, and the walk goes on with junk "return addresses" (`0x1000`, `0x0`) and
//! frames that resolve to nothing. A return address can only be a user-space code address,
//! so the walk is cut at the first frame that cannot be one:
//! - below `vm.mmap_min_addr` (nothing can be mapped there, 64 KiB by default), or
//! - not a canonical user address (at or above 2^47 on x86-64 with 4-level paging; the
//!   kernel's half and the non-canonical hole).
//!
//! The frames above a cut are dropped and the hit says its stack was cut.

use std::sync::OnceLock;

/// First address above user space on x86-64 with 4-level page tables (the canonical lower
/// half), and with 5-level ones.
const USER_LIMIT_4LEVEL: u64 = 1 << 47;
const USER_LIMIT_5LEVEL: u64 = 1 << 56;

/// The lowest address user space can map: `/proc/sys/vm/mmap_min_addr`, read once; 4096
/// (the first page) if it cannot be read.
pub fn mmap_min_addr() -> u64 {
    static MIN: OnceLock<u64> = OnceLock::new();
    *MIN.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/vm/mmap_min_addr")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map_or(4096, |v: u64| v.max(4096))
    })
}

/// The end of user space: 2^47, or 2^56 on a CPU with 5-level paging (`la57`). The CPU
/// flag is enough: a kernel that does not use it only makes the limit later than needed.
pub fn user_limit() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let la57 = std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| s.split_whitespace().any(|w| w == "la57"))
            .unwrap_or(false);
        if la57 {
            USER_LIMIT_5LEVEL
        } else {
            USER_LIMIT_4LEVEL
        }
    })
}

/// Whether `addr` can be a user-space code address at all.
pub fn possible(addr: u64, min_addr: u64, limit: u64) -> bool {
    addr >= min_addr && addr < limit
}

/// How many of `frames` (innermost first) form the stack: the frames before the first
/// impossible one. `len < frames.len()` means the walk was cut.
pub fn valid_prefix(frames: &[u64]) -> usize {
    valid_prefix_with(frames, mmap_min_addr(), user_limit())
}

/// [`valid_prefix`] with explicit limits (tests).
pub fn valid_prefix_with(frames: &[u64], min_addr: u64, limit: u64) -> usize {
    frames
        .iter()
        .position(|&a| !possible(a, min_addr, limit))
        .unwrap_or(frames.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The junk of a frame-pointer walk through code without frame pointers is cut at its
    /// first impossible frame; a whole real stack is kept.
    #[test]
    fn cuts_at_the_first_impossible_frame() {
        let min = 65536;
        let real = [0x5555_5555_1139, 0x7f12_3456_7890, 0x5555_5555_1200];
        assert_eq!(valid_prefix_with(&real, min, USER_LIMIT_4LEVEL), 3);
        let junk = [
            0x5555_5555_1139,
            0x7f12_3456_7890,
            0x1000,
            0x0,
            0x5555_5555_1200,
        ];
        assert_eq!(valid_prefix_with(&junk, min, USER_LIMIT_4LEVEL), 2);
        let kernel = [0x5555_5555_1139, 0xffff_ffff_8100_0000];
        assert_eq!(valid_prefix_with(&kernel, min, USER_LIMIT_4LEVEL), 1);
        let hole = [0x0000_8000_0000_0000];
        assert_eq!(valid_prefix_with(&hole, min, USER_LIMIT_4LEVEL), 0);
        assert_eq!(valid_prefix_with(&[], min, USER_LIMIT_4LEVEL), 0);
    }
}
