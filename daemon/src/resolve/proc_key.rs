//! Process identity: a pid plus a generation, so that two processes that held the same pid at
//! different times never alias (invariant 4).

use std::fmt;

/// A traced process: its pid (thread-group id, in the initial pid namespace) and a generation
/// that differs between two processes that used the same pid.
///
/// Until the BPF change tracker (issue 4) stamps a generation into every hit, the generation
/// is the process's start time in clock ticks since boot (field 22 of /proc/PID/stat), which
/// is what [`ProcKey::of_pid`] reads. Its resolution is one tick (10 ms): two processes reusing
/// one pid within a tick — only possible with explicit pid choice (`ns_last_pid`, `clone3`
/// `set_tid`) — would alias; the BPF generation is meant to close that gap. `u64::MAX` is
/// reserved (it marks a vacant slot in [`UserSeq`](super::UserSeq)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcKey {
    /// Thread-group id.
    pub pid: u32,
    /// Generation: distinguishes successive holders of `pid`.
    pub generation: u64,
}

/// Why a process identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcKeyError {
    /// /proc/PID/stat could not be read (most often: the process is gone).
    #[error("cannot read /proc/{pid}/stat")]
    Read {
        /// The process.
        pid: u32,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// /proc/PID/stat did not have the expected shape.
    #[error("malformed /proc/{pid}/stat")]
    Malformed {
        /// The process.
        pid: u32,
    },
}

impl ProcKey {
    /// A key from its parts.
    pub const fn new(pid: u32, generation: u64) -> Self {
        Self { pid, generation }
    }

    /// The identity of the process that holds `pid` now.
    pub fn of_pid(pid: u32) -> Result<Self, ProcKeyError> {
        let stat = std::fs::read(format!("/proc/{pid}/stat"))
            .map_err(|source| ProcKeyError::Read { pid, source })?;
        let generation = parse_start_time(&stat).ok_or(ProcKeyError::Malformed { pid })?;
        Ok(Self { pid, generation })
    }
}

impl fmt::Display for ProcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.pid, self.generation)
    }
}

/// The start time (field 22) of a /proc/PID/stat text.
///
/// The command name (field 2) is in parentheses and may itself contain spaces and
/// parentheses, so fields are counted from the *last* `)`.
pub fn parse_start_time(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    // Field 3 (state) is the first after the `)`, so field 22 is the 20th.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start time is found even when the command name contains spaces and parentheses.
    #[test]
    fn start_time_after_tricky_comm() {
        let stat = b"4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                     1000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(parse_start_time(stat), Some(987_654));
    }

    /// A truncated stat text yields no start time rather than a wrong field.
    #[test]
    fn truncated_stat() {
        assert_eq!(parse_start_time(b"1 (init) S 0 1 1"), None);
        assert_eq!(parse_start_time(b"no parens"), None);
    }

    /// The key of this very process is readable and stable across reads.
    #[test]
    fn own_key_is_stable() {
        let pid = std::process::id();
        let a = ProcKey::of_pid(pid).unwrap();
        let b = ProcKey::of_pid(pid).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.pid, pid);
    }
}
