//! Replaying one finished address-space change onto a snapshot, without reading /proc.
//!
//! The BPF change tracker reports every successful mmap, munmap, mprotect, mremap and brk of a
//! traced process with its arguments, its result and, for mmap and mremap, the kernel's own
//! view of the mapping now at the result address. [`apply`] turns the snapshot before such a
//! change into the snapshot after it, so a hit stamped with any sequence resolves exactly, even
//! when the process has changed again since or has exited. It is a pure function: no I/O, no
//! locking; when the snapshot alone cannot tell the result it says so ([`Unknowable`]) and the
//! caller rescans.
//!
//! What it produces matches what a fresh read of /proc/PID/maps would give, address by
//! address (mapped file, file offset, permissions, or the reason nothing is kept there).
//! Mapping extents follow the kernel's where they are known: removals split exactly where the
//! kernel splits, an inserted mapping is joined to neighbours only within the extent the kernel
//! reported for it, and a protection change rejoins pieces the way the kernel's `vma_merge`
//! does (same file, contiguous offsets, same permissions), so that `map_files/START-END` keeps
//! naming a real entry in the common cases.
//!
//! Cost: one copy of the two lists plus a splice of the few entries the change touches; no
//! sort of the whole list. Measured with `cargo bench -p probed --bench replay` (criterion,
//! 2-core development VM) on synthetic snapshots of 650 and 7,000 kept mappings (and twice as
//! many excluded ranges), freeing the result included: ≈ 7.5–7.9 µs and ≈ 80–82 µs per change,
//! the same for every kind (≈ 11.5 ns per kept mapping, mostly the `Arc<Path>` count going up
//! on the copy and down on the free). Rereading /proc/PID/maps of the 7,000-mapping process
//! costs ≈ 5.8 ms (see `maps.rs`).

use std::{ops::Range, os::unix::ffi::OsStrExt, path::Path, sync::Arc};

use super::{
    snapshot::Snapshot,
    vma::{Excluded, Perms, Vma, classify},
};
use crate::file_id::FileId;

/// A mapping as the kernel reported it after a change (read from its `vm_area_struct`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMapping {
    /// `vm_start`: may lie below the changed range when the kernel merged the new mapping
    /// with the one before it.
    pub start: u64,
    /// `vm_end`: may lie beyond the changed range when the kernel merged it with the next one.
    pub end: u64,
    /// `vm_pgoff` in bytes (the file offset mapped at `start`).
    pub pgoff: u64,
    /// Read, write, execute and shared bits of `vm_flags`.
    pub perms: Perms,
    /// `VM_HUGETLB` was set.
    pub hugetlb: bool,
    /// The mapped file; `None` for anonymous memory.
    pub file: Option<MappedFile>,
}

/// The file behind a reported mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile {
    /// Device and inode.
    pub id: FileId,
    /// The path as /proc/PID/maps would show it, without the " (deleted)" suffix.
    pub path: Arc<Path>,
    /// The file had been unlinked.
    pub deleted: bool,
}

/// One successful address-space change. Ranges are `[start, end)`, page-aligned by the
/// caller the way the kernel aligns them; an empty range changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// mmap: `[start, end)` (the page-aligned length at the result address) now holds
    /// `mapping`, clamped to the range; whatever was there before (`MAP_FIXED`) is gone.
    Map {
        /// The result address.
        start: u64,
        /// The result address plus the page-aligned length.
        end: u64,
        /// The kernel's mapping at `start`.
        mapping: NewMapping,
    },
    /// munmap: `[start, end)` is unmapped (holes in it are fine, as for the kernel).
    Unmap {
        /// First address.
        start: u64,
        /// One past the last address.
        end: u64,
    },
    /// mprotect or pkey_mprotect: every mapping in `[start, end)` now has the read, write and
    /// execute bits of `perms`; its shared bit is kept. With `PROT_GROWSDOWN`/`PROT_GROWSUP`
    /// the caller passes the range the kernel extended to.
    Protect {
        /// First address.
        start: u64,
        /// One past the last address.
        end: u64,
        /// The new protection (only read, write and execute are used).
        perms: Perms,
    },
    /// mremap: `[old_start, old_end)` is gone and `[new_start, new_end)` holds `mapping`,
    /// clamped as for [`Change::Map`]. Covers in-place growth and shrinking and moves; for
    /// `MREMAP_DONTUNMAP` or an `old_len` of 0 (the old range stays mapped as it was) the
    /// caller passes an empty old range.
    Remap {
        /// The old address.
        old_start: u64,
        /// The old address plus the page-aligned old length.
        old_end: u64,
        /// The result address.
        new_start: u64,
        /// The result address plus the page-aligned new length.
        new_end: u64,
        /// The kernel's mapping at `new_start`.
        mapping: NewMapping,
    },
    /// brk: the heap is now `[start_brk, new_brk)` (anonymous); it was `[start_brk, old_brk)`.
    /// Both ends are page-aligned up (`PAGE_ALIGN(mm->brk)`): the kernel maps whole pages.
    Brk {
        /// `mm->start_brk`.
        start_brk: u64,
        /// The heap's end before the call.
        old_brk: u64,
        /// The heap's end after it.
        new_brk: u64,
    },
}

