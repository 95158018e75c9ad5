//! Example tests of [`super::apply`]: each change kind and its edges, on a small snapshot
//! parsed from maps text. The property test against a model is in `replay_model_tests.rs`.

use std::{path::Path, sync::Arc};

use super::*;
use crate::resolve::Miss;

/// a.so text (4 pages, offset 0), its read-only data, an anonymous heap, b.so text at offset
/// 0x10000, a shared-writable executable shm mapping.
const TEXT: &[u8] = b"\
00010000-00014000 r-xp 00000000 08:01 100 /lib/a.so
00014000-00016000 r--p 00004000 08:01 100 /lib/a.so
00016000-00018000 rw-p 00000000 00:00 0 [heap]
00020000-00024000 r-xp 00010000 08:01 200 /lib/b.so
00030000-00031000 rwxs 00000000 00:05 300 /dev/shm/jit
";

fn base() -> Snapshot {
    Snapshot::parse(2, TEXT).unwrap()
}

fn perms(text: &str) -> Perms {
    Perms::parse(text.as_bytes()).unwrap()
}

fn file(ino: u64, path: &str) -> MappedFile {
    MappedFile {
        id: FileId::from_major_minor(8, 1, ino),
        path: Arc::from(Path::new(path)),
        deleted: false,
    }
}

fn mapping(start: u64, end: u64, pgoff: u64, p: &str, file: Option<&MappedFile>) -> NewMapping {
    NewMapping {
        start,
        end,
        pgoff,
        perms: perms(p),
        hugetlb: false,
        file: file.cloned(),
    }
}

/// What an address resolves to: (inode, file offset, perms) if kept, the miss otherwise.
fn seen(snap: &Snapshot, addr: u64) -> Result<(u64, u64, Perms), Miss> {
    match snap.lookup(addr) {
        Some(v) => Ok((v.file.ino, v.file_offset(addr), v.perms)),
        None => Err(snap.miss(addr)),
    }
}

fn kept(ino: u64, off: u64, p: &str) -> Result<(u64, u64, Perms), Miss> {
    Ok((ino, off, perms(p)))
}

fn excluded(why: Excluded) -> Result<(u64, u64, Perms), Miss> {
    Err(Miss::Excluded(why))
}

const UNMAPPED: Result<(u64, u64, Perms), Miss> = Err(Miss::Unmapped);

fn extents(snap: &Snapshot) -> Vec<(u64, u64)> {
    snap.vmas().iter().map(|v| (v.start, v.end)).collect()
}

/// `snap` after `change`, at the next sequence.
fn after(snap: &Snapshot, change: Change) -> Snapshot {
    apply(snap, &change, snap.seq() + 2).unwrap()
}

fn map(start: u64, end: u64, mapping: NewMapping) -> Change {
    Change::Map {
        start,
        end,
        mapping,
    }
}

fn unmap(start: u64, end: u64) -> Change {
    Change::Unmap { start, end }
}

fn protect(start: u64, end: u64, p: &str) -> Change {
    Change::Protect {
        start,
        end,
        perms: perms(p),
    }
}

fn remap(old: (u64, u64), new: (u64, u64), mapping: NewMapping) -> Change {
    Change::Remap {
        old_start: old.0,
        old_end: old.1,
        new_start: new.0,
        new_end: new.1,
        mapping,
    }
}

/// A heap change of the test snapshot (`start_brk` 0x16000).
fn brk(old_brk: u64, new_brk: u64) -> Change {
    Change::Brk {
        start_brk: 0x16000,
        old_brk,
        new_brk,
    }
}

