//! Property test of [`super::apply`] against a page-granular model of a small address space:
//! random change sequences (over holes, overlapping, several files, hugetlb memory) are applied
//! to the model and replayed, and after every step each page must resolve in the replayed
//! snapshot exactly as the model says and as a fresh parse of the maps text the model renders
//! says (what a rescan of /proc/PID/maps would give).

use std::{path::Path, sync::Arc};

use proptest::prelude::*;

use super::*;
use crate::resolve::{
    Miss,
    testing::{FakeVma, render},
};

/// One page.
const P: u64 = 0x1000;

/// Pages in the model's address space.
const PAGES: usize = 64;
/// Address of page 0.
const BASE: u64 = 0x10_0000;
/// Page of `start_brk`.
const START_BRK: usize = 48;
/// Index of the hugetlb "file" in [`model_files`].
const HUGETLB: usize = 3;

/// What backs one page of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backing {
    Anon,
    /// A file of [`model_files`] and the offset of this page in it.
    File(usize, u64),
}

/// One mapped page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Page {
    backing: Backing,
    perms: Perms,
}

/// Whether `next` can follow `prev` within one kernel mapping.
fn joins(prev: Page, next: Page) -> bool {
    prev.perms == next.perms
        && match (prev.backing, next.backing) {
            (Backing::Anon, Backing::Anon) => true,
            (Backing::File(a, off), Backing::File(b, next_off)) => a == b && off + P == next_off,
            _ => false,
        }
}

/// Three ordinary files (one deleted), and hugetlb memory as maps shows it.
fn model_files() -> Vec<MappedFile> {
    let mut files: Vec<MappedFile> = (0..3)
        .map(|i| MappedFile {
            id: FileId::from_major_minor(8, 1, 100 + i),
            path: Arc::from(Path::new(&format!("/lib/f{i}.so"))),
            deleted: false,
        })
        .collect();
    files[2].deleted = true;
    files.push(MappedFile {
        id: FileId::from_major_minor(0, 0xf, 9),
        path: Arc::from(Path::new("/anon_hugepage")),
        deleted: true,
    });
    files
}

/// The maps permission column for every combination, indexed by r + 2w + 4x + 8s.
const COLUMNS: [&str; 16] = [
    "---p", "r--p", "-w-p", "rw-p", "--xp", "r-xp", "-wxp", "rwxp", "---s", "r--s", "-w-s", "rw-s",
    "--xs", "r-xs", "-wxs", "rwxs",
];

fn perms(text: &str) -> Perms {
    Perms::parse(text.as_bytes()).unwrap()
}

fn perms_of_bits(bits: u8) -> Perms {
    perms(COLUMNS[usize::from(bits & 15)])
}

fn column(p: Perms) -> &'static str {
    let bit = |flag, n| if p.contains(flag) { n } else { 0 };
    COLUMNS
        [bit(Perms::READ, 1) + bit(Perms::WRITE, 2) + bit(Perms::EXEC, 4) + bit(Perms::SHARED, 8)]
}

fn addr(page: usize) -> u64 {
    BASE + page as u64 * P
}

/// The address space, a page at a time.
#[derive(Clone, Debug)]
struct Model {
    pages: [Option<Page>; PAGES],
    /// Page of the heap's end.
    brk: usize,
    files: Vec<MappedFile>,
}

