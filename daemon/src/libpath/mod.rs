//! Library names in SPECs (`uprobe:libc:malloc`, `uprobe:libssl.so.3:SSL_write`) → the file
//! the dynamic loader would pick.
//!
//! A SPEC's file part without a `/` is a library name. `libssl.so.3` names that soname
//! exactly; a name without `.so` (`libc`) names `libc.so` or any `libc.so.*`. Looked up, first
//! hit wins:
//!
//! 1. with a process (`--pid`, `--container`): the libraries it has mapped now
//!    (`/proc/PID/maps`) — the very file it runs, whatever its loader's search path was;
//! 2. the loader's cache, `ROOT/etc/ld.so.cache` ([`ld_cache`]);
//! 3. the loader's default directories under ROOT ([`DEFAULT_DIRS`]).
//!
//! ROOT is `/`, or for a process `/proc/PID/root`. The answer is a path as that process sees
//! it (the caller opens it in the container's root, or through `/proc/PID/root`). Several
//! different libraries matching one name (`libssl` with both `libssl.so.3` and
//! `libssl.so.1.1`) is an error naming them, never a guess.

pub mod ld_cache;

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// The loader's trusted directories, searched after the cache (glibc's `system-dirs.h` on
/// Debian x86-64 plus the multiarch directories ldconfig lists), in this order.
pub const DEFAULT_DIRS: [&str; 6] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// Why a library name did not resolve to one file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LibraryError {
    /// Nothing matched anywhere.
    #[error("library `{name}` not found (looked in {})", .looked.join(", "))]
    NotFound {
        /// The name as written.
        name: String,
        /// Every place searched, in order.
        looked: Vec<String>,
    },
    /// Several different libraries match.
    #[error("library `{name}` is ambiguous in {place}: {}; name one of them", .candidates.join(", "))]
    Ambiguous {
        /// The name as written.
        name: String,
        /// Where the candidates were found.
        place: String,
        /// Their paths.
        candidates: Vec<String>,
    },
}

/// Whose view of the file system a library name is resolved in.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lookup {
    /// A process whose mappings are searched first.
    pub pid: Option<u32>,
    /// Resolve under this process's root (`/proc/PID/root`) instead of `/`.
    pub root_pid: Option<u32>,
}

/// True when a SPEC's file part is a library name rather than a path.
pub fn is_library_name(file: &str) -> bool {
    !file.contains('/')
}

