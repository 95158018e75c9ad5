//! Loom models of the sequence protocol and snapshot publication, run with
//! `RUSTFLAGS="--cfg probed_loom" cargo test --release -p probed --lib resolve::loom_tests`.
//!
//! They drive the real [`UserSeq`], [`Resolver`] and [`Reader`] (their atomics, locks and
//! `Arc`s are loom's under `cfg(probed_loom)`, see `sync.rs`) against a "kernel" whose address space
//! is one loom atomic, written with `Relaxed` stores: only the sequence's fences can make a
//! reader's view of it consistent, so a missing or misplaced fence shows up as a wrong answer.

use ::loom::{
    sync::atomic::{AtomicU64, Ordering},
    thread,
};

use super::{
    maps::parse_line,
    sync::Arc,
    testing::{FakeVma, render},
    *,
};

const PROC: ProcKey = ProcKey::new(42, 1);
const ADDR: u64 = 0x1000;

/// Address-space version `k` maps one executable page at `ADDR` of a file with inode `100 + k`.
struct World {
    version: AtomicU64,
}

fn text(version: u64) -> Vec<u8> {
    render(&[FakeVma {
        start: ADDR,
        end: ADDR + 0x1000,
        perms: "r-xp",
        pgoff: 0,
        major: 8,
        minor: 1,
        ino: 100 + version,
        path: format!("/lib{version}.so"),
    }])
}

impl MapsSource for World {
    fn read_maps(&self, _proc: ProcKey, buf: &mut Vec<u8>) -> Result<(), ScanError> {
        *buf = text(self.version.load(Ordering::Relaxed));
        Ok(())
    }
}

impl MapsSource for Arc<World> {
    fn read_maps(&self, proc: ProcKey, buf: &mut Vec<u8>) -> Result<(), ScanError> {
        (**self).read_maps(proc, buf)
    }
}

type Seq = Arc<UserSeq>;

impl SeqSource for Arc<UserSeq> {
    fn try_begin(&self, proc: ProcKey) -> Option<u64> {
        (**self).try_begin(proc)
    }
    fn retry(&self, proc: ProcKey, seq: u64) -> bool {
        (**self).retry(proc, seq)
    }
}

/// A resolver over a world at version 0, whose sequence starts at `base`.
fn setup() -> (std::sync::Arc<Resolver<Seq>>, Seq, Arc<World>, u64) {
    let seq = Arc::new(UserSeq::with_capacity(2));
    let base = seq.register(PROC).unwrap();
    let world = Arc::new(World {
        version: AtomicU64::new(0),
    });
    let config = Config {
        history: 1,
        rescan_tries: 3,
        auto_track: true,
        retain_exited: 1,
        reported_changes: false,
    };
    let resolver = std::sync::Arc::new(Resolver::with_config(seq.clone(), world.clone(), config));
    (resolver, seq, world, base)
}

/// One mapping change, bracketed by the sequence as the kernel's change points would be.
fn change(seq: &UserSeq, world: &World) {
    let _guard = seq.change(PROC).unwrap();
    let v = world.version.load(Ordering::Relaxed);
    world.version.store(v + 1, Ordering::Relaxed);
}

/// Checks an answer against the world version its sequence names.
fn check(answer: &Resolution<Normalized>, base: u64) {
    if let (Some(seq), Ok(hit)) = (answer.seq, &answer.outcome) {
        let version = (seq - base) / 2;
        assert_eq!(
            hit.file.ino,
            100 + version,
            "answer labelled seq {seq} came from another address space ({answer:?})"
        );
    }
}

/// A rescan racing a change never labels a torn or later picture with an earlier sequence,
/// and a reader answering from its snapshot afterwards is right (fast or slow path).
#[test]
fn rescan_races_change() {
    ::loom::model(|| {
        let (resolver, seq, world, base) = setup();
        let writer = {
            let (seq, world) = (seq.clone(), world.clone());
            thread::spawn(move || change(&seq, &world))
        };
        let mut reader = Reader::new(&resolver);
        for _ in 0..2 {
            let answer = reader.resolve(PROC, ADDR + 8, None);
            check(&answer, base);
        }
        writer.join().unwrap();
        let answer = reader.resolve(PROC, ADDR + 8, None);
        check(&answer, base);
        assert!(answer.outcome.is_ok(), "{answer:?}");
    });
}

/// A snapshot published by one reader's rescan is picked up by another reader without
/// rescanning only if it is of the current sequence; both always answer right.
#[test]
fn publication_between_readers() {
    ::loom::model(|| {
        let (resolver, seq, world, base) = setup();
        let other = {
            let resolver = resolver.clone();
            thread::spawn(move || {
                let mut reader = Reader::new(&resolver);
                let answer = reader.resolve(PROC, ADDR, None);
                check(&answer, base);
            })
        };
        change(&seq, &world);
        let mut reader = Reader::new(&resolver);
        let answer = reader.resolve(PROC, ADDR, Some(base + 2));
        check(&answer, base);
        assert_eq!(answer.seq, Some(base + 2), "{answer:?}");
        other.join().unwrap();
    });
}

/// The sequence alone: a reader that validated a read of the world saw the world of that
/// sequence (the seqlock fences, checked without the resolver around them).
#[test]
fn seqlock_read_is_consistent() {
    ::loom::model(|| {
        let seq = Arc::new(UserSeq::with_capacity(2));
        let base = seq.register(PROC).unwrap();
        let world = Arc::new(World {
            version: AtomicU64::new(0),
        });
        let writer = {
            let (seq, world) = (seq.clone(), world.clone());
            thread::spawn(move || {
                change(&seq, &world);
                change(&seq, &world);
            })
        };
        for _ in 0..2 {
            if let Some(s) = seq.try_begin(PROC) {
                let v = world.version.load(Ordering::Relaxed);
                if !seq.retry(PROC, s) {
                    assert_eq!(v, (s - base) / 2);
                }
            }
        }
        writer.join().unwrap();
        let line = text(2);
        assert_eq!(parse_line(&line[..line.len() - 1]).unwrap().ino, 102);
    });
}
