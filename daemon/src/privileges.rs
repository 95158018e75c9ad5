//! What probed needs from the kernel, checked up front so a missing capability gives one
//! clear message instead of an EPERM from deep inside a BPF load or a perf_event_open.
//!
//! Measured (dist/probed.service documents the same; daemon/tests/service_unit.rs runs it):
//! - creating a uprobe (`perf_event_open` on the `uprobe` PMU) needs **CAP_SYS_ADMIN** on
//!   current kernels: Linux 6.16 reverted CAP_PERFMON's access to uprobes ("perf: Revert to
//!   requiring CAP_SYS_ADMIN for uprobes", backported to the stable kernels in July 2025);
//!   with CAP_BPF + CAP_PERFMON alone the attach fails with EACCES. On older kernels
//!   CAP_BPF + CAP_PERFMON are enough, so the kernel is asked (see [`uprobes_need_sys_admin`]).
//!   CAP_SYS_ADMIN also covers CAP_BPF and CAP_PERFMON (maps, programs, tracepoints).
//! - **CAP_SYS_PTRACE**: `/proc/PID/root` (files in another mount namespace) and
//!   `/proc/PID/map_files` (the exact, maybe deleted, file) of other users' processes.
//! - CAP_DAC_READ_SEARCH (recommended, not required): binaries root cannot read without DAC
//!   override, and the `/proc/PID/map_files` directory of other users' processes; without it
//!   those files are not found and a warning says so.

/// CAP_DAC_OVERRIDE: read, write and execute any file.
const CAP_DAC_OVERRIDE: u32 = 1;
/// CAP_DAC_READ_SEARCH: read any file, search any directory.
const CAP_DAC_READ_SEARCH: u32 = 2;
/// CAP_SYS_PTRACE: /proc/PID/root and map_files of other users' processes.
const CAP_SYS_PTRACE: u32 = 19;
/// CAP_SYS_ADMIN: create uprobes on current kernels; covers CAP_BPF and CAP_PERFMON.
const CAP_SYS_ADMIN: u32 = 21;
/// CAP_PERFMON: perf events, tracepoints, BPF kernel reads (kernel >= 5.8).
const CAP_PERFMON: u32 = 38;
/// CAP_BPF: load BPF programs and create maps (kernel >= 5.8).
const CAP_BPF: u32 = 39;

/// The capabilities probed needs, for messages and the systemd unit.
pub const NEEDED: &str = "CAP_SYS_ADMIN and CAP_SYS_PTRACE (on kernels before the 2025 \
                          uprobe change: CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE)";

/// Not enough privileges to trace.
#[derive(Debug, thiserror::Error)]
#[error(
    "not enough privileges to trace: probed needs {NEEDED} (missing {missing}); run it as root or grant them"
)]
pub struct PrivilegeError {
    /// The capabilities that are missing, comma-separated, with why when not obvious.
    pub missing: String,
}

/// Checks the effective capability set of this process (from /proc/self/status), asking the
/// kernel whether uprobes need CAP_SYS_ADMIN when that is the capability missing.
pub fn check() -> Result<(), PrivilegeError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = effective(&status);
    check_caps(eff, uprobes_need_sys_admin)?;
    // Only said when tracing goes ahead: a refusal is one line, naming what is missing.
    if eff & (1 << CAP_DAC_READ_SEARCH | 1 << CAP_DAC_OVERRIDE) == 0 {
        tracing::warn!(
            "no CAP_DAC_READ_SEARCH: binaries root cannot read without it, and \
             /proc/PID/map_files of other users' processes, cannot be opened"
        );
    }
    Ok(())
}

/// Whether this process may read every file whatever its mode (CAP_DAC_READ_SEARCH or
/// CAP_DAC_OVERRIDE effective), for naming the capability when an open is refused.
pub fn can_read_any_file() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    effective(&status) & (1 << CAP_DAC_READ_SEARCH | 1 << CAP_DAC_OVERRIDE) != 0
}

/// The CapEff mask of a /proc/PID/status text (0 when absent).
fn effective(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// The decision, given the effective set and a way to ask the kernel whether CAP_PERFMON is
/// enough for uprobes (only asked when it would decide).
fn check_caps(eff: u64, need_sys_admin: impl FnOnce() -> bool) -> Result<(), PrivilegeError> {
    let has = |cap: u32| eff & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        if has(CAP_BPF) && has(CAP_PERFMON) {
            if need_sys_admin() {
                missing.push(
                    "CAP_SYS_ADMIN: this kernel creates uprobes only for CAP_SYS_ADMIN, \
                     CAP_BPF and CAP_PERFMON are not enough",
                );
            }
        } else {
            missing.push("CAP_SYS_ADMIN");
        }
    }
    if !has(CAP_SYS_PTRACE) {
        missing.push("CAP_SYS_PTRACE");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError {
            missing: missing.join(", "),
        })
    }
}

