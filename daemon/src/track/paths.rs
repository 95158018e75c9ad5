//! Mapped files' names by identity, for the mappings the resolver learns from the kernel's
//! change reports (replayed pictures).
//!
//! Every name here is tied to a (device, inode) at the moment it was learned: from the
//! report itself (the path BPF walked when the mapping was reported, `ebpf/src/path.rs`),
//! from the probe table, from /proc scans of the process, or from
//! `/proc/PID/map_files/START-END` — the last only after `stat` shows that the file mapped
//! there *now* is the one the report named (a library dlclosed and another one mapped at
//! the same address must not lend it its name). A mapping that no source can name gets
//! [`unnamed`]: the pipeline prints its identity and a reason, never another file's name.

use std::{
    cell::RefCell,
    collections::HashMap,
    ffi::OsStr,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use probed_common::{FilePath, PATH_BACKING};

use crate::{
    file_id::FileId, output::record::comm_str, probes::Probe, resolve::SharedSnapshot,
    track::changes::PathLookup,
};

/// Paths of unnamed files start with this (absolute, so the mapping still classifies as
/// file-backed, and plainly not a real directory).
const UNNAMED: &str = "/(unnamed)/";

/// The path given to a mapping whose file no source could name: its identity and last path
/// component (from the report), under [`UNNAMED`].
pub fn unnamed(file: FileId, name: &[u8]) -> Arc<Path> {
    Arc::from(PathBuf::from(format!("{UNNAMED}{file}/{}", comm_str(name))))
}

/// Whether `path` was made by [`unnamed`].
pub fn is_unnamed(path: &Path) -> bool {
    path.as_os_str().as_bytes().starts_with(UNNAMED.as_bytes())
}

/// The identities and name a report gives a mapped file: the identity the resolver keys on
/// (for an overlayfs file the overlay's — what /proc/PID/maps, stat and the probe table
/// use — not the backing file's that BPF's `vm_file` holds), the backing file's identity if
/// it differs, and the path BPF walked if it read it whole.
pub fn reported(real: FileId, path: &FilePath, kernel_dev: fn(u64, u64) -> FileId) -> Reported {
    let user = (path.flags & PATH_BACKING != 0 && path.user_ino != 0)
        .then(|| kernel_dev(path.user_dev, path.user_ino));
    Reported {
        id: user.unwrap_or(real),
        backing: user.map(|_| real),
        path: path
            .path()
            .map(|bytes| Arc::from(Path::new(OsStr::from_bytes(bytes)))),
    }
}

/// See [`reported`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    /// The identity the daemon uses for the file.
    pub id: FileId,
    /// The kernel's backing (real) file, for an overlayfs file.
    pub backing: Option<FileId>,
    /// The path, if BPF read it whole.
    pub path: Option<Arc<Path>>,
}

/// Identity → path, fed by every source the daemon has.
pub struct PathIndex {
    known: RefCell<HashMap<FileId, Arc<Path>>>,
    /// Backing (real) identity → the overlay identity it was reported with.
    overlay_of: RefCell<HashMap<FileId, FileId>>,
    /// The newest picture of the process whose report is being replayed (paths from /proc
    /// scans, which name each file with the identity /proc gave).
    pub current: Option<SharedSnapshot>,
}

impl PathIndex {
    /// An index knowing the probes' files.
    pub fn from_probes(probes: &[Probe]) -> Self {
        let index = Self {
            known: RefCell::new(HashMap::new()),
            overlay_of: RefCell::new(HashMap::new()),
            current: None,
        };
        for probe in probes {
            index.add_probe(probe);
        }
        index
    }

    /// Remembers a probe's file.
    pub fn add_probe(&self, probe: &Probe) {
        self.learn(probe.target.id, &Arc::from(probe.module_path()));
    }

    /// The overlay identity reported for a backing (real) file, if one was.
    fn overlay_of(&self, backing: FileId) -> Option<FileId> {
        self.overlay_of.borrow().get(&backing).copied()
    }

    /// The overlay identity under which process `pid` maps backing file `backing` at
    /// `[start, end)`, and its path there, if `backing` is known to back an overlay file.
    /// One image layer's file backs a different overlay file in each container (its own
    /// device): the alias learned from the file's one report names one container's, so the
    /// process's own is asked for — `stat` of its `/proc/PID/map_files/START-END` gives the
    /// overlay inode it mapped (checked: two overlays of one lower file stat as two devices
    /// there, as in their maps), and the link its path as the process sees it. The learned
    /// alias (and no path) answers only when that entry cannot be read (the process is
    /// gone) or names another file.
    pub fn overlay_for(
        &self,
        backing: FileId,
        pid: u32,
        start: u64,
        end: u64,
    ) -> Option<(FileId, Option<Arc<Path>>)> {
        let alias = self.overlay_of(backing)?;
        let link = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
        let own = std::fs::metadata(link).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        });
        Some(match own {
            Some(id) if id != backing && (id.ino == backing.ino || id.ino == alias.ino) => {
                (id, map_files_path(id, pid, start, end))
            }
            _ => (alias, None),
        })
    }

    /// Learns that `backing` is the real file behind overlay file `user`.
    pub fn alias(&self, backing: FileId, user: FileId) {
        self.overlay_of.borrow_mut().insert(backing, user);
    }

    /// How many identities have a name.
    pub fn len(&self) -> usize {
        self.known.borrow().len()
    }

    /// Whether no identity has a name.
    pub fn is_empty(&self) -> bool {
        self.known.borrow().is_empty()
    }
}

