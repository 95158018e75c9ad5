//! A process's pictures over time: snapshots from /proc scans and snapshots derived by
//! replaying the kernel's change reports, ordered by the change ticket they are valid from.
//!
//! Labels are slot tickets: a picture labelled `L` includes every change of the process with
//! ticket ≤ `L` and is valid for hit sequences `S` (even, `S = 2 × begins`) with
//! `2L ≤ S < 2 × (ticket of the process's next change)`. The pipeline applies change reports
//! in ring-buffer order, and every report of a change with ticket ≤ `S / 2` is reserved before
//! any hit stamped with `S` (BPF reports, then closes the change), so when a hit is resolved
//! the newest picture labelled ≤ `S / 2` is exactly the address space of the hit.
//!
//! A report may arrive out of ticket order (two threads changing mappings at once): it is
//! inserted where it belongs and the replayed pictures after it are derived again. Anything
//! the snapshot alone cannot replay (shmat, a lost report, an unknowable mprotect) poisons the
//! chain from that ticket until the next scan.

use std::collections::VecDeque;

use super::{
    replay::{self, Change},
    snapshot::Snapshot,
    sync::Arc,
};

/// Where a picture came from.
#[derive(Clone, Debug)]
pub(crate) enum Origin {
    /// A /proc/PID/maps scan, or the kernel's report at exec: complete truth at its label.
    Base,
    /// The previous picture with this change applied.
    Replay(Arc<Change>),
    /// A change that could not be replayed: no picture from here until the next base.
    Poison,
}

/// One picture of the chain.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The ticket the picture is valid from.
    pub(crate) label: u64,
    /// The picture (`None` for a poison entry).
    pub(crate) snap: Option<Arc<Snapshot>>,
    /// How it was made.
    pub(crate) origin: Origin,
}

/// What answered a lookup in the chain.
#[derive(Clone, Debug)]
pub(crate) enum Found {
    /// A picture valid for the sequence asked about; `replayed` if derived from reports.
    Picture { snap: Arc<Snapshot>, replayed: bool },
    /// The chain knows the address space changed in a way it could not replay.
    Poisoned,
    /// The chain starts after the sequence asked about.
    TooOld,
    /// The chain is empty.
    Empty,
}

/// The pictures of one process, oldest first, at most `capacity` of them.
#[derive(Debug)]
pub(crate) struct Chain {
    entries: VecDeque<Entry>,
    capacity: usize,
}

/// Sequence ↔ label: the sequence of a stable slot is twice its `begins` count.
pub(crate) const fn seq_of_label(label: u64) -> u64 {
    probed_common::stable_seq(label)
}

