//! An immutable, sorted picture of one process's executable file mappings at one sequence.

use std::{ffi::OsStr, os::unix::ffi::OsStrExt, path::Path, sync::Arc as StdArc};

use rustc_hash::FxHashMap;

use super::{
    maps::{self, ParseError},
    vma::{Excluded, Vma, classify},
};
use crate::file_id::FileId;

/// What a process's address space looked like at change sequence `seq`, restricted to the
/// mappings that can carry a probe or a symbol. Never modified once built: readers share it
/// through `Arc` and it is freed when the last of them lets go.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The change sequence this picture is valid for (always even).
    seq: u64,
    /// Kept mappings, sorted by address, non-overlapping.
    vmas: Box<[Vma]>,
    /// Mappings that were left out, sorted, with the reason: consulted only when an address
    /// misses `vmas`, to say why it cannot be resolved.
    excluded: Box<[(u64, u64, Excluded)]>,
    /// Only part of the address space is known (a process whose tracking started late: from
    /// the kernel's report at exec, or at its first mmap of a probed file). Kept mappings are
    /// exact; an address outside them may be mapped after all.
    partial: bool,
}

/// Why an address has no kept mapping in a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// Nothing at all is mapped there.
    Unmapped,
    /// Something is mapped there, but not something the snapshot keeps.
    Excluded(Excluded),
    /// The snapshot is partial and does not know what is there.
    Unseen,
}

impl Snapshot {
    /// A snapshot from mappings in any order. Overlapping mappings are a caller bug: lookups
    /// then return one of the overlapping ones.
    pub fn from_vmas(seq: u64, mut vmas: Vec<Vma>) -> Self {
        vmas.sort_unstable_by_key(|v| v.start);
        debug_assert!(vmas.windows(2).all(|w| w[0].end <= w[1].start));
        Self {
            seq,
            vmas: vmas.into_boxed_slice(),
            excluded: Box::new([]),
            partial: false,
        }
    }

    /// A partial snapshot: exactly these mappings are known (see [`Snapshot::is_partial`]).
    pub fn partial(seq: u64, vmas: Vec<Vma>) -> Self {
        Self {
            partial: true,
            ..Self::from_vmas(seq, vmas)
        }
    }

    /// Whether only part of the address space is known: a miss is then [`Miss::Unseen`]
    /// rather than [`Miss::Unmapped`].
    pub fn is_partial(&self) -> bool {
        self.partial
    }

    /// A snapshot from lists already sorted and non-overlapping (what replaying a change
    /// produces); not checked beyond debug assertions.
    pub(crate) fn from_parts(
        seq: u64,
        vmas: Vec<Vma>,
        excluded: Vec<(u64, u64, Excluded)>,
        partial: bool,
    ) -> Self {
        debug_assert!(vmas.windows(2).all(|w| w[0].end <= w[1].start));
        debug_assert!(excluded.windows(2).all(|w| w[0].1 <= w[1].0));
        Self {
            seq,
            vmas: vmas.into_boxed_slice(),
            excluded: excluded.into_boxed_slice(),
            partial,
        }
    }

    /// Builds the snapshot of a /proc/PID/maps text read while the sequence was `seq`.
    pub fn parse(seq: u64, text: &[u8]) -> Result<Self, ParseError> {
        let mut vmas = Vec::new();
        let mut excluded: Vec<(u64, u64, Excluded)> = Vec::new();
        // One `Arc<Path>` per distinct path: a library's several segments share it.
        let mut paths: FxHashMap<&[u8], StdArc<Path>> = FxHashMap::default();
        for line in maps::lines(text) {
            let line = line?;
            match classify(line.perms, line.ino, line.path) {
                Ok(()) => {
                    let (path, deleted) = maps::split_path(line.path);
                    let path = paths
                        .entry(line.path)
                        .or_insert_with(|| StdArc::from(Path::new(OsStr::from_bytes(&path))))
                        .clone();
                    vmas.push(Vma {
                        start: line.start,
                        end: line.end,
                        pgoff: line.pgoff,
                        file: FileId::from_major_minor(line.major, line.minor, line.ino),
                        perms: line.perms,
                        deleted,
                        path,
                    });
                }
                Err(why) => match excluded.last_mut() {
                    // Adjacent exclusions for the same reason merge: fewer entries to search.
                    Some(last) if last.1 == line.start && last.2 == why => last.1 = line.end,
                    _ => excluded.push((line.start, line.end, why)),
                },
            }
        }
        // The kernel prints mappings in address order; sorting again is nearly free then and
        // keeps lookups right for a hand-made text that is not.
        vmas.sort_by_key(|v| v.start);
        excluded.sort_by_key(|e| e.0);
        Ok(Self {
            seq,
            vmas: vmas.into_boxed_slice(),
            excluded: excluded.into_boxed_slice(),
            partial: false,
        })
    }

    /// The same picture labelled with another sequence (a forked child's copy of its parent's
    /// address space); paths are shared, not copied.
    pub fn with_seq(&self, seq: u64) -> Self {
        Self {
            seq,
            vmas: self.vmas.clone(),
            excluded: self.excluded.clone(),
            partial: self.partial,
        }
    }

    /// The change sequence this snapshot is valid for.
    #[inline]
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The kept mappings, sorted by address.
    pub fn vmas(&self) -> &[Vma] {
        &self.vmas
    }

    /// The left-out mappings with their reasons, sorted by address.
    pub(crate) fn excluded(&self) -> &[(u64, u64, Excluded)] {
        &self.excluded
    }