/// `struct perf_event_attr` up to `config2` (`PERF_ATTR_SIZE_VER1`, 72 bytes; the kernel
/// takes any published size). libc does not define it. Also used to open uprobes with a
/// USDT semaphore (`attach::perf_link`).
#[repr(C)]
#[derive(Default)]
pub(crate) struct UprobeAttr {
    pub(crate) type_: u32,
    pub(crate) size: u32,
    /// For the uprobe PMU: bit 0 (`format/retprobe`) a return probe; bits 32–63 the
    /// semaphore's file offset (`format/ref_ctr_offset`).
    pub(crate) config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// The bit fields (`disabled`, `inherit`, … `exclude_kernel`, `exclude_hv`, …).
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    /// For the uprobe PMU: a pointer to the file's path.
    pub(crate) config1: u64,
    /// For the uprobe PMU: the file offset.
    pub(crate) config2: u64,
}
const _: () = assert!(std::mem::size_of::<UprobeAttr>() == 72);

/// `exclude_kernel` (bit 5 of the flags).
const EXCLUDE_KERNEL: u64 = 1 << 5;
/// `exclude_hv` (bit 6).
const EXCLUDE_HV: u64 = 1 << 6;
/// `PERF_FLAG_FD_CLOEXEC`.
pub(crate) const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// Asks the kernel whether creating a uprobe needs CAP_SYS_ADMIN for this process: opens a
/// uprobe perf event with no file. The uprobe PMU checks the capability before it looks at
/// the file, so EACCES means refused for lack of privilege, and anything else (ENOENT for the
/// empty path) means allowed — nothing is ever created. False when the kernel has no uprobe
/// PMU (the attach reports what happens then).
pub fn uprobes_need_sys_admin() -> bool {
    let Some(pmu_type) = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    else {
        return false;
    };
    let path = c"";
    let attr = UprobeAttr {
        type_: pmu_type,
        size: u32::try_from(std::mem::size_of::<UprobeAttr>()).expect("72 bytes"),
        config1: path.as_ptr() as u64,
        // User space of this process only: nothing that needs a privilege of its own, so
        // that the uprobe PMU's capability check is the one that answers.
        flags: EXCLUDE_KERNEL | EXCLUDE_HV,
        ..UprobeAttr::default()
    };
    // SAFETY: a valid attr of the size it declares that outlives the call (the kernel copies
    // it), pointing to a valid NUL-terminated path; pid 0 = this process, any CPU, no group.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &raw const attr,
            0 as libc::pid_t,
            -1 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel just gave us this descriptor; nobody else owns it.
        unsafe { libc::close(fd as libc::c_int) };
        return false;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EACCES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(caps: &[u32]) -> u64 {
        caps.iter().fold(0, |m, c| m | 1 << c)
    }

    /// CAP_SYS_ADMIN + CAP_SYS_PTRACE is enough without asking the kernel; CAP_BPF +
    /// CAP_PERFMON replace CAP_SYS_ADMIN only where the kernel allows it; whatever is missing
    /// is named.
    #[test]
    fn capability_sets() {
        let never = || panic!("the kernel need not be asked");
        assert!(check_caps(mask(&[CAP_SYS_ADMIN, CAP_SYS_PTRACE]), never).is_ok());
        let fine = mask(&[CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE]);
        assert!(check_caps(fine, || false).is_ok());
        let err = check_caps(fine, || true).unwrap_err();
        assert!(err.missing.starts_with("CAP_SYS_ADMIN: "), "{err}");
        let err = check_caps(mask(&[CAP_SYS_ADMIN]), never).unwrap_err();
        assert_eq!(err.missing, "CAP_SYS_PTRACE");
        let err = check_caps(mask(&[CAP_BPF, CAP_SYS_PTRACE]), never).unwrap_err();
        assert_eq!(err.missing, "CAP_SYS_ADMIN");
        let err = check_caps(0, never).unwrap_err();
        assert_eq!(err.missing, "CAP_SYS_ADMIN, CAP_SYS_PTRACE");
        assert!(err.to_string().contains("CAP_BPF, CAP_PERFMON"), "{err}");
    }

    /// With CAP_SYS_ADMIN the kernel's answer is "allowed" (the probe creates nothing: an
    /// empty path). Without it the answer depends on the kernel, so only root is checked.
    #[test]
    fn kernel_allows_uprobes_with_sys_admin() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        if effective(&status) & (1 << CAP_SYS_ADMIN) != 0 {
            assert!(!uprobes_need_sys_admin());
        }
    }

    #[test]
    fn effective_set_parsing() {
        assert_eq!(effective("Name:\tx\nCapEff:\t0000000000200000\n"), 1 << 21);
        assert_eq!(effective("garbage"), 0);
    }
}