impl Chain {
    /// An empty chain keeping at most `capacity` pictures (at least 2).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            capacity: capacity.max(2),
        }
    }

    /// Drops every picture.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// The newest entry.
    pub(crate) fn newest(&self) -> Option<&Entry> {
        self.entries.back()
    }

    /// The picture valid for hit sequence `seq` (even). With `reported`, every change of the
    /// process is known to be in the chain (the tracker reports them all, and the caller has
    /// applied every report that precedes the hit), so the newest picture labelled at or
    /// before the hit is the answer; without, only a picture of exactly that sequence is.
    pub(crate) fn at(&self, seq: u64, reported: bool) -> Found {
        let label = seq / 2;
        let i = self.entries.partition_point(|e| e.label <= label);
        if i == 0 {
            return if self.entries.is_empty() {
                Found::Empty
            } else {
                Found::TooOld
            };
        }
        let e = &self.entries[i - 1];
        if !reported && e.label != label {
            return Found::TooOld;
        }
        match &e.snap {
            Some(snap) => Found::Picture {
                snap: snap.clone(),
                replayed: matches!(e.origin, Origin::Replay(_)),
            },
            None => Found::Poisoned,
        }
    }

    /// Inserts a base picture (scan or exec report) valid from `label`; replayed pictures
    /// after it are derived again from it. Returns the newest entry's picture.
    pub(crate) fn insert_base(&mut self, label: u64, snap: Arc<Snapshot>) {
        let i = self.entries.partition_point(|e| e.label < label);
        if self.entries.get(i).is_some_and(|e| e.label == label) {
            // A base is the truth at its label: it replaces whatever was derived there.
            self.entries[i] = Entry {
                label,
                snap: Some(snap),
                origin: Origin::Base,
            };
        } else {
            self.entries.insert(
                i,
                Entry {
                    label,
                    snap: Some(snap),
                    origin: Origin::Base,
                },
            );
        }
        self.rederive_after(i);
        self.trim();
    }

    /// Inserts the change with ticket `label`: its picture is derived from the picture before
    /// it (nothing happens if there is none: a later base will cover it), and replayed
    /// pictures after it are derived again.
    pub(crate) fn insert_change(&mut self, label: u64, change: Arc<Change>) {
        let i = self.entries.partition_point(|e| e.label < label);
        if i == 0 {
            return;
        }
        if self.entries.get(i).is_some_and(|e| e.label == label) {
            // Already covered (a base at this ticket includes the change).
            return;
        }
        let entry = derive(&self.entries[i - 1], label, Origin::Replay(change));
        self.entries.insert(i, entry);
        self.rederive_after(i);
        self.trim();
    }

    /// Marks everything from ticket `label` on as unknown until the next base.
    pub(crate) fn poison(&mut self, label: u64) {
        let i = self.entries.partition_point(|e| e.label < label);
        if i == 0 && self.entries.is_empty() {
            return;
        }
        let entry = Entry {
            label,
            snap: None,
            origin: Origin::Poison,
        };
        if self.entries.get(i).is_some_and(|e| e.label == label) {
            if matches!(self.entries[i].origin, Origin::Base) {
                return;
            }
            self.entries[i] = entry;
        } else {
            self.entries.insert(i, entry);
        }
        self.rederive_after(i);
        self.trim();
    }

    /// Derives again every replayed entry after index `i`, up to the next base.
    fn rederive_after(&mut self, i: usize) {
        for j in i + 1..self.entries.len() {
            let origin = self.entries[j].origin.clone();
            match origin {
                Origin::Base => break,
                Origin::Poison => {
                    // Stays poisoned; later replays derive from nothing.
                }
                Origin::Replay(_) => {
                    let label = self.entries[j].label;
                    self.entries[j] = derive(&self.entries[j - 1], label, origin);
                }
            }
        }
    }

    fn trim(&mut self) {
        while self.entries.len() > self.capacity {
            self.entries.pop_front();
        }
    }
}