impl PathLookup for PathIndex {
    fn learn(&self, file: FileId, path: &Arc<Path>) {
        self.known.borrow_mut().insert(file, path.clone());
    }

    fn alias(&self, backing: FileId, user: FileId) {
        PathIndex::alias(self, backing, user);
    }

    fn path_of(&self, file: FileId, pid: u32, start: u64, end: u64) -> Option<Arc<Path>> {
        if let Some(p) = self.known.borrow().get(&file) {
            return Some(p.clone());
        }
        let found = self
            .current
            .as_ref()
            .and_then(|s| {
                s.vmas()
                    .iter()
                    .find(|v| v.file == file)
                    .map(|v| v.path.clone())
            })
            .or_else(|| map_files_path(file, pid, start, end))?;
        self.learn(file, &found);
        Some(found)
    }
}

/// The path of the file mapped at `[start, end)` in `pid`, if that file is `file` now:
/// checked by stat before and after reading the link, so a mapping replaced in between
/// cannot lend its name.
fn map_files_path(file: FileId, pid: u32, start: u64, end: u64) -> Option<Arc<Path>> {
    let link = PathBuf::from(format!("/proc/{pid}/map_files/{start:x}-{end:x}"));
    let is_file = || {
        std::fs::metadata(&link).is_ok_and(|m| {
            FileId {
                dev: m.dev(),
                ino: m.ino(),
            } == file
        })
    };
    if !is_file() {
        return None;
    }
    let target = std::fs::read_link(&link).ok()?;
    if !is_file() {
        return None;
    }
    let text = target.to_string_lossy();
    let path = text
        .strip_suffix(" (deleted)")
        .map_or_else(|| target.clone(), PathBuf::from);
    Some(Arc::from(path))
}

#[cfg(test)]
mod tests {
    use probed_common::{PATH_LEN, PATH_TRUNCATED};

    use super::*;

    fn file_path(text: &str, flags: u16, user: (u64, u64)) -> FilePath {
        let mut p = FilePath::EMPTY;
        p.bytes[..text.len()].copy_from_slice(text.as_bytes());
        p.len = text.len() as u16;
        p.flags = flags;
        (p.user_dev, p.user_ino) = user;
        p
    }

    fn id(dev: u64, ino: u64) -> FileId {
        crate::track::changes::file_id(dev, ino)
    }

    /// A plain file keeps the kernel's identity and the walked path.
    #[test]
    fn plain_file() {
        let real = FileId::from_major_minor(8, 1, 42);
        let r = reported(
            real,
            &file_path("/opt/lib/liba.so", 0, ((8 << 20) | 1, 42)),
            id,
        );
        assert_eq!(r.id, real);
        assert_eq!(r.backing, None);
        assert_eq!(r.path.as_deref(), Some(Path::new("/opt/lib/liba.so")));
    }

    /// An overlayfs backing file is known by the overlay's identity; the real one is kept
    /// as its alias.
    #[test]
    fn overlay_file() {
        let real = FileId::from_major_minor(8, 1, 42);
        let r = reported(
            real,
            &file_path("/usr/lib/liba.so", PATH_BACKING, (77, 42)),
            id,
        );
        assert_eq!(r.id, FileId::from_major_minor(0, 77, 42));
        assert_eq!(r.backing, Some(real));
    }

    /// A truncated or missing path is no path.
    #[test]
    fn truncated_or_missing() {
        let real = FileId::from_major_minor(8, 1, 42);
        let r = reported(real, &file_path("/b/c.so", PATH_TRUNCATED, (0, 0)), id);
        assert_eq!(r.path, None);
        assert_eq!(reported(real, &FilePath::EMPTY, id).path, None);
        assert_eq!(PATH_LEN, 256);
    }

    /// Unnamed paths say so, carry the identity, and are recognised.
    #[test]
    fn unnamed_paths() {
        let p = unnamed(FileId::from_major_minor(8, 1, 42), b"liba.so\0");
        assert!(is_unnamed(&p), "{p:?}");
        assert_eq!(&*p, Path::new("/(unnamed)/8:1/42/liba.so"));
        assert!(!is_unnamed(Path::new("/usr/lib/liba.so")));
    }

    /// map_files is used only for the file the report named: another identity is refused.
    #[test]
    fn map_files_checked_by_identity() {
        let me = std::process::id();
        let maps = std::fs::read_to_string(format!("/proc/{me}/maps")).unwrap();
        let line = maps
            .lines()
            .find(|l| l.contains(" r-xp ") && l.contains('/'))
            .unwrap();
        let (range, _) = line.split_once(' ').unwrap();
        let (s, e) = range.split_once('-').unwrap();
        let (start, end) = (
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
        );
        let path = line.split_whitespace().last().unwrap();
        let right = FileId::of_path(Path::new(path)).unwrap();
        if std::fs::read_link(format!("/proc/{me}/map_files/{s}-{e}")).is_err() {
            eprintln!("SKIPPED: map_files needs CAP_SYS_ADMIN");
            return;
        }
        assert_eq!(
            map_files_path(right, me, start, end).as_deref(),
            Some(Path::new(path))
        );
        let wrong = FileId {
            dev: right.dev,
            ino: right.ino + 1,
        };
        assert_eq!(map_files_path(wrong, me, start, end), None);
    }
}
