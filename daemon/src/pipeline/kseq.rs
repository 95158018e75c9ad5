//! Kseq mode's side of the pipeline: the mappings captured at a value of a process's kernel
//! counter (`CAPTURE_FOUND_AT_SEQ`, ebpf/src/kseq.rs), which answer the hits and frames BPF
//! let skip their capture (plain hits, `CAPTURE_CACHED` frames) at that same value.
//!
//! Only captures validated at their hit's counter value are kept, so an answer from here is
//! the mapping of the hit's time; an address none of them holds (a torn BPF cache entry, a
//! value no longer kept) is counted `no_snapshot_at_seq`, never guessed.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use probed_common::{CAPTURE_FOUND_AT_SEQ, VmaInfo};

use crate::{
    resolve::{Hit, ProcKey, Reason, Resolution, Via},
    track::captured::Captured,
};

/// Counter values kept per process: a hit of an older value than these, still queued when
/// its process changed this often, is counted instead of answered.
const SEQS_KEPT: usize = 8;
/// Mappings kept per value (BPF's cache holds 8; a stack's captures add the rest).
const VMAS_PER_SEQ: usize = 64;
/// Processes kept. Exit reports forget theirs; one lost to a full ring would leave it, so the
/// store starts over past this many (a hit then finds nothing: counted `kseq_missed` until
/// its process's next capture).
const MAX_PROCS: usize = 16_384;

/// The validated captures of each process, by counter value (newest last).
#[derive(Debug, Default)]
pub(super) struct KseqStore {
    procs: FxHashMap<ProcKey, VecDeque<(u64, Vec<VmaInfo>)>>,
    /// Addresses answered from here (hits, frames), and addresses nothing here held.
    pub(super) answered: u64,
    pub(super) answered_frames: u64,
    pub(super) missed: u64,
    pub(super) missed_frames: u64,
}

impl KseqStore {
    /// Keeps what a captured hit says at its counter value `seq`: each capture in `status`/
    /// `vmas` (only the indexes the record filled) validated at that value.
    pub(super) fn learn(
        &mut self,
        proc: ProcKey,
        seq: u64,
        status: &[u8],
        vmas: &[VmaInfo],
        indexes: impl Iterator<Item = usize>,
    ) {
        for i in indexes {
            if status.get(i) != Some(&CAPTURE_FOUND_AT_SEQ) {
                continue;
            }
            if let Some(vma) = vmas.get(i) {
                self.keep(proc, seq, vma);
            }
        }
    }

    fn keep(&mut self, proc: ProcKey, seq: u64, vma: &VmaInfo) {
        if self.procs.len() >= MAX_PROCS && !self.procs.contains_key(&proc) {
            self.procs.clear();
        }
        let seqs = self.procs.entry(proc).or_default();
        // A value seen before (a queued hit of an older one) keeps its place; a new one goes
        // last, the oldest out.
        if !seqs.iter().any(|(s, _)| *s == seq) {
            if seqs.len() == SEQS_KEPT {
                seqs.pop_front();
            }
            seqs.push_back((seq, Vec::new()));
        }
        if let Some((_, list)) = seqs.iter_mut().rev().find(|(s, _)| *s == seq) {
            push(list, vma);
        }
    }

    /// The mapping holding `addr` at `proc`'s counter value `seq`, if a capture said so.
    pub(super) fn find(&self, proc: ProcKey, seq: u64, addr: u64) -> Option<VmaInfo> {
        let seqs = self.procs.get(&proc)?;
        let (_, list) = seqs.iter().rev().find(|(s, _)| *s == seq)?;
        list.iter()
            .find(|v| v.start <= addr && addr < v.end)
            .copied()
    }

    /// Adds another consumer thread's counts (its processes are its own).
    pub(super) fn absorb_counts(&mut self, other: &KseqStore) {
        self.answered += other.answered;
        self.answered_frames += other.answered_frames;
        self.missed += other.missed;
        self.missed_frames += other.missed_frames;
    }