/// Unmapping inside mappings splits kept and excluded ones at both ends, with the right
/// part's file offset moved on; the result has the given sequence.
#[test]
fn unmap_splits_at_both_ends() {
    let snap = apply(&base(), &unmap(0x11000, 0x13000), 4).unwrap();
    assert_eq!(snap.seq(), 4);
    assert_eq!(seen(&snap, 0x10fff), kept(100, 0xfff, "r-xp"));
    assert_eq!(seen(&snap, 0x11000), UNMAPPED);
    assert_eq!(seen(&snap, 0x12fff), UNMAPPED);
    assert_eq!(seen(&snap, 0x13000), kept(100, 0x3000, "r-xp"));
    assert_eq!(snap.vmas()[1].pgoff, 0x3000);
    assert_eq!(
        extents(&snap)[..2],
        [(0x10000, 0x11000), (0x13000, 0x14000)]
    );

    let snap = after(&snap, unmap(0x15000, 0x17000));
    assert_eq!(seen(&snap, 0x14fff), excluded(Excluded::NotExecutable));
    assert_eq!(seen(&snap, 0x15000), UNMAPPED);
    assert_eq!(seen(&snap, 0x16fff), UNMAPPED);
    assert_eq!(seen(&snap, 0x17000), excluded(Excluded::NotFileBacked));
}

/// Unmapping a range that only partly holds mappings removes what is there.
#[test]
fn unmap_over_holes() {
    let snap = after(&base(), unmap(0x17000, 0x22000));
    assert_eq!(seen(&snap, 0x16000), excluded(Excluded::NotFileBacked));
    assert_eq!(seen(&snap, 0x17000), UNMAPPED);
    assert_eq!(seen(&snap, 0x21fff), UNMAPPED);
    assert_eq!(seen(&snap, 0x22000), kept(200, 0x12000, "r-xp"));
}

/// MAP_FIXED over the middle of a kept mapping replaces that part only, first with anonymous
/// memory and then with another file.
#[test]
fn map_fixed_over_kept() {
    let anon = mapping(0x11000, 0x12000, 0, "rw-p", None);
    let snap = after(&base(), map(0x11000, 0x12000, anon));
    assert_eq!(seen(&snap, 0x10000), kept(100, 0, "r-xp"));
    assert_eq!(seen(&snap, 0x11000), excluded(Excluded::NotFileBacked));
    assert_eq!(seen(&snap, 0x12000), kept(100, 0x2000, "r-xp"));

    let c = file(300, "/lib/c.so");
    let text = mapping(0x11000, 0x12000, 0x5000, "r-xp", Some(&c));
    let snap = after(&snap, map(0x11000, 0x12000, text));
    assert_eq!(seen(&snap, 0x11234), kept(300, 0x5234, "r-xp"));
    assert_eq!(&*snap.lookup(0x11000).unwrap().path, Path::new("/lib/c.so"));
    assert_eq!(seen(&snap, 0x10fff), kept(100, 0xfff, "r-xp"));
    assert_eq!(seen(&snap, 0x12000), kept(100, 0x2000, "r-xp"));
}

/// A reported mapping wider than the change (merged with its neighbour) is clamped to the
/// change, its offset moved on, and joined to the neighbour as the kernel did; a neighbour
/// outside the reported extent stays apart.
#[test]
fn map_merged_with_neighbour() {
    let snap = after(&base(), unmap(0x14000, 0x16000));
    let a = file(100, "/lib/a.so");
    let merged = mapping(0x10000, 0x15000, 0, "r-xp", Some(&a));
    let joined = after(&snap, map(0x14000, 0x15000, merged));
    assert_eq!(seen(&joined, 0x14010), kept(100, 0x4010, "r-xp"));
    assert_eq!(extents(&joined)[0], (0x10000, 0x15000));

    let alone = mapping(0x14000, 0x15000, 0x4000, "r-xp", Some(&a));
    let apart = after(&snap, map(0x14000, 0x15000, alone));
    assert_eq!(seen(&apart, 0x14010), kept(100, 0x4010, "r-xp"));
    assert_eq!(
        extents(&apart)[..2],
        [(0x10000, 0x14000), (0x14000, 0x15000)]
    );
}

