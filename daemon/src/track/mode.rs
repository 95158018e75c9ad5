//! Which hooks the change tracker uses (`--tracker`, config `tracker`), and the choice made at
//! start from what the kernel has.
//!
//! - `syscalls`: syscalls:sys_enter_*/sys_exit_* tracepoints of the mapping syscalls. Exact
//!   reports the daemon replays (the exactness reference), but while any syscall tracepoint is
//!   attached every syscall of every thread on the host takes the slow path.
//! - `kprobes`: the same entry/exit programs and reports, on kprobes and kretprobes of the
//!   syscalls' own functions (kprobes.rs): only the mapping syscalls pay.
//! - `lock`: the `mmap_lock` raw tracepoints (write sections of tracked processes bracket
//!   every mapping change; nothing else on the host pays more than a static-key branch and a
//!   `write` test), with hits capturing their own mappings when the daemon's picture is
//!   behind (see ARCHITECTURE.md, "Lock mode").
//! - `kseq`: no hook on address-space changes at all. Hits are stamped with the kernel's own
//!   counter of their address space (`mm->mm_lock_seq`, Linux 6.14+) and capture their
//!   mappings unless a capture at the same counter value holds them (ARCHITECTURE.md, "Kseq
//!   mode"). Nobody's syscalls or mmap_lock operations pay anything.
//! - `auto` (default): where the run's stacks are not copied for the daemon's unwinder,
//!   `kseq` where the kernel has the Linux 6.14+ address-space seqcount (offsets.rs,
//!   `kseq_mode_unavailable`), else `lock` where it has the 6.14+ `mmap_lock` tracepoints
//!   (older events pass a memcg path: other arguments, and a cgroup path built per lock
//!   operation; tracepoints.rs, `lock_mode_unavailable`); else `kprobes` where the kernel
//!   has kprobes; else `syscalls`.

use serde::{Deserialize, Serialize};

/// What the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackerChoice {
    /// `kseq` where the kernel allows it, else `lock`, else `kprobes`, else `syscalls`.
    #[default]
    Auto,
    /// mmap_lock raw tracepoints and hit-time captures.
    Lock,
    /// No hooks: the kernel's address-space counter and hit-time captures.
    Kseq,
    /// Kprobes on the mapping syscalls' functions and replayed reports.
    Kprobes,
    /// Syscall enter/exit tracepoints and replayed reports.
    Syscalls,
}

/// The hooks that run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackerMode {
    /// mmap_lock raw tracepoints.
    Lock,
    /// No address-space hooks; the kernel's counter.
    Kseq,
    /// Kprobes and kretprobes on the syscall functions.
    Kprobes,
    /// Syscall tracepoints.
    Syscalls,
}

