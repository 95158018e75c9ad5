//! SPEC paths inside a container: with `--container PID` (`container = PID`), the path of
//! `uprobe:/usr/bin/app:fn` names a file in PID's root file system, not the host's.
//!
//! The file is opened with `openat2(RESOLVE_IN_ROOT)` below `/proc/PID/root`, so every
//! symlink on the way — absolute ones too (`/usr/bin/python3 -> /etc/alternatives/…`) — is
//! resolved inside the container, as the container's own processes resolve it; a plain
//! `/proc/PID/root/usr/bin/app` path walk would follow an absolute symlink out to the host's
//! file. The ELF checks read that open file, and the uprobe is attached through
//! `/proc/self/fd/N` of the same descriptor, so the file checked is the file probed (the
//! kernel keys the uprobe on its real inode). The descriptor is closed once attached: it
//! must not pin the container's mount.

use std::{
    fs::File,
    io,
    num::NonZeroU32,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// Why a path could not be resolved in a container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The container's process does not exist (or has exited).
    #[error("no process with pid {0} (it may have exited)")]
    NoProcess(NonZeroU32),
    /// Its root cannot be opened (no CAP_SYS_PTRACE over it, or /proc is not mounted).
    #[error("cannot open the root of pid {pid} (/proc/{pid}/root)")]
    Root {
        /// The process.
        pid: NonZeroU32,
        /// What open said.
        #[source]
        source: io::Error,
    },
    /// The file is not in the container (whether the host has a file there is said, so a
    /// SPEC written for the host reads as what it is).
    #[error(
        "{path}: no such file in the container of pid {pid} (looked up as {host_path}){}",
        if *.on_host { "; the host has that path, but with --container the SPEC's path is resolved inside the container" } else { "" }
    )]
    NotFound {
        /// The container's process.
        pid: NonZeroU32,
        /// The path as written in the SPEC.
        path: PathBuf,
        /// Where it was looked up from the host.
        host_path: PathBuf,
        /// Whether the host has a file at `path`.
        on_host: bool,
    },
    /// The file exists but cannot be opened.
    #[error("cannot open {path} in the container of pid {pid} ({host_path})")]
    Open {
        /// The container's process.
        pid: NonZeroU32,
        /// The path as written in the SPEC.
        path: PathBuf,
        /// Where it was looked up from the host.
        host_path: PathBuf,
        /// What openat2 said.
        #[source]
        source: io::Error,
    },
}

/// The root file system of a container's process, held open (an `O_PATH` descriptor of
/// `/proc/PID/root`): paths resolved through it stay in that root even if the pid is reused
/// meanwhile.
#[derive(Debug)]
pub struct ContainerRoot {
    pid: NonZeroU32,
    root: OwnedFd,
}

/// A file opened inside a container.
#[derive(Debug)]
pub struct ContainerFile {
    /// The open file (read for the ELF checks; the uprobe is attached through it).
    pub file: File,
    /// The path from the host, `/proc/PID/root/PATH` as written (for messages and logs;
    /// symlinks in it are resolved in the container, which this text does not show).
    pub host_path: PathBuf,
}

impl ContainerFile {
    /// The path to hand the kernel to attach to this very file: `/proc/self/fd/N`, valid
    /// while `self` lives.
    pub fn attach_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

impl ContainerRoot {
    /// Opens the root of process `pid` (a pid of our namespace, any process of the
    /// container).
    pub fn of_pid(pid: NonZeroU32) -> Result<Self, ContainerError> {
        let root = rustix::fs::open(
            format!("/proc/{pid}/root").as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| match errno {
            rustix::io::Errno::NOENT | rustix::io::Errno::SRCH => ContainerError::NoProcess(pid),
            errno => ContainerError::Root {
                pid,
                source: errno.into(),
            },
        })?;
        Ok(Self { pid, root })
    }

    /// The process whose root this is.
    pub fn pid(&self) -> NonZeroU32 {
        self.pid
    }

    /// `/proc/PID/root/PATH`: how `path` reads from the host (for messages).
    pub fn host_path(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        Path::new(&format!("/proc/{}/root", self.pid)).join(relative)
    }