/// New mappings are classified as a maps scan would: non-executable files, hugetlb and
/// shared-writable executable mappings are excluded, shared read-only text is kept.
#[test]
fn map_classifies() {
    let f = file(400, "/lib/f.so");
    let cases = [
        ("r--p", Some(&f), false, Err(Excluded::NotExecutable)),
        ("r-xp", Some(&f), true, Err(Excluded::Unsupported)),
        ("rwxs", Some(&f), false, Err(Excluded::Unsupported)),
        ("r-xs", Some(&f), false, Ok(())),
        ("r-xp", None, false, Err(Excluded::NotFileBacked)),
    ];
    for (p, file, hugetlb, expected) in cases {
        let mut m = mapping(0x40000, 0x41000, 0, p, file);
        m.hugetlb = hugetlb;
        let got = match seen(&after(&base(), map(0x40000, 0x41000, m)), 0x40000) {
            Ok(_) => Ok(()),
            Err(Miss::Excluded(why)) => Err(why),
            Err(Miss::Unmapped | Miss::Unseen) => panic!("{p} left nothing mapped"),
        };
        assert_eq!(got, expected, "{p} file={file:?} hugetlb={hugetlb}");
    }
}

/// mremap moving a mapping leaves the old range unmapped and the new one mapped.
#[test]
fn remap_move() {
    let b = file(200, "/lib/b.so");
    let m = mapping(0x40000, 0x44000, 0x10000, "r-xp", Some(&b));
    let snap = after(&base(), remap((0x20000, 0x24000), (0x40000, 0x44000), m));
    assert_eq!(seen(&snap, 0x20000), UNMAPPED);
    assert_eq!(seen(&snap, 0x23fff), UNMAPPED);
    assert_eq!(seen(&snap, 0x40000), kept(200, 0x10000, "r-xp"));
    assert_eq!(seen(&snap, 0x43fff), kept(200, 0x13fff, "r-xp"));
}

/// mremap growing and shrinking in place changes only the tail.
#[test]
fn remap_grow_and_shrink() {
    let b = file(200, "/lib/b.so");
    let m = mapping(0x20000, 0x26000, 0x10000, "r-xp", Some(&b));
    let grown = after(&base(), remap((0x20000, 0x24000), (0x20000, 0x26000), m));
    assert_eq!(seen(&grown, 0x25fff), kept(200, 0x15fff, "r-xp"));
    assert_eq!(seen(&grown, 0x26000), UNMAPPED);
    assert_eq!(extents(&grown)[1], (0x20000, 0x26000));

    let m = mapping(0x20000, 0x22000, 0x10000, "r-xp", Some(&b));
    let shrunk = after(&grown, remap((0x20000, 0x26000), (0x20000, 0x22000), m));
    assert_eq!(seen(&shrunk, 0x21fff), kept(200, 0x11fff, "r-xp"));
    assert_eq!(seen(&shrunk, 0x22000), UNMAPPED);
    assert_eq!(seen(&shrunk, 0x25000), UNMAPPED);
}

/// brk growth adds anonymous memory joined to the heap's entry; shrinking unmaps the tail.
#[test]
fn brk_grows_and_shrinks() {
    let entries = base().excluded().len();
    let snap = after(
        &after(&base(), brk(0x18000, 0x19000)),
        brk(0x19000, 0x1b000),
    );
    assert_eq!(seen(&snap, 0x1afff), excluded(Excluded::NotFileBacked));
    assert_eq!(seen(&snap, 0x1b000), UNMAPPED);
    assert_eq!(snap.excluded().len(), entries, "growth fragments the heap");

    let snap = after(&snap, brk(0x1b000, 0x17000));
    assert_eq!(seen(&snap, 0x16fff), excluded(Excluded::NotFileBacked));
    assert_eq!(seen(&snap, 0x17000), UNMAPPED);
    assert_eq!(seen(&snap, 0x1a000), UNMAPPED);
}

