//! Tests of the reader over fakes at the syscall seam: the first rescan then the fast path,
//! rescans after changes, hits resolved as of their sequence, miss reasons, the registry,
//! mirrors shared between readers, gone and untracked processes, a sequence never stable.

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