/// Why a change cannot be replayed: the caller must rescan /proc/PID/maps instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unknowable {
    /// A protection change may turn a mapping the snapshot left out into one it would keep,
    /// and the snapshot does not hold the identity of that mapping's file.
    #[error(
        "protection change at {start:#x}..{end:#x} may make a mapping excluded as {was:?} kept"
    )]
    MayBecomeKept {
        /// First address of the part concerned.
        start: u64,
        /// One past its last address.
        end: u64,
        /// Why the snapshot left it out.
        was: Excluded,
    },
    /// The reported mapping does not cover the changed range (it changed again before the
    /// tracker read it).
    #[error(
        "reported mapping {mapping_start:#x}..{mapping_end:#x} does not cover {start:#x}..{end:#x}"
    )]
    MappingMismatch {
        /// First address of the changed range.
        start: u64,
        /// One past its last address.
        end: u64,
        /// `vm_start` reported.
        mapping_start: u64,
        /// `vm_end` reported.
        mapping_end: u64,
    },
    /// A range ends before it starts, or a heap end lies below the heap's start.
    #[error("invalid range {start:#x}..{end:#x}")]
    BadRange {
        /// The claimed start.
        start: u64,
        /// The claimed end.
        end: u64,
    },
}

/// The snapshot after `change`, valid for sequence `seq`. Mappings the change does not touch
/// are copied as they are (sharing their paths); see the module documentation for cost.
pub fn apply(snap: &Snapshot, change: &Change, seq: u64) -> Result<Snapshot, Unknowable> {
    let mut space = Space::of(snap);
    match *change {
        Change::Map {
            start,
            end,
            ref mapping,
        } => space.map(start, end, mapping)?,
        Change::Unmap { start, end } => {
            check(start, end)?;
            space.remove(start, end);
        }
        Change::Protect { start, end, perms } => {
            check(start, end)?;
            space.protect(start, end, perms)?;
        }
        Change::Remap {
            old_start,
            old_end,
            new_start,
            new_end,
            ref mapping,
        } => {
            check(old_start, old_end)?;
            space.remove(old_start, old_end);
            space.map(new_start, new_end, mapping)?;
        }
        Change::Brk {
            start_brk,
            old_brk,
            new_brk,
        } => {
            check(start_brk, old_brk)?;
            check(start_brk, new_brk)?;
            if new_brk > old_brk {
                space.remove(old_brk, new_brk);
                space.insert_excluded(old_brk, new_brk, Excluded::NotFileBacked);
            } else {
                space.remove(new_brk, old_brk);
            }
        }
    }
    Ok(Snapshot::from_parts(
        seq,
        space.vmas,
        space.excluded,
        snap.is_partial(),
    ))
}

/// `Ok` if `[start, end)` is a range (possibly empty).
fn check(start: u64, end: u64) -> Result<(), Unknowable> {
    if start <= end {
        Ok(())
    } else {
        Err(Unknowable::BadRange { start, end })
    }
}

/// `Ok` if the reported mapping covers the non-empty range `[start, end)`.
fn covers(start: u64, end: u64, mapping: &NewMapping) -> Result<(), Unknowable> {
    if start == end || (mapping.start <= start && end <= mapping.end) {
        Ok(())
    } else {
        Err(Unknowable::MappingMismatch {
            start,
            end,
            mapping_start: mapping.start,
            mapping_end: mapping.end,
        })
    }
}

/// The part `[start, end)` of `vma` (which must contain it).
fn clip(vma: &Vma, start: u64, end: u64) -> Vma {
    Vma {
        start,
        end,
        pgoff: vma.pgoff.wrapping_add(start - vma.start),
        ..vma.clone()
    }
}

/// `old`'s shared bit with the read, write and execute bits of `new`.
fn with_rwx(old: Perms, new: Perms) -> Perms {
    let mut perms = if old.contains(Perms::SHARED) {
        Perms::SHARED
    } else {
        Perms::empty()
    };
    for bit in [Perms::READ, Perms::WRITE, Perms::EXEC] {
        if new.contains(bit) {
            perms = perms.union(bit);
        }
    }
    perms
}

