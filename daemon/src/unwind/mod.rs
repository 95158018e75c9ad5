//! Unwinding a copied user stack with the modules' call frame information (`--stack`,
//! modes `auto` and `dwarf`).
//!
//! BPF sends the registers an unwinder starts from (ip, sp, bp) and up to 4–64 KiB of the
//! stack from the page of sp (`probed_common::StackCopyRecord`). Each step finds the
//! frame's module through the caller's `locate` — the resolver's picture of the address
//! space *at the hit* (so a library dlclosed since, or a process gone since, still unwinds)
//! — and runs framehop on that module's `.eh_frame` (tables.rs), at the file's own
//! addresses. Where no CFI covers a frame, `auto` steps by the frame pointer (framehop's
//! fallback rule) and `dwarf` stops there. Every walk ends with a [`StopReason`].

pub mod setting;
mod tables;

use framehop::{
    FrameAddress, Unwinder as _,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};
pub use tables::{Table, TableError, Tables};

use std::sync::Arc;

/// How `--stack` walks a user stack.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum StackMode {
    /// CFI (`.eh_frame`) where the module has it, frame pointers otherwise; unwound in the
    /// daemon from a stack copy.
    #[default]
    Auto,
    /// The kernel's frame-pointer walk (`bpf_get_stack`), as before: no stack copy.
    Fp,
    /// CFI only: the walk stops at the first frame whose module has none.
    Dwarf,
}

impl StackMode {
    /// Whether BPF copies registers and the stack for the daemon's unwinder (`auto`,
    /// `dwarf`), rather than walking frame pointers itself (`fp`).
    pub fn copies_stack(self) -> bool {
        self != Self::Fp
    }

    /// A probe's `stack` setting in the daemon's config and `ctl add` requests: `true` is
    /// `fp` there (the kernel's walk: no stack copy, so the lock tracker can serve it),
    /// `false` none, or a mode's name.
    pub fn from_setting(value: &str) -> Result<Option<Self>, String> {
        match value {
            "true" | "fp" => Ok(Some(Self::Fp)),
            "false" => Ok(None),
            "auto" => Ok(Some(Self::Auto)),
            "dwarf" => Ok(Some(Self::Dwarf)),
            other => Err(format!(
                "stack must be true, false, \"fp\", \"auto\" or \"dwarf\", not {other:?}"
            )),
        }
    }

    /// The name the CLI takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Fp => "fp",
            Self::Dwarf => "dwarf",
        }
    }
}

/// Why a walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StopReason {
    /// The outermost frame was reached: the CFI marks no caller (`_start`, a thread's start
    /// routine), or the return address or frame pointer is 0.
    End,
    /// The next step needed stack memory above the copy (a deeper stack than was copied).
    StackCopyEnd,
    /// BPF could not read even the page of the stack pointer.
    NoStackCopy,
    /// The step read stack memory below the copy (a corrupt frame).
    BadStackRead,
    /// `dwarf` mode: the frame's module has no CFI (or none could be read).
    NoCfi,
    /// `dwarf` mode: the frame is in no file-backed mapping (JIT code, unmapped).
    NoModule,
    /// The return address found cannot be a user code address.
    BadReturnAddress,
    /// framehop refused the step (no progress, frame pointer moving backwards, overflow).
    UnwindError,
    /// The walk reached the frame limit.
    MaxFrames,
}

impl StopReason {
    /// Every reason, for counters.
    pub const ALL: [Self; 9] = [
        Self::End,
        Self::StackCopyEnd,
        Self::NoStackCopy,
        Self::BadStackRead,
        Self::NoCfi,
        Self::NoModule,
        Self::BadReturnAddress,
        Self::UnwindError,
        Self::MaxFrames,
    ];

    /// The name in JSON (`stack_stop`) and text output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::End => "end",
            Self::StackCopyEnd => "stack_copy_end",
            Self::NoStackCopy => "no_stack_copy",
            Self::BadStackRead => "bad_stack_read",
            Self::NoCfi => "no_cfi",
            Self::NoModule => "no_module",
            Self::BadReturnAddress => "bad_return_address",
            Self::UnwindError => "unwind_error",
            Self::MaxFrames => "max_frames",
        }
    }

    /// The counter's name (summary, metrics).
    pub fn counter(self) -> &'static str {
        match self {
            Self::End => "stack_stop_end",
            Self::StackCopyEnd => "stack_stop_stack_copy_end",
            Self::NoStackCopy => "stack_stop_no_stack_copy",
            Self::BadStackRead => "stack_stop_bad_stack_read",
            Self::NoCfi => "stack_stop_no_cfi",
            Self::NoModule => "stack_stop_no_module",
            Self::BadReturnAddress => "stack_stop_bad_return_address",
            Self::UnwindError => "stack_stop_unwind_error",
            Self::MaxFrames => "stack_stop_max_frames",
        }
    }

    /// The reason's slot in counters: [`StopReason::ALL`] lists them in declaration order.
    fn index(self) -> usize {
        self as usize
    }
}

