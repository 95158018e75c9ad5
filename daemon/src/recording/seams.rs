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

use rustc_hash::FxHashMap;

use super::file::{Frame, MapsFailure, MapsResult, Recorder};
use crate::{
    pipeline::Padded,
    resolve::{MapsSource, ProcKey, ScanError, SeqSource},
};

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

/// Which ring item the replay is handling, per consumer thread (lane; one lane with one
/// consumer): the number of items handed out so far (0 before the first: the reads of
/// processes tracked at start). Each recorded answer carries the number of items before it
/// in the file, so a seam knows which answers belong to the item being handled. Answers
/// are laned by process as the consumers' dispatcher deals processes (`pipeline::lanes`),
/// so each lane's answers come in the order its consumer asks for them.
#[derive(Debug)]
pub struct ItemClocks {
    clocks: Vec<Padded>,
    /// Each process's lane (none with one lane; a process not in it: lane 0).
    lane_of: FxHashMap<ProcKey, usize>,
}

impl ItemClocks {
    /// One lane's clock at 0.
    pub fn one() -> Self {
        Self::new(1, FxHashMap::default())
    }

    /// `lanes` clocks at 0, processes in the lanes `lane_of` says.
    pub fn new(lanes: usize, lane_of: FxHashMap<ProcKey, usize>) -> Self {
        Self {
            clocks: (0..lanes.max(1)).map(|_| Padded::default()).collect(),
            lane_of,
        }
    }

    fn lane(&self, proc: ProcKey) -> usize {
        if self.clocks.len() == 1 {
            0
        } else {
            self.lane_of.get(&proc).copied().unwrap_or(0)
        }
    }

    /// Lane `lane` is at item `n`.
    pub fn set(&self, lane: usize, n: u64) {
        self.clocks[lane].0.store(n, Relaxed);
    }

    fn now(&self, lane: usize) -> u64 {
        self.clocks[lane].0.load(Relaxed)
    }

    fn lanes(&self) -> usize {
        self.clocks.len()
    }
}

/// One lane's recorded answers, given back in order (a cache line of its own: each lane's
/// consumer moves its cursor per read).
#[repr(align(128))]
struct Lane<A> {
    list: Vec<(u64, ProcKey, A)>,
    next: AtomicUsize,
}

/// Recorded answers of one seam, given back in order, item by item, lane by lane.
struct Answers<A> {
    lanes: Vec<Lane<A>>,
    clocks: Arc<ItemClocks>,
    diverged: AtomicU64,
    skipped: AtomicU64,
}

impl<A> Answers<A> {
    fn new(
        frames: &[Frame],
        clocks: Arc<ItemClocks>,
        pick: impl Fn(&Frame) -> Option<(ProcKey, A)>,
    ) -> Self {
        let n = clocks.lanes();
        let mut items = 0;
        let mut lanes: Vec<Lane<A>> = (0..n)
            .map(|_| Lane {
                list: Vec::new(),
                next: AtomicUsize::new(0),
            })
            .collect();
        for f in frames {
            if matches!(f, Frame::Item(_)) {
                items += 1;
            } else if let Some((p, a)) = pick(f) {
                lanes[clocks.lane(p)].list.push((items, p, a));
            }
        }
        Self {
            lanes,
            clocks,
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
        let lane = self.clocks.lane(proc);
        let now = self.clocks.now(lane);
        let Lane { list, next } = &self.lanes[lane];
        let mut i = next.load(Relaxed);
        let start = i;
        while list.get(i).is_some_and(|(item, ..)| *item < now) {
            i += 1;
        }
        if i > start {
            self.skipped.fetch_add((i - start) as u64, Relaxed);
        }
        if let Some((item, p, a)) = list.get(i)
            && *item == now
            && *p == proc
            && let Some(v) = pick(a)
        {
            next.store(i + 1, Relaxed);
            return Some(v);
        }
        next.store(i, Relaxed);
        self.diverged.fetch_add(1, Relaxed);
        list[..i]
            .iter()
            .rev()
            .filter(|(_, p, _)| *p == proc)
            .find_map(|(_, _, a)| pick(a))
    }

    /// The counts so far; answers not reached yet count as skipped (at the end of a
    /// replay, those nobody asked for).
    fn counts(&self) -> SeamCounts {
        let unreached: usize = self
            .lanes
            .iter()
            .map(|l| l.list.len() - l.next.load(Relaxed).min(l.list.len()))
            .sum();
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
    /// The sequence answers among `frames`, item by item of `clocks`.
    pub fn new(frames: &[Frame], clocks: Arc<ItemClocks>) -> Self {
        Self(Answers::new(frames, clocks, |f| match f {
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
    /// The maps reads among `frames`, item by item of `clocks`.
    pub fn new(frames: &[Frame], clocks: Arc<ItemClocks>) -> Self {
        Self(Arc::new(Answers::new(frames, clocks, |f| match f {
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
        let clock = Arc::new(ItemClocks::one());
        let seq = ReplaySeq::new(&frames, clock.clone());
        let maps = ReplayMaps::new(&frames, clock.clone());
        let maps_counts = maps.counts();
        let mut buf = Vec::new();
        assert_eq!(seq.try_begin(A), Some(4));
        maps.read_maps(A, &mut buf).unwrap();
        assert_eq!(buf, b"text-a");
        assert!(!seq.retry(A, 4));
        clock.set(0, 1);
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
        clock.set(0, 2);
        assert_eq!(seq.try_begin(A), Some(6));
        // An item the replay handled without asking: its answers are passed over.
        let clock2 = Arc::new(ItemClocks::one());
        let seq2 = ReplaySeq::new(&frames, clock2.clone());
        clock2.set(0, 2);
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
