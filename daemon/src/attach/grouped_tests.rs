//! Which probes go through uprobe_multi links, and how a refused link is split: the
//! decisions of `grouped.rs`, with the kernel's answer played by the test.

use std::path::PathBuf;

use super::{CHUNK, Link, link_halving, multi_groups};
use crate::{attach::AttachRequest, spec::ProbeKind};

fn req(id: u32, path: &str, kind: ProbeKind, typed: bool) -> AttachRequest {
    AttachRequest {
        id,
        kind,
        path: PathBuf::from(path),
        file_offset: u64::from(id) * 16,
        args: typed.then(probed_common::ProbeArgs::default),
        semaphore: None,
    }
}

/// Untyped probes sharing a file and a kind are grouped, in the order of their first
/// request; typed probes and the only probe of its (file, kind) go one by one.
#[test]
fn groups_are_by_file_and_kind() {
    use ProbeKind::{Entry, Return};
    let reqs = [
        req(0, "/b", Entry, false),
        req(1, "/a", Entry, false),
        req(2, "/b", Entry, false),
        req(3, "/a", Return, false),
        req(4, "/a", Entry, true),
        req(5, "/a", Entry, false),
        req(6, "/c", Entry, false),
    ];
    assert_eq!(multi_groups(&reqs), [vec![0, 2], vec![1, 5]]);
}

/// One offset the kernel refuses in a link of [`CHUNK`]: every probe but the refused one and
/// its partner in the last refused pair is linked (those two go the per-probe way, where
/// only the refused one fails), with a logarithmic number of tries.
#[test]
fn a_refused_offset_costs_a_few_halvings() {
    let chunk: Vec<usize> = (0..CHUNK).collect();
    let bad = 37;
    let mut tries = 0;
    let mut linked = vec![false; CHUNK];
    let go_on = link_halving(
        &chunk,
        &mut |part| {
            tries += 1;
            if part.contains(&bad) {
                Link::Refused
            } else {
                Link::Linked
            }
        },
        &mut linked,
    );
    assert!(go_on);
    let unlinked: Vec<usize> = (0..CHUNK).filter(|&i| !linked[i]).collect();
    assert_eq!(unlinked, [36, bad]);
    // Each level refuses the half holding the bad offset and links the other: 2 per level,
    // 1 + 2 × log2(64 / 2) = 11 links tried.
    assert_eq!(tries, 11);
}

/// A kernel without multi links: nothing is linked and nothing more is tried.
#[test]
fn unsupported_stops_at_once() {
    let chunk: Vec<usize> = (0..8).collect();
    let mut tries = 0;
    let mut linked = vec![false; 8];
    let go_on = link_halving(
        &chunk,
        &mut |_| {
            tries += 1;
            Link::Unsupported
        },
        &mut linked,
    );
    assert!(!go_on);
    assert_eq!(tries, 1);
    assert!(linked.iter().all(|&l| !l));
}

/// A lone probe is never tried as a link.
#[test]
fn a_single_probe_is_left_alone() {
    let mut linked = vec![false; 1];
    let go_on = link_halving(&[0], &mut |_| panic!("tried"), &mut linked);
    assert!(go_on && !linked[0]);
}
