//! One traced process's mirror: the latest snapshot, published for lock-free readers, a
//! bounded history of older ones, and the per-process lock that serializes rescans.

use std::collections::VecDeque;

use super::{
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
    /// Snapshots kept per process besides the current one, so that hits stamped with an
    /// older sequence still resolve exactly (hits queued before a change is seen).
    pub history: usize,
    /// Rescan attempts before giving up with [`Reason::SeqUnstable`].
    pub rescan_tries: u32,
    /// Start tracking a process the first time one of its addresses is resolved, instead of
    /// answering [`Reason::NotTracked`].
    pub auto_track: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            history: 4,
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
    /// Older snapshots, oldest first.
    history: VecDeque<Arc<Snapshot>>,
    /// Reused maps text buffer (a 7,000-line text is ≈ 600 KiB).
    buf: Vec<u8>,
}

pub(crate) struct Mirror {
    pub(crate) proc: ProcKey,
    /// The newest snapshot, read without locks.
    current: Published<Snapshot>,
    /// Serializes rescans of this process; holds the history.
    locked: Mutex<Locked>,
    /// Cleared when the process stops being tracked.
    alive: std::sync::atomic::AtomicBool,
}

impl Mirror {
    pub(crate) fn new(proc: ProcKey) -> Self {
        Self {
            proc,
            current: Published::new(None),
            locked: Mutex::new(Locked {
                history: VecDeque::new(),
                buf: Vec::new(),
            }),
            alive: std::sync::atomic::AtomicBool::new(true),
        }
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
    fn answers<S: SeqSource>(&self, snap: &Snapshot, at: Option<u64>, seq: &S) -> bool {
        match at {
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
        if at.is_some_and(|hit| hit & 1 == 1) {
            return Err(Reason::HitDuringChange);
        }
        // Another thread may already have published what we need: no lock.
        if let Some(snap) = self.current()
            && self.answers(&snap, at, env.seq)
        {
            return Ok((snap, Via::Mirror));
        }
        let mut locked = lock(&self.locked);
        // …or finished doing so while we waited for the lock.
        let current = self.current();
        if let Some(snap) = &current
            && self.answers(snap, at, env.seq)
        {
            return Ok((snap.clone(), Via::Mirror));
        }
        if let Some(hit) = at {
            if let Some(old) = locked.history.iter().find(|s| s.seq() == hit) {
                return Ok((old.clone(), Via::Retained));
            }
            // Sequences only grow: a picture older than the current one that was not kept
            // will never be seen again, rescanning cannot help.
            if current.as_ref().is_some_and(|c| c.seq() > hit) {
                return Err(Reason::NoSnapshotAtSeq);
            }
        }
        let snap = self.rescan(&mut locked, env, sink)?;
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
                    tracing::warn!(error = %err, source = ?std::error::Error::source(&err), "rescan failed");
                    sink.add(Slot::RescanFailures);
                    return Err(Reason::ScanFailed);
                }
            };
            sink.add(Slot::Rescans);
            return Ok(self.publish(locked, snap, env.config.history));
        }
        sink.add(Slot::RescanFailures);
        Err(Reason::SeqUnstable)
    }

    /// Makes `snap` the current snapshot (the previous one goes to the bounded history) and
    /// returns it; keeps the current one if it is at least as new.
    fn publish(&self, locked: &mut Locked, snap: Snapshot, history: usize) -> Arc<Snapshot> {
        match self.current() {
            Some(cur) if cur.seq() >= snap.seq() => return cur,
            Some(cur) if history > 0 => {
                if locked.history.len() == history {
                    locked.history.pop_front();
                }
                locked.history.push_back(cur);
            }
            _ => {}
        }
        let snap = Arc::new(snap);
        self.current.store(Some(snap.clone()));
        snap
    }
}

/// Waits a little for an in-flight change to finish before the next attempt.
fn backoff() {
    #[cfg(probed_loom)]
    loom::thread::yield_now();
    #[cfg(not(probed_loom))]
    std::thread::yield_now();
}
