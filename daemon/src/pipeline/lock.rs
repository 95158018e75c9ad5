//! Lock mode's side of the pipeline: the mappings a hit captured (`Captures`), the
//! pictures made from them, the processes whose pictures are behind (rescanned once per
//! drained batch) and the sequences published to BPF.

use std::{io::Write, sync::Arc};

use rustc_hash::{FxHashMap, FxHashSet};

use probed_common::{
    CAPTURE_FAILED, CAPTURE_FOUND, CAPTURE_FOUND_AT_SEQ, HitEvent, MAX_FRAMES, VmaInfo,
};

use super::Pipeline;
use crate::{
    resolve::{Hit, ProcKey, Reason, Resolution, SeqSource, Snapshot, Via},
    track::{
        captured::{self, Captured},
        paths::PathIndex,
    },
};

/// Lock mode: the mappings a hit captured (ebpf/src/capture.rs), by frame index; index
/// `MAX_FRAMES` holds the extra capture (an entry probe's caller return address, or a
/// return probe's function address).
#[derive(Clone, Copy, Debug)]
pub struct Captures<'a> {
    /// `CAPTURE_*` per index.
    pub status: &'a [u8],
    /// The mapping per index.
    pub vmas: &'a [VmaInfo],
}

/// One address's capture: its `CAPTURE_*` status and, if there is one, the mapping.
pub(super) type Capture<'a> = (u8, Option<&'a VmaInfo>);

impl<'a> Captures<'a> {
    /// Index `i`'s capture; a kseq-mode capture validated at the hit's value
    /// (`CAPTURE_FOUND_AT_SEQ`) is a found one like any other.
    pub(super) fn get(&self, i: usize) -> Capture<'a> {
        let status = match self.status.get(i).copied().unwrap_or(CAPTURE_FAILED) {
            CAPTURE_FOUND_AT_SEQ => CAPTURE_FOUND,
            other => other,
        };
        (status, self.vmas.get(i))
    }
}

/// Lock mode: processes whose pictures are behind (a write section of their address space
/// ended, or a hit had to capture), rescanned at most once per drained batch, and the
/// sequence last published to BPF per process.
#[derive(Debug, Default)]
pub(super) struct LockState {
    pub(super) stale: FxHashSet<ProcKey>,
    pub(super) published: FxHashMap<ProcKey, u64>,
    /// Hit addresses answered from captures, and hit captures that failed.
    pub(super) captured: u64,
    pub(super) capture_failed: u64,
    /// The same for stack frames.
    pub(super) captured_frames: u64,
    pub(super) capture_failed_frames: u64,
    /// Rescans made for stale processes, and pictures published to BPF.
    pub(super) stale_rescans: u64,
    pub(super) published_count: u64,
    /// Processes rescanned in this batch already (a captured hit of a process without a
    /// published picture rescans it at once, but once per batch).
    pub(super) rescanned: FxHashSet<ProcKey>,
    /// Pictures made from captures, by process and mapping: consecutive hits in one
    /// mapping reuse one picture (cleared when it grows past `PICTURE_CACHE`).
    pub(super) pictures: FxHashMap<(u32, [u64; 6]), Arc<Captured>>,
}

/// Most capture pictures kept (see `LockState::pictures`).
const PICTURE_CACHE: usize = 1024;

impl LockState {
    /// The picture a capture of `pid` makes (cached: see `pictures`).
    pub(super) fn picture(
        &mut self,
        capture: Capture<'_>,
        pid: u32,
        paths: &PathIndex,
    ) -> Arc<Captured> {
        let (status, Some(vma)) = capture else {
            return Arc::new(Captured::Failed);
        };
        if status != probed_common::CAPTURE_FOUND {
            return Arc::new(captured::picture(status, vma, pid, paths));
        }
        let key = (
            pid,
            [vma.start, vma.end, vma.pgoff, vma.flags, vma.dev, vma.ino],
        );
        if let Some(p) = self.pictures.get(&key) {
            return p.clone();
        }
        if self.pictures.len() >= PICTURE_CACHE {
            self.pictures.clear();
        }
        let p = Arc::new(captured::picture(status, vma, pid, paths));
        self.pictures.insert(key, p.clone());
        p
    }

    /// Forgets an exited process (`pid`'s cached pictures with it).
    pub(super) fn exited(&mut self, proc: ProcKey) {
        self.stale.remove(&proc);
        self.pictures.retain(|k, _| k.0 != proc.pid);
        self.published.remove(&proc);
    }
}

