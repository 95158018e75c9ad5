//! Folded stacks remembered by their raw form, for runs that only count stacks
//! (`--aggregate stack` without `--print-hits` or `--latency`).
//!
//! A frame-pointer stack is a list of return addresses. Two hits of the same process, at the
//! same address-space sequence, of the same probe and kind, with the same hit address and
//! the same addresses, resolve frame for frame to the same places: the sequence names the
//! address space's version (every mapping change of a tracked process moves it; invariant 2
//! in BRIEF.md), and the resolver answers a hit as of its sequence. So the folded text of
//! the first such hit is remembered (its entry among the counted stacks), and the next ones
//! are counted under it without resolving or symbolizing a frame, or hashing that text —
//! what bpftrace gets from counting by stack id in BPF.
//!
//! Remembered only when nothing about the answer was provisional: the hit and every frame
//! resolved by the resolver (no probe fallback, no unresolved frame), the stack not cut, no
//! captured mappings (lock mode's hits that carry them are answered from them), no typed
//! arguments (their strings arrive as records of their own). Stacks unwound from copies
//! (`--stack=auto|dwarf`) are not remembered: their raw form is kilobytes of stack.
//! Remembered hits are counted as `stacks_memoized` among the resolver counters.

use probed_common::HitEvent;
use rustc_hash::FxHashMap;

/// Entries kept before the memo starts over: ~0.2 KB each (21 frames), so at most ~4 MB; a run with more distinct stacks than this resolves the rest as before.
const MAX_ENTRIES: usize = 16_384;

/// Raw stack → its folded stack's entry in the run's `StackCounts`, and whether the stack
/// was cut at an impossible frame (a property of the raw addresses alone:
/// `stack_check.rs`).
#[derive(Debug, Default)]
pub(super) struct StackMemo {
    map: FxHashMap<Box<[u64]>, (usize, bool)>,
    /// The current hit's raw key (reused).
    key: Vec<u64>,
    /// Hits counted from the memo.
    pub(super) hits: u64,
}

impl StackMemo {
    /// Makes `hit` with its raw `frames` the current key; its folded stack's entry and cut
    /// flag if remembered.
    pub(super) fn lookup(&mut self, hit: &HitEvent, frames: &[u64]) -> Option<(usize, bool)> {
        self.key.clear();
        self.key.extend_from_slice(&[
            u64::from(hit.pid),
            hit.proc_gen,
            hit.seq,
            u64::from(hit.probe_id) | (u64::from(hit.kind) << 32),
            hit.ip,
        ]);
        self.key.extend_from_slice(frames);
        self.map.get(self.key.as_slice()).copied()
    }

    /// Remembers `entry` for the current key (the one [`StackMemo::lookup`] last made).
    pub(super) fn remember(&mut self, entry: usize, cut: bool) {
        if self.map.len() >= MAX_ENTRIES {
            self.map.clear();
        }
        self.map
            .insert(self.key.clone().into_boxed_slice(), (entry, cut));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(seq: u64) -> HitEvent {
        HitEvent {
            event: probed_common::EVENT_HIT,
            probe_id: 1,
            kind: probed_common::KIND_ENTRY,
            pid: 7,
            tid: 7,
            lost_reports: 0,
            ts_ns: 1,
            ip: 0x1000,
            ret_addr: 0,
            seq,
            proc_gen: 3,
            args: [0; probed_common::ARG_REGS],
            retval: 0,
            comm: [0; probed_common::COMM_LEN],
            ns_pid: 0,
            ns_tid: 0,
        }
    }

    #[test]
    fn a_stack_is_remembered_for_its_sequence_only() {
        let mut memo = StackMemo::default();
        let frames = [0x1000, 0x2000, 0x3000];
        assert!(memo.lookup(&hit(4), &frames).is_none());
        memo.remember(3, false);
        assert_eq!(memo.lookup(&hit(4), &frames), Some((3, false)));
        // The address space moved on: the same addresses may be other code now.
        assert!(memo.lookup(&hit(6), &frames).is_none());
        // Another stack, another probe kind: not the same key.
        assert!(memo.lookup(&hit(4), &frames[..2]).is_none());
        let mut ret = hit(4);
        ret.kind = probed_common::KIND_RETURN;
        assert!(memo.lookup(&ret, &frames).is_none());
    }
}
