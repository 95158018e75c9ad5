//! Property tests of the resolver against a fake address space at the syscall seam: random
//! sequences of mapping changes, sequence bumps, refreshes and lookups (current, as of an older
//! hit sequence, mid-change). Every answer — fast path or not — must equal what the address
//! space looked like at the sequence the answer names, computed here from the model without
//! the resolver's parser; the fast path must only ever answer for the current sequence.

use std::{collections::HashMap, sync::Arc};

use probed::{
    file_id::FileId,
    resolve::{
        Config, ProcKey, Reader, Reason, Resolver, UserSeq, Via,
        testing::{FakeMaps, FakeVma, change, render},
    },
};
use proptest::prelude::*;

const P: ProcKey = ProcKey::new(1000, 5);
const SLOTS: usize = 6;
const SLOT_BYTES: u64 = 0x4000;

fn slot_start(i: usize) -> u64 {
    0x10_0000 * (i as u64 + 1)
}

/// One mapping in a slot of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct M {
    file: u64,
    page: u64,
    perms: &'static str,
    deleted: bool,
}

type Space = [Option<M>; SLOTS];

fn render_space(space: &Space) -> Vec<u8> {
    let vmas: Vec<FakeVma> = space
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let m = (*m)?;
            Some(FakeVma {
                start: slot_start(i),
                end: slot_start(i) + SLOT_BYTES,
                perms: m.perms,
                pgoff: m.page * 0x1000,
                major: 0x103,
                minor: 0x1,
                ino: 200 + m.file,
                path: format!(
                    "/opt/lib {}\\012x.so{}",
                    m.file,
                    if m.deleted { " (deleted)" } else { "" }
                ),
            })
        })
        .collect();
    render(&vmas)
}

/// What resolving `addr` in `space` must give, from the model alone.
fn expected(space: &Space, addr: u64) -> Result<(FileId, u64, bool, String), Reason> {
    for (i, m) in space.iter().enumerate() {
        let start = slot_start(i);
        if !(start..start + SLOT_BYTES).contains(&addr) {
            continue;
        }
        let Some(m) = m else { break };
        return match m.perms {
            "r-xp" | "r-xs" => Ok((
                FileId::from_major_minor(0x103, 1, 200 + m.file),
                addr - start + m.page * 0x1000,
                m.deleted,
                format!("/opt/lib {}\nx.so", m.file),
            )),
            "r--p" => Err(Reason::NotExecutable),
            _ => Err(Reason::UnsupportedMapping),
        };
    }
    Err(Reason::Unmapped)
}

#[derive(Clone, Debug)]
enum At {
    Now,
    Current,
    Older(usize),
    MidChange,
}

#[derive(Clone, Debug)]
enum Op {
    Set(usize, Option<M>),
    Bump,
    Refresh,
    Lookup { reader: usize, addr: u64, at: At },
}

fn mapping() -> impl Strategy<Value = M> {
    (
        0..3u64,
        0..4u64,
        prop::sample::select(vec!["r-xp", "r-xp", "r-xs", "r--p", "rwxs"]),
        any::<bool>(),
    )
        .prop_map(|(file, page, perms, deleted)| M {
            file,
            page,
            perms,
            deleted,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let addr = prop_oneof![
        (0..SLOTS, 0..SLOT_BYTES).prop_map(|(i, off)| slot_start(i) + off),
        any::<u64>(),
    ];
    let at = prop_oneof![
        3 => Just(At::Now),
        3 => Just(At::Current),
        2 => (0..8usize).prop_map(At::Older),
        1 => Just(At::MidChange),
    ];
    prop_oneof![
        3 => (0..SLOTS, prop::option::of(mapping())).prop_map(|(i, m)| Op::Set(i, m)),
        1 => Just(Op::Bump),
        1 => Just(Op::Refresh),
        8 => (0..2usize, addr, at).prop_map(|(reader, addr, at)| Op::Lookup { reader, addr, at }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every answer equals the model at the answer's sequence; fast answers are current.
    #[test]
    fn answers_match_model(ops in prop::collection::vec(op(), 1..60), history in 0..3usize) {
        let seq = Arc::new(UserSeq::with_capacity(4));
        let maps = Arc::new(FakeMaps::new());
        let mut space: Space = [None; SLOTS];
        let mut cur = seq.register(P).unwrap();
        maps.set(P, render_space(&space));
        let mut states: HashMap<u64, Space> = HashMap::from([(cur, space)]);
        let mut seen: Vec<u64> = vec![cur];
        let config = Config { history, ..Config::default() };
        let resolver = Arc::new(Resolver::with_config(seq.clone(), maps.clone(), config));
        let mut readers = [Reader::new(&resolver), Reader::new(&resolver)];
        let mut fast = 0;
        for op in ops {
            match op {
                Op::Set(i, m) => {
                    space[i] = m;
                    cur = change(&seq, &maps, P, render_space(&space)).unwrap();
                    states.insert(cur, space);
                    seen.push(cur);
                }
                Op::Bump => {
                    cur = change(&seq, &maps, P, render_space(&space)).unwrap();
                    states.insert(cur, space);
                    seen.push(cur);
                }
                Op::Refresh => {
                    prop_assert_eq!(resolver.refresh(P).unwrap().seq(), cur);
                }
                Op::Lookup { reader, addr, at } => {
                    let hit_seq = match at {
                        At::Now => None,
                        At::Current => Some(cur),
                        At::Older(back) => Some(seen[seen.len().saturating_sub(1 + back)]),
                        At::MidChange => Some(cur - 1),
                    };
                    let r = readers[reader].resolve(P, addr, hit_seq);
                    if r.via == Via::Fast {
                        fast += 1;
                        prop_assert_eq!(r.seq, Some(cur), "fast path answered for a stale sequence");
                    }
                    if let Some(h) = hit_seq {
                        if h % 2 == 1 {
                            prop_assert_eq!(r.outcome.clone(), Err(Reason::HitDuringChange));
                            continue;
                        }
                        if r.outcome == Err(Reason::NoSnapshotAtSeq) {
                            prop_assert!(h < cur, "the current sequence is always answerable");
                            continue;
                        }
                        prop_assert_eq!(r.seq, Some(h), "answered for another sequence than the hit's");
                    } else {
                        prop_assert_eq!(r.seq, Some(cur));
                    }
                    let s = r.seq.unwrap();
                    let want = expected(&states[&s], addr);
                    let got = r.outcome.map(|n| {
                        (n.file, n.file_offset, n.deleted, n.path.to_string_lossy().into_owned())
                    });
                    prop_assert_eq!(got, want, "addr {:#x} at seq {}", addr, s);
                }
            }
        }
        let c = resolver.counters();
        prop_assert_eq!(c.fast, fast);
    }
}