impl TrackerMode {
    /// The name in summaries, metrics and `ctl stats`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TrackerMode::Lock => "lock",
            TrackerMode::Kseq => "kseq",
            TrackerMode::Kprobes => "kprobes",
            TrackerMode::Syscalls => "syscalls",
        }
    }

    /// The value BPF's `TRACK_MODE` holds for this mode (hits capture only in lock mode;
    /// kprobe mode runs syscall mode's programs, reports and all).
    pub const fn bpf_value(self) -> u32 {
        match self {
            TrackerMode::Lock => probed_common::TRACK_MODE_LOCK,
            TrackerMode::Kseq => probed_common::TRACK_MODE_KSEQ,
            TrackerMode::Kprobes | TrackerMode::Syscalls => probed_common::TRACK_MODE_SYSCALLS,
        }
    }

    /// Whether every change is reported for the daemon to replay (not lock or kseq mode).
    pub const fn replays(self) -> bool {
        !matches!(self, TrackerMode::Lock | TrackerMode::Kseq)
    }

    /// Pictures the resolver keeps per process. Lock mode adds an unreplayable marker to a
    /// process's chain per reported write section, so under churn 16 entries would evict the
    /// published scan that queued hits (which skipped their captures because their sequence
    /// was the published one) still need: those would then be counted `no_snapshot_at_seq`.
    pub fn history(self) -> usize {
        match self {
            TrackerMode::Lock => 512,
            TrackerMode::Kseq | TrackerMode::Kprobes | TrackerMode::Syscalls => {
                crate::resolve::Config::default().history
            }
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

/// Why each mode that needs something of the kernel cannot run here (`None`: it can).
#[derive(Clone, Copy, Debug, Default)]
pub struct Unavailable<'a> {
    /// Lock mode (tracepoints.rs, `lock_mode_unavailable`).
    pub lock: Option<&'a str>,
    /// Kseq mode (offsets.rs, `kseq_mode_unavailable`).
    pub kseq: Option<&'a str>,
    /// Kprobe mode (kprobes.rs, `available`).
    pub kprobes: Option<&'a str>,
}

impl TrackerChoice {
    /// The name on the command line and in the config.
    pub const fn as_str(self) -> &'static str {
        match self {
            TrackerChoice::Auto => "auto",
            TrackerChoice::Lock => "lock",
            TrackerChoice::Kseq => "kseq",
            TrackerChoice::Kprobes => "kprobes",
            TrackerChoice::Syscalls => "syscalls",
        }
    }

    /// The mode to run and the reason to show for it, given what this kernel lacks. `Err`
    /// (the reason) when a mode was asked for that cannot run.
    ///
    /// `copied_stacks`: the run's stacks are copied and unwound in the daemon (`--stack=auto`
    /// or `dwarf`). Lock mode captures only what BPF itself walks (the hit, and frame-pointer
    /// frames): copied frames of a process that changed since the daemon's last picture —
    /// a dlclosed library, an exited process — would have no picture to resolve against. So
    /// `auto` takes a replaying mode for such runs and an explicit `lock` is refused.
    pub fn decide(
        self,
        kernel: Unavailable<'_>,
        copied_stacks: bool,
    ) -> Result<(TrackerMode, String), String> {
        const COPIES: &str = "copied stacks (--stack=auto|dwarf) are unwound in the daemon, \
                              which lock and kseq modes cannot give the pictures of changed \
                              processes; use --stack=fp with them";
        let asked = format!("asked for (--tracker {})", self.as_str());
        let refused = |why: &str| format!("{why} (use --tracker syscalls or auto)");
        match self {
            TrackerChoice::Syscalls => Ok((TrackerMode::Syscalls, asked)),
            TrackerChoice::Kprobes => match kernel.kprobes {
                None => Ok((TrackerMode::Kprobes, asked)),
                Some(why) => Err(refused(why)),
            },
            TrackerChoice::Lock => match (copied_stacks, kernel.lock) {
                (true, _) => Err(COPIES.to_string()),
                (false, None) => Ok((TrackerMode::Lock, asked)),
                (false, Some(why)) => Err(refused(why)),
            },
            TrackerChoice::Kseq => match (copied_stacks, kernel.kseq) {
                (true, _) => Err(COPIES.to_string()),
                (false, None) => Ok((TrackerMode::Kseq, asked)),
                (false, Some(why)) => Err(refused(why)),
            },
            TrackerChoice::Auto => {
                let no_lock = match (copied_stacks, kernel.kseq, kernel.lock) {
                    (true, _, _) => COPIES.to_string(),
                    (false, None, _) => {
                        return Ok((
                            TrackerMode::Kseq,
                            "auto: the kernel has the 6.14+ address-space seqcount".into(),
                        ));
                    }
                    (false, Some(_), None) => {
                        return Ok((
                            TrackerMode::Lock,
                            "auto: the kernel has the 6.14+ mmap_lock tracepoints".into(),
                        ));
                    }
                    (false, Some(kseq), Some(lock)) => {
                        format!("kseq mode unavailable ({kseq}); lock mode unavailable ({lock})")
                    }
                };
                Ok(match kernel.kprobes {
                    None => (
                        TrackerMode::Kprobes,
                        format!("auto: {no_lock}; the kernel has kprobes"),
                    ),
                    Some(why) => (
                        TrackerMode::Syscalls,
                        format!("auto: {no_lock}; kprobe mode unavailable ({why})"),
                    ),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Auto takes kseq mode where it can run, then lock mode, kprobes where only they can, and syscalls
    /// elsewhere; an explicit request the kernel cannot serve is refused with the reason,
    /// never silently downgraded.
    #[test]
    fn decisions() {
        let old = Some("tracepoint mmap_lock:mmap_lock_released has the pre-6.14 arguments");
        let no_kprobes = Some("the kernel has no kprobes");
        // Kernels with the 6.14+ mmap_lock tracepoints have the 6.14+ seqcount too: kseq
        // mode is unavailable exactly where lock mode is, unless a case says otherwise.
        let no_seqcount = "the kernel has no address-space seqcount";
        let k = |lock: Option<&'static str>, kprobes| Unavailable {
            lock,
            kprobes,
            kseq: lock.map(|_| no_seqcount),
        };
        // This machine's kind: 6.18 without kprobes.
        assert_eq!(
            TrackerChoice::Auto
                .decide(k(None, no_kprobes), false)
                .unwrap()
                .0,
            TrackerMode::Kseq
        );
        // Without the seqcount but with the tracepoints: lock mode.
        let only_lock = Unavailable {
            kseq: Some(no_seqcount),
            ..k(None, no_kprobes)
        };
        assert_eq!(
            TrackerChoice::Auto.decide(only_lock, false).unwrap().0,
            TrackerMode::Lock
        );
        assert!(
            TrackerChoice::Kseq
                .decide(only_lock, false)
                .unwrap_err()
                .contains("seqcount")
        );
        assert_eq!(
            TrackerChoice::Kseq.decide(k(None, None), false).unwrap().0,
            TrackerMode::Kseq
        );
        assert!(TrackerChoice::Kseq.decide(k(None, None), true).is_err());
        // Debian's 6.1 and 6.12: old mmap_lock events, kprobes.
        let (mode, why) = TrackerChoice::Auto.decide(k(old, None), false).unwrap();
        assert_eq!(mode, TrackerMode::Kprobes);
        assert!(why.contains("pre-6.14"), "{why}");
        let (mode, why) = TrackerChoice::Auto
            .decide(k(old, no_kprobes), false)
            .unwrap();
        assert_eq!(mode, TrackerMode::Syscalls);
        assert!(
            why.contains("pre-6.14") && why.contains("no kprobes"),
            "{why}"
        );
        assert_eq!(
            TrackerChoice::Lock.decide(k(None, None), false).unwrap().0,
            TrackerMode::Lock
        );
        assert!(
            TrackerChoice::Lock
                .decide(k(old, None), false)
                .unwrap_err()
                .contains("pre-6.14")
        );
        assert_eq!(
            TrackerChoice::Kprobes
                .decide(k(None, None), true)
                .unwrap()
                .0,
            TrackerMode::Kprobes
        );
        assert!(
            TrackerChoice::Kprobes
                .decide(k(None, no_kprobes), false)
                .unwrap_err()
                .contains("no kprobes")
        );
        for lock in [None, old] {
            for kprobes in [None, no_kprobes] {
                for copies in [false, true] {
                    assert_eq!(
                        TrackerChoice::Syscalls
                            .decide(k(lock, kprobes), copies)
                            .unwrap()
                            .0,
                        TrackerMode::Syscalls
                    );
                }
            }
        }
        // Copied stacks: auto takes a replaying mode, an explicit lock is refused.
        let (mode, why) = TrackerChoice::Auto.decide(k(None, None), true).unwrap();
        assert_eq!(mode, TrackerMode::Kprobes);
        assert!(why.contains("--stack=fp"), "{why}");
        let (mode, _) = TrackerChoice::Auto
            .decide(k(None, no_kprobes), true)
            .unwrap();
        assert_eq!(mode, TrackerMode::Syscalls);
        assert!(TrackerChoice::Lock.decide(k(None, None), true).is_err());
    }
}