    /// Opens `path` (absolute, as the container sees it) for reading, every symlink resolved
    /// inside the container.
    pub fn open(&self, path: &Path) -> Result<ContainerFile, ContainerError> {
        let host_path = self.host_path(path);
        let relative = path.strip_prefix("/").unwrap_or(path);
        let relative = if relative.as_os_str().is_empty() {
            Path::new(".")
        } else {
            relative
        };
        let c_path =
            std::ffi::CString::new(relative.as_os_str().as_encoded_bytes()).map_err(|_| {
                ContainerError::Open {
                    pid: self.pid,
                    path: path.to_owned(),
                    host_path: host_path.clone(),
                    source: io::Error::from(io::ErrorKind::InvalidInput),
                }
            })?;
        let opened = match openat2_in_root(&self.root, &c_path) {
            // No openat2 (Linux < 5.6), or a seccomp filter that does not know it (systemd
            // 252's @system-service does not list it): the same resolution, step by step.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                walk_in_root(&self.root, path)
            }
            other => other,
        };
        let file = match opened {
            Ok(file) => file,
            Err(source) if source.kind() == io::ErrorKind::NotFound => {
                // The container's process may have exited meanwhile: say so rather than
                // blame the path.
                if !Path::new(&format!("/proc/{}", self.pid)).exists() {
                    return Err(ContainerError::NoProcess(self.pid));
                }
                return Err(ContainerError::NotFound {
                    pid: self.pid,
                    path: path.to_owned(),
                    host_path,
                    on_host: path.exists(),
                });
            }
            Err(source) => {
                return Err(ContainerError::Open {
                    pid: self.pid,
                    path: path.to_owned(),
                    host_path,
                    source,
                });
            }
        };
        Ok(ContainerFile { file, host_path })
    }
}