/// The entry for `label` made by applying `origin`'s change to `prev`.
fn derive(prev: &Entry, label: u64, origin: Origin) -> Entry {
    let snap = match (&prev.snap, &origin) {
        (Some(prev), Origin::Replay(change)) => replay::apply(prev, change, seq_of_label(label))
            .ok()
            .map(Arc::new),
        _ => None,
    };
    Entry {
        label,
        origin: if snap.is_some() {
            origin
        } else {
            Origin::Poison
        },
        snap,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        file_id::FileId,
        resolve::{
            Perms, Vma,
            replay::{MappedFile, NewMapping},
        },
    };

    const PAGE: u64 = probed_common::PAGE_SIZE;

    fn vma(page: u64, ino: u64) -> Vma {
        Vma {
            start: page * PAGE,
            end: (page + 1) * PAGE,
            pgoff: 0,
            file: FileId { dev: 1, ino },
            perms: Perms::READ.union(Perms::EXEC),
            deleted: false,
            path: std::sync::Arc::from(Path::new("/lib")),
        }
    }

    fn base(label: u64, pages: &[(u64, u64)]) -> Arc<Snapshot> {
        Arc::new(Snapshot::from_vmas(
            seq_of_label(label),
            pages.iter().map(|&(p, ino)| vma(p, ino)).collect(),
        ))
    }

    fn map(page: u64, ino: u64) -> Arc<Change> {
        Arc::new(Change::Map {
            start: page * PAGE,
            end: (page + 1) * PAGE,
            mapping: NewMapping {
                start: page * PAGE,
                end: (page + 1) * PAGE,
                pgoff: 0,
                perms: Perms::READ.union(Perms::EXEC),
                hugetlb: false,
                file: Some(MappedFile {
                    id: FileId { dev: 1, ino },
                    path: std::sync::Arc::from(Path::new("/lib")),
                    deleted: false,
                }),
            },
        })
    }

    fn unmap(page: u64) -> Arc<Change> {
        Arc::new(Change::Unmap {
            start: page * PAGE,
            end: (page + 1) * PAGE,
        })
    }

    /// The inode mapped at `page` in the picture valid for `label`, or why there is none.
    fn ino_at(chain: &Chain, label: u64, page: u64) -> Result<Option<u64>, &'static str> {
        match chain.at(seq_of_label(label), true) {
            Found::Picture { snap, .. } => Ok(snap.lookup(page * PAGE).map(|v| v.file.ino)),
            Found::Poisoned => Err("poisoned"),
            Found::TooOld => Err("too old"),
            Found::Empty => Err("empty"),
        }
    }

    /// Each picture answers from its label until the next change; before the first base
    /// there is nothing.
    #[test]
    fn pictures_by_label() {
        let mut chain = Chain::new(16);
        assert_eq!(ino_at(&chain, 5, 1), Err("empty"));
        chain.insert_base(10, base(10, &[(1, 100)]));
        chain.insert_change(12, unmap(1));
        chain.insert_change(15, map(1, 200));
        assert_eq!(ino_at(&chain, 9, 1), Err("too old"));
        assert_eq!(ino_at(&chain, 10, 1), Ok(Some(100)));
        assert_eq!(ino_at(&chain, 11, 1), Ok(Some(100)));
        assert_eq!(ino_at(&chain, 12, 1), Ok(None));
        assert_eq!(ino_at(&chain, 14, 1), Ok(None));
        assert_eq!(ino_at(&chain, 15, 1), Ok(Some(200)));
        assert_eq!(ino_at(&chain, 99, 1), Ok(Some(200)));
        assert!(matches!(
            chain.at(seq_of_label(15), true),
            Found::Picture { replayed: true, .. }
        ));
        assert!(
            matches!(chain.at(seq_of_label(16), false), Found::TooOld),
            "without reported changes only exact sequences answer"
        );
        assert!(matches!(
            chain.at(seq_of_label(15), false),
            Found::Picture { .. }
        ));
    }

    /// A report arriving after a later one is inserted in ticket order and the later pictures
    /// are derived again, so they include it.
    #[test]
    fn out_of_order_report_rederives() {
        let mut chain = Chain::new(16);
        chain.insert_base(1, base(1, &[]));
        chain.insert_change(3, map(2, 300));
        chain.insert_change(2, map(1, 200));
        assert_eq!(ino_at(&chain, 2, 1), Ok(Some(200)));
        assert_eq!(ino_at(&chain, 2, 2), Ok(None));
        assert_eq!(
            ino_at(&chain, 3, 1),
            Ok(Some(200)),
            "re-derived with ticket 2"
        );
        assert_eq!(ino_at(&chain, 3, 2), Ok(Some(300)));
    }

    /// An unreplayable change poisons the chain from its ticket until the next base;
    /// pictures before it still answer.
    #[test]
    fn poison_until_base() {
        let mut chain = Chain::new(16);
        chain.insert_base(1, base(1, &[(1, 100)]));
        chain.poison(4);
        chain.insert_change(6, map(2, 200));
        assert_eq!(ino_at(&chain, 3, 1), Ok(Some(100)));
        assert_eq!(ino_at(&chain, 4, 1), Err("poisoned"));
        assert_eq!(ino_at(&chain, 7, 2), Err("poisoned"));
        chain.insert_base(8, base(8, &[(3, 300)]));
        assert_eq!(ino_at(&chain, 8, 3), Ok(Some(300)));
        assert_eq!(ino_at(&chain, 7, 2), Err("poisoned"));
    }

    /// A report older than the first base is covered by it and ignored; a base at a label
    /// replaces what was replayed there; the chain keeps at most its capacity.
    #[test]
    fn bases_and_capacity() {
        let mut chain = Chain::new(3);
        chain.insert_base(5, base(5, &[(1, 100)]));
        chain.insert_change(4, unmap(1));
        assert_eq!(ino_at(&chain, 5, 1), Ok(Some(100)));
        chain.insert_change(6, unmap(1));
        chain.insert_base(6, base(6, &[(1, 111)]));
        assert_eq!(ino_at(&chain, 6, 1), Ok(Some(111)));
        chain.insert_change(7, map(2, 7));
        chain.insert_change(8, map(3, 8));
        assert_eq!(ino_at(&chain, 5, 1), Err("too old"));
        assert_eq!(ino_at(&chain, 8, 1), Ok(Some(111)));
    }
}