/// Where a code address is, as the caller's resolver sees it.
pub enum Located {
    /// In a module with CFI, at this virtual address of the file.
    Cfi(Arc<Table>, u64),
    /// In a module without CFI, or in none (why, for `dwarf` mode's stop).
    Without(StopReason),
}

/// The registers and stack copy a walk starts from.
#[derive(Clone, Copy, Debug)]
pub struct Start<'a> {
    /// Instruction pointer.
    pub ip: u64,
    /// Stack pointer.
    pub sp: u64,
    /// Frame pointer register.
    pub bp: u64,
    /// The user address of `stack[0]`.
    pub stack_base: u64,
    /// The copied stack.
    pub stack: &'a [u8],
}

/// A walk: code addresses innermost first (the instruction pointer, then return
/// addresses) and why it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walk {
    /// The frames.
    pub frames: Vec<u64>,
    /// Why there are no more.
    pub stop: StopReason,
    /// Bytes of stack above sp the walk read (the deepest CFA reached), for sizing the
    /// copy.
    pub stack_used: u64,
}

/// The unwinder of one pipeline: framehop's rule cache, and counts of stop reasons.
pub struct Unwinder {
    cache: CacheX86_64,
    /// No modules: framehop's fallback rule (frame pointer) for frames without CFI.
    bare: UnwinderX86_64<Vec<u8>>,
    /// Walks ended, by reason (indexed like [`StopReason::ALL`]).
    stops: [u64; StopReason::ALL.len()],
    /// The most stack above sp a walk that reached its outermost frame read: what the copy
    /// must hold for such stacks (sizing `--stack-copy-kib`).
    max_used: u64,
    /// Frames found by all walks.
    frames: u64,
    /// A walk's frame vector handed back ([`Unwinder::give_back`]) for the next walk.
    spare: Vec<u64>,
}

impl Default for Unwinder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Unwinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unwinder")
            .field("stops", &self.stops)
            .finish_non_exhaustive()
    }
}

impl Unwinder {
    /// A fresh unwinder.
    pub fn new() -> Self {
        Self {
            cache: CacheX86_64::new(),
            bare: UnwinderX86_64::new(),
            stops: [0; StopReason::ALL.len()],
            max_used: 0,
            frames: 0,
            spare: Vec::new(),
        }
    }

    /// Takes back a walk's frames once used, so that the next walk fills the same vector
    /// (no allocation per stack: each would be a `malloc` probed traps on when tracing it).
    pub fn give_back(&mut self, mut frames: Vec<u64>) {
        frames.clear();
        self.spare = frames;
    }

    /// Adds `other`'s counts (another consumer thread's walks).
    pub fn absorb(&mut self, other: &Unwinder) {
        for (mine, theirs) in self.stops.iter_mut().zip(other.stops) {
            *mine += theirs;
        }
        self.max_used = self.max_used.max(other.max_used);
        self.frames += other.frames;
    }

    /// Walks ended per reason, by the reason's name (`end`, `no_cfi`, …).
    pub fn stops_by_reason(&self) -> Vec<(&'static str, u64)> {
        StopReason::ALL
            .iter()
            .map(|r| (r.as_str(), self.stops[r.index()]))
            .collect()
    }

