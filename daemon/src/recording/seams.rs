//! The resolver's syscall seam, recorded and replayed: the sequence reads and the maps reads
//! a live run made, given back in the same order to a replay.
//!
//! A replay makes the same calls in the same order as the run it replays (the pipeline is
//! deterministic given its inputs), so each seam gives back its recorded answers through one
//! cursor, without a lock or a hash per call — the replay measures the pipeline, not its
//! stand-ins. Each answer names its process; a call for another process (a replay that
//! diverged, e.g. after a time-dependent decision) gets that process's latest earlier answer
//! and is counted, so a replay says how faithful it was.

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
};

use super::file::{Frame, MapsFailure, MapsResult, Recorder};
use crate::resolve::{MapsSource, ProcKey, ScanError, SeqSource};

/// A sequence source that records what it answers when a recorder is set.
pub struct RecordingSeq<S> {
    inner: S,
    recorder: Option<Arc<Recorder>>,
}

impl<S> RecordingSeq<S> {
    /// `inner`, recorded to `recorder` if any.
    pub fn new(inner: S, recorder: Option<Arc<Recorder>>) -> Self {
        Self { inner, recorder }
    }
}

impl<S: SeqSource> SeqSource for RecordingSeq<S> {
    #[inline]
    fn try_begin(&self, proc: ProcKey) -> Option<u64> {
        let seq = self.inner.try_begin(proc);
        if let Some(r) = &self.recorder {
            r.seq_begin(proc, seq);
        }
        seq
    }

    #[inline]
    fn retry(&self, proc: ProcKey, seq: u64) -> bool {
        let moved = self.inner.retry(proc, seq);
        if let Some(r) = &self.recorder {
            r.seq_retry(proc, moved);
        }
        moved
    }

    fn publish(&self, proc: ProcKey, seq: u64) {
        self.inner.publish(proc, seq);
    }
}

/// A maps source that records what it answers when a recorder is set.
pub struct RecordingMaps<M> {
    inner: M,
    recorder: Option<Arc<Recorder>>,
}

impl<M> RecordingMaps<M> {
    /// `inner`, recorded to `recorder` if any.
    pub fn new(inner: M, recorder: Option<Arc<Recorder>>) -> Self {
        Self { inner, recorder }
    }
}

impl<M: MapsSource> MapsSource for RecordingMaps<M> {
    fn read_maps(&self, proc: ProcKey, buf: &mut Vec<u8>) -> Result<(), ScanError> {
        let result = self.inner.read_maps(proc, buf);
        if let Some(r) = &self.recorder {
            match &result {
                Ok(()) => r.maps(proc, &Ok(buf)),
                Err(ScanError::Gone(_)) => r.maps(proc, &Err(MapsFailure::Gone)),
                Err(other) => r.maps(proc, &Err(MapsFailure::Error(&other.to_string()))),
            }
        }
        result
    }
}

/// One recorded sequence answer.
#[derive(Clone, Copy, Debug)]
enum SeqAnswer {
    Begin(Option<u64>),
    Retry(bool),
}

/// Gives back a recording's sequence answers in order.
pub struct ReplaySeq {
    answers: Vec<(ProcKey, SeqAnswer)>,
    next: AtomicUsize,
    diverged: AtomicU64,
}

impl ReplaySeq {
    /// The sequence answers among `frames`.
    pub fn new(frames: &[Frame]) -> Self {
        let answers = frames
            .iter()
            .filter_map(|f| match f {
                Frame::SeqBegin(p, v) => Some((*p, SeqAnswer::Begin(*v))),
                Frame::SeqRetry(p, m) => Some((*p, SeqAnswer::Retry(*m))),
                _ => None,
            })
            .collect();
        Self {
            answers,
            next: AtomicUsize::new(0),
            diverged: AtomicU64::new(0),
        }
    }

    /// Calls that did not meet their recorded answer.
    pub fn diverged(&self) -> u64 {
        self.diverged.load(Relaxed)
    }

    /// The next answer if it is for `proc` and of the kind asked; else, counted, the latest
    /// earlier answer of that kind for `proc`.
    #[inline]
    fn take<T>(&self, proc: ProcKey, pick: impl Fn(SeqAnswer) -> Option<T>) -> Option<T> {
        let i = self.next.load(Relaxed);
        if let Some(&(p, answer)) = self.answers.get(i)
            && p == proc
            && let Some(v) = pick(answer)
        {
            self.next.store(i + 1, Relaxed);
            return Some(v);
        }
        self.diverged.fetch_add(1, Relaxed);
        self.answers[..i.min(self.answers.len())]
            .iter()
            .rev()
            .filter(|(p, _)| *p == proc)
            .find_map(|(_, a)| pick(*a))
    }
}

impl SeqSource for ReplaySeq {
    #[inline]
    fn try_begin(&self, proc: ProcKey) -> Option<u64> {
        self.take(proc, |a| match a {
            SeqAnswer::Begin(v) => Some(v),
            SeqAnswer::Retry(_) => None,
        })
        .flatten()
    }

