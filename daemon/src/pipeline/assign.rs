//! Which consumer thread each ring item goes to (`--consumers`, shards.rs): items by their
//! process, processes given shards in turn as they first appear; the same dealing that a
//! replay's seams lane their recorded answers by.

use probed_common::{PROC_EXIT, PROC_FORK};
use rustc_hash::FxHashMap;

use crate::{events::Event, resolve::ProcKey};

/// The process (pid, generation) an item belongs to (`None`: to every process, or to its
/// thread's next hit).
pub fn owner(event: &Event) -> Option<ProcKey> {
    match event {
        Event::Proc(p) => Some(ProcKey::new(p.pid, p.proc_gen)),
        Event::Change(c) => Some(ProcKey::new(c.pid, c.proc_gen)),
        Event::FileName(_) | Event::ArgStrings(_) => None,
        other => other.hit().map(|h| ProcKey::new(h.pid, h.proc_gen)),
    }
}

/// Which shard each process goes to: when first seen, the next shard in turn (the first
/// process to shard 0, which the dispatching thread handles itself: a run of one busy
/// process adds no thread hop); kept by pid until the process exits (an exec keeps it).
#[derive(Debug)]
pub struct Assigner {
    shards: usize,
    next: usize,
    of: FxHashMap<u32, usize>,
    /// The process asked for last, and its shard.
    last: Option<(u32, usize)>,
}

impl Assigner {
    /// Over `shards` shards.
    pub fn new(shards: usize) -> Self {
        Self {
            shards: shards.max(1),
            next: 0,
            of: FxHashMap::default(),
            last: None,
        }
    }

    /// The shard of process `pid`, given one now if it has none.
    pub fn shard(&mut self, pid: u32) -> usize {
        // Items come in runs per process: the last answer again, without hashing.
        if let Some((last, shard)) = self.last
            && last == pid
        {
            return shard;
        }
        let (shards, next) = (self.shards, &mut self.next);
        let shard = *self.of.entry(pid).or_insert_with(|| {
            let s = *next;
            *next = (s + 1) % shards;
            s
        });
        self.last = Some((pid, shard));
        shard
    }

    /// The shard of process `pid`, if it has one.
    pub fn known(&self, pid: u32) -> Option<usize> {
        self.of.get(&pid).copied()
    }

    /// Deals `event` (its owner's shard, and for a fork the parent's shard if it has one):
    /// the dispatcher and a replay's seams (which lane answers go to) both go through it.
    pub fn route(&mut self, event: &Event) -> Option<Route> {
        let proc = owner(event)?;
        let shard = self.shard(proc.pid);
        let route = match event {
            Event::Proc(p) if p.what == PROC_FORK => Route {
                proc,
                shard,
                parent: self.known(p.parent_pid),
            },
            _ => Route {
                proc,
                shard,
                parent: None,
            },
        };
        if let Event::Proc(p) = event
            && p.what == PROC_EXIT
        {
            // Later items of this pid are another process's.
            self.of.remove(&p.pid);
            self.last = None;
        }
        Some(route)
    }
}

/// Where an item goes.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// Its process.
    pub proc: ProcKey,
    /// Its process's shard.
    pub shard: usize,
    /// A fork's parent's shard, if the parent has one.
    pub parent: Option<usize>,
}

/// The shard of every process a recorded ring's `events` name, as the dispatcher will
/// assign them (a replay's seams give each shard's consumer its own processes' answers).
pub fn lanes<'a>(
    shards: usize,
    events: impl Iterator<Item = Event> + 'a,
) -> FxHashMap<ProcKey, usize> {
    let mut assigner = Assigner::new(shards);
    let mut lanes = FxHashMap::default();
    for event in events {
        if let Some(route) = assigner.route(&event) {
            lanes.insert(route.proc, route.shard);
        }
    }
    lanes
}