/// A change, in terms the model turns into a valid one for its current state (or skips).
#[derive(Clone, Debug)]
enum Op {
    Map {
        at: usize,
        len: usize,
        file: Option<(usize, u64)>,
        perms: u8,
    },
    Unmap {
        at: usize,
        len: usize,
    },
    Protect {
        at: usize,
        len: usize,
        perms: u8,
    },
    Remap {
        at: usize,
        len: usize,
        new_len: usize,
        dest: Option<usize>,
    },
    Brk {
        to: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let at = 0..PAGES;
    let len = 1..=12usize;
    prop_oneof![
        3 => (at.clone(), len.clone(), prop::option::of((0..4usize, 0..8u64)), any::<u8>())
            .prop_map(|(at, len, file, perms)| Op::Map { at, len, file, perms }),
        2 => (at.clone(), len.clone()).prop_map(|(at, len)| Op::Unmap { at, len }),
        3 => (at.clone(), len.clone(), any::<u8>())
            .prop_map(|(at, len, perms)| Op::Protect { at, len, perms }),
        2 => (at.clone(), len.clone(), len, prop::option::of(at))
            .prop_map(|(at, len, new_len, dest)| Op::Remap { at, len, new_len, dest }),
        1 => (START_BRK..START_BRK + 12).prop_map(|to| Op::Brk { to }),
    ]
}

/// `[at, at + len)` clipped to the space.
fn span(at: usize, len: usize) -> (usize, usize) {
    (at, (at + len).min(PAGES))
}

impl Model {
    fn new() -> Self {
        Self {
            pages: [None; PAGES],
            brk: START_BRK,
            files: model_files(),
        }
    }

    /// What a page resolves to: the same rules as a maps scan (`classify`).
    fn expect(&self, page: usize, at: u64) -> Result<(FileId, u64, Perms), Miss> {
        let Some(p) = self.pages[page] else {
            return Err(Miss::Unmapped);
        };
        let Backing::File(f, off) = p.backing else {
            return Err(Miss::Excluded(Excluded::NotFileBacked));
        };
        let file = &self.files[f];
        let raw = format!(
            "{}{}",
            file.path.display(),
            if file.deleted { " (deleted)" } else { "" }
        );
        classify(p.perms, file.id.ino, raw.as_bytes()).map_err(Miss::Excluded)?;
        Ok((file.id, off + (at - addr(page)), p.perms))
    }

    /// The maps text of the model, one line per run of joining pages.
    fn render(&self) -> Vec<u8> {
        let mut lines: Vec<FakeVma> = Vec::new();
        let mut prev: Option<Page> = None;
        for (i, page) in self.pages.iter().enumerate() {
            let Some(page) = *page else {
                prev = None;
                continue;
            };
            if let (Some(last), Some(p)) = (lines.last_mut(), prev)
                && joins(p, page)
            {
                last.end = addr(i + 1);
            } else {
                let (pgoff, major, minor, ino, path) = match page.backing {
                    Backing::Anon => (0, 0, 0, 0, String::new()),
                    Backing::File(f, off) => {
                        let file = &self.files[f];
                        let suffix = if file.deleted { " (deleted)" } else { "" };
                        let (major, minor) = (libc::major(file.id.dev), libc::minor(file.id.dev));
                        (
                            off,
                            major,
                            minor,
                            file.id.ino,
                            format!("{}{suffix}", file.path.display()),
                        )
                    }
                };
                lines.push(FakeVma {
                    start: addr(i),
                    end: addr(i + 1),
                    perms: column(page.perms),
                    pgoff,
                    major,
                    minor,
                    ino,
                    path,
                });
            }
            prev = Some(page);
        }
        render(&lines)
    }

    /// The kernel's report of the mapping at `page`: the whole run of joining pages.
    fn report(&self, page: usize) -> NewMapping {
        let p = self.pages[page].unwrap();
        let (mut lo, mut hi) = (page, page + 1);
        while lo > 0 && self.pages[lo - 1].is_some_and(|q| joins(q, self.pages[lo].unwrap())) {
            lo -= 1;
        }
        while hi < PAGES && self.pages[hi].is_some_and(|q| joins(self.pages[hi - 1].unwrap(), q)) {
            hi += 1;
        }
        let (pgoff, file) = match self.pages[lo].unwrap().backing {
            Backing::Anon => (0, None),
            Backing::File(f, off) => (off, Some(self.files[f].clone())),
        };
        NewMapping {
            start: addr(lo),
            end: addr(hi),
            pgoff,
            perms: p.perms,
            hugetlb: matches!(p.backing, Backing::File(HUGETLB, _)),
            file,
        }
    }

