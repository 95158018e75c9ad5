//! Which hooks the change tracker uses (`--tracker`, config `tracker`), and the choice made at
//! start from what the kernel has.
//!
//! - `syscalls`: syscalls:sys_enter_*/sys_exit_* tracepoints of the mapping syscalls. Exact
//!   reports the daemon replays (the exactness reference), but while any syscall tracepoint is
//!   attached every syscall of every thread on the host takes the slow path.
//! - `lock`: the `mmap_lock` raw tracepoints (write sections of tracked processes bracket
//!   every mapping change; nothing else on the host pays more than a static-key branch and a
//!   `write` test), with hits capturing their own mappings when the daemon's picture is
//!   behind (see ARCHITECTURE.md, "Lock mode").
//! - `auto` (default): `lock` where the kernel has the Linux 6.14+ `mmap_lock` tracepoints,
//!   `syscalls` elsewhere (older events pass a memcg path: other arguments, and a cgroup path
//!   built per lock operation; tracepoints.rs, `lock_mode_unavailable`).

use serde::{Deserialize, Serialize};

/// What the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackerChoice {
    /// `lock` where the kernel allows it, else `syscalls`.
    #[default]
    Auto,
    /// mmap_lock raw tracepoints and hit-time captures.
    Lock,
    /// Syscall enter/exit tracepoints and replayed reports.
    Syscalls,
}

/// The hooks that run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackerMode {
    /// mmap_lock raw tracepoints.
    Lock,
    /// Syscall tracepoints.
    Syscalls,
}

impl TrackerMode {
    /// The name in summaries, metrics and `ctl stats`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TrackerMode::Lock => "lock",
            TrackerMode::Syscalls => "syscalls",
        }
    }
}

impl std::fmt::Display for TrackerMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TrackerChoice {
    /// The mode to run and the reason to show for it, given why lock mode cannot run on this
    /// kernel (`None`: it can). `Err` (the reason) when lock mode was asked for and cannot run.
    pub fn decide(self, lock_unavailable: Option<&str>) -> Result<(TrackerMode, String), String> {
        match (self, lock_unavailable) {
            (TrackerChoice::Syscalls, _) => Ok((
                TrackerMode::Syscalls,
                "asked for (--tracker syscalls)".into(),
            )),
            (TrackerChoice::Lock, None) => {
                Ok((TrackerMode::Lock, "asked for (--tracker lock)".into()))
            }
            (TrackerChoice::Lock, Some(why)) => Err(why.to_string()),
            (TrackerChoice::Auto, None) => Ok((
                TrackerMode::Lock,
                "auto: the kernel has the 6.14+ mmap_lock tracepoints".into(),
            )),
            (TrackerChoice::Auto, Some(why)) => Ok((
                TrackerMode::Syscalls,
                format!("auto: lock mode unavailable ({why})"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Auto takes lock mode where it can run and syscalls elsewhere; an explicit lock request
    /// on a kernel without it is refused with the reason, never silently downgraded.
    #[test]
    fn decisions() {
        let old = Some("tracepoint mmap_lock:mmap_lock_released has the pre-6.14 arguments");
        assert_eq!(TrackerChoice::Auto.decide(None).unwrap().0, TrackerMode::Lock);
        let (mode, why) = TrackerChoice::Auto.decide(old).unwrap();
        assert_eq!(mode, TrackerMode::Syscalls);
        assert!(why.contains("pre-6.14"), "{why}");
        assert_eq!(TrackerChoice::Lock.decide(None).unwrap().0, TrackerMode::Lock);
        assert!(TrackerChoice::Lock.decide(old).unwrap_err().contains("pre-6.14"));
        for lock in [None, old] {
            assert_eq!(
                TrackerChoice::Syscalls.decide(lock).unwrap().0,
                TrackerMode::Syscalls
            );
        }
    }
}