/// Whether `next` continues `prev` as one kernel mapping would (`vma_merge`'s test, less the
/// anon_vma that maps do not show).
fn continues(prev: &Vma, next: &Vma) -> bool {
    prev.end == next.start
        && prev.file == next.file
        && prev.perms == next.perms
        && prev.deleted == next.deleted
        && prev.pgoff.wrapping_add(prev.end - prev.start) == next.pgoff
        && (Arc::ptr_eq(&prev.path, &next.path) || prev.path == next.path)
}

/// The indices of the entries of a sorted, non-overlapping list that overlap `[start, end)`.
fn overlapping<T>(
    list: &[T],
    start: u64,
    end: u64,
    bounds: impl Fn(&T) -> (u64, u64),
) -> Range<usize> {
    let lo = list.partition_point(|x| bounds(x).1 <= start);
    let hi = lo + list[lo..].partition_point(|x| bounds(x).0 < end);
    lo..hi
}

/// The two lists of a snapshot being rebuilt.
struct Space {
    /// Kept mappings, sorted, non-overlapping.
    vmas: Vec<Vma>,
    /// Excluded ranges, sorted, non-overlapping.
    excluded: Vec<(u64, u64, Excluded)>,
}

impl Space {
    /// A copy of `snap`'s lists, with room for the few entries a change adds.
    fn of(snap: &Snapshot) -> Self {
        const ROOM: usize = 4;
        let mut vmas = Vec::with_capacity(snap.vmas().len() + ROOM);
        vmas.extend_from_slice(snap.vmas());
        let mut excluded = Vec::with_capacity(snap.excluded().len() + ROOM);
        excluded.extend_from_slice(snap.excluded());
        Self { vmas, excluded }
    }

    /// Unmaps `[start, end)`, splitting the entries that straddle its bounds.
    fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let at = overlapping(&self.vmas, start, end, |v| (v.start, v.end));
        if !at.is_empty() {
            let (first, last) = (&self.vmas[at.start], &self.vmas[at.end - 1]);
            let left = (first.start < start).then(|| clip(first, first.start, start));
            let right = (last.end > end).then(|| clip(last, end, last.end));
            self.vmas.splice(at, left.into_iter().chain(right));
        }
        let at = overlapping(&self.excluded, start, end, |e| (e.0, e.1));
        if !at.is_empty() {
            let (first, last) = (self.excluded[at.start], self.excluded[at.end - 1]);
            let left = (first.0 < start).then_some((first.0, start, first.2));
            let right = (last.1 > end).then_some((end, last.1, last.2));
            self.excluded.splice(at, left.into_iter().chain(right));
        }
    }

    /// Replaces `[start, end)` with `mapping` clamped to it.
    fn map(&mut self, start: u64, end: u64, mapping: &NewMapping) -> Result<(), Unknowable> {
        check(start, end)?;
        covers(start, end, mapping)?;
        if start == end {
            return Ok(());
        }
        self.remove(start, end);
        match keep(mapping, start, end) {
            Ok(vma) => {
                let at = self.vmas.partition_point(|v| v.start < start);
                splice_vmas(
                    &mut self.vmas,
                    at..at,
                    vec![vma],
                    mapping.start..mapping.end,
                );
            }
            Err(why) => self.insert_excluded(start, end, why),
        }
        Ok(())
    }

    /// Records `[start, end)`, which nothing occupies now, as excluded for `why`.
    fn insert_excluded(&mut self, start: u64, end: u64, why: Excluded) {
        let at = self.excluded.partition_point(|e| e.0 < start);
        splice_excluded(&mut self.excluded, at..at, vec![(start, end, why)]);
    }

    /// Gives every mapping in `[start, end)` the read, write and execute bits of `perms`.
    fn protect(&mut self, start: u64, end: u64, perms: Perms) -> Result<(), Unknowable> {
        if start >= end {
            return Ok(());
        }
        let (exec, write) = (perms.contains(Perms::EXEC), perms.contains(Perms::WRITE));
        let ex_at = overlapping(&self.excluded, start, end, |e| (e.0, e.1));
        let vma_at = overlapping(&self.vmas, start, end, |v| (v.start, v.end));
        let mut new_excluded = Vec::with_capacity(ex_at.len() + vma_at.len() + 2);
        for &(s, e, was) in &self.excluded[ex_at.clone()] {
            let now = match was {
                Excluded::NotFileBacked => Some(Excluded::NotFileBacked),
                // A file mapping without exec: adding it makes a keeper or an unsupported
                // mapping, depending on its file and shared bit, which are not held here.
                Excluded::NotExecutable => (!exec).then_some(Excluded::NotExecutable),
                // Hugetlb or shared-writable (which of the two is not held): dropping write
                // alone may make a keeper; keeping write and exec keeps it unsupported.
                // Dropping exec makes it a non-executable file mapping either way.
                Excluded::Unsupported if !exec => Some(Excluded::NotExecutable),
                Excluded::Unsupported => write.then_some(Excluded::Unsupported),
            };
            let Some(now) = now else {
                return Err(Unknowable::MayBecomeKept {
                    start: s.max(start),
                    end: e.min(end),
                    was,
                });
            };
            if s < start {
                new_excluded.push((s, start, was));
            }
            new_excluded.push((s.max(start), e.min(end), now));
            if e > end {
                new_excluded.push((end, e, was));
            }
        }
        let mut new_vmas = Vec::with_capacity(vma_at.len() + 2);
        for vma in &self.vmas[vma_at.clone()] {
            if vma.start < start {
                new_vmas.push(clip(vma, vma.start, start));
            }
            let mut inside = clip(vma, vma.start.max(start), vma.end.min(end));
            inside.perms = with_rwx(vma.perms, perms);
            match classify(
                inside.perms,
                inside.file.ino,
                inside.path.as_os_str().as_bytes(),
            ) {
                Ok(()) => new_vmas.push(inside),
                Err(why) => new_excluded.push((inside.start, inside.end, why)),
            }
            if vma.end > end {
                new_vmas.push(clip(vma, end, vma.end));
            }
        }
        // Pieces from both lists interleave; there are only as many as entries touched.
        new_excluded.sort_unstable_by_key(|e| e.0);
        splice_vmas(&mut self.vmas, vma_at, new_vmas, 0..u64::MAX);
        splice_excluded(&mut self.excluded, ex_at, new_excluded);
        Ok(())
    }
}