impl<W: Write, S: SeqSource> Pipeline<W, S> {
    /// Lock mode, after each drained batch: rescans each process whose picture is behind
    /// (once, however many changes it reported in the batch) and publishes the sequence of
    /// the full picture now held, so that BPF lets hits of that sequence skip their captures.
    /// A rescan is taken only if the sequence was even and unchanged across the read (the
    /// mirror's own rule); otherwise nothing is published and hits keep capturing.
    pub fn end_batch(&mut self) {
        self.lock.rescanned.clear();
        self.refresh_stale();
    }

    fn refresh_stale(&mut self) {
        if self.lock.stale.is_empty() {
            return;
        }
        let resolver = self.reader.resolver().clone();
        for proc in std::mem::take(&mut self.lock.stale) {
            self.lock.stale_rescans += 1;
            match resolver.track(proc) {
                Ok(snap) if !snap.is_partial() && snap.seq().is_multiple_of(2) => {
                    if self.lock.published.insert(proc, snap.seq()) != Some(snap.seq()) {
                        resolver.seq().publish(proc, snap.seq());
                        self.lock.published_count += 1;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(%proc, error = %err, "rescan of a changed process failed");
                    self.lock.published.remove(&proc);
                }
            }
        }
    }

    /// Lock mode: handles a hit that carries the kernel's mappings of its addresses: each
    /// address resolves from its capture (`via: captured`), never from a picture of another
    /// time; a failed capture is counted (`capture_failed`), never guessed.
    pub fn handle_captured(
        &mut self,
        hit: &HitEvent,
        frames: Option<&[u64]>,
        captures: Captures<'_>,
    ) -> bool {
        let proc = ProcKey::new(hit.pid, hit.proc_gen);
        if self.kseq_mode() {
            // No pictures to refresh: the captures validated at the hit's counter value
            // answer its later hits of that value (the frames the record filled, and the
            // extra capture at MAX_FRAMES).
            let filled = frames.map_or(1, <[u64]>::len);
            let extra = frames.map(|_| MAX_FRAMES);
            self.kseq.learn(
                proc,
                hit.seq,
                captures.status,
                captures.vmas,
                (0..filled).chain(extra),
            );
            return self.handle_inner(hit, frames, Some(captures), None);
        }
        if hit.seq.is_multiple_of(2)
            && self.lock.published.get(&proc) != Some(&hit.seq)
            && self.lock.rescanned.insert(proc)
        {
            // BPF had no published picture of this sequence: get one now (once per batch),
            // so that the next hits of a process that stopped changing stop capturing
            // (a flood of captured hits would otherwise fill the ring before the batch ends).
            self.lock.stale.insert(proc);
            self.refresh_stale();
        }
        self.handle_inner(hit, frames, Some(captures), None)
    }
}

/// `lookup` in a capture's one-mapping picture, by the resolver's own rules.
pub(super) fn looked_up(snap: &Snapshot, lookup: u64) -> Result<Hit<'_>, Reason> {
    match snap.lookup(lookup) {
        Some(vma) => Ok(Hit {
            vma,
            file_offset: vma.file_offset(lookup),
            probe: None,
        }),
        None => Err(Reason::from(snap.miss(lookup))),
    }
}

/// Answers `f` from a capture's picture, as the resolver would from a picture of the hit's
/// time (`via: captured`), counting captures and failed ones.
pub(super) fn with_captured<R>(
    lock: &mut LockState,
    frame: bool,
    seq: u64,
    picture: &Captured,
    lookup: u64,
    f: impl FnOnce(Resolution<Hit<'_>>) -> R,
) -> R {
    let outcome = match picture {
        Captured::Picture(snap) => looked_up(snap, lookup),
        Captured::Unmapped => Err(Reason::Unmapped),
        Captured::Failed => Err(Reason::CaptureFailed),
    };
    let counter = match (matches!(picture, Captured::Failed), frame) {
        (true, false) => &mut lock.capture_failed,
        (false, false) => &mut lock.captured,
        (true, true) => &mut lock.capture_failed_frames,
        (false, true) => &mut lock.captured_frames,
    };
    *counter += 1;
    f(Resolution {
        via: Via::Captured,
        seq: Some(seq),
        outcome,
    })
}