    /// Applies `op` to the model; the change to replay, or `None` if the kernel would have
    /// refused it (or it changes nothing).
    fn step(&mut self, op: &Op) -> Option<Change> {
        match *op {
            Op::Map {
                at,
                len,
                file,
                perms,
            } => {
                let (lo, hi) = span(at, len);
                let mut perms = perms_of_bits(perms);
                if file.is_none() {
                    perms = with_rwx(Perms::empty(), perms); // private anonymous
                }
                for (i, page) in self.pages[lo..hi].iter_mut().enumerate() {
                    let backing = match file {
                        None => Backing::Anon,
                        Some((f, off)) => Backing::File(f, (off + i as u64) * P),
                    };
                    *page = Some(Page { backing, perms });
                }
                Some(Change::Map {
                    start: addr(lo),
                    end: addr(hi),
                    mapping: self.report(lo),
                })
            }
            Op::Unmap { at, len } => {
                let (lo, hi) = span(at, len);
                self.pages[lo..hi].fill(None);
                Some(Change::Unmap {
                    start: addr(lo),
                    end: addr(hi),
                })
            }
            Op::Protect { at, len, perms } => {
                let (lo, hi) = span(at, len);
                let perms = perms_of_bits(perms);
                for page in self.pages[lo..hi].iter_mut().flatten() {
                    page.perms = with_rwx(page.perms, perms);
                }
                Some(Change::Protect {
                    start: addr(lo),
                    end: addr(hi),
                    perms,
                })
            }
            Op::Remap {
                at,
                len,
                new_len,
                dest,
            } => {
                // Starting on a mapped page (`at` picks one), which is where mremap succeeds.
                let mapped: Vec<usize> = (0..PAGES).filter(|&i| self.pages[i].is_some()).collect();
                let at = *mapped.get(at % mapped.len().max(1))?;
                let first = self.pages[at]?;
                // The old range must lie within one mapping.
                let mut old_hi = at + 1;
                while old_hi < (at + len).min(PAGES)
                    && self.pages[old_hi].is_some_and(|q| joins(self.pages[old_hi - 1].unwrap(), q))
                {
                    old_hi += 1;
                }
                let new_lo = dest.unwrap_or(at);
                let new_hi = new_lo + new_len;
                let overlaps = new_lo < old_hi && at < new_hi;
                if new_hi > PAGES || (dest.is_some() && overlaps) {
                    return None;
                }
                self.pages[at..old_hi].fill(None);
                for (i, page) in self.pages[new_lo..new_hi].iter_mut().enumerate() {
                    let backing = match first.backing {
                        Backing::Anon => Backing::Anon,
                        Backing::File(f, off) => Backing::File(f, off + i as u64 * P),
                    };
                    *page = Some(Page {
                        backing,
                        perms: first.perms,
                    });
                }
                Some(Change::Remap {
                    old_start: addr(at),
                    old_end: addr(old_hi),
                    new_start: addr(new_lo),
                    new_end: addr(new_hi),
                    mapping: self.report(new_lo),
                })
            }
            Op::Brk { to } => {
                let old = self.brk;
                // The kernel refuses to grow the heap over another mapping.
                if to > old && self.pages[old..to].iter().any(Option::is_some) {
                    return None;
                }
                let heap = Page {
                    backing: Backing::Anon,
                    perms: perms("rw-p"),
                };
                for (i, page) in self.pages.iter_mut().enumerate() {
                    if (old..to).contains(&i) {
                        *page = Some(heap);
                    } else if (to..old).contains(&i) {
                        *page = None;
                    }
                }
                self.brk = to;
                Some(Change::Brk {
                    start_brk: addr(START_BRK),
                    old_brk: addr(old),
                    new_brk: addr(to),
                })
            }
        }
    }

