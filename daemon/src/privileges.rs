//! What probed needs from the kernel, checked up front so a missing capability gives one
//! clear message instead of an EPERM from deep inside a BPF load.

/// CAP_SYS_ADMIN: covers all of the below on any kernel.
const CAP_SYS_ADMIN: u32 = 21;
/// CAP_SYS_PTRACE: read /proc/PID/maps and map_files of other users' processes.
const CAP_SYS_PTRACE: u32 = 19;
/// CAP_PERFMON: open uprobe perf events (kernel >= 5.8).
const CAP_PERFMON: u32 = 38;
/// CAP_BPF: load BPF programs and create maps (kernel >= 5.8).
const CAP_BPF: u32 = 39;

/// The capabilities probed needs, for messages and the systemd unit.
pub const NEEDED: &str = "CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE (or CAP_SYS_ADMIN)";

/// Not enough privileges to trace.
#[derive(Debug, thiserror::Error)]
#[error(
    "not enough privileges to trace: probed needs {NEEDED} (missing {missing}); run it as root or grant them"
)]
pub struct PrivilegeError {
    /// The capabilities that are missing, comma-separated.
    pub missing: String,
}

/// Checks the effective capability set of this process (from /proc/self/status).
pub fn check() -> Result<(), PrivilegeError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    check_status(&status)
}

fn check_status(status: &str) -> Result<(), PrivilegeError> {
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
    ]
    .into_iter()
    .filter(|(cap, _)| !has(*cap))
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError {
            missing: missing.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CAP_SYS_ADMIN alone is enough; without it the three fine-grained capabilities are
    /// needed and the missing ones are named.
    #[test]
    fn capability_sets() {
        assert!(check_status("CapEff:\t0000000000200000\n").is_ok());
        let all = (1u64 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYS_PTRACE);
        assert!(check_status(&format!("CapEff:\t{all:016x}\n")).is_ok());
        let err = check_status(&format!("CapEff:\t{:016x}\n", 1u64 << CAP_BPF)).unwrap_err();
        assert_eq!(err.missing, "CAP_PERFMON, CAP_SYS_PTRACE");
        let err = check_status("CapEff:\t0000000000000000\n").unwrap_err();
        assert!(err.to_string().contains("CAP_BPF"));
    }
}
