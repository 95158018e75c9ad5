//! A pid namespace's identity, for the per-probe container filter: the (device, inode) of
//! `/proc/PID/ns/pid` (an nsfs inode), which is what BPF's `bpf_get_ns_current_pid_tgid`
//! compares the current task's active pid namespace with.

use std::num::NonZeroU32;

use crate::file_id::FileId;

/// A pid namespace: the nsfs (device, inode) of `/proc/PID/ns/pid`; `dev` as `stat(2)`
/// reports it ([`FileId`] encoding; `Tracer::set_pidns_filter` converts it for BPF).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PidNamespace {
    /// `st_dev` of the nsfs inode.
    pub dev: u64,
    /// `st_ino` of the nsfs inode (the namespace's number, as in `pid:[4026531836]`).
    pub ino: u64,
}

/// Why a process's pid namespace could not be found.
#[derive(Debug, thiserror::Error)]
pub enum PidNsError {
    /// The process does not exist (or has exited).
    #[error("no process with pid {0} (it may have exited)")]
    NoProcess(NonZeroU32),
    /// /proc/PID/ns/pid exists but cannot be read.
    #[error("cannot read the pid namespace of pid {pid} (/proc/{pid}/ns/pid)")]
    Stat {
        /// The process.
        pid: NonZeroU32,
        /// What stat said.
        #[source]
        source: std::io::Error,
    },
}

impl PidNamespace {
    /// The pid namespace process `pid` (a pid of the caller's namespace) lives in.
    pub fn of_pid(pid: NonZeroU32) -> Result<Self, PidNsError> {
        let path = format!("/proc/{pid}/ns/pid");
        match FileId::of_path(path.as_ref()) {
            Ok(id) => Ok(Self {
                dev: id.dev,
                ino: id.ino,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PidNsError::NoProcess(pid)),
            Err(source) => Err(PidNsError::Stat { pid, source }),
        }
    }

    /// The device in the kernel's internal encoding (`major << 20 | minor`), as
    /// `bpf_get_ns_current_pid_tgid` compares it with the nsfs superblock's `s_dev`.
    pub fn kernel_dev(&self) -> u64 {
        FileId {
            dev: self.dev,
            ino: self.ino,
        }
        .kernel_dev()
    }
}

impl From<(u64, u64)> for PidNamespace {
    /// From (`st_dev`, `st_ino`) of a `/proc/PID/ns/pid`.
    fn from((dev, ino): (u64, u64)) -> Self {
        Self { dev, ino }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own namespace is found and matches what /proc/self/ns/pid's link names; a pid
    /// that cannot exist is `NoProcess`.
    #[test]
    fn own_namespace_and_missing_pid() {
        let me = NonZeroU32::new(std::process::id()).unwrap();
        let ns = PidNamespace::of_pid(me).unwrap();
        let link = std::fs::read_link("/proc/self/ns/pid").unwrap();
        assert_eq!(link.to_str().unwrap(), format!("pid:[{}]", ns.ino));
        // pid_max is at most 2^22.
        let missing = NonZeroU32::new(1 << 23).unwrap();
        assert!(matches!(
            PidNamespace::of_pid(missing),
            Err(PidNsError::NoProcess(p)) if p == missing
        ));
    }
}
