//! Replay benchmarks: the cost of [`apply`] (one address-space change onto a snapshot) on
//! synthetic snapshots of ~650 and ~7,000 kept mappings, the sizes of the resolver
//! benchmarks. Each library contributes a read-only segment (excluded), its text (kept) and
//! anonymous data (excluded), so there are twice as many excluded ranges as kept ones. Each
//! change touches the library in the middle of the address space.

use std::{hint::black_box, path::Path, sync::Arc};

use criterion::Criterion;
use probed::{
    file_id::FileId,
    resolve::{
        Perms, Snapshot,
        replay::{Change, MappedFile, NewMapping, apply},
        testing::{FakeVma, render},
    },
};

/// Address of the first library; each takes 16 pages, the last 10 of them a hole.
const LIBS: u64 = 0x7f00_0000_0000;
/// Bytes between two libraries.
const STRIDE: u64 = 0x10000;
/// The heap, below the libraries.
const HEAP: u64 = 0x5555_0000_0000;

fn perms(text: &str) -> Perms {
    Perms::parse(text.as_bytes()).unwrap()
}

/// A snapshot of a heap and `count` libraries.
fn snapshot(count: u64) -> Snapshot {
    let mut vmas = vec![FakeVma {
        start: HEAP,
        end: HEAP + 0x21000,
        perms: "rw-p",
        pgoff: 0,
        major: 0,
        minor: 0,
        ino: 0,
        path: "[heap]".into(),
    }];
    for i in 0..count {
        let base = LIBS + i * STRIDE;
        let lib = |start, end, perms, pgoff| FakeVma {
            start: base + start,
            end: base + end,
            perms,
            pgoff,
            major: 8,
            minor: 1,
            ino: 1000 + i,
            path: format!("/usr/lib/lib{i}.so"),
        };
        vmas.push(lib(0, 0x1000, "r--p", 0));
        vmas.push(lib(0x1000, 0x5000, "r-xp", 0x1000));
        vmas.push(FakeVma {
            ino: 0,
            major: 0,
            minor: 0,
            path: String::new(),
            ..lib(0x5000, 0x6000, "rw-p", 0)
        });
    }
    Snapshot::parse(2, &render(&vmas)).unwrap()
}

/// One change of each kind, on the middle library of `count`.
fn changes(count: u64) -> Vec<(&'static str, Change)> {
    let mid = LIBS + count / 2 * STRIDE;
    let file = MappedFile {
        id: FileId::from_major_minor(8, 1, 99),
        path: Arc::from(Path::new("/usr/lib/new.so")),
        deleted: false,
    };
    let text = |start, end| NewMapping {
        start,
        end,
        pgoff: 0,
        perms: perms("r-xp"),
        hugetlb: false,
        file: Some(file.clone()),
    };
    vec![
        (
            "map",
            Change::Map {
                start: mid + 0x6000,
                end: mid + 0x8000,
                mapping: text(mid + 0x6000, mid + 0x8000),
            },
        ),
        (
            "unmap",
            Change::Unmap {
                start: mid,
                end: mid + 0x6000,
            },
        ),
        (
            "protect",
            Change::Protect {
                start: mid + 0x2000,
                end: mid + 0x3000,
                perms: perms("r--p"),
            },
        ),
        (
            "remap",
            Change::Remap {
                old_start: mid + 0x1000,
                old_end: mid + 0x5000,
                new_start: mid + 0x8000,
                new_end: mid + 0xc000,
                mapping: text(mid + 0x8000, mid + 0xc000),
            },
        ),
        (
            "brk",
            Change::Brk {
                start_brk: HEAP,
                old_brk: HEAP + 0x21000,
                new_brk: HEAP + 0x42000,
            },
        ),
    ]
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(50)
        .measurement_time(std::time::Duration::from_secs(2))
        .configure_from_args();
    for count in [650, 7000] {
        let snap = snapshot(count);
        assert_eq!(snap.vmas().len() as u64, count);
        let mut group = c.benchmark_group(format!("replay_{count}"));
        for (name, change) in changes(count) {
            apply(&snap, &change, 4).unwrap();
            group.bench_function(name, |b| {
                b.iter(|| apply(black_box(&snap), black_box(&change), 4).unwrap())
            });
        }
        group.finish();
    }
    c.final_summary();
}
