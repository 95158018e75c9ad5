//! Finding the exact file a process maps, by (device, inode), from outside the process.
//!
//! A path from /proc/PID/maps may since have been replaced (a new build renamed over the old
//! one), may live in another mount namespace (a container), or may be deleted. The routes
//! tried, in order: `/proc/PID/map_files/START-END`, which pins the very file of the mapping
//! (it needs `CAP_SYS_ADMIN` or `CAP_CHECKPOINT_RESTORE`); `/proc/PID/root/PATH`, which
//! reaches into the process's mount namespace; the path itself. Whatever opens is accepted
//! only if its `(st_dev, st_ino)` is the identity the mapping names.

use std::{
    fs::{File, Metadata},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use super::{ElfError, reader};
use crate::file_id::FileId;

/// `f_type` of an overlay file system (`OVERLAYFS_SUPER_MAGIC` in linux/magic.h).
pub(crate) const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// A mapping of the file in a live process: lets a cache miss open the file through
/// `/proc/PID/map_files` and `/proc/PID/root`. Plain numbers, so a caller builds one per
/// hit without allocating; paths are built only on a miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The process (host pid, as BPF reports it).
    pub pid: u32,
    /// The mapping's first address (`vm_start`).
    pub start: u64,
    /// The mapping's end address (`vm_end`, exclusive).
    pub end: u64,
}

/// Where to find a file known by its identity.
#[derive(Clone, Copy, Debug)]
pub struct FileSource<'a> {
    /// The identity the file must have (from /proc/PID/maps or the hit).
    pub id: FileId,
    /// The path /proc/PID/maps prints, without " (deleted)": names the module in results.
    pub path: &'a Path,
    /// A live mapping of the file, if the caller knows one.
    pub mapping: Option<Mapping>,
}

impl<'a> FileSource<'a> {
    /// A file reachable by its path only.
    pub fn path(id: FileId, path: &'a Path) -> Self {
        Self {
            id,
            path,
            mapping: None,
        }
    }

    /// A file mapped in process `pid` at `[start, end)`, also known as `path`.
    pub fn mapped(id: FileId, path: &'a Path, pid: u32, start: u64, end: u64) -> Self {
        Self {
            id,
            path,
            mapping: Some(Mapping { pid, start, end }),
        }
    }

    /// The paths to try, best first.
    pub fn candidates(&self) -> Vec<PathBuf> {
        let mut paths = Vec::with_capacity(3);
        if let Some(m) = self.mapping {
            paths.push(PathBuf::from(format!(
                "/proc/{}/map_files/{:x}-{:x}",
                m.pid, m.start, m.end
            )));
            if let Ok(relative) = self.path.strip_prefix("/") {
                paths.push(Path::new(&format!("/proc/{}/root", m.pid)).join(relative));
            }
        }
        paths.push(self.path.to_owned());
        paths
    }
}

/// Why no route led to the file.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// A file opened, but it is not the one the mapping names (the binary was replaced).
    #[error("{path}: expected file {expected}, found {found}")]
    Replaced {
        /// The route that opened the wrong file.
        path: PathBuf,
        /// The identity asked for.
        expected: FileId,
        /// The identity found.
        found: FileId,
    },
    /// No route could be opened; the error of the last route tried.
    #[error("no route to the file opened")]
    Unavailable(#[source] ElfError),
}

