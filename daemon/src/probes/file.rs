//! The file a SPEC names, as the run's process sees it: a library name resolved in the
//! `--pid`/`--container` process's view (a `--pid` process's path reached through its
//! root), and the ELF image of a file opened in a container.
//!
//! Apart from the probe table's making (`probes.rs`): where the file is, not what is
//! probed in it.

use std::{
    fs::File,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{ProbeError, Scope};
use crate::{
    elf::{self, ElfImage},
    libpath::{self, Lookup},
    spec::{FileRef, ProbeSpec},
};

/// The file a SPEC names: its path, or its library resolved in the scope's process.
pub(super) fn file_path(spec: &ProbeSpec, scope: Scope<'_>) -> Result<PathBuf, ProbeError> {
    let name = match &spec.file {
        FileRef::Path(path) => return Ok(path.clone()),
        FileRef::Library(name) => name,
    };
    let container = scope.container.map(|c| c.pid().get());
    let lookup = Lookup {
        pid: scope.pid.map(NonZeroU32::get).or(container),
        root_pid: container.or(scope.pid.map(NonZeroU32::get)),
    };
    let found = libpath::resolve(name, lookup).map_err(|source| ProbeError::Library {
        spec: spec.text.clone(),
        source,
    })?;
    // A --pid process's path is in its own mount namespace: reach it through its root unless
    // that root is ours. (A container's path is opened in the container by the caller.)
    Ok(match (container, scope.pid) {
        (None, Some(pid)) if !same_root(pid.get()) => {
            Path::new(&format!("/proc/{pid}/root")).join(found.strip_prefix("/").unwrap_or(&found))
        }
        _ => found,
    })
}

/// Whether process `pid` sees the same root directory as probed.
fn same_root(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let id = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let theirs = id(&format!("/proc/{pid}/root"));
    theirs.is_some() && theirs == id("/")
}

/// The ELF image of the open `file` (named `host_path` in messages).
pub(super) fn load(file: &File, host_path: &Path) -> Result<Arc<ElfImage>, elf::AttachError> {
    let meta = file.metadata().map_err(|source| elf::ElfError::Io {
        path: host_path.to_owned(),
        source,
    })?;
    // Attaching: a debug file may be fetched from debuginfod, waiting for it.
    Ok(Arc::new(ElfImage::from_file(
        file,
        &meta,
        host_path,
        elf::DebugFetch::Wait,
    )?))
}
