//! probed never traces itself (the daemon side of `ebpf/src/self_filter.rs`): before anything
//! is attached, the BPF object is told this process's tgid and the identity of probed's
//! executable, and BPF refuses every hit of a probed process (counted as `self_excluded`)
//! and never tracks its address space.
//!
//! Without it a probe on a function probed itself calls (malloc, write…) fed on its own
//! work: each hit processed allocated, which made another hit, and the run never caught up
//! (measured before this existed: a `--duration 4` run on a malloc return probe was still
//! writing after 10 minutes).

use std::{io, os::unix::fs::MetadataExt, path::Path};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use probed_common::{FileKey, STOP_ADMITTING};

use crate::file_id::FileId;

/// Name of the map of probed's own tgids.
const PROBED_PROCS_MAP: &str = "PROBED_PROCS";
/// Name of the map of probed's executables.
const PROBED_EXES_MAP: &str = "PROBED_EXES";
/// Name of the run-state array.
const STOP_MAP: &str = "STOP";

/// Why the self filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SelfFilterError {
    /// A map is missing from the BPF object (an object built from other sources).
    #[error("the BPF object has no usable `{0}` map")]
    Map(&'static str),
    /// Writing a map entry failed.
    #[error("cannot write the BPF map `{map}`")]
    Write {
        /// The map.
        map: &'static str,
        /// Why.
        #[source]
        source: aya::maps::MapError,
    },
}

/// The identity of the executable running as `/proc/PID/exe` (`self` for this process).
pub fn exe_of(pid: &str) -> io::Result<FileId> {
    let meta = std::fs::metadata(Path::new("/proc").join(pid).join("exe"))?;
    Ok(FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// Whether process `pid` runs probed's executable `own` (another probed: a second trace, a
/// `probed ctl`, the daemon). A process whose executable cannot be read is not.
pub fn runs_probed(pid: u32, own: Option<FileId>) -> bool {
    own.is_some_and(|own| exe_of(&pid.to_string()).is_ok_and(|exe| exe == own))
}

/// Tells BPF which processes are probed: this one by its tgid, and every process running
/// this executable by its identity. Called before anything is attached.
pub fn install(ebpf: &mut Ebpf) -> Result<(), SelfFilterError> {
    let map = ebpf
        .map_mut(PROBED_PROCS_MAP)
        .ok_or(SelfFilterError::Map(PROBED_PROCS_MAP))?;
    let mut procs: HashMap<&mut MapData, u32, u32> =
        HashMap::try_from(map).map_err(|_| SelfFilterError::Map(PROBED_PROCS_MAP))?;
    procs
        .insert(std::process::id(), 1, 0)
        .map_err(|source| SelfFilterError::Write {
            map: PROBED_PROCS_MAP,
            source,
        })?;
    // Without /proc/self/exe (an unusual mount namespace) this process is still excluded by
    // its tgid; only other probed processes would not be.
    match exe_of("self") {
        Ok(exe) => {
            let map = ebpf
                .map_mut(PROBED_EXES_MAP)
                .ok_or(SelfFilterError::Map(PROBED_EXES_MAP))?;
            let mut exes: HashMap<&mut MapData, FileKey, u32> =
                HashMap::try_from(map).map_err(|_| SelfFilterError::Map(PROBED_EXES_MAP))?;
            let key = FileKey {
                dev: exe.kernel_dev(),
                ino: exe.ino,
            };
            exes.insert(key, 1, 0)
                .map_err(|source| SelfFilterError::Write {
                    map: PROBED_EXES_MAP,
                    source,
                })?;
        }
        Err(err) => tracing::warn!(
            error = %err,
            "cannot identify probed's executable: other probed processes will not be excluded"
        ),
    }
    Ok(())
}

/// Makes every probe stop admitting hits at once (they are no longer counted either).
pub fn stop_admitting(ebpf: &mut Ebpf) -> Result<(), SelfFilterError> {
    let map = ebpf
        .map_mut(STOP_MAP)
        .ok_or(SelfFilterError::Map(STOP_MAP))?;
    let mut array: Array<&mut MapData, u32> =
        Array::try_from(map).map_err(|_| SelfFilterError::Map(STOP_MAP))?;
    array
        .set(0, STOP_ADMITTING, 0)
        .map_err(|source| SelfFilterError::Write {
            map: STOP_MAP,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process runs its own executable; pid 1 (another program) does not, and a pid
    /// that does not exist is never probed.
    #[test]
    fn recognizes_its_own_executable() {
        let own = exe_of("self").ok();
        assert!(own.is_some());
        assert!(runs_probed(std::process::id(), own));
        assert!(!runs_probed(u32::MAX, own));
        assert!(!runs_probed(std::process::id(), None));
    }
}
