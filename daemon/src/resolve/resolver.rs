//! The resolver: the set of traced processes, their mirrors, the probe registry, and the
//! counters of every reader. Resolution itself happens in a [`Reader`](super::Reader).

use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering as StdOrdering};

use rustc_hash::FxHashMap;

use super::{
    counters::{Block, Counters, Slot},
    mirror::{Config, Env, Mirror, Sink},
    outcome::Reason,
    proc_key::ProcKey,
    registry::Registry,
    seq::SeqSource,
    snapshot::Snapshot,
    source::MapsSource,
    sync::{Arc, Mutex, lock},
};

/// Why a process could not be given a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot take a snapshot of process {proc} ({reason})")]
pub struct TrackError {
    /// The process.
    pub proc: ProcKey,
    /// What went wrong.
    pub reason: Reason,
}

/// Resolves addresses of traced processes to (file, file offset, probe).
///
/// `S` is the change-sequence source, a type parameter so that its two calls inline into the
/// fast path. Share it with `Arc` and resolve from any number of threads, each through its own
/// [`Reader`](super::Reader).
pub struct Resolver<S> {
    pub(crate) seq: S,
    maps: Box<dyn MapsSource>,
    pub(crate) registry: Registry,
    pub(crate) config: Config,
    /// Traced processes. Locked only on slow paths (a reader meeting a process for the first
    /// time, track/untrack).
    procs: Mutex<FxHashMap<ProcKey, Arc<Mirror>>>,
    /// Bumped on every untrack, so readers know when to drop cached mirrors.
    pub(crate) untracks: StdAtomicU64,
    /// Counter blocks of live readers.
    pub(crate) readers: std::sync::Mutex<Vec<std::sync::Arc<Block>>>,
    /// Counts of dropped readers and of work done outside readers (track, refresh).
    pub(crate) shared: Block,
    /// Exited processes still tracked for their queued hits, oldest first.
    exited: Mutex<std::collections::VecDeque<ProcKey>>,
}

impl<S: SeqSource> Resolver<S> {
    /// A resolver with the default [`Config`].
    pub fn new(seq: S, maps: impl MapsSource + 'static) -> Self {
        Self::with_config(seq, maps, Config::default())
    }

