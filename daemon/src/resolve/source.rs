//! Where maps text comes from: the syscall seam. [`ProcMaps`] reads /proc; tests and benches
//! plug in fakes (see [`testing`](super::testing)) so that nothing above this needs a real
//! process, root, or luck with timing.

use std::{
    fs::File,
    io::{self, Read},
    os::fd::AsRawFd,
};

use rustix::fs::{Mode, OFlags};

use super::{maps::ParseError, proc_key::ProcKey};

/// Why a process's maps could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The process exited, or its pid now belongs to another generation.
    #[error("process {0} is gone")]
    Gone(ProcKey),
    /// A /proc file could not be read for another reason (permissions, …).
    #[error("cannot read {what} of process {proc}")]
    Io {
        /// The process.
        proc: ProcKey,
        /// Which file.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The maps text was malformed.
    #[error("maps text of process {proc} is malformed")]
    Parse {
        /// The process.
        proc: ProcKey,
        /// The offending line.
        #[source]
        source: ParseError,
    },
}

/// A source of /proc/PID/maps text.
pub trait MapsSource: Send + Sync {
    /// Replaces the contents of `buf` with the maps text of `proc`. Must fail with
    /// [`ScanError::Gone`] rather than return the maps of another process that reused the pid.
    fn read_maps(&self, proc: ProcKey, buf: &mut Vec<u8>) -> Result<(), ScanError>;
}

impl<T: MapsSource + ?Sized> MapsSource for std::sync::Arc<T> {
    fn read_maps(&self, proc: ProcKey, buf: &mut Vec<u8>) -> Result<(), ScanError> {
        (**self).read_maps(proc, buf)
    }
}

/// Reads /proc/PID/maps of live processes.
///
/// The process's /proc directory is opened once and everything else is read relative to that
/// descriptor, which stays bound to the process it was opened for: if the process exits and
/// its pid is reused, reads through it fail instead of returning the newcomer's maps. When the
/// main thread has exited, /proc/PID/maps is empty; the maps of any live thread
/// (/proc/PID/task/TID/maps, the same address space) are read instead.
#[derive(Clone, Debug)]
pub struct ProcMaps {
    check_gen: bool,
}

impl Default for ProcMaps {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcMaps {
    /// A reader that checks [`ProcKey::generation`] against the start time in /proc/PID/stat (the
    /// generation [`ProcKey::of_pid`] produces).
    pub fn new() -> Self {
        Self { check_gen: true }
    }

    /// A reader for keys whose generation is not a start time (the pid alone is trusted).
    pub fn without_gen_check() -> Self {
        Self { check_gen: false }
    }
}

impl MapsSource for ProcMaps {
    fn read_maps(&self, proc: ProcKey, buf: &mut Vec<u8>) -> Result<(), ScanError> {
        buf.clear();
        let io = |what| move |source: io::Error| classify(proc, what, source);
        let dir = open_dir(&format!("/proc/{}", proc.pid)).map_err(io("/proc/PID"))?;
        if self.check_gen {
            let mut stat = Vec::with_capacity(512);
            open_at(&dir, "stat")
                .and_then(|mut f| f.read_to_end(&mut stat))
                .map_err(io("stat"))?;
            if super::proc_key::parse_start_time(&stat) != Some(proc.generation) {
                return Err(ScanError::Gone(proc));
            }
        }
        read_into(&dir, "maps", buf).map_err(io("maps"))?;
        if !buf.is_empty() {
            return Ok(());
        }
        // The main thread exited (or the process is a zombie): try the other threads.
        let tasks = open_at_dir(&dir, "task").map_err(io("task"))?;
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", tasks.as_raw_fd()))
            .map_err(io("task"))?;
        for entry in listing.flatten() {
            let Some(tid) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if tid == proc.pid.to_string() {
                continue;
            }
            if read_into(&dir, &format!("task/{tid}/maps"), buf).is_ok() && !buf.is_empty() {
                return Ok(());
            }
        }
        // No thread has an address space: the process is exiting or a zombie.
        Err(ScanError::Gone(proc))
    }
}

/// ENOENT / ESRCH mean the process (or thread) is gone; anything else is a real failure.
fn classify(proc: ProcKey, what: &'static str, source: io::Error) -> ScanError {
    match source.raw_os_error() {
        Some(libc::ENOENT | libc::ESRCH) => ScanError::Gone(proc),
        _ => ScanError::Io { proc, what, source },
    }
}

fn read_into(dir: &File, name: &str, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    // One big read() instead of many page-sized ones: each read of a seq_file walks the
    // VMAs from where the previous one stopped, and fewer chunks means fewer chances to tear.
    buf.reserve(256 * 1024);
    open_at(dir, name)?.read_to_end(buf)?;
    Ok(())
}

fn open_dir(path: &str) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
}

fn open_at(dir: &File, name: &str) -> io::Result<File> {
    openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC)
}

fn open_at_dir(dir: &File, name: &str) -> io::Result<File> {
    openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::DIRECTORY,
    )
}

/// `openat(2)` (rustix): std has no way to open a path relative to a directory descriptor.
fn openat(dir: &File, name: &str, flags: OFlags) -> io::Result<File> {
    Ok(File::from(rustix::fs::openat(
        dir,
        name,
        flags,
        Mode::empty(),
    )?))
}

#[cfg(all(test, not(probed_loom)))]
mod tests {
    use super::*;

    /// This process's own maps are readable and contain the test binary.
    #[test]
    fn reads_own_maps() {
        let me = ProcKey::of_pid(std::process::id()).unwrap();
        let mut buf = Vec::new();
        ProcMaps::new().read_maps(me, &mut buf).unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains(exe.to_str().unwrap()), "{text}");
    }

    /// A key with the wrong generation is reported gone, never read as another process.
    #[test]
    fn wrong_generation_is_gone() {
        let me = ProcKey::of_pid(std::process::id()).unwrap();
        let other = ProcKey::new(me.pid, me.generation + 1);
        let mut buf = Vec::new();
        assert!(matches!(
            ProcMaps::new().read_maps(other, &mut buf),
            Err(ScanError::Gone(p)) if p == other
        ));
        ProcMaps::without_gen_check()
            .read_maps(other, &mut buf)
            .unwrap();
    }

    /// A pid with no process is gone.
    #[test]
    fn missing_pid_is_gone() {
        let nobody = ProcKey::new(u32::MAX - 1, 0);
        let mut buf = Vec::new();
        assert!(matches!(
            ProcMaps::new().read_maps(nobody, &mut buf),
            Err(ScanError::Gone(_))
        ));
    }
}
