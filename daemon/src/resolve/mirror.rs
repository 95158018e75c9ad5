//! One traced process's mirror: the latest snapshot, published for lock-free readers, the
//! chain of older and replayed pictures, and the per-process lock that serializes rescans
//! and chain updates.

use super::{
    chain::{Chain, Found, seq_of_label},
    counters::{Block, Slot},
    outcome::{Reason, Via},
    proc_key::ProcKey,
    seq::SeqSource,
    snapshot::Snapshot,
    source::{MapsSource, ScanError},
    sync::{Arc, Mutex, Published, lock},
};

/// Tunables of the slow path.
#[derive(Clone, Debug)]
pub struct Config {
    /// Pictures kept per process (scanned and replayed), so that hits stamped with an older
    /// sequence still resolve exactly (hits queued before later changes are seen).
    pub history: usize,
    /// Exited processes whose pictures are kept for hits still queued; the oldest is dropped
    /// (and counted) beyond this.
    pub retain_exited: usize,
    /// Every mapping change of a tracked process is reported (`Resolver::change`) before any
    /// hit stamped with a sequence that includes it is resolved — true with the BPF change
    /// tracker, whose reports share the hits' ring buffer. Then a picture answers every hit
    /// from its label to the next reported change; otherwise only hits of exactly its
    /// sequence.
    pub reported_changes: bool,
    /// Rescan attempts before giving up with [`Reason::SeqUnstable`].
    pub rescan_tries: u32,
    /// Start tracking a process the first time one of its addresses is resolved, instead of
    /// answering [`Reason::NotTracked`].
    pub auto_track: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            history: 16,
            retain_exited: 1024,
            reported_changes: false,
            rescan_tries: 8,
            auto_track: true,
        }
    }
}

/// Where slow-path counts go: a reader's own block, or the resolver's shared one.
#[derive(Clone, Copy)]
pub(crate) enum Sink<'a> {
    /// Written only by the calling reader.
    Owned(&'a Block),
    /// Written by any thread (atomic adds).
    Shared(&'a Block),
}

impl Sink<'_> {
    fn add(self, slot: Slot) {
        match self {
            Sink::Owned(b) => b.bump(slot),
            Sink::Shared(b) => b.add_shared(slot, 1),
        }
    }
}

/// Everything the slow path needs from the resolver.
pub(crate) struct Env<'a, S> {
    pub(crate) seq: &'a S,
    pub(crate) maps: &'a dyn MapsSource,
    pub(crate) config: &'a Config,
}

/// State touched only under the process lock.
struct Locked {
    /// Scanned and replayed pictures, by the change ticket they are valid from.
    chain: Chain,
    /// Reused maps text buffer (a 7,000-line text is ≈ 600 KiB).
    buf: Vec<u8>,
    /// Chain updates so far (bases and reports added).
    updates: u64,
    /// When the last rescan gave up because the address space kept changing, and the
    /// number of chain updates then: another rescan is pointless until time passes or
    /// something new is known, and a storm of them would starve the event consumer.
    failed_scan: Option<(std::time::Instant, u64)>,
}

/// How long after a failed rescan the process is not rescanned again (unless the chain
/// changed meanwhile).
const RESCAN_BACKOFF: std::time::Duration = std::time::Duration::from_millis(2);

pub(crate) struct Mirror {
    pub(crate) proc: ProcKey,
    /// The newest snapshot, read without locks.
    current: Published<Snapshot>,
    /// Serializes rescans of this process; holds the history.
    locked: Mutex<Locked>,
    /// Cleared when the process stops being tracked.
    alive: std::sync::atomic::AtomicBool,
    /// Set when the process has exited: no rescan can help any more.
    exited: std::sync::atomic::AtomicBool,
}

