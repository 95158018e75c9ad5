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

/// Which ring item the replay is handling: the number of items handed to the pipeline so
/// far (0 before the first: the reads of processes tracked at start). Each recorded answer
/// carries the number of items before it in the file, so a seam knows which answers belong
/// to the item being handled.
#[derive(Debug, Default)]
pub struct ItemClock(AtomicU64);

impl ItemClock {
    /// One more item handed over.
    pub fn tick(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    fn now(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Recorded answers of one seam, given back in order, item by item.
struct Answers<A> {
    list: Vec<(u64, ProcKey, A)>,
    next: AtomicUsize,
    clock: Arc<ItemClock>,
    diverged: AtomicU64,
    skipped: AtomicU64,
}

impl<A> Answers<A> {
    fn new(
        frames: &[Frame],
        clock: Arc<ItemClock>,
        pick: impl Fn(&Frame) -> Option<(ProcKey, A)>,
    ) -> Self {
        let mut items = 0;
        let mut list = Vec::new();
        for f in frames {
            if matches!(f, Frame::Item(_)) {
                items += 1;
            } else if let Some((p, a)) = pick(f) {
                list.push((items, p, a));
            }
        }
        Self {
            list,
            next: AtomicUsize::new(0),
            clock,
            diverged: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// The next answer of the current item if it is for `proc` and of the kind asked. Else,
    /// counted as diverged, the latest earlier answer of that kind for `proc` (a call the run
    /// did not make here). Answers of earlier items nobody asked for are passed over and
    /// counted as skipped (a replay that did less work: e.g. `--aggregate stack` counting a
    /// repeated stack without resolving it).
    #[inline]
    fn take<T>(&self, proc: ProcKey, pick: impl Fn(&A) -> Option<T>) -> Option<T> {
        let now = self.clock.now();
        let mut i = self.next.load(Relaxed);
        let start = i;
        while self.list.get(i).is_some_and(|(item, ..)| *item < now) {
            i += 1;
        }
        if i > start {
            self.skipped.fetch_add((i - start) as u64, Relaxed);
        }
        if let Some((item, p, a)) = self.list.get(i)
            && *item == now
            && *p == proc
            && let Some(v) = pick(a)
        {
            self.next.store(i + 1, Relaxed);
            return Some(v);
        }
        self.next.store(i, Relaxed);
        self.diverged.fetch_add(1, Relaxed);
        self.list[..i]
            .iter()
            .rev()
            .filter(|(_, p, _)| *p == proc)
            .find_map(|(_, _, a)| pick(a))
    }

    /// The counts so far; answers not reached yet count as skipped (at the end of a
    /// replay, those nobody asked for).
    fn counts(&self) -> SeamCounts {
        let unreached = self.list.len() - self.next.load(Relaxed).min(self.list.len());
        SeamCounts {
            diverged: self.diverged.load(Relaxed),
            skipped: self.skipped.load(Relaxed) + unreached as u64,
        }
    }
}

/// How a replay's reads met a seam's recorded answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeamCounts {
    /// Reads the run did not make there (answered from the process's latest earlier answer).
    pub diverged: u64,
    /// Recorded answers the replay did not ask for (or has not reached yet).
    pub skipped: u64,
}

/// One recorded sequence answer.
#[derive(Clone, Copy, Debug)]
enum SeqAnswer {
    Begin(Option<u64>),
    Retry(bool),
}

/// Gives back a recording's sequence answers in order.
pub struct ReplaySeq(Answers<SeqAnswer>);

impl ReplaySeq {
    /// The sequence answers among `frames`, item by item of `clock`.
    pub fn new(frames: &[Frame], clock: Arc<ItemClock>) -> Self {
        Self(Answers::new(frames, clock, |f| match f {
            Frame::SeqBegin(p, v) => Some((*p, SeqAnswer::Begin(*v))),
            Frame::SeqRetry(p, m) => Some((*p, SeqAnswer::Retry(*m))),
            _ => None,
        }))
    }

    /// How the replay's sequence reads met the recorded ones.
    pub fn counts(&self) -> SeamCounts {
        self.0.counts()
    }
}

impl SeqSource for ReplaySeq {
    #[inline]
    fn try_begin(&self, proc: ProcKey) -> Option<u64> {
        self.0
            .take(proc, |a| match a {
                SeqAnswer::Begin(v) => Some(*v),
                SeqAnswer::Retry(_) => None,
            })
            .flatten()
    }

    #[inline]
    fn retry(&self, proc: ProcKey, _seq: u64) -> bool {
        self.0
            .take(proc, |a| match a {
                SeqAnswer::Retry(m) => Some(*m),
                SeqAnswer::Begin(_) => None,
            })
            .unwrap_or(false)
    }
}

/// Gives back a recording's maps reads in order.
pub struct ReplayMaps(Arc<Answers<MapsResult>>);

impl ReplayMaps {
    /// The maps reads among `frames`, item by item of `clock`.
    pub fn new(frames: &[Frame], clock: Arc<ItemClock>) -> Self {
        Self(Arc::new(Answers::new(frames, clock, |f| match f {
            Frame::Maps(p, r) => Some((*p, r.clone())),
            _ => None,
        })))
    }

    /// How the replay's maps reads met the recorded ones; readable after the resolver took
    /// this source.
    pub fn counts(&self) -> impl Fn() -> SeamCounts + use<> {
        let answers = self.0.clone();
        move || answers.counts()
    }
}

impl MapsSource for ReplayMaps {
    fn read_maps(&self, proc: ProcKey, buf: &mut Vec<u8>) -> Result<(), ScanError> {
        match self.0.take(proc, |r| Some(r.clone())) {
            Some(MapsResult::Text(text)) => {
                buf.clear();
                buf.extend_from_slice(&text);
                Ok(())
            }
            Some(MapsResult::Error(msg)) => Err(ScanError::Io {
                proc,
                what: "maps (recorded)",
                source: std::io::Error::other(msg),
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
    fn answers_come_back_item_by_item_and_strays_are_counted() {
        let frames = vec![
            // Before any item: a process tracked at start.
            Frame::SeqBegin(A, Some(4)),
            Frame::Maps(A, MapsResult::Text(b"text-a".to_vec())),
            Frame::SeqRetry(A, false),
            Frame::Item(vec![]),
            Frame::SeqBegin(B, None),
            Frame::Maps(B, MapsResult::Gone),
            Frame::Item(vec![]),
            Frame::SeqBegin(A, Some(6)),
        ];
        let clock = Arc::new(ItemClock::default());
        let seq = ReplaySeq::new(&frames, clock.clone());
        let maps = ReplayMaps::new(&frames, clock.clone());
        let maps_counts = maps.counts();
        let mut buf = Vec::new();
        assert_eq!(seq.try_begin(A), Some(4));
        maps.read_maps(A, &mut buf).unwrap();
        assert_eq!(buf, b"text-a");
        assert!(!seq.retry(A, 4));
        clock.tick();
        assert_eq!(seq.try_begin(B), None);
        assert!(matches!(
            maps.read_maps(B, &mut buf),
            Err(ScanError::Gone(_))
        ));
        assert_eq!(seq.counts().diverged, 0);
        assert_eq!(maps_counts(), SeamCounts::default());
        // A call the run did not make for this item: the process's latest earlier answer,
        // counted.
        maps.read_maps(A, &mut buf).unwrap();
        assert_eq!(buf, b"text-a");
        assert_eq!(maps_counts().diverged, 1);
        // The next item's answer is its own, not this item's stray call's.
        assert_eq!(seq.try_begin(A), Some(4));
        assert_eq!(seq.counts().diverged, 1);
        clock.tick();
        assert_eq!(seq.try_begin(A), Some(6));
        // An item the replay handled without asking: its answers are passed over.
        let clock2 = Arc::new(ItemClock::default());
        let seq2 = ReplaySeq::new(&frames, clock2.clone());
        clock2.tick();
        clock2.tick();
        assert_eq!(seq2.try_begin(A), Some(6));
        assert_eq!(
            seq2.counts(),
            SeamCounts {
                diverged: 0,
                skipped: 3
            }
        );
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