/// Whether the file name `file` is the library `name` (see the module doc).
pub fn name_matches(name: &str, file: &str) -> bool {
    if name.contains(".so") {
        return file == name;
    }
    file.strip_prefix(name)
        .and_then(|rest| rest.strip_prefix(".so"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Resolves library `name` as seen by `lookup`'s process (or the host). The path returned is
/// in that process's file system view.
pub fn resolve(name: &str, lookup: Lookup) -> Result<PathBuf, LibraryError> {
    let root = match lookup.root_pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/root")),
        None => PathBuf::from("/"),
    };
    let mut looked = Vec::new();
    if let Some(pid) = lookup.pid {
        looked.push(format!("the mappings of pid {pid}"));
        let mapped = mapped_paths(pid);
        let found: Vec<String> = mapped
            .into_iter()
            .filter(|p| file_name(p).is_some_and(|f| name_matches(name, f)))
            .collect();
        if let Some(path) = pick(name, &root, found, || format!("the mappings of pid {pid}"))? {
            return Ok(path);
        }
    }
    let cache_path = root.join("etc/ld.so.cache");
    looked.push(cache_path.display().to_string());
    if let Ok(bytes) = std::fs::read(&cache_path)
        && let Ok(entries) = ld_cache::parse(&bytes)
    {
        let found: Vec<String> = entries
            .into_iter()
            .filter(|e| name_matches(name, &e.soname))
            .map(|e| e.path)
            .collect();
        if let Some(path) = pick(name, &root, found, || cache_path.display().to_string())? {
            return Ok(path);
        }
    }
    for dir in DEFAULT_DIRS {
        looked.push(dir.to_owned());
        let Ok(read) = std::fs::read_dir(under(&root, dir)) else {
            continue;
        };
        let mut found: Vec<String> = read
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|f| name_matches(name, f))
            .map(|f| format!("{dir}/{f}"))
            .collect();
        found.sort();
        if let Some(path) = pick(name, &root, found, || dir.to_owned())? {
            return Ok(path);
        }
    }
    Err(LibraryError::NotFound {
        name: name.into(),
        looked,
    })
}

/// One library out of `found` (paths in ROOT's view): none → `None`; several names of one
/// file (a `libfoo.so` development symlink and `libfoo.so.1`) → the first; several files →
/// ambiguous.
fn pick(
    name: &str,
    root: &Path,
    found: Vec<String>,
    place: impl FnOnce() -> String,
) -> Result<Option<PathBuf>, LibraryError> {
    let mut found = found;
    // A development symlink (`libfoo.so`) and its soname (`libfoo.so.1`) are one file:
    // name it by the soname, as the loader does.
    found.sort_by_key(|p| std::cmp::Reverse(file_name(p).map_or(0, str::len)));
    let mut files: Vec<(Option<(u64, u64)>, String)> = Vec::new();
    for path in found {
        // Following symlinks through /proc/PID/root may leave the container for an absolute
        // link; this identity only groups names, the chosen path is opened in the root later.
        let id = std::fs::metadata(under(root, &path))
            .ok()
            .map(|m| (m.dev(), m.ino()));
        // A stale cache entry, a dangling link or a linker script (Debian's libc.so is
        // text): the loader would not load it either.
        if id.is_none() || !is_elf(&under(root, &path)) {
            continue;
        }
        if !files.iter().any(|(seen, p)| *seen == id || *p == path) {
            files.push((id, path));
        }
    }
    match files.len() {
        0 => Ok(None),
        1 => Ok(Some(PathBuf::from(files.remove(0).1))),
        _ => Err(LibraryError::Ambiguous {
            name: name.into(),
            place: place(),
            candidates: files.into_iter().map(|(_, p)| p).collect(),
        }),
    }
}

/// `path` (absolute, in ROOT's view) as reachable from here.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

fn file_name(path: &str) -> Option<&str> {
    path.rsplit('/').next()
}

/// The distinct file paths mapped by `pid` (deleted files excluded), in address order.
fn mapped_paths(pid: u32) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        // start-end perms offset dev inode path (the path may hold spaces)
        let Some(path) = line.splitn(6, ' ').nth(5).map(str::trim_start) else {
            continue;
        };
        if !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        if !out.iter().any(|p| p == path) {
            out.push(path.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bare name matches `NAME.so` and `NAME.so.*`, never a longer name; a soname only
    /// itself.
    #[test]
    fn names() {
        assert!(name_matches("libc", "libc.so.6"));
        assert!(name_matches("libc", "libc.so"));
        assert!(!name_matches("libc", "libcap.so.2"));
        assert!(!name_matches("libc", "libc_malloc_debug.so.0"));
        assert!(!name_matches("libc", "libc.a"));
        assert!(name_matches("libssl.so.3", "libssl.so.3"));
        assert!(!name_matches("libssl.so.3", "libssl.so.3.1"));
        assert!(is_library_name("libc"));
        assert!(!is_library_name("/lib/libc.so.6"));
        assert!(!is_library_name("lib/libc.so.6"));
    }

    /// On this machine `libc` and `libc.so.6` are the loader's libc (the file
    /// /lib/x86_64-linux-gnu/libc.so.6 is), found through the cache.
    #[test]
    fn host_libc() {
        let want = std::fs::canonicalize("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        for name in ["libc", "libc.so.6"] {
            let got = resolve(name, Lookup::default()).unwrap();
            assert_eq!(std::fs::canonicalize(&got).unwrap(), want, "{name}");
        }
    }

    /// Through a process: its own mapped libc, named as in its maps.
    #[test]
    fn through_own_mappings() {
        let me = std::process::id();
        let got = resolve(
            "libc",
            Lookup {
                pid: Some(me),
                root_pid: Some(me),
            },
        )
        .unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(maps.contains(&*got.to_string_lossy()), "{got:?}");
    }

    /// A name nothing has is one error naming every place looked in.
    #[test]
    fn not_found_names_the_places() {
        let err = resolve("libprobed-does-not-exist", Lookup::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("library `libprobed-does-not-exist` not found (looked in /etc/ld.so.cache, /lib/x86_64-linux-gnu,"),
            "{text}"
        );
        assert!(text.ends_with("/lib, /usr/lib)"), "{text}");
    }

    /// Two different files for one name are ambiguous, one file under two names is not.
    #[test]
    fn ambiguity() {
        let dir = std::env::temp_dir().join(format!("probed-libpath-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("libq.so.1"), b"\x7fELF1").unwrap();
        std::fs::write(dir.join("libq.so.2"), b"\x7fELF2").unwrap();
        std::fs::write(dir.join("libq.so.3"), b"INPUT(libq.so.1)").unwrap();
        std::os::unix::fs::symlink("libq.so.1", dir.join("libq.so")).unwrap();
        let p = |f: &str| dir.join(f).display().to_string();
        let root = Path::new("/");
        let one = pick(
            "libq",
            root,
            vec![p("libq.so"), p("libq.so.1")],
            String::new,
        )
        .unwrap();
        assert_eq!(one, Some(dir.join("libq.so.1")), "named by its soname");
        let script = pick("libq", root, vec![p("libq.so.3")], String::new).unwrap();
        assert_eq!(script, None, "a linker script is no library");
        let err = pick("libq", root, vec![p("libq.so.1"), p("libq.so.2")], || {
            "here".into()
        })
        .unwrap_err();
        assert!(matches!(err, LibraryError::Ambiguous { .. }), "{err:?}");
        assert!(
            err.to_string().contains("libq.so.2; name one of them"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