/// `openat2(root, path, O_RDONLY, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
fn openat2_in_root(root: &OwnedFd, path: &std::ffi::CStr) -> io::Result<File> {
    let fd = rustix::fs::openat2(
        root,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        // In the root: `..` and absolute symlinks stop at the container's root. No magic
        // links: a /proc/self/… inside the container must not reach out of it.
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?;
    Ok(File::from(fd))
}

/// Symlinks followed before giving up (the kernel's limit, MAXSYMLINKS).
const MAX_SYMLINKS: u32 = 40;

/// `openat(dir, name, flags | O_CLOEXEC)`.
fn openat(dir: &OwnedFd, name: &std::ffi::OsStr, flags: OFlags) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// What `RESOLVE_IN_ROOT` does, one component at a time: each component is opened
/// `O_PATH | O_NOFOLLOW` under the directory reached so far; a symlink's target is spliced
/// into the remaining path (an absolute one restarts at `root`); `..` never climbs above
/// `root`. The last component is opened for reading with `O_NOFOLLOW` (so it cannot have
/// become a symlink in between).
fn walk_in_root(root: &OwnedFd, path: &Path) -> io::Result<File> {
    use std::{collections::VecDeque, ffi::OsString, os::unix::ffi::OsStringExt as _};

    let mut dirs: Vec<OwnedFd> = vec![root.try_clone()?];
    let mut rest: VecDeque<OsString> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_owned()),
            std::path::Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(name) = rest.pop_front() {
        if name == ".." {
            if dirs.len() > 1 {
                dirs.pop();
            }
            continue;
        }
        let dir = dirs.last().expect("the root is never popped");
        let fd = openat(dir, &name, OFlags::PATH | OFlags::NOFOLLOW)?;
        let meta = File::from(fd.try_clone()?).metadata()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            // An empty path reads the link `fd` itself (opened O_PATH | O_NOFOLLOW).
            let target = rustix::fs::readlinkat(&fd, c"", Vec::new())?;
            let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
            if target.is_absolute() {
                dirs.truncate(1);
            }
            for c in target.components().rev() {
                match c {
                    std::path::Component::Normal(n) => rest.push_front(n.to_owned()),
                    std::path::Component::ParentDir => rest.push_front(OsString::from("..")),
                    _ => {}
                }
            }
        } else if rest.is_empty() {
            return openat(dir, &name, OFlags::RDONLY | OFlags::NOFOLLOW).map(File::from);
        } else {
            dirs.push(fd);
        }
    }
    // The path named a directory (or the root itself).
    Err(io::Error::from_raw_os_error(libc::EISDIR))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, symlink};

    use super::*;

    fn me() -> NonZeroU32 {
        NonZeroU32::new(std::process::id()).unwrap()
    }

    /// Through our own root, a host path opens the host's file; an absolute symlink is
    /// resolved in the root (here the same), and the attach path reaches the same inode.
    #[test]
    fn own_root_opens_host_files() {
        let root = ContainerRoot::of_pid(me()).unwrap();
        let exe = std::env::current_exe().unwrap();
        let opened = root.open(&exe).unwrap();
        let want = std::fs::metadata(&exe).unwrap();
        let got = opened.file.metadata().unwrap();
        assert_eq!((got.dev(), got.ino()), (want.dev(), want.ino()));
        let via = std::fs::metadata(opened.attach_path()).unwrap();
        assert_eq!(via.ino(), want.ino());
        assert_eq!(
            opened.host_path,
            PathBuf::from(format!("/proc/{}/root{}", me(), exe.display()))
        );
        let dir = std::env::temp_dir().join(format!("probed-container-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("abs-link");
        let _ = std::fs::remove_file(&link);
        symlink(&exe, &link).unwrap();
        let through = root.open(&link).unwrap().file.metadata().unwrap();
        assert_eq!(through.ino(), want.ino());
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A missing file is `NotFound`, saying whether the host has it; a dead pid is
    /// `NoProcess`.
    #[test]
    fn missing_file_and_dead_pid() {
        let root = ContainerRoot::of_pid(me()).unwrap();
        let err = root.open(Path::new("/no/such/probed/file")).unwrap_err();
        assert!(
            matches!(&err, ContainerError::NotFound { on_host: false, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("/no/such/probed/file") && text.contains("/root/no/such"),
            "{text}"
        );
        let missing = NonZeroU32::new(1 << 23).unwrap();
        assert!(matches!(
            ContainerRoot::of_pid(missing),
            Err(ContainerError::NoProcess(p)) if p == missing
        ));
    }

    /// The step-by-step fallback resolves like openat2: a plain path, an absolute symlink
    /// (through the root), `..` clamped at the root, a missing file, a symlink loop.
    #[test]
    fn walk_matches_openat2() {
        let root = ContainerRoot::of_pid(me()).unwrap();
        let exe = std::env::current_exe().unwrap();
        let want = std::fs::metadata(&exe).unwrap().ino();
        let ino = |p: &Path| walk_in_root(&root.root, p).map(|f| f.metadata().unwrap().ino());
        assert_eq!(ino(&exe).unwrap(), want);
        let dir = std::env::temp_dir().join(format!("probed-walk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let abs = dir.join("abs");
        let rel = dir.join("rel");
        let looped = dir.join("loop");
        for l in [&abs, &rel, &looped] {
            let _ = std::fs::remove_file(l);
        }
        symlink(&exe, &abs).unwrap();
        symlink("abs", &rel).unwrap();
        symlink("loop", &looped).unwrap();
        assert_eq!(ino(&abs).unwrap(), want);
        assert_eq!(ino(&rel).unwrap(), want);
        let climbing = PathBuf::from("/../../..").join(exe.strip_prefix("/").unwrap());
        assert_eq!(ino(&climbing).unwrap(), want);
        assert_eq!(
            ino(&dir.join("missing")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(ino(&looped).unwrap_err().raw_os_error(), Some(libc::ELOOP));
        std::fs::remove_dir_all(&dir).ok();
    }

    /// `..` cannot climb out of the root: resolved in the root, `/../..` is the root.
    #[test]
    fn dot_dot_stays_in_the_root() {
        let root = ContainerRoot::of_pid(me()).unwrap();
        let opened = root.open(Path::new("/../../etc/hostname"));
        let host = std::fs::metadata("/etc/hostname");
        if let (Ok(opened), Ok(host)) = (opened, host) {
            assert_eq!(opened.file.metadata().unwrap().ino(), host.ino());
        }
    }
}
