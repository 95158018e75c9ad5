//! A per-thread handle that resolves addresses: the fast path lives here.
//!
//! Each reader keeps, per process, the snapshot it last used. On a hit it reads the process's
//! sequence; if it is even, equal to the hit's and to its snapshot's, it binary-searches that
//! snapshot and re-reads the sequence. No lock, no allocation, no syscall, and no write to
//! memory another thread reads: the snapshot is immutable and this reader owns a reference to
//! it, so nothing has to protect it while it is read (which is why two readers scale). Anything
//! else goes to the slow path, [`Mirror::locate`].

use rustc_hash::FxHashMap;

use super::{
    counters::{Block, Fallback, Slot},
    mirror::{Mirror, Sink},
    outcome::{Hit, Normalized, Reason, Resolution, Via},
    proc_key::ProcKey,
    registry::{Registry, RegistryCache},
    resolver::Resolver,
    seq::SeqSource,
    snapshot::Snapshot,
    sync::Arc,
    vma::Vma,
};

/// What a reader remembers about one process.
struct Cached {
    proc: ProcKey,
    mirror: Arc<Mirror>,
    snap: Option<Arc<Snapshot>>,
}

/// Resolves addresses for one thread. Create one per thread with [`Reader::new`]; it is
/// `Send` but not meant to be shared.
pub struct Reader<S: SeqSource> {
    resolver: std::sync::Arc<Resolver<S>>,
    /// Processes this reader has met.
    entries: Vec<Cached>,
    /// Position of each process in `entries`.
    index: FxHashMap<ProcKey, usize>,
    /// The process resolved last and its position: hits come in bursts per process, and
    /// comparing one key is cheaper than hashing it.
    hot: Option<(ProcKey, usize)>,
    registry: RegistryCache,
    counters: std::sync::Arc<Block>,
    /// The resolver's untrack count when this reader last pruned its cache.
    untracks: u64,
}

impl<S: SeqSource> Reader<S> {
    /// A reader of `resolver`.
    pub fn new(resolver: &std::sync::Arc<Resolver<S>>) -> Self {
        let counters = std::sync::Arc::new(Block::default());
        resolver
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(counters.clone());
        Self {
            resolver: resolver.clone(),
            entries: Vec::new(),
            index: FxHashMap::default(),
            hot: None,
            registry: resolver.registry.cache(),
            counters,
            untracks: 0,
        }
    }

    /// The resolver this reader reads.
    pub fn resolver(&self) -> &std::sync::Arc<Resolver<S>> {
        &self.resolver
    }

    /// Resolves `addr` in `proc` as of the hit's sequence `at` (or, with `None`, as the
    /// address space is now), returning an owned answer.
    pub fn resolve(&mut self, proc: ProcKey, addr: u64, at: Option<u64>) -> Resolution<Normalized> {
        self.resolve_with(proc, addr, at, |r| r.map(|hit| hit.to_normalized()))
    }

