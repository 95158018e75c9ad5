//! The kernel's own run-time accounting of BPF programs, for the benches: while a
//! [`StatsOn`] is held the kernel times every BPF program run (`BPF_ENABLE_STATS`, the
//! syscall form of `kernel.bpf_stats_enabled`: it ends with the descriptor, so a bench that
//! dies leaves the sysctl as it was), and [`busiest_prog`] reads a tracer's programs'
//! counts from `/proc/PID/fdinfo`.
//!
//! Timing costs each run two clock reads, the same for every tracer measured.

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{Result, bail};

/// `BPF_ENABLE_STATS` (include/uapi/linux/bpf.h `enum bpf_cmd`).
const BPF_ENABLE_STATS: libc::c_long = 32;
/// `BPF_STATS_RUN_TIME` (`enum bpf_stats_type`).
const BPF_STATS_RUN_TIME: u32 = 0;

/// Run-time stats on while held.
pub struct StatsOn {
    _fd: OwnedFd,
}

impl StatsOn {
    /// Asks the kernel to time BPF program runs until this is dropped.
    pub fn enable() -> Result<Self> {
        // `union bpf_attr`'s `enable_stats` member: one u32, the rest of the union zero.
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
        // SAFETY: bpf(2) reads `attr.len()` bytes of the valid buffer `attr`; it returns a
        // new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_mut_ptr(),
                attr.len() as libc::c_uint,
            )
        };
        if fd < 0 {
            bail!(
                "BPF_ENABLE_STATS: {} (needs root and Linux 5.8+)",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: `fd` is a descriptor the kernel just returned, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { _fd: fd })
    }
}

/// A BPF program's runs and the time they took (ns), as the kernel counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgRuns {
    pub runs: u64,
    pub run_ns: u64,
}

impl ProgRuns {
    /// Mean ns per run, if it ran.
    pub fn ns_per_run(self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_ns as f64 / self.runs as f64)
    }
}

/// The counts of the program `pid` holds that ran most (a tracer's per-hit program, not its
/// start-up or tracking ones); None if it holds no program that ran.
pub fn busiest_prog(pid: u32) -> Option<ProgRuns> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    dir.filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:bpf-prog")
        })
        .filter_map(|e| {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .ok()?;
            Some(parse_fdinfo(&info))
        })
        .filter(|p| p.runs > 0)
        .max_by_key(|p| p.runs)
}

/// `run_cnt` and `run_time_ns` of a program descriptor's fdinfo text.
fn parse_fdinfo(text: &str) -> ProgRuns {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    ProgRuns {
        runs: field("run_cnt"),
        run_ns: field("run_time_ns"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_program_descriptors_counts() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2072\nprog_type:\t2\n\
                    prog_jited:\t1\nprog_tag:\tabcdef\nmemlock:\t4096\nprog_id:\t419\n\
                    run_time_ns:\t587520000\nrun_cnt:\t432000\nrecursion_misses:\t0\n\
                    verified_insns:\t158000\n";
        let p = parse_fdinfo(text);
        assert_eq!(
            p,
            ProgRuns {
                runs: 432_000,
                run_ns: 587_520_000
            }
        );
        assert_eq!(p.ns_per_run(), Some(1360.0));
        assert_eq!(parse_fdinfo("prog_id:\t1\n").ns_per_run(), None);
    }
}