/// `mapping` clamped to `[start, end)` as a kept mapping, or why it is not kept: the rules of
/// [`classify`], plus hugetlb from the flags. A maps scan recognizes hugetlb only by the
/// `/anon_hugepage` path, so an executable file on a user-mounted hugetlbfs (which carries no
/// uprobe) is unsupported here but would be kept by a rescan.
fn keep(mapping: &NewMapping, start: u64, end: u64) -> Result<Vma, Excluded> {
    let Some(file) = &mapping.file else {
        return Err(Excluded::NotFileBacked);
    };
    classify(mapping.perms, file.id.ino, file.path.as_os_str().as_bytes())?;
    if mapping.hugetlb {
        return Err(Excluded::Unsupported);
    }
    Ok(Vma {
        start,
        end,
        pgoff: mapping.pgoff.wrapping_add(start - mapping.start),
        file: file.id,
        perms: mapping.perms,
        deleted: file.deleted,
        path: file.path.clone(),
    })
}

/// Replaces `vmas[at]` with `pieces` (sorted, fitting there), joining pieces with each other
/// and with the neighbours on either side when they continue one another and the joined
/// mapping stays within `within`.
fn splice_vmas(vmas: &mut Vec<Vma>, at: Range<usize>, pieces: Vec<Vma>, within: Range<u64>) {
    if pieces.is_empty() {
        // Nothing new to join: neighbours the kernel kept apart stay apart.
        vmas.drain(at);
        return;
    }
    let lo = at.start.saturating_sub(1);
    let hi = (at.end + 1).min(vmas.len());
    let mut out: Vec<Vma> = Vec::with_capacity(hi - lo + pieces.len());
    let neighbours_before = vmas[lo..at.start].iter().cloned();
    let neighbours_after = vmas[at.end..hi].iter().cloned();
    for vma in neighbours_before.chain(pieces).chain(neighbours_after) {
        match out.last_mut() {
            Some(last)
                if continues(last, &vma) && within.start <= last.start && vma.end <= within.end =>
            {
                last.end = vma.end;
            }
            _ => out.push(vma),
        }
    }
    vmas.splice(lo..hi, out);
}

/// Replaces `excluded[at]` with `pieces` (sorted, fitting there), joining touching ranges
/// excluded for the same reason, the neighbours on either side included.
fn splice_excluded(
    excluded: &mut Vec<(u64, u64, Excluded)>,
    at: Range<usize>,
    pieces: Vec<(u64, u64, Excluded)>,
) {
    let lo = at.start.saturating_sub(1);
    let hi = (at.end + 1).min(excluded.len());
    let mut out: Vec<(u64, u64, Excluded)> = Vec::with_capacity(hi - lo + pieces.len());
    let neighbours_before = excluded[lo..at.start].iter().copied();
    let neighbours_after = excluded[at.end..hi].iter().copied();
    for piece in neighbours_before.chain(pieces).chain(neighbours_after) {
        match out.last_mut() {
            Some(last) if last.1 == piece.0 && last.2 == piece.2 => last.1 = piece.1,
            _ => out.push(piece),
        }
    }
    excluded.splice(lo..hi, out);
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "replay_model_tests.rs"]
mod model_tests;