impl Mirror {
    pub(crate) fn new(proc: ProcKey, history: usize) -> Self {
        Self {
            proc,
            current: Published::new(None),
            locked: Mutex::new(Locked {
                chain: Chain::new(history),
                buf: Vec::new(),
                updates: 0,
                failed_scan: None,
            }),
            alive: std::sync::atomic::AtomicBool::new(true),
            exited: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Records that the process exited: later misses are answered from the chain or not at
    /// all, never by a rescan (its pid may already be someone else's).
    pub(crate) fn mark_exited(&self) {
        self.exited
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn has_exited(&self) -> bool {
        self.exited.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The picture valid for sequence `seq`, if the chain has one.
    pub(crate) fn picture_at(&self, seq: u64, reported: bool) -> Option<Arc<Snapshot>> {
        match lock(&self.locked).chain.at(seq, reported) {
            Found::Picture { snap, .. } => Some(snap),
            _ => None,
        }
    }

    /// Adds a base picture (the kernel's report at exec) valid from `ticket`.
    pub(crate) fn add_base(&self, ticket: u64, snap: Snapshot) {
        let mut locked = lock(&self.locked);
        locked.chain.insert_base(ticket, Arc::new(snap));
        locked.updates += 1;
        self.publish_newest(&locked);
    }

    /// Replays the change with `ticket` (or, with `None`, records that an unreplayable change
    /// happened there).
    pub(crate) fn add_change(&self, ticket: u64, change: Option<super::replay::Change>) {
        let mut locked = lock(&self.locked);
        match change {
            Some(change) => locked.chain.insert_change(ticket, Arc::new(change)),
            None => locked.chain.poison(ticket),
        }
        locked.updates += 1;
        self.publish_newest(&locked);
    }

    /// Drops every picture: a change report was lost, so none of them can be trusted. The
    /// next resolution rescans (if the process still lives).
    pub(crate) fn forget_pictures(&self) {
        let mut locked = lock(&self.locked);
        locked.chain.clear();
        self.publish_newest(&locked);
    }

    /// Publishes the chain's newest picture for the fast path (nothing if it is poisoned:
    /// readers then keep missing until a rescan).
    fn publish_newest(&self, locked: &Locked) {
        let newest = locked.chain.newest().and_then(|e| e.snap.clone());
        self.current.store(newest);
    }

    /// The newest published snapshot.
    pub(crate) fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn retire(&self) {
        self.alive
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `snap` answers a resolution "as of the hit's sequence `at`", or, without one,
    /// "as of now" (then it must be of the sequence the source reports now).
    fn answers<S: SeqSource>(&self, snap: &Snapshot, at: Option<u64>, env: &Env<'_, S>) -> bool {
        let seq = env.seq;
        match at {
            // With reported changes the newest picture answers every later hit: a change
            // after it would have been reported, and so would be newer still.
            Some(hit) if env.config.reported_changes => snap.seq() <= hit,
            Some(hit) => snap.seq() == hit,
            None => seq.try_begin(self.proc) == Some(snap.seq()),
        }
    }

    /// The slow path: finds or makes the snapshot that answers for `at` (see
    /// [`Mirror::answers`]), rescanning under the process lock if no published or retained
    /// snapshot does.
    pub(crate) fn locate<S: SeqSource>(
        &self,
        at: Option<u64>,
        env: &Env<'_, S>,
        sink: Sink<'_>,
    ) -> Result<(Arc<Snapshot>, Via), Reason> {
        // A hit stamped while a change was in flight (odd sequence 2b - 1). With reported
        // changes, every change that had completed by then was reported before the hit, and
        // none still in flight was: so the newest picture labelled ≤ b *now* holds exactly
        // the completed ones. An in-flight change cannot have touched the hit's own address
        // or any return address on its stack — code being executed or returned to cannot be
        // unmapped or remapped without crashing the thread — so that picture answers for
        // them. Without reported changes nothing tells which picture that is.
        let at = match at {
            Some(hit) if hit & 1 == 1 && env.config.reported_changes => Some(hit + 1),
            Some(hit) if hit & 1 == 1 => return Err(Reason::HitDuringChange),
            other => other,
        };
        // Another thread may already have published what we need: no lock.
        if let Some(snap) = self.current()
            && self.answers(&snap, at, env)
        {
            return Ok((snap, Via::Mirror));
        }
        let mut locked = lock(&self.locked);
        // …or finished doing so while we waited for the lock.
        let current = self.current();
        if let Some(snap) = &current
            && self.answers(snap, at, env)
        {
            return Ok((snap.clone(), Via::Mirror));
        }
        if let Some(hit) = at {
            match locked.chain.at(hit, env.config.reported_changes) {
                Found::Picture { snap, replayed } => {
                    let via = if replayed {
                        Via::Replayed
                    } else {
                        Via::Retained
                    };
                    return Ok((snap, via));
                }
                Found::Poisoned | Found::TooOld | Found::Empty => {}
            }
            // Sequences only grow: a rescan now describes the hit only if nothing changed
            // since; and an exited process cannot be rescanned at all.
            if self.has_exited() {
                return Err(Reason::ProcessGone);
            }
            if current.as_ref().is_some_and(|c| c.seq() > hit) {
                return Err(Reason::NoSnapshotAtSeq);
            }
        } else if self.has_exited() {
            return Err(Reason::ProcessGone);
        }
        if let Some((at, updates)) = locked.failed_scan
            && updates == locked.updates
            && at.elapsed() < RESCAN_BACKOFF
        {
            return Err(Reason::SeqUnstable);
        }
        let scanned = self.rescan(&mut locked, env, sink);
        locked.failed_scan = match &scanned {
            Err(Reason::SeqUnstable) => Some((std::time::Instant::now(), locked.updates)),
            _ => None,
        };
        let snap = scanned?;
        match at {
            Some(hit) if hit != snap.seq() => Err(Reason::NoSnapshotAtSeq),
            _ => Ok((snap, Via::Rescan)),
        }
    }

    /// Reads the maps between two reads of the sequence, until both agree (bounded), and
    /// publishes the result. Runs under the process lock.
    fn rescan<S: SeqSource>(
        &self,
        locked: &mut Locked,
        env: &Env<'_, S>,
        sink: Sink<'_>,
    ) -> Result<Arc<Snapshot>, Reason> {
        let proc = self.proc;
        for attempt in 0..env.config.rescan_tries {
            if attempt > 0 {
                sink.add(Slot::RescanRetries);
                backoff();
            }
            // Odd (a change in flight) or unknown: nothing read now could be labelled.
            let Some(before) = env.seq.try_begin(proc) else {
                continue;
            };
            let read = env.maps.read_maps(proc, &mut locked.buf);
            // The maps text is read in chunks and tears under a concurrent change: only a
            // text read entirely inside one even interval describes sequence `before`.
            if env.seq.retry(proc, before) {
                continue;
            }
            let parsed = read.and_then(|()| {
                Snapshot::parse(before, &locked.buf)
                    .map_err(|source| ScanError::Parse { proc, source })
            });
            let snap = match parsed {
                Ok(snap) => snap,
                Err(ScanError::Gone(_)) => {
                    sink.add(Slot::RescanFailures);
                    return Err(Reason::ProcessGone);
                }
                Err(err) => {
                    // Folded: a process whose maps cannot be read fails every rescan.
                    static FOLD: crate::fold::Fold = crate::fold::Fold::new(crate::fold::INTERVAL);
                    if let Some(times) = FOLD.note(1) {
                        tracing::warn!(error = %err, source = ?std::error::Error::source(&err), times, "rescan failed");
                    }
                    sink.add(Slot::RescanFailures);
                    return Err(Reason::ScanFailed);
                }
            };
            sink.add(Slot::Rescans);
            return Ok(self.publish(locked, snap));
        }
        sink.add(Slot::RescanFailures);
        Err(Reason::SeqUnstable)
    }

    /// Adds a scanned `snap` to the chain and publishes the chain's newest picture; returns
    /// the picture valid at `snap`'s sequence (the scan itself).
    fn publish(&self, locked: &mut Locked, snap: Snapshot) -> Arc<Snapshot> {
        let seq = snap.seq();
        let snap = Arc::new(snap);
        locked.chain.insert_base(seq / 2, snap.clone());
        self.publish_newest(locked);
        match locked.chain.at(seq_of_label(seq / 2), false) {
            Found::Picture { snap, .. } => snap,
            _ => snap,
        }
    }
}

/// Waits a little for an in-flight change to finish before the next attempt.
fn backoff() {
    #[cfg(probed_loom)]
    loom::thread::yield_now();
    #[cfg(not(probed_loom))]
    std::thread::yield_now();
}