    /// The kept mapping containing `addr`: a binary search, no allocation.
    #[inline]
    pub fn lookup(&self, addr: u64) -> Option<&Vma> {
        let i = self.vmas.partition_point(|v| v.end <= addr);
        self.vmas.get(i).filter(|v| v.start <= addr)
    }

    /// Why `addr` has no kept mapping (meaningful after [`Snapshot::lookup`] missed).
    pub fn miss(&self, addr: u64) -> Miss {
        let i = self.excluded.partition_point(|e| e.1 <= addr);
        match self.excluded.get(i) {
            Some(&(start, _, why)) if start <= addr => Miss::Excluded(why),
            _ if self.partial => Miss::Unseen,
            _ => Miss::Unmapped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &[u8] = b"\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 100 /usr/bin/app
55d0c0a01000-55d0c0a05000 r-xp 00001000 08:01 100 /usr/bin/app
55d0c0c00000-55d0c0c21000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000010000 r-xp 00010000 103:02 200 /lib/libx.so (deleted)
7f0000010000-7f0000020000 r-xp 00020000 103:02 200 /lib/libx.so (deleted)
7f0000020000-7f0000030000 rwxs 00000000 00:05 300 /dev/shm/jit
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]
";

    /// Only executable file-backed mappings are kept; paths are shared between segments.
    #[test]
    fn parse_keeps_executable_file_mappings() {
        let snap = Snapshot::parse(4, TEXT).unwrap();
        assert_eq!(snap.seq(), 4);
        let starts: Vec<u64> = snap.vmas().iter().map(|v| v.start).collect();
        assert_eq!(
            starts,
            [0x55d0_c0a0_1000, 0x7f00_0000_0000, 0x7f00_0001_0000]
        );
        let lib = &snap.vmas()[1];
        assert!(lib.deleted);
        assert_eq!(&*lib.path, Path::new("/lib/libx.so"));
        assert_eq!(lib.file, FileId::from_major_minor(0x103, 2, 200));
        assert!(StdArc::ptr_eq(&lib.path, &snap.vmas()[2].path));
    }

    /// Lookups find the containing mapping at both edges and miss outside it.
    #[test]
    fn lookup_edges() {
        let snap = Snapshot::parse(0, TEXT).unwrap();
        assert_eq!(snap.lookup(0x55d0_c0a0_1000).unwrap().pgoff, 0x1000);
        assert_eq!(snap.lookup(0x55d0_c0a0_4fff).unwrap().pgoff, 0x1000);
        assert!(snap.lookup(0x55d0_c0a0_5000).is_none());
        assert_eq!(snap.lookup(0x7f00_0001_0000).unwrap().pgoff, 0x20000);
        assert!(snap.lookup(0).is_none());
        assert!(snap.lookup(u64::MAX).is_none());
    }

    /// A miss says whether something else is mapped there, and what.
    #[test]
    fn miss_reasons() {
        let snap = Snapshot::parse(0, TEXT).unwrap();
        assert_eq!(
            snap.miss(0x55d0_c0a0_0010),
            Miss::Excluded(Excluded::NotExecutable)
        );
        assert_eq!(
            snap.miss(0x55d0_c0c0_0000),
            Miss::Excluded(Excluded::NotFileBacked)
        );
        assert_eq!(
            snap.miss(0x7f00_0002_0000),
            Miss::Excluded(Excluded::Unsupported)
        );
        assert_eq!(
            snap.miss(0x7ffd_0000_0000),
            Miss::Excluded(Excluded::NotFileBacked)
        );
        assert_eq!(snap.miss(0x1000), Miss::Unmapped);
    }

    /// A malformed line fails the whole parse (a torn or corrupt text must not be trusted).
    #[test]
    fn malformed_text_is_rejected() {
        let err = Snapshot::parse(0, b"1000-2000 r-xp 0 08:01 1 /a\n1000-20").unwrap_err();
        assert_eq!(err.line, 2);
    }

    /// Snapshots built from VMAs in any order look up the same as sorted ones.
    #[test]
    fn from_vmas_sorts() {
        let vma = |start| Vma {
            start,
            end: start + 0x1000,
            pgoff: 0,
            file: FileId { dev: 1, ino: start },
            perms: crate::resolve::Perms::EXEC,
            deleted: false,
            path: StdArc::from(Path::new("/f")),
        };
        let snap = Snapshot::from_vmas(2, vec![vma(0x5000), vma(0x1000), vma(0x3000)]);
        for a in [0x1000, 0x3000, 0x5000] {
            assert_eq!(snap.lookup(a + 5).unwrap().file.ino, a);
        }
        assert!(snap.lookup(0x2000).is_none());
    }

    /// A partial snapshot answers for the mappings it knows and calls everything else unseen,
    /// never unmapped; replayed changes keep it partial.
    #[test]
    fn partial_snapshot_misses_are_unseen() {
        let full = Snapshot::parse(4, TEXT).unwrap();
        let partial = Snapshot::partial(4, full.vmas().to_vec());
        assert!(partial.is_partial() && !full.is_partial());
        assert_eq!(
            partial.lookup(0x55d0_c0a0_1000),
            full.lookup(0x55d0_c0a0_1000)
        );
        assert_eq!(partial.miss(0x1000), Miss::Unseen);
        assert_eq!(full.miss(0x1000), Miss::Unmapped);
        assert!(partial.with_seq(6).is_partial());
    }
}
