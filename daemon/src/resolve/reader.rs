//! A per-thread handle that resolves addresses: the fast path lives here.
//!
//! Each reader keeps, per process, the snapshot it last used. On a hit it reads the process's
//! sequence; if it is even, equal to the hit's and to its snapshot's, it binary-searches that
//! snapshot and re-reads the sequence. No lock, no allocation, no syscall, and no write to
//! memory another thread reads: the snapshot is immutable and this reader owns a reference to
//! it, so nothing has to protect it while it is read (which is why two readers scale). Anything
//! else goes to the slow path, [`Mirror::locate`].

use super::{
    counters::{Block, Fallback, Slot},
    hash::FastMap,
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
    index: FastMap<ProcKey, usize>,
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
            index: FastMap::default(),
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
                    Via::Fast | Via::Rescan | Via::Captured => {}
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
    index: &FastMap<ProcKey, usize>,
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
mod tests {
    use std::sync::Arc as StdArc;

    use super::*;
    use crate::{
        file_id::FileId,
        resolve::{
            Config, ProbeId, UserSeq,
            testing::{FakeMaps, FakeVma, change, render},
        },
    };

    const P: ProcKey = ProcKey::new(77, 3);

    /// Version `v` of the address space: one executable page of inode `100 + v` at 0x10000,
    /// plus a heap.
    fn text(v: u64) -> Vec<u8> {
        render(&[
            FakeVma {
                start: 0x10000,
                end: 0x11000,
                perms: "r-xp",
                pgoff: 0x2000,
                major: 8,
                minor: 1,
                ino: 100 + v,
                path: format!("/lib{v}.so"),
            },
            FakeVma {
                start: 0x20000,
                end: 0x30000,
                perms: "rw-p",
                pgoff: 0,
                major: 0,
                minor: 0,
                ino: 0,
                path: "[heap]".into(),
            },
        ])
    }

    type World = (
        StdArc<Resolver<StdArc<UserSeq>>>,
        StdArc<UserSeq>,
        StdArc<FakeMaps>,
        u64,
    );

    fn world(config: Config) -> World {
        let seq = StdArc::new(UserSeq::with_capacity(8));
        let maps = StdArc::new(FakeMaps::new());
        let base = seq.register(P).unwrap();
        maps.set(P, text(0));
        let resolver = StdArc::new(Resolver::with_config(seq.clone(), maps.clone(), config));
        (resolver, seq, maps, base)
    }

    fn ino(r: &Resolution<Normalized>) -> u64 {
        r.outcome.as_ref().expect("resolved").file.ino
    }

    /// The first resolution rescans; the next ones take the fast path without reading maps.
    #[test]
    fn first_rescan_then_fast() {
        let (resolver, _, maps, base) = world(Config::default());
        let mut reader = Reader::new(&resolver);
        let first = reader.resolve(P, 0x10010, None);
        assert_eq!((first.via, first.seq), (Via::Rescan, Some(base)));
        let hit = first.outcome.unwrap();
        assert_eq!(hit.file, FileId::from_major_minor(8, 1, 100));
        assert_eq!(hit.file_offset, 0x2010);
        assert_eq!(&*hit.path, std::path::Path::new("/lib0.so"));
        let reads = maps.reads();
        for _ in 0..3 {
            let again = reader.resolve(P, 0x10010, Some(base));
            assert_eq!(again.via, Via::Fast);
            assert_eq!(ino(&again), 100);
        }
        assert_eq!(maps.reads(), reads, "the fast path reads no maps");
        let c = resolver.counters();
        assert_eq!((c.fast, c.fallback_no_snapshot, c.rescans), (3, 1, 1));
    }

    /// After a change the old snapshot is not trusted: the next resolution rescans.
    #[test]
    fn change_forces_rescan() {
        let (resolver, seq, maps, base) = world(Config::default());
        let mut reader = Reader::new(&resolver);
        assert_eq!(ino(&reader.resolve(P, 0x10000, None)), 100);
        let s1 = change(&seq, &maps, P, text(1)).unwrap();
        let after = reader.resolve(P, 0x10000, None);
        assert_eq!(
            (after.via, after.seq, ino(&after)),
            (Via::Rescan, Some(s1), 101)
        );
        assert_eq!(resolver.counters().fallback_seq_mismatch, 1);
        assert!(s1 > base);
    }

    /// A hit stamped before a change resolves against the retained older snapshot; one older
    /// than the history cannot be answered; one stamped mid-change is refused.
    #[test]
    fn hits_resolve_as_of_their_sequence() {
        let config = Config {
            history: 1,
            ..Config::default()
        };
        let (resolver, seq, maps, base) = world(config);
        let mut reader = Reader::new(&resolver);
        resolver.track(P).unwrap();
        let s1 = change(&seq, &maps, P, text(1)).unwrap();
        resolver.refresh(P).unwrap();
        let old = reader.resolve(P, 0x10000, Some(base));
        assert_eq!((old.via, ino(&old)), (Via::Retained, 100));
        let s2 = change(&seq, &maps, P, text(2)).unwrap();
        resolver.refresh(P).unwrap();
        assert_eq!(ino(&reader.resolve(P, 0x10000, Some(s1))), 101);
        let gone = reader.resolve(P, 0x10000, Some(base));
        assert_eq!(gone.outcome, Err(Reason::NoSnapshotAtSeq));
        let mid = reader.resolve(P, 0x10000, Some(s2 - 1));
        assert_eq!(mid.outcome, Err(Reason::HitDuringChange));
        assert_eq!(ino(&reader.resolve(P, 0x10000, Some(s2))), 102);
    }

    /// Misses say why: nothing mapped, or a mapping the snapshot does not keep.
    #[test]
    fn miss_reasons() {
        let (resolver, ..) = world(Config::default());
        let mut reader = Reader::new(&resolver);
        assert_eq!(
            reader.resolve(P, 0x5000, None).outcome,
            Err(Reason::Unmapped)
        );
        assert_eq!(
            reader.resolve(P, 0x20000, None).outcome,
            Err(Reason::NotFileBacked)
        );
        let c = resolver.counters();
        assert_eq!(c.unresolved(Reason::Unmapped), 1);
        assert_eq!(c.unresolved(Reason::NotFileBacked), 1);
    }

    /// A probe registered at the exact file offset is reported; a neighbour is not.
    #[test]
    fn registry_lookup() {
        let (resolver, ..) = world(Config::default());
        let file = FileId::from_major_minor(8, 1, 100);
        resolver.registry().insert(file, 0x2040, ProbeId(9));
        let mut reader = Reader::new(&resolver);
        let hit = reader.resolve(P, 0x10040, None).outcome.unwrap();
        assert_eq!(hit.probe, Some(ProbeId(9)));
        let near = reader.resolve(P, 0x10041, None).outcome.unwrap();
        assert_eq!(near.probe, None);
    }

    /// A second reader finds the snapshot the first one published, without rescanning.
    #[test]
    fn second_reader_uses_mirror() {
        let (resolver, _, maps, _) = world(Config::default());
        let mut a = Reader::new(&resolver);
        let mut b = Reader::new(&resolver);
        assert_eq!(a.resolve(P, 0x10000, None).via, Via::Rescan);
        let reads = maps.reads();
        assert_eq!(b.resolve(P, 0x10000, None).via, Via::Mirror);
        assert_eq!(b.resolve(P, 0x10000, None).via, Via::Fast);
        assert_eq!(maps.reads(), reads);
        drop(b);
        let c = resolver.counters();
        assert_eq!((c.from_mirror, c.fast, c.rescans), (1, 1, 1));
    }

    /// A process that vanished is reported gone, kept (as exited, for hits still queued)
    /// without further rescans, and dropped once more exited processes than
    /// `retain_exited` pile up.
    #[test]
    fn process_gone() {
        let (resolver, _, maps, _) = world(Config {
            retain_exited: 1,
            ..Config::default()
        });
        let mut reader = Reader::new(&resolver);
        maps.remove(P);
        let r = reader.resolve(P, 0x10000, None);
        assert_eq!(r.outcome.unwrap_err(), Reason::ProcessGone);
        assert!(resolver.is_tracked(P));
        let reads = maps.reads();
        let again = reader.resolve(P, 0x10000, None);
        assert_eq!(again.outcome.unwrap_err(), Reason::ProcessGone);
        assert_eq!(maps.reads(), reads, "an exited process is never rescanned");
        let other = ProcKey::new(P.pid + 1, 1);
        resolver.track(other).ok();
        resolver.exited(other);
        assert!(
            !resolver.is_tracked(P),
            "the oldest exited process is dropped"
        );
        assert_eq!(resolver.counters().exited_dropped, 1);
    }

    /// Without auto-tracking, unknown processes are refused; tracked ones resolve.
    #[test]
    fn not_tracked() {
        let config = Config {
            auto_track: false,
            ..Config::default()
        };
        let (resolver, ..) = world(config);
        let mut reader = Reader::new(&resolver);
        assert_eq!(
            reader.resolve(P, 0x10000, None).outcome,
            Err(Reason::NotTracked)
        );
        resolver.track(P).unwrap();
        assert_eq!(reader.resolve(P, 0x10000, None).via, Via::Mirror);
        assert!(resolver.untrack(P));
        assert!(!resolver.untrack(P));
    }

    /// A change that never ends leaves nothing to trust: the rescan gives up, bounded.
    #[test]
    fn never_stable() {
        let (resolver, seq, ..) = world(Config::default());
        let mut reader = Reader::new(&resolver);
        let _change = seq.change(P).unwrap();
        let r = reader.resolve(P, 0x10000, None);
        assert_eq!(r.outcome, Err(Reason::SeqUnstable));
        let c = resolver.counters();
        assert_eq!((c.fallback_in_flight, c.rescan_retries), (1, 7));
    }
}