    #[inline]
    fn retry(&self, proc: ProcKey, _seq: u64) -> bool {
        self.take(proc, |a| match a {
            SeqAnswer::Retry(m) => Some(m),
            SeqAnswer::Begin(_) => None,
        })
        .unwrap_or(false)
    }
}

/// Gives back a recording's maps reads in order.
pub struct ReplayMaps {
    reads: Vec<(ProcKey, MapsResult)>,
    next: AtomicUsize,
    diverged: Arc<AtomicU64>,
}

impl ReplayMaps {
    /// The maps reads among `frames`.
    pub fn new(frames: &[Frame]) -> Self {
        let reads = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Maps(p, r) => Some((*p, r.clone())),
                _ => None,
            })
            .collect();
        Self {
            reads,
            next: AtomicUsize::new(0),
            diverged: Arc::default(),
        }
    }

    /// Reads that did not meet their recorded answer (shared: the resolver owns the source).
    pub fn diverged(&self) -> Arc<AtomicU64> {
        self.diverged.clone()
    }
}

impl MapsSource for ReplayMaps {
    fn read_maps(&self, proc: ProcKey, buf: &mut Vec<u8>) -> Result<(), ScanError> {
        let i = self.next.load(Relaxed);
        let result = match self.reads.get(i) {
            Some((p, r)) if *p == proc => {
                self.next.store(i + 1, Relaxed);
                Some(r)
            }
            _ => {
                self.diverged.fetch_add(1, Relaxed);
                self.reads[..i.min(self.reads.len())]
                    .iter()
                    .rev()
                    .find(|(p, _)| *p == proc)
                    .map(|(_, r)| r)
            }
        };
        match result {
            Some(MapsResult::Text(text)) => {
                buf.clear();
                buf.extend_from_slice(text);
                Ok(())
            }
            Some(MapsResult::Error(msg)) => Err(ScanError::Io {
                proc,
                what: "maps (recorded)",
                source: std::io::Error::other(msg.clone()),
            }),
            Some(MapsResult::Gone) | None => Err(ScanError::Gone(proc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ProcKey = ProcKey {
        pid: 1,
        generation: 1,
    };
    const B: ProcKey = ProcKey {
        pid: 2,
        generation: 1,
    };

    #[test]
    fn answers_come_back_in_order_and_a_stray_call_is_counted() {
        let frames = vec![
            Frame::SeqBegin(A, Some(4)),
            Frame::Maps(A, MapsResult::Text(b"text-a".to_vec())),
            Frame::SeqRetry(A, false),
            Frame::SeqBegin(B, None),
            Frame::Maps(B, MapsResult::Gone),
            Frame::SeqBegin(A, Some(6)),
        ];
        let seq = ReplaySeq::new(&frames);
        let maps = ReplayMaps::new(&frames);
        let mut buf = Vec::new();
        assert_eq!(seq.try_begin(A), Some(4));
        maps.read_maps(A, &mut buf).unwrap();
        assert_eq!(buf, b"text-a");
        assert!(!seq.retry(A, 4));
        assert_eq!(seq.try_begin(B), None);
        assert!(matches!(
            maps.read_maps(B, &mut buf),
            Err(ScanError::Gone(_))
        ));
        assert_eq!(seq.diverged(), 0);
        assert_eq!(maps.diverged().load(Relaxed), 0);
        // A call the run did not make here: the process's latest earlier answer, counted.
        assert_eq!(seq.try_begin(B), None);
        assert_eq!(seq.diverged(), 1);
        maps.read_maps(A, &mut buf).unwrap();
        assert_eq!(buf, b"text-a");
        assert_eq!(maps.diverged().load(Relaxed), 1);
        // The cursor did not move: the recorded call still gets its own answer.
        assert_eq!(seq.try_begin(A), Some(6));
    }

    #[test]
    fn recording_wrappers_write_what_they_pass_through() {
        let path = std::env::temp_dir().join(format!("probed-seams-{}", std::process::id()));
        let header = super::super::Header {
            version: super::super::VERSION,
            specs: vec![],
            pid: None,
            stack_mode: None,
            tracker: crate::track::TrackerMode::Syscalls,
            probes: vec![],
        };
        let rec = Arc::new(Recorder::create(&path, &header).unwrap());
        let user = crate::resolve::UserSeq::with_capacity(4);
        let seq = RecordingSeq::new(&user, Some(rec.clone()));
        let maps = RecordingMaps::new(crate::resolve::testing::FakeMaps::new(), Some(rec.clone()));
        let begun = seq.try_begin(A);
        let moved = seq.retry(A, 0);
        let mut buf = Vec::new();
        let read = maps.read_maps(A, &mut buf);
        rec.finish().unwrap();
        let got = super::super::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let expect_maps = match read {
            Ok(()) => MapsResult::Text(buf),
            Err(ScanError::Gone(_)) => MapsResult::Gone,
            Err(e) => MapsResult::Error(e.to_string()),
        };
        assert_eq!(
            got.frames,
            vec![
                Frame::SeqBegin(A, begun),
                Frame::SeqRetry(A, moved),
                Frame::Maps(A, expect_maps),
            ]
        );
    }
}
