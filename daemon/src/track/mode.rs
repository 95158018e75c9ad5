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
//! - `auto` (default): `lock` where the kernel has the Linux 6.14+ `mmap_lock` tracepoints
//!   and the run's stacks are not copied for the daemon's unwinder, `syscalls` elsewhere (older events pass a memcg path: other arguments, and a cgroup path
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

    /// The value BPF's `TRACK_MODE` holds for this mode (hits capture only in lock mode).
    pub const fn bpf_value(self) -> u32 {
        match self {
            TrackerMode::Lock => probed_common::TRACK_MODE_LOCK,
            TrackerMode::Syscalls => probed_common::TRACK_MODE_SYSCALLS,
        }
    }

    /// Pictures the resolver keeps per process. Lock mode adds an unreplayable marker to a
    /// process's chain per reported write section, so under churn 16 entries would evict the
    /// published scan that queued hits (which skipped their captures because their sequence
    /// was the published one) still need: those would then be counted `no_snapshot_at_seq`.
    pub fn history(self) -> usize {
        match self {
            TrackerMode::Lock => 512,
            TrackerMode::Syscalls => crate::resolve::Config::default().history,
        }
    }
}

impl std::fmt::Display for TrackerMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a run asks of the change tracker: the user's choice, and whether its stacks are
/// copied for the daemon's unwinder (which lock mode cannot serve; [`TrackerChoice::decide`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerRequest {
    /// `--tracker` / config `tracker`.
    pub choice: TrackerChoice,
    /// `--stack=auto|dwarf` (stack copies).
    pub copied_stacks: bool,
}

impl From<TrackerChoice> for TrackerRequest {
    fn from(choice: TrackerChoice) -> Self {
        Self {
            choice,
            copied_stacks: false,
        }
    }
}

impl TrackerChoice {
    /// The mode to run and the reason to show for it, given why lock mode cannot run on this
    /// kernel (`None`: it can). `Err` (the reason) when lock mode was asked for and cannot run.
    ///
    /// `copied_stacks`: the run's stacks are copied and unwound in the daemon (`--stack=auto`
    /// or `dwarf`). Lock mode captures only what BPF itself walks (the hit, and frame-pointer
    /// frames): copied frames of a process that changed since the daemon's last picture —
    /// a dlclosed library, an exited process — would have no picture to resolve against. So
    /// `auto` keeps syscall mode for such runs and an explicit `lock` is refused.
    pub fn decide(
        self,
        lock_unavailable: Option<&str>,
        copied_stacks: bool,
    ) -> Result<(TrackerMode, String), String> {
        const COPIES: &str = "copied stacks (--stack=auto|dwarf) are unwound in the daemon, \
                              which lock mode cannot give the pictures of changed processes; \
                              use --stack=fp with lock mode";
        if copied_stacks {
            return match self {
                TrackerChoice::Lock => Err(COPIES.to_string()),
                TrackerChoice::Syscalls => Ok((
                    TrackerMode::Syscalls,
                    "asked for (--tracker syscalls)".into(),
                )),
                TrackerChoice::Auto => Ok((TrackerMode::Syscalls, format!("auto: {COPIES}"))),
            };
        }
        match (self, lock_unavailable) {
            (TrackerChoice::Syscalls, _) => Ok((
                TrackerMode::Syscalls,
                "asked for (--tracker syscalls)".into(),
            )),
            (TrackerChoice::Lock, None) => {
                Ok((TrackerMode::Lock, "asked for (--tracker lock)".into()))
            }
            (TrackerChoice::Lock, Some(why)) => {
                Err(format!("{why} (use --tracker syscalls or auto)"))
            }
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
        assert_eq!(
            TrackerChoice::Auto.decide(None, false).unwrap().0,
            TrackerMode::Lock
        );
        let (mode, why) = TrackerChoice::Auto.decide(old, false).unwrap();
        assert_eq!(mode, TrackerMode::Syscalls);
        assert!(why.contains("pre-6.14"), "{why}");
        assert_eq!(
            TrackerChoice::Lock.decide(None, false).unwrap().0,
            TrackerMode::Lock
        );
        assert!(
            TrackerChoice::Lock
                .decide(old, false)
                .unwrap_err()
                .contains("pre-6.14")
        );
        for lock in [None, old] {
            for copies in [false, true] {
                assert_eq!(
                    TrackerChoice::Syscalls.decide(lock, copies).unwrap().0,
                    TrackerMode::Syscalls
                );
            }
        }
        // Copied stacks: auto keeps syscalls, an explicit lock is refused.
        let (mode, why) = TrackerChoice::Auto.decide(None, true).unwrap();
        assert_eq!(mode, TrackerMode::Syscalls);
        assert!(why.contains("--stack=fp"), "{why}");
        assert!(TrackerChoice::Lock.decide(None, true).is_err());
    }
}