/// mprotect dropping exec from part of kept text excludes that part only, and giving it back
/// is unknowable (the file's identity is gone); unchanged bits leave the mapping whole, and
/// changed ones split it.
#[test]
fn protect_kept() {
    let snap = after(&base(), protect(0x11000, 0x12000, "r--p"));
    assert_eq!(seen(&snap, 0x10fff), kept(100, 0xfff, "r-xp"));
    assert_eq!(seen(&snap, 0x11000), excluded(Excluded::NotExecutable));
    assert_eq!(seen(&snap, 0x12000), kept(100, 0x2000, "r-xp"));
    assert_eq!(
        apply(&snap, &protect(0x10000, 0x13000, "r-xp"), 6),
        Err(Unknowable::MayBecomeKept {
            start: 0x11000,
            end: 0x12000,
            was: Excluded::NotExecutable
        })
    );

    let same = after(&base(), protect(0x11000, 0x12000, "r-xp"));
    assert_eq!(extents(&same), extents(&base()));

    let wx = after(&base(), protect(0x11000, 0x12000, "rwxp"));
    assert_eq!(seen(&wx, 0x11000), kept(100, 0x1000, "rwxp"));
    let split = [(0x10000, 0x11000), (0x11000, 0x12000), (0x12000, 0x14000)];
    assert_eq!(extents(&wx)[..3], split);
}

/// Adding write to shared executable text keeps the shared bit and makes it unsupported.
#[test]
fn protect_shared_writable() {
    let f = file(400, "/lib/f.so");
    let m = mapping(0x40000, 0x42000, 0, "r-xs", Some(&f));
    let snap = after(
        &after(&base(), map(0x40000, 0x42000, m)),
        protect(0x40000, 0x41000, "rwxp"),
    );
    assert_eq!(seen(&snap, 0x40000), excluded(Excluded::Unsupported));
    assert_eq!(seen(&snap, 0x41000), kept(400, 0x1000, "r-xs"));
}

/// Anonymous memory stays not file-backed whatever the bits; holes stay unmapped.
#[test]
fn protect_anonymous_and_holes() {
    let snap = after(&base(), protect(0x16000, 0x1a000, "rwxp"));
    assert_eq!(seen(&snap, 0x16000), excluded(Excluded::NotFileBacked));
    assert_eq!(seen(&snap, 0x17fff), excluded(Excluded::NotFileBacked));
    assert_eq!(seen(&snap, 0x18000), UNMAPPED);
    assert_eq!(seen(&snap, 0x19fff), UNMAPPED);
}

/// An unsupported (shared-writable or hugetlb) mapping losing write alone is unknowable;
/// losing exec makes it not executable; keeping both keeps it unsupported.
#[test]
fn protect_unsupported() {
    assert!(matches!(
        apply(&base(), &protect(0x30000, 0x31000, "r-xp"), 4),
        Err(Unknowable::MayBecomeKept {
            was: Excluded::Unsupported,
            ..
        })
    ));
    let snap = after(&base(), protect(0x30000, 0x31000, "rw-p"));
    assert_eq!(seen(&snap, 0x30000), excluded(Excluded::NotExecutable));
    let snap = after(&base(), protect(0x30000, 0x31000, "-wxp"));
    assert_eq!(seen(&snap, 0x30000), excluded(Excluded::Unsupported));
}

/// A reported mapping not covering the change, or a reversed range, is refused.
#[test]
fn inconsistent_reports() {
    let m = mapping(0x40000, 0x41000, 0, "rw-p", None);
    assert!(matches!(
        apply(&base(), &map(0x40000, 0x42000, m), 4),
        Err(Unknowable::MappingMismatch { .. })
    ));
    assert_eq!(
        apply(&base(), &unmap(0x2000, 0x1000), 4),
        Err(Unknowable::BadRange {
            start: 0x2000,
            end: 0x1000
        })
    );
    assert!(matches!(
        apply(&base(), &brk(0x18000, 0x15000), 4),
        Err(Unknowable::BadRange { .. })
    ));
}

/// Mappings a change does not touch share their paths with the old snapshot.
#[test]
fn untouched_mappings_share_paths() {
    let old = base();
    let snap = after(&old, unmap(0x20000, 0x24000));
    assert!(Arc::ptr_eq(&old.vmas()[0].path, &snap.vmas()[0].path));
    assert_eq!(snap.vmas().len(), 1);
}
