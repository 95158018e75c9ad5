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
//! - `auto` (default): `syscalls` for now. Lock mode answered exactly (0 wrong) in every
//!   exactness test, but the suite's no-loss flood tests could not be shown to pass in either
//!   mode on the loaded machine it was built on, so it stays opt-in until they are run on a
//!   quiet one (ARCHITECTURE.md, "Lock mode", Status).

use serde::{Deserialize, Serialize};

/// What the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackerChoice {
    /// `syscalls` for now (lock mode is opt-in; see the module documentation).
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