    /// Resolves `addr` and hands the answer, borrowed from the snapshot that answered, to `f`.
    /// Unlike [`Reader::resolve`] this touches no shared reference count: the form for hot
    /// loops.
    #[inline]
    pub fn resolve_with<R>(
        &mut self,
        proc: ProcKey,
        addr: u64,
        at: Option<u64>,
        f: impl FnOnce(Resolution<Hit<'_>>) -> R,
    ) -> R {
        let seq = &self.resolver.seq;
        let why = match seq.try_begin(proc) {
            None => Fallback::InFlight,
            Some(s) if at.is_some_and(|hit| hit != s) => Fallback::HitSeq,
            Some(s) => match position(&mut self.hot, &self.index, proc)
                .and_then(|i| self.entries[i].snap.as_deref())
            {
                None => Fallback::NoSnapshot,
                Some(snap) if snap.seq() != s => Fallback::SeqMismatch,
                Some(snap) => {
                    let found = snap.lookup(addr);
                    if !seq.retry(proc, s) {
                        self.counters.bump(Slot::Fast);
                        let outcome = answer(
                            snap,
                            found,
                            addr,
                            &mut self.registry,
                            &self.resolver.registry,
                            &self.counters,
                        );
                        return f(Resolution {
                            via: Via::Fast,
                            seq: Some(s),
                            outcome,
                        });
                    }
                    Fallback::Changed
                }
            },
        };
        self.resolve_slow(proc, addr, at, why, f)
    }

    #[cold]
    #[inline(never)]
    fn resolve_slow<R>(
        &mut self,
        proc: ProcKey,
        addr: u64,
        at: Option<u64>,
        why: Fallback,
        f: impl FnOnce(Resolution<Hit<'_>>) -> R,
    ) -> R {
        self.counters.bump(why.into());
        self.prune();
        let located = match self.mirror(proc) {
            Some(mirror) => mirror
                .locate(at, &self.resolver.env(), Sink::Owned(&self.counters))
                .map_err(|reason| (reason, Some(mirror))),
            None => Err((Reason::NotTracked, None)),
        };
        match located {
            Ok((snap, via)) => {
                match via {
                    Via::Mirror => self.counters.bump(Slot::FromMirror),
                    Via::Retained => self.counters.bump(Slot::Retained),
                    Via::Replayed => self.counters.bump(Slot::Replayed),
                    Via::Fast | Via::Rescan | Via::Captured | Via::Kseq => {}
                }
                if let Some(i) = self.position(proc)
                    && self.entries[i]
                        .snap
                        .as_ref()
                        .is_none_or(|c| c.seq() < snap.seq())
                {
                    self.entries[i].snap = Some(snap.clone());
                }
                let outcome = answer(
                    &snap,
                    snap.lookup(addr),
                    addr,
                    &mut self.registry,
                    &self.resolver.registry,
                    &self.counters,
                );
                f(Resolution {
                    via,
                    seq: Some(snap.seq()),
                    outcome,
                })
            }
            Err((reason, mirror)) => {
                if reason == Reason::ProcessGone && mirror.is_some() {
                    // Kept (bounded) for hits still queued; see Resolver::exited.
                    self.resolver.exited(proc);
                }
                self.counters.bump_reason(reason);
                f(Resolution {
                    via: Via::Rescan,
                    seq: None,
                    outcome: Err(reason),
                })
            }
        }
    }

    /// The mirror of `proc`: from this reader's cache, else from the resolver (tracking the
    /// process if auto-tracking is on).
    fn mirror(&mut self, proc: ProcKey) -> Option<Arc<Mirror>> {
        if let Some(i) = self.position(proc) {
            if self.entries[i].mirror.is_alive() {
                return Some(self.entries[i].mirror.clone());
            }
            self.forget(|c| c.proc != proc);
        }
        let mirror = self
            .resolver
            .mirror(proc, self.resolver.config.auto_track)?;
        self.index.insert(proc, self.entries.len());
        self.entries.push(Cached {
            proc,
            mirror: mirror.clone(),
            snap: None,
        });
        Some(mirror)
    }

    /// Where `proc` is in `entries`.
    #[inline]
    fn position(&mut self, proc: ProcKey) -> Option<usize> {
        position(&mut self.hot, &self.index, proc)
    }

    /// Keeps only the entries `keep` accepts (rare: after untracks and exits).
    fn forget(&mut self, keep: impl Fn(&Cached) -> bool) {
        self.entries.retain(keep);
        self.index = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, c)| (c.proc, i))
            .collect();
        self.hot = None;
    }

    /// Drops cached processes the resolver no longer tracks (after any untrack).
    fn prune(&mut self) {
        let untracks = self
            .resolver
            .untracks
            .load(std::sync::atomic::Ordering::Relaxed);
        if untracks != self.untracks {
            self.untracks = untracks;
            self.forget(|c| c.mirror.is_alive());
        }
    }
}

impl<S: SeqSource> Drop for Reader<S> {
    fn drop(&mut self) {
        // Fold this reader's counts into the resolver's, so totals never go backwards.
        let mut readers = self
            .resolver
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        readers.retain(|b| !std::sync::Arc::ptr_eq(b, &self.counters));
        self.resolver.shared.absorb(&self.counters);
    }
}

/// Where `proc` is in a reader's entries: the last one used, else from the index (a free
/// function so the fast path can call it while borrowing other fields of the reader).
#[inline]
fn position(
    hot: &mut Option<(ProcKey, usize)>,
    index: &FxHashMap<ProcKey, usize>,
    proc: ProcKey,
) -> Option<usize> {
    if let Some((last, i)) = *hot
        && last == proc
    {
        return Some(i);
    }
    let i = *index.get(&proc)?;
    *hot = Some((proc, i));
    Some(i)
}

/// Turns a lookup into an answer: the file offset and probe of a hit, or why it missed.
#[inline]
fn answer<'s>(
    snap: &'s Snapshot,
    found: Option<&'s Vma>,
    addr: u64,
    cache: &mut RegistryCache,
    registry: &Registry,
    counters: &Block,
) -> Result<Hit<'s>, Reason> {
    match found {
        Some(vma) => {
            let file_offset = vma.file_offset(addr);
            Ok(Hit {
                vma,
                file_offset,
                probe: cache.get(registry, vma.file, file_offset),
            })
        }
        None => {
            let reason = Reason::from(snap.miss(addr));
            counters.bump_reason(reason);
            Err(reason)
        }
    }
}

#[cfg(all(test, not(probed_loom)))]
#[path = "reader_tests.rs"]
mod tests;