    /// Walks ended per reason, as (counter name, count), the most stack a whole walk used
    /// (`stack_used_max`, bytes above sp) and the frames found (`unwound_frames`).
    pub fn stop_counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        StopReason::ALL
            .iter()
            .map(|r| (r.counter(), self.stops[r.index()]))
            .chain([
                ("stack_used_max", self.max_used),
                ("unwound_frames", self.frames),
            ])
    }

    /// Unwinds from `start`, at most `max` frames; `locate` places a code address (the
    /// lookup address: one byte back for return addresses). `mode` is `Auto` or `Dwarf`.
    pub fn walk(
        &mut self,
        start: Start<'_>,
        mode: StackMode,
        max: usize,
        min_addr: u64,
        limit: u64,
        mut locate: impl FnMut(u64) -> Located,
    ) -> Walk {
        let mut frames = std::mem::take(&mut self.spare);
        frames.clear();
        frames.reserve(32);
        let mut regs = UnwindRegsX86_64::new(start.ip, start.sp, start.bp);
        let top = start.stack_base + start.stack.len() as u64;
        let mut deepest = start.sp;
        let mut read = |addr: u64| -> Result<u64, ()> {
            let off = addr.checked_sub(start.stack_base).ok_or(())? as usize;
            let bytes = start
                .stack
                .get(off..off.checked_add(8).ok_or(())?)
                .ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let mut pc = start.ip;
        let stop = loop {
            frames.push(pc);
            if start.stack.is_empty() {
                break StopReason::NoStackCopy;
            }
            if frames.len() >= max {
                break StopReason::MaxFrames;
            }
            let first = frames.len() == 1;
            let lookup = if first { pc } else { pc.wrapping_sub(1) };
            let step = match locate(lookup) {
                Located::Cfi(table, vaddr) => {
                    let address = if first {
                        FrameAddress::from_instruction_pointer(vaddr)
                    } else {
                        // framehop subtracts the byte back itself.
                        match FrameAddress::from_return_address(vaddr + 1) {
                            Some(a) => a,
                            None => break StopReason::End,
                        }
                    };
                    table
                        .unwinder
                        .unwind_frame(address, &mut regs, &mut self.cache, &mut read)
                }
                Located::Without(why) if mode == StackMode::Dwarf => break why,
                Located::Without(_) => {
                    let address = if first {
                        FrameAddress::from_instruction_pointer(pc)
                    } else {
                        match FrameAddress::from_return_address(pc) {
                            Some(a) => a,
                            None => break StopReason::End,
                        }
                    };
                    self.bare
                        .unwind_frame(address, &mut regs, &mut self.cache, &mut read)
                }
            };
            deepest = deepest.max(regs.sp());
            match step {
                Ok(Some(ra)) if ra >= min_addr && ra < limit => {
                    regs.set_ip(ra);
                    pc = ra;
                }
                Ok(Some(_)) => break StopReason::BadReturnAddress,
                Ok(None) | Err(framehop::Error::ReturnAddressIsNull) => break StopReason::End,
                Err(framehop::Error::CouldNotReadStack(addr)) if addr >= top => {
                    break StopReason::StackCopyEnd;
                }
                Err(framehop::Error::CouldNotReadStack(_)) => break StopReason::BadStackRead,
                Err(_) => break StopReason::UnwindError,
            }
        };
        self.stops[stop.index()] += 1;
        self.frames += frames.len() as u64;
        let stack_used = deepest.saturating_sub(start.sp);
        if stop == StopReason::End {
            self.max_used = self.max_used.max(stack_used);
        }
        Walk {
            frames,
            stop,
            stack_used,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x7fff_0000_0000;
    const MIN: u64 = 0x10000;
    const LIMIT: u64 = 1 << 47;

    /// A 4 KiB stack copy holding a frame-pointer chain: at bp, the caller's bp and the
    /// return address.
    fn stack(chain: &[(u64, u64, u64)]) -> Vec<u8> {
        let mut s = vec![0u8; 4096];
        for &(at, saved_bp, ret) in chain {
            let off = (at - BASE) as usize;
            s[off..off + 8].copy_from_slice(&saved_bp.to_le_bytes());
            s[off + 8..off + 16].copy_from_slice(&ret.to_le_bytes());
        }
        s
    }

    fn walk(s: &[u8], mode: StackMode) -> Walk {
        let start = Start {
            ip: 0x5000_0000,
            sp: BASE + 0x100,
            bp: BASE + 0x200,
            stack_base: BASE,
            stack: s,
        };
        Unwinder::new().walk(start, mode, 127, MIN, LIMIT, |_| {
            Located::Without(StopReason::NoModule)
        })
    }

    /// Without CFI, `auto` steps by frame pointer to the end of the chain (bp 0); `dwarf`
    /// stops at the first frame and says why.
    #[test]
    fn frame_pointer_fallback_and_dwarf_stop() {
        let s = stack(&[
            (BASE + 0x200, BASE + 0x300, 0x5000_1000),
            (BASE + 0x300, 0, 0x5000_2000),
        ]);
        let w = walk(&s, StackMode::Auto);
        assert_eq!(w.frames, [0x5000_0000, 0x5000_1000, 0x5000_2000]);
        assert_eq!(w.stop, StopReason::End);
        let w = walk(&s, StackMode::Dwarf);
        assert_eq!(w.frames, [0x5000_0000]);
        assert_eq!(w.stop, StopReason::NoModule);
    }

    /// Counters are indexed in [`StopReason::ALL`]'s order.
    #[test]
    fn counter_slots_follow_all() {
        for (i, r) in StopReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
    }

    /// A chain leaving the copy ends with `stack_copy_end` (frames found so far kept); an
    /// impossible return address with `bad_return_address`; no copy with `no_stack_copy`.
    #[test]
    fn stop_reasons() {
        let s = stack(&[
            (BASE + 0x200, BASE + 0x300, 0x5000_1000),
            (BASE + 0x300, BASE + 0x1100, 0x5000_2000),
        ]);
        let w = walk(&s, StackMode::Auto);
        assert_eq!(w.frames.len(), 3);
        assert_eq!(w.stop, StopReason::StackCopyEnd);
        let s = stack(&[(BASE + 0x200, BASE + 0x300, 0x10)]);
        assert_eq!(walk(&s, StackMode::Auto).stop, StopReason::BadReturnAddress);
        let w = walk(&[], StackMode::Auto);
        assert_eq!((w.frames.len(), w.stop), (1, StopReason::NoStackCopy));
    }
}