    /// Whether replaying a protection change must be refused: it reaches a page excluded as
    /// not executable or unsupported that could become a keeper.
    fn unknowable(&self, change: &Change) -> bool {
        let Change::Protect { start, end, perms } = *change else {
            return false;
        };
        (0..PAGES)
            .filter(|&i| (start..end).contains(&addr(i)))
            .any(|i| match self.expect(i, addr(i)) {
                Err(Miss::Excluded(Excluded::NotExecutable)) => perms.contains(Perms::EXEC),
                Err(Miss::Excluded(Excluded::Unsupported)) => {
                    perms.contains(Perms::EXEC) && !perms.contains(Perms::WRITE)
                }
                _ => false,
            })
    }

    /// Panics unless `snap` answers like the model at every page (start, middle, last byte).
    fn check(&self, snap: &Snapshot, what: &str) {
        for page in 0..PAGES {
            for at in [addr(page), addr(page) + P / 2, addr(page) + P - 1] {
                let got = match snap.lookup(at) {
                    Some(v) => Ok((v.file, v.file_offset(at), v.perms)),
                    None => Err(snap.miss(at)),
                };
                assert_eq!(got, self.expect(page, at), "{what} at {at:#x}\n{self:?}");
                if let (
                    Some(v),
                    Some(Page {
                        backing: Backing::File(f, _),
                        ..
                    }),
                ) = (snap.lookup(at), self.pages[page])
                {
                    assert_eq!(v.path, self.files[f].path, "{what} path at {at:#x}");
                    assert_eq!(
                        v.deleted, self.files[f].deleted,
                        "{what} deleted at {at:#x}"
                    );
                }
            }
        }
        assert_eq!(snap.miss(addr(PAGES)), Miss::Unmapped);
        assert!(snap.lookup(addr(PAGES)).is_none());
    }
}

/// Both lists sorted, without empty or overlapping entries, and disjoint from each other.
fn check_shape(snap: &Snapshot) {
    let vmas: Vec<(u64, u64)> = snap.vmas().iter().map(|v| (v.start, v.end)).collect();
    let excluded: Vec<(u64, u64)> = snap.excluded().iter().map(|e| (e.0, e.1)).collect();
    for list in [&vmas, &excluded] {
        assert!(list.iter().all(|r| r.0 < r.1), "empty entry: {list:x?}");
        assert!(
            list.windows(2).all(|w| w[0].1 <= w[1].0),
            "unsorted: {list:x?}"
        );
    }
    let mut all = [vmas, excluded].concat();
    all.sort_unstable();
    assert!(
        all.windows(2).all(|w| w[0].1 <= w[1].0),
        "kept and excluded overlap: {all:x?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Replaying random changes (over holes, overlapping, several files) answers like the
    /// model and like a fresh parse of the model's maps text after every step; a change is
    /// refused exactly when an excluded mapping could become a kept one, and then a rescan
    /// takes over.
    #[test]
    fn replay_matches_model_and_rescan(
        setup in prop::collection::vec(op(), 0..8),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let mut model = Model::new();
        for op in &setup {
            model.step(op);
        }
        let mut snap = Snapshot::parse(2, &model.render()).unwrap();
        model.check(&snap, "initial parse");
        for (n, op) in ops.iter().enumerate() {
            let before = model.clone();
            let Some(change) = model.step(op) else { continue };
            let seq = snap.seq() + 2;
            let rescan = Snapshot::parse(seq, &model.render()).unwrap();
            let what = format!("step {n}: {change:x?}");
            model.check(&rescan, &format!("rescan after {what}"));
            match apply(&snap, &change, seq) {
                Ok(next) => {
                    prop_assert!(!before.unknowable(&change), "replayed {what}");
                    prop_assert_eq!(next.seq(), seq);
                    check_shape(&next);
                    model.check(&next, &format!("replay of {what}"));
                    snap = next;
                }
                Err(err) => {
                    prop_assert!(before.unknowable(&change), "{what}: {err}");
                    prop_assert!(matches!(err, Unknowable::MayBecomeKept { .. }), "{what}: {err}");
                    snap = rescan;
                }
            }
        }
    }
}
