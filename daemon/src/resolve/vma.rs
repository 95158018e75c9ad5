//! One mapping of a process's address space, as far as the resolver keeps it.

use std::{path::Path, sync::Arc};

use crate::file_id::FileId;

/// Access permissions of a mapping, from the `rwxp`/`rwxs` column of /proc/PID/maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Perms(u8);

impl Perms {
    /// Readable.
    pub const READ: Self = Self(1);
    /// Writable.
    pub const WRITE: Self = Self(2);
    /// Executable.
    pub const EXEC: Self = Self(4);
    /// Shared (`s`) rather than private copy-on-write (`p`).
    pub const SHARED: Self = Self(8);

    /// No permission at all.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of two sets.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Parses the four-character column (`r-xp`); `None` if it is not one.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let [r, w, x, s] = text else { return None };
        let mut perms = Self::empty();
        for (byte, set, flag) in [
            (*r, b'r', Self::READ),
            (*w, b'w', Self::WRITE),
            (*x, b'x', Self::EXEC),
        ] {
            match byte {
                b'-' => {}
                b if b == set => perms = perms.union(flag),
                _ => return None,
            }
        }
        match s {
            b'p' => {}
            b's' => perms = perms.union(Self::SHARED),
            _ => return None,
        }
        Some(perms)
    }
}

impl std::fmt::Display for Perms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flag = |p, c| if self.contains(p) { c } else { '-' };
        write!(
            f,
            "{}{}{}{}",
            flag(Self::READ, 'r'),
            flag(Self::WRITE, 'w'),
            flag(Self::EXEC, 'x'),
            if self.contains(Self::SHARED) {
                's'
            } else {
                'p'
            }
        )
    }
}

/// A file-backed executable mapping: the only kind that can carry a uprobe or a symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vma {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Offset in the file of the byte mapped at `start` (`vm_pgoff` in bytes).
    pub pgoff: u64,
    /// The mapped file (device as `makedev`, inode).
    pub file: FileId,
    /// Access permissions (always include `EXEC` for a kept mapping).
    pub perms: Perms,
    /// The file had been unlinked when the maps were read (" (deleted)" suffix, stripped
    /// from `path`).
    pub deleted: bool,
    /// The path as /proc/PID/maps showed it, unescaped, shared between the VMAs of one file.
    /// Seen from the traced process's mount namespace: reach it through /proc/PID/root or
    /// /proc/PID/map_files rather than opening it directly.
    pub path: Arc<Path>,
}

impl Vma {
    /// Whether `addr` lies inside the mapping.
    #[inline]
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// The file offset mapped at `addr` (which must lie inside the mapping).
    #[inline]
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.pgoff
    }
}

/// Why a mapping was not kept in a snapshot; what an address inside it resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Excluded {
    /// Anonymous memory, heap, stacks, `[vdso]` and other pseudo-files.
    NotFileBacked,
    /// A file mapped without execute permission (data, read-only segments).
    NotExecutable,
    /// Executable and file-backed, but hugetlb or shared-writable: the kernel puts no uprobe
    /// there and no ELF symbol table describes it.
    Unsupported,
}

/// Decides whether a mapping is kept; `Ok(())` for a keeper, the reason otherwise.
///
/// Mirrors the kernel's `valid_vma()` for uprobes (file-backed, executable, not hugetlb) except
/// that read-only shared mappings are kept: they cannot carry a uprobe but stack frames in them
/// still deserve a symbol.
pub fn classify(perms: Perms, ino: u64, path: &[u8]) -> Result<(), Excluded> {
    if ino == 0 || !path.starts_with(b"/") {
        return Err(Excluded::NotFileBacked);
    }
    if !perms.contains(Perms::EXEC) {
        return Err(Excluded::NotExecutable);
    }
    // MAP_HUGETLB anonymous memory shows as this pseudo-path on the hugetlbfs internal mount;
    // a file on a user-mounted hugetlbfs cannot be told from maps alone and executable
    // hugetlbfs files are not something a loader produces.
    if path.starts_with(b"/anon_hugepage") {
        return Err(Excluded::Unsupported);
    }
    if perms.contains(Perms::SHARED.union(Perms::WRITE)) {
        return Err(Excluded::Unsupported);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The permission column round-trips and rejects garbage.
    #[test]
    fn perms_parse_and_print() {
        for text in ["r-xp", "rw-s", "---p", "rwxs"] {
            assert_eq!(Perms::parse(text.as_bytes()).unwrap().to_string(), text);
        }
        assert_eq!(Perms::parse(b"r-x"), None);
        assert_eq!(Perms::parse(b"rxwp"), None);
        assert_eq!(Perms::parse(b"r-xq"), None);
    }

    /// Only file-backed executable, non-hugetlb, non-shared-writable mappings are kept.
    #[test]
    fn classify_rules() {
        let p = |s: &str| Perms::parse(s.as_bytes()).unwrap();
        assert_eq!(classify(p("r-xp"), 12, b"/usr/lib/libc.so.6"), Ok(()));
        assert_eq!(classify(p("r-xs"), 12, b"/usr/lib/x"), Ok(()));
        assert_eq!(
            classify(p("r-xp"), 0, b"[vdso]"),
            Err(Excluded::NotFileBacked)
        );
        assert_eq!(classify(p("rwxp"), 0, b""), Err(Excluded::NotFileBacked));
        assert_eq!(
            classify(p("r--p"), 12, b"/usr/lib/libc.so.6"),
            Err(Excluded::NotExecutable)
        );
        assert_eq!(
            classify(p("rwxs"), 12, b"/dev/shm/x"),
            Err(Excluded::Unsupported)
        );
        assert_eq!(
            classify(p("r-xp"), 9, b"/anon_hugepage (deleted)"),
            Err(Excluded::Unsupported)
        );
    }

    /// The file offset of an address adds the mapping's page offset.
    #[test]
    fn file_offset_math() {
        let vma = Vma {
            start: 0x1000,
            end: 0x3000,
            pgoff: 0x5000,
            file: FileId { dev: 1, ino: 2 },
            perms: Perms::READ.union(Perms::EXEC),
            deleted: false,
            path: Arc::from(Path::new("/x")),
        };
        assert!(vma.contains(0x1000) && vma.contains(0x2fff) && !vma.contains(0x3000));
        assert_eq!(vma.file_offset(0x1234), 0x5234);
    }
}