/// Opens the file `source` names, by the first route that opens a file with the expected
/// identity.
pub fn open_source(source: &FileSource<'_>) -> Result<(File, Metadata, PathBuf), LocateError> {
    let mut replaced = None;
    let mut last_error = None;
    for path in source.candidates() {
        match reader::open(&path) {
            Ok((file, meta)) => {
                let found = FileId {
                    dev: meta.dev(),
                    ino: meta.ino(),
                };
                if identity_matches(source.id, found, || fs_magic(&file)) {
                    return Ok((file, meta, path));
                }
                replaced.get_or_insert(LocateError::Replaced {
                    path,
                    expected: source.id,
                    found,
                });
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(replaced.unwrap_or_else(|| {
        LocateError::Unavailable(last_error.expect("at least the path itself was tried"))
    }))
}

/// True when a file whose `stat` says `found` is the file known as `expected`.
///
/// An exact (device, inode) match, or — on overlayfs only — an inode match: /proc/PID/maps
/// names the underlying layer's (device, inode), while `stat` through the overlay reports the
/// overlay's device with, when all layers share one file system, the same inode number.
/// (Through `map_files` the real file opens and matches exactly.)
pub(crate) fn identity_matches(
    expected: FileId,
    found: FileId,
    fs_magic: impl FnOnce() -> Option<i64>,
) -> bool {
    found == expected || (found.ino == expected.ino && fs_magic() == Some(OVERLAYFS_SUPER_MAGIC))
}

/// The `f_type` of the file system holding `file`.
pub(crate) fn fs_magic(file: &File) -> Option<i64> {
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `file` is an open descriptor for the duration of the call and `buf` points to
    // writable memory the size of `struct statfs`, which fstatfs fills on success.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), buf.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: fstatfs returned 0, so it initialised the whole struct.
    let buf = unsafe { buf.assume_init() };
    #[expect(
        clippy::useless_conversion,
        reason = "f_type is i64 on x86-64 but a narrower type elsewhere"
    )]
    Some(i64::from(buf.f_type))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::test_support::{Fixture, scratch_dir};

    /// Exact identities match; on overlayfs an inode-only match is accepted, elsewhere not.
    #[test]
    fn identity_rules() {
        let a = FileId { dev: 1, ino: 7 };
        let overlay_view = FileId { dev: 99, ino: 7 };
        let other = FileId { dev: 1, ino: 8 };
        assert!(identity_matches(a, a, || None));
        assert!(!identity_matches(a, overlay_view, || Some(0xef53)));
        assert!(identity_matches(a, overlay_view, || Some(
            OVERLAYFS_SUPER_MAGIC
        )));
        assert!(!identity_matches(a, other, || Some(OVERLAYFS_SUPER_MAGIC)));
    }

    /// The statfs call works on a real file (and the test file system is not overlayfs's
    /// magic by accident of a wrong field).
    #[test]
    fn fs_magic_reads_the_file_system_type() {
        let file = File::open(Fixture::Pie.path()).unwrap();
        assert!(fs_magic(&file).is_some_and(|m| m != 0));
    }

    /// A path now naming another file is reported as replaced; a missing one as unavailable.
    #[test]
    fn replaced_and_missing_files() {
        let dir = scratch_dir("locate");
        let path = dir.join("bin");
        std::fs::copy(Fixture::Pie.path(), &path).unwrap();
        let id = FileId::of_path(&path).unwrap();
        assert!(open_source(&FileSource::path(id, &path)).is_ok());
        let new = dir.join("bin.new");
        std::fs::copy(Fixture::Pie.path(), &new).unwrap();
        std::fs::rename(&new, &path).unwrap();
        let err = open_source(&FileSource::path(id, &path)).unwrap_err();
        assert!(matches!(err, LocateError::Replaced { .. }), "{err:?}");
        std::fs::remove_file(&path).unwrap();
        let err = open_source(&FileSource::path(id, &path)).unwrap_err();
        assert!(
            matches!(err, LocateError::Unavailable(ElfError::NotFound { .. })),
            "{err:?}"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    /// A mapping adds the map_files and root routes before the path.
    #[test]
    fn candidates_in_order() {
        let id = FileId { dev: 1, ino: 2 };
        let src = FileSource::mapped(id, Path::new("/usr/lib/libc.so.6"), 42, 0x7f00, 0x7f80);
        let got = src.candidates();
        assert_eq!(
            got,
            vec![
                PathBuf::from("/proc/42/map_files/7f00-7f80"),
                PathBuf::from("/proc/42/root/usr/lib/libc.so.6"),
                PathBuf::from("/usr/lib/libc.so.6"),
            ]
        );
    }
}
