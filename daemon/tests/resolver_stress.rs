//! Concurrency stress: reader threads resolve while a writer changes the mappings (with torn
//! maps reads enabled) and a tracker thread republishes. The address space at every sequence
//! is a pure function of the sequence, so every answer is checked; zero may be wrong.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use probed::resolve::{
    Config, ProcKey, Reader, Reason, Resolver, UserSeq, Via,
    testing::{FakeMaps, FakeVma, change, render},
};

const P: ProcKey = ProcKey::new(4242, 9);
const SLOTS: u64 = 64;

fn slot_start(i: u64) -> u64 {
    0x4000_0000 + i * 0x10000
}

/// Version `k`: slot `i` holds inode `1000 + (7k + i) % 13` at page `(k + i) % 4`, except
/// that every fifth slot (rotating with `k`) is unmapped.
fn model(k: u64, i: u64) -> Option<(u64, u64)> {
    (!(k + i).is_multiple_of(5)).then_some((1000 + (7 * k + i) % 13, (k + i) % 4))
}

fn text(k: u64) -> Vec<u8> {
    let vmas: Vec<FakeVma> = (0..SLOTS)
        .filter_map(|i| {
            let (ino, page) = model(k, i)?;
            Some(FakeVma {
                start: slot_start(i),
                end: slot_start(i) + 0x8000,
                perms: "r-xp",
                pgoff: page * 0x1000,
                major: 8,
                minor: 3,
                ino,
                path: format!("/lib/l{ino}.so"),
            })
        })
        .collect();
    render(&vmas)
}

#[test]
fn readers_never_see_wrong_answers() {
    let seq = Arc::new(UserSeq::with_capacity(4));
    let maps = Arc::new(FakeMaps::new());
    let base = seq.register(P).unwrap();
    maps.set(P, text(0));
    maps.set_tearing(true);
    let config = Config {
        history: 2,
        rescan_tries: 64,
        auto_track: true,
        ..Config::default()
    };
    let resolver = Arc::new(Resolver::with_config(seq.clone(), maps.clone(), config));
    resolver.track(P).unwrap();
    let stop = AtomicBool::new(false);
    let wrong = AtomicU64::new(0);
    let checked = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(3);
    std::thread::scope(|s| {
        // Writer: a change every ~50 µs (busy phases) with pauses, so both the fast path and
        // every fallback get exercised.
        s.spawn(|| {
            let mut k = 0;
            while Instant::now() < deadline {
                for _ in 0..200 {
                    k += 1;
                    change(&seq, &maps, P, text(k)).unwrap();
                    std::thread::sleep(Duration::from_micros(50));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            stop.store(true, Ordering::Relaxed);
        });
        // Tracker: republishes after changes, as an eager change tracker would.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ = resolver.refresh(P);
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        for t in 0..2u64 {
            let (resolver, seq, stop, wrong, checked) = (&resolver, &seq, &stop, &wrong, &checked);
            s.spawn(move || {
                let mut reader = Reader::new(resolver);
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = x % SLOTS;
                    let addr = slot_start(i) + (x >> 32) % 0x10000;
                    // Half the lookups carry a hit sequence, as BPF-stamped hits would.
                    let at = if x & 1 == 0 {
                        seq.current(P).filter(|s| s % 2 == 0)
                    } else {
                        None
                    };
                    let r = reader.resolve_with(P, addr, at, |r| {
                        (
                            r.via,
                            r.seq,
                            r.outcome.map(|h| (h.vma.file.ino, h.file_offset)),
                        )
                    });
                    checked.fetch_add(1, Ordering::Relaxed);
                    let (via, Some(s), outcome) = r else {
                        // No picture at all: only acceptable for these reasons.
                        assert!(
                            matches!(r.2, Err(Reason::SeqUnstable | Reason::NoSnapshotAtSeq)),
                            "{r:?}"
                        );
                        continue;
                    };
                    if let Some(h) = at {
                        assert_eq!(s, h, "answered another sequence than the hit's");
                    }
                    let k = (s - base) / 2;
                    let off = addr - slot_start(i);
                    let want = match model(k, i) {
                        Some((ino, page)) if off < 0x8000 => Ok((ino, page * 0x1000 + off)),
                        _ => Err(Reason::Unmapped),
                    };
                    if outcome != want {
                        wrong.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "wrong: addr {addr:#x} seq {s} via {via:?}: {outcome:?} != {want:?}"
                        );
                    }
                }
            });
        }
    });
    let c = resolver.counters();
    eprintln!("checked {} answers: {c:?}", checked.load(Ordering::Relaxed));
    assert_eq!(wrong.load(Ordering::Relaxed), 0);
    assert!(c.fast > 0, "the fast path was never taken");
    assert!(c.fallbacks() > 0 && c.rescans > 0, "no fallback exercised");
    assert!(c.rescan_retries > 0, "torn reads were never caught");
    let _ = Via::Fast;
}