    /// Forgets `pid`'s captures, of every generation (it exited, or exec'd: a new address
    /// space, whose counter starts again).
    pub(super) fn forget(&mut self, pid: u32) {
        self.procs.retain(|k, _| k.pid != pid);
    }
}

/// Adds `vma` to a value's list unless it is there (the newest capture wins a full list's
/// oldest place).
fn push(list: &mut Vec<VmaInfo>, vma: &VmaInfo) {
    if list
        .iter()
        .any(|v| v.start == vma.start && v.end == vma.end)
    {
        return;
    }
    if list.len() == VMAS_PER_SEQ {
        list.remove(0);
    }
    list.push(*vma);
}

/// Answers `f` from the capture picture of the mapping the store found (`picture`), or
/// says there was none (`no_snapshot_at_seq`), counting both (`via: kseq`).
pub(super) fn with_kseq<R>(
    store: &mut KseqStore,
    frame: bool,
    seq: u64,
    picture: Option<&Captured>,
    lookup: u64,
    f: impl FnOnce(Resolution<Hit<'_>>) -> R,
) -> R {
    let outcome = match picture {
        Some(Captured::Picture(snap)) => super::lock::looked_up(snap, lookup),
        Some(Captured::Unmapped | Captured::Failed) | None => Err(Reason::NoSnapshotAtSeq),
    };
    // The store's mappings are captured ones (found): a picture is an answer.
    let counter = match (picture.is_some(), frame) {
        (true, false) => &mut store.answered,
        (true, true) => &mut store.answered_frames,
        (false, false) => &mut store.missed,
        (false, true) => &mut store.missed_frames,
    };
    *counter += 1;
    f(Resolution {
        via: Via::Kseq,
        seq: Some(seq),
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use probed_common::{CAPTURE_CACHED, CAPTURE_FOUND};

    fn vma(start: u64, end: u64) -> VmaInfo {
        VmaInfo {
            start,
            end,
            ..VmaInfo::default()
        }
    }

    /// Only captures validated at the hit's value are kept, and only at that value; a
    /// process's exec or exit forgets them; old values go first.
    #[test]
    fn keeps_validated_captures_by_value() {
        let mut store = KseqStore::default();
        let p = ProcKey::new(10, 1);
        let status = [
            CAPTURE_FOUND_AT_SEQ,
            CAPTURE_FOUND,
            CAPTURE_CACHED,
            CAPTURE_FOUND_AT_SEQ,
        ];
        let vmas = [
            vma(0x1000, 0x2000),
            vma(0x3000, 0x4000),
            vma(0, 0),
            vma(0x5000, 0x6000),
        ];
        // Index 3 is not one the record filled: ignored (a stale scratch entry in BPF).
        store.learn(p, 4, &status, &vmas, 0..3);
        assert_eq!(store.find(p, 4, 0x1800), Some(vmas[0]));
        assert_eq!(store.find(p, 4, 0x3800), None, "not validated at the value");
        assert_eq!(
            store.find(p, 4, 0x5800),
            None,
            "an index the record did not fill"
        );
        assert_eq!(store.find(p, 6, 0x1800), None, "another value");
        assert_eq!(
            store.find(ProcKey::new(10, 2), 4, 0x1800),
            None,
            "another generation"
        );
        for seq in (6..).step_by(2).take(SEQS_KEPT) {
            store.learn(p, seq, &status, &vmas, 0..1);
        }
        assert_eq!(
            store.find(p, 4, 0x1800),
            None,
            "the oldest value went first"
        );
        assert!(store.find(p, 6, 0x1800).is_some());
        store.forget(10);
        assert_eq!(store.find(p, 6, 0x1800), None);
    }

    /// A hit the store cannot answer is counted, not guessed.
    #[test]
    fn a_miss_is_counted() {
        let mut store = KseqStore::default();
        let via = with_kseq(&mut store, false, 8, None, 0x1234, |r| {
            assert_eq!(r.outcome.unwrap_err(), Reason::NoSnapshotAtSeq);
            r.via
        });
        assert_eq!(via, Via::Kseq);
        assert_eq!((store.answered, store.missed), (0, 1));
    }
}