    /// A resolver with explicit tunables.
    pub fn with_config(seq: S, maps: impl MapsSource + 'static, config: Config) -> Self {
        Self {
            seq,
            maps: Box::new(maps),
            registry: Registry::default(),
            config,
            procs: Mutex::new(FxHashMap::default()),
            untracks: StdAtomicU64::new(0),
            readers: std::sync::Mutex::new(Vec::new()),
            shared: Block::default(),
            exited: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// The sequence source.
    pub fn seq(&self) -> &S {
        &self.seq
    }

    /// The probe registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn env(&self) -> Env<'_, S> {
        Env {
            seq: &self.seq,
            maps: &*self.maps,
            config: &self.config,
        }
    }

    /// Starts tracking `proc` and takes its first snapshot now, so that even a process that
    /// exits right after its first hit resolves. Tracking an already tracked process just
    /// brings its snapshot up to date.
    pub fn track(&self, proc: ProcKey) -> Result<Arc<Snapshot>, TrackError> {
        let mirror = self.mirror(proc, true).expect("created when absent");
        self.refresh_mirror(&mirror)
    }

    /// Makes `proc`'s published snapshot current, rescanning if it is behind the sequence
    /// (what a change tracker calls after a change ends, so readers find it ready).
    pub fn refresh(&self, proc: ProcKey) -> Result<Arc<Snapshot>, TrackError> {
        let mirror = self
            .mirror(proc, self.config.auto_track)
            .ok_or(TrackError {
                proc,
                reason: Reason::NotTracked,
            })?;
        self.refresh_mirror(&mirror)
    }

    fn refresh_mirror(&self, mirror: &Mirror) -> Result<Arc<Snapshot>, TrackError> {
        let proc = mirror.proc;
        match mirror.locate(None, &self.env(), Sink::Shared(&self.shared)) {
            Ok((snap, _)) => Ok(snap),
            Err(reason) => {
                if reason == Reason::ProcessGone {
                    self.exited(proc);
                }
                Err(TrackError { proc, reason })
            }
        }
    }

    /// Stops tracking `proc`; returns whether it was tracked. Its snapshots are freed once
    /// every reader that holds one has moved on.
    pub fn untrack(&self, proc: ProcKey) -> bool {
        let removed = lock(&self.procs).remove(&proc);
        if let Some(mirror) = &removed {
            mirror.retire();
            self.untracks.fetch_add(1, StdOrdering::Relaxed);
        }
        removed.is_some()
    }

    /// Adds a base picture of `proc` valid from change `ticket` (the kernel's report at exec,
    /// or the partial picture of a process whose tracking starts now), tracking it if needed.
    pub fn add_base(&self, proc: ProcKey, ticket: u64, snap: Snapshot) {
        let mirror = self.mirror(proc, true).expect("created when absent");
        mirror.add_base(ticket, snap);
    }

    /// A tracked process forked `child`: the child starts, at its `ticket`, with the picture
    /// its parent had at `parent_seq` (when the address space was copied). Nothing happens
    /// if the parent is not tracked or has no picture for that sequence; the child's first
    /// resolution then scans it.
    pub fn fork(&self, parent: ProcKey, parent_seq: u64, child: ProcKey, ticket: u64) {
        if parent_seq % 2 == 1 {
            return;
        }
        let Some(mirror) = self.mirror(parent, false) else {
            return;
        };
        let Some(picture) = mirror.picture_at(parent_seq, self.config.reported_changes) else {
            return;
        };
        let copy = picture.with_seq(super::chain::seq_of_label(ticket));
        self.mirror(child, true)
            .expect("created when absent")
            .add_base(ticket, copy);
    }

    /// Replays one change report of a tracked process (`None`: a change that cannot be
    /// replayed, so pictures from `ticket` on wait for a rescan). Reports of untracked
    /// processes are ignored: their first scan will include them.
    pub fn change(&self, proc: ProcKey, ticket: u64, change: Option<super::replay::Change>) {
        let Some(mirror) = self.mirror(proc, false) else {
            return;
        };
        let slot = if change.is_some() {
            Slot::ChangesReplayed
        } else {
            Slot::ChangesUnreplayable
        };
        self.shared.add_shared(slot, 1);
        mirror.add_change(ticket, change);
    }

    /// Drops every picture of every process: the change tracker lost a report, so replayed
    /// pictures may miss a change. Live processes are rescanned on their next resolution.
    pub fn distrust_all(&self) {
        let mirrors: Vec<Arc<Mirror>> = lock(&self.procs).values().cloned().collect();
        for mirror in mirrors {
            mirror.forget_pictures();
        }
    }

    /// Records that `proc` exited. Its pictures stay for hits still queued, within
    /// `Config::retain_exited` exited processes; the oldest beyond that are dropped and
    /// counted.
    pub fn exited(&self, proc: ProcKey) {
        let Some(mirror) = self.mirror(proc, false) else {
            return;
        };
        if mirror.has_exited() {
            return;
        }
        mirror.mark_exited();
        let evicted: Vec<ProcKey> = {
            let mut exited = lock(&self.exited);
            exited.push_back(proc);
            let excess = exited.len().saturating_sub(self.config.retain_exited);
            exited.drain(..excess).collect()
        };
        for old in evicted {
            if self.untrack(old) {
                self.shared.add_shared(Slot::ExitedDropped, 1);
            }
        }
    }

    /// Whether `proc` is tracked.
    pub fn is_tracked(&self, proc: ProcKey) -> bool {
        lock(&self.procs).contains_key(&proc)
    }

    /// The tracked processes.
    pub fn tracked(&self) -> Vec<ProcKey> {
        lock(&self.procs).keys().copied().collect()
    }

    /// How many processes the resolver holds pictures of, and how many of those have exited
    /// (kept for hits still queued). For the metrics endpoint: one lock, no allocation.
    pub fn population(&self) -> (usize, usize) {
        let procs = lock(&self.procs);
        let exited = procs.values().filter(|m| m.has_exited()).count();
        (procs.len(), exited)
    }

    /// The newest published snapshot of `proc` (not necessarily current: check its `seq`).
    pub fn snapshot(&self, proc: ProcKey) -> Option<Arc<Snapshot>> {
        lock(&self.procs).get(&proc)?.current()
    }

    /// The mirror of `proc`, created (tracked) if absent and `create` is set.
    pub(crate) fn mirror(&self, proc: ProcKey, create: bool) -> Option<Arc<Mirror>> {
        let mut procs = lock(&self.procs);
        if let Some(m) = procs.get(&proc) {
            return Some(m.clone());
        }
        if !create {
            return None;
        }
        let mirror = Arc::new(Mirror::new(proc, self.config.history));
        procs.insert(proc, mirror.clone());
        Some(mirror)
    }

    /// The sum of all counters so far.
    pub fn counters(&self) -> Counters {
        let mut sum = Counters::default();
        self.shared.add_to(&mut sum);
        for block in self
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            block.add_to(&mut sum);
        }
        sum
    }
}
