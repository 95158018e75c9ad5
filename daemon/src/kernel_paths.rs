//! What the running kernel offers and which path probed takes for each kernel-dependent
//! part, with the reason: `probed self-check` prints it.
//!
//! Every answer comes from the kernel itself (its BTF, tracefs, a harmless perf-event
//! probe), never from the version number: distribution kernels backport features.

use probed_common::{KernelOffsets, PidOffsets, RetOffsets};

use crate::btf::Btf;

/// One kernel-dependent part of probed and the path chosen for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The part (`tracker hooks`, `change reports`, …).
    pub part: &'static str,
    /// The path taken.
    pub chosen: String,
    /// Why.
    pub why: String,
}

/// The running kernel's release (`uname -r`) and version string (`uname -v`).
pub fn release() -> (String, String) {
    // SAFETY: utsname is plain data; uname fills it and NUL-terminates every field.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a utsname.
    if unsafe { libc::uname(&raw mut uts) } != 0 {
        return ("unknown".into(), String::new());
    }
    let field = |f: &[libc::c_char]| {
        // SAFETY: uname NUL-terminated the field within its array.
        unsafe { std::ffi::CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    (field(&uts.release), field(&uts.version))
}

/// The choices on this kernel.
pub fn choices() -> Vec<Choice> {
    let btf = Btf::from_sys_fs();
    let mut out = vec![tracker_hooks()];
    match &btf {
        Ok(btf) => {
            out.push(change_reports(
                crate::track::offsets::from_btf(btf).map_err(|e| e.to_string()),
            ));
            out.push(container_pids(
                crate::track::offsets::pid_offsets_from_btf(btf).map_err(|e| e.to_string()),
            ));
        }
        Err(e) => {
            out.push(change_reports(Err(format!("no kernel BTF: {e}"))));
            out.push(container_pids(Err(format!("no kernel BTF: {e}"))));
        }
    }
    let has = |ty: &str, member: &str| {
        btf.as_ref()
            .is_ok_and(|b| b.member_offset(ty, &[member]).is_ok())
    };
    out.push(process_exit(
        crate::track::tracepoints::exit_group_dead_offset(),
    ));
    let ret_offsets = match &btf {
        Ok(btf) => crate::track::offsets::ret_offsets_from_btf(btf).map_err(|e| e.to_string()),
        Err(e) => Err(format!("no kernel BTF: {e}")),
    };
    out.push(return_address(
        has("bpf_trace_run_ctx", "is_uprobe"),
        ret_offsets,
    ));
    out.push(rescan(has("procmap_query", "size")));
    out.push(attach(has(UPROBE_MULTI.0, UPROBE_MULTI.1)));
    out.push(privilege(crate::privileges::uprobes_need_sys_admin()));
    out
}

/// The change tracker's hooks under `--tracker auto` (the default).
fn tracker_hooks() -> Choice {
    use crate::track::{kprobes, tracepoints};
    tracker_hooks_for(
        tracepoints::lock_mode_unavailable(),
        kprobes::available().err(),
        crate::track::offsets::kseq_mode_unavailable(),
    )
}

/// [`tracker_hooks`] from what the kernel has: why lock, kprobe and kseq modes cannot run,
/// for those that cannot.
pub fn tracker_hooks_for(
    lock: Option<String>,
    kprobes: Option<String>,
    kseq: Option<String>,
) -> Choice {
    use crate::track::{TrackerChoice, TrackerMode, Unavailable};
    let (mode, why) = TrackerChoice::Auto
        .decide(
            Unavailable {
                lock: lock.as_deref(),
                kprobes: kprobes.as_deref(),
                kseq: kseq.as_deref(),
            },
            false,
        )
        .expect("auto always decides");
    let chosen = match mode {
        TrackerMode::Lock => {
            "lock: raw tracepoints mmap_lock_acquire_returned and mmap_lock_released (write \
             sections of tracked processes), hits capture their mappings (bpf_find_vma), \
             sched exec/fork/exit; other processes' syscalls keep the fast path"
        }
        TrackerMode::Kseq => {
            "kseq: no address-space hooks; hits stamped with the kernel's mm_lock_seq capture \
             their mappings (bpf_find_vma) unless a capture at the same value holds them, \
             sched exec/fork/exit; nobody's syscalls or mmap_lock operations pay"
        }
        TrackerMode::Kprobes => {
            "kprobes: kprobe and kretprobe on the mapping syscalls' functions (__x64_sys_mmap, \
             munmap, mremap, mprotect, pkey_mprotect, brk, shmat, shmdt, remap_file_pages), \
             replayed reports, sched exec/fork/exit; other syscalls keep the fast path"
        }
        TrackerMode::Syscalls => {
            "syscalls: syscall tracepoints (mmap, munmap, mremap, mprotect, pkey_mprotect, \
             brk, shmat, shmdt, remap_file_pages; enter and exit) and sched exec/fork/exit"
        }
    };
    Choice {
        part: "tracker hooks",
        chosen: chosen.into(),
        why: format!("--tracker {why}"),
    }
}

/// Whether mapping changes are replayed from BPF's reports or rescanned from /proc.
pub fn change_reports(offsets: Result<KernelOffsets, String>) -> Choice {
    match offsets {
        Ok(_) => Choice {
            part: "change reports",
            chosen: "replayed from BPF's reports (bpf_find_vma, BTF offsets)".into(),
            why: "the BTF has every vm_area_struct/file/inode/mm_struct member the tracker reads"
                .into(),
        },
        Err(e) => Choice {
            part: "change reports",
            chosen: "rescanned from /proc/PID/maps".into(),
            why: e,
        },
    }
}

/// How the tracker sees a process end: sched_process_exit's `group_dead` (Linux 6.16) says
/// the last thread left; before it, the main thread's exit stands for the process's.
pub fn process_exit(group_dead_offset: u32) -> Choice {
    if group_dead_offset == 0 {
        Choice {
            part: "process exit",
            chosen: "the main thread's sched_process_exit".into(),
            why: "sched_process_exit has no group_dead field (Linux < 6.16): a process whose \
                  main thread exits before its other threads is taken as ended then"
                .into(),
        }
    } else {
        Choice {
            part: "process exit",
            chosen: format!("sched_process_exit with group_dead (offset {group_dead_offset})"),
            why: "the tracepoint says when the last thread leaves".into(),
        }
    }
}

/// Where a uretprobe hit's `addr` comes from. `ebpf/src/hit.rs` asks `bpf_get_func_ip`,
/// which answers for uprobe programs only since Linux 6.4 (`bpf_trace_run_ctx.is_uprobe`
/// in the BTF); before, it returns 0, and the program reads the function's address from the
/// kernel's uretprobe bookkeeping (`current->utask->return_instances->func`, offsets from
/// the BTF). Without those offsets it falls back to the registers' ip, which at a uretprobe
/// is the return address in the caller (found on Debian's 6.1 before the bookkeeping read:
/// return hits named the caller's symbol).
pub fn return_address(
    func_ip_for_uprobes: bool,
    ret_offsets: Result<RetOffsets, String>,
) -> Choice {
    if func_ip_for_uprobes {
        return Choice {
            part: "return-probe address",
            chosen: "the probed function's (bpf_get_func_ip)".into(),
            why: "bpf_get_func_ip answers for uprobe programs (Linux >= 6.4)".into(),
        };
    }
    match ret_offsets {
        Ok(_) => Choice {
            part: "return-probe address",
            chosen: "the probed function's (utask->return_instances->func)".into(),
            why: "bpf_get_func_ip returns 0 for uprobe programs before Linux 6.4; the BTF has \
                  task_struct.utask, uprobe_task.return_instances, return_instance.func \
                  (a tail call from one uretprobed function to another: both returns carry \
                  the first's address)"
                .into(),
        },
        Err(e) => Choice {
            part: "return-probe address",
            chosen: "the return address (registers' ip): WRONG for uretprobe hits".into(),
            why: format!(
                "bpf_get_func_ip returns 0 for uprobe programs before Linux 6.4, and the \
                 kernel's uretprobe bookkeeping cannot be read ({e}): return hits carry the \
                 caller's address and symbol"
            ),
        },
    }
}

/// Whether hits carry namespace pids.
pub fn container_pids(offsets: Result<PidOffsets, String>) -> Choice {
    match offsets {
        Ok(_) => Choice {
            part: "container pids",
            chosen: "read in BPF at each hit of a process in a pid namespace \
                     (task->thread_pid->numbers[level].nr; the depth once per process)"
                .into(),
            why: "the BTF has task_struct.thread_pid/group_leader, pid.level/numbers, upid.nr"
                .into(),
        },
        Err(e) => Choice {
            part: "container pids",
            chosen: "none (ns_pid/ns_tid null)".into(),
            why: e,
        },
    }
}

/// The resolver's locked rescan. PROCMAP_QUERY (6.11) would answer one address per ioctl;
/// the mirror needs the whole map, which the text read gives in one pass.
pub fn rescan(procmap_query: bool) -> Choice {
    Choice {
        part: "rescan path",
        chosen: "/proc/PID/maps, sequence-checked".into(),
        why: format!(
            "the mirror needs every mapping at once, which one read gives; PROCMAP_QUERY \
             ioctl: {}",
            if procmap_query {
                "present, not needed"
            } else {
                "absent (Linux < 6.11)"
            }
        ),
    }
}

/// What in the kernel's BTF says it has uprobe_multi links (6.6): (type, member).
const UPROBE_MULTI: (&str, &str) = ("bpf_uprobe_multi_link", "uprobes");

/// Whether the running kernel has uprobe_multi links (its BTF has their type).
pub fn has_uprobe_multi() -> bool {
    Btf::from_sys_fs().is_ok_and(|b| b.member_offset(UPROBE_MULTI.0, &[UPROBE_MULTI.1]).is_ok())
}

/// How probes attach. Every link carries the probe id in its BPF cookie (uprobe cookies:
/// 5.15). With uprobe_multi (6.6), `probed trace` attaches a file's probes of one kind
/// through links of up to 64 offsets each, which the kernel retires in one batch; the daemon,
/// which adds and removes single probes, keeps one perf-event link per probe.
pub fn attach(uprobe_multi: bool) -> Choice {
    Choice {
        part: "uprobe attach",
        chosen: if uprobe_multi {
            "probed trace: a file's probes through uprobe_multi links (64 offsets each, probe \
             ids in the cookies); the daemon: one perf-event uprobe link per probe"
                .into()
        } else {
            "one perf-event uprobe link per probe, probe id in the BPF cookie".into()
        },
        why: if uprobe_multi {
            "BPF_TRACE_UPROBE_MULTI: present; detaching waits one grace period per link, not \
             per probe"
                .into()
        } else {
            "BPF_TRACE_UPROBE_MULTI: absent (Linux < 6.6); works on every kernel with \
             uprobe cookies"
                .into()
        },
    }
}

/// Which capabilities uprobes need here (the kernel was asked).
pub fn privilege(need_sys_admin: bool) -> Choice {
    Choice {
        part: "uprobe privilege",
        chosen: if need_sys_admin {
            "CAP_SYS_ADMIN".into()
        } else {
            "CAP_SYS_ADMIN, or CAP_BPF + CAP_PERFMON".into()
        },
        why: "asked the kernel with a uprobe perf event that creates nothing".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_offsets_choose_the_fallbacks_and_say_why() {
        let c = change_reports(Err("`vm_area_struct` has no member `vm_flags`".into()));
        assert_eq!(c.chosen, "rescanned from /proc/PID/maps");
        assert!(c.why.contains("vm_flags"));
        let p = container_pids(Err("no kernel BTF".into()));
        assert!(p.chosen.starts_with("none"));
        assert!(rescan(false).why.contains("absent"));
        assert!(attach(true).why.contains("present"));
        let r = return_address(false, Err("`uprobe_task` has no member `x`".into()));
        assert!(r.chosen.contains("WRONG"));
        assert!(r.why.contains("uprobe_task"));
        let r = return_address(false, Ok(RetOffsets::default()));
        assert!(r.chosen.contains("utask->return_instances->func"));
        assert!(
            return_address(true, Err(String::new()))
                .chosen
                .contains("bpf_get_func_ip")
        );
    }

    #[test]
    fn release_is_the_running_kernels() {
        let (release, _) = release();
        let proc = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(release, proc.trim());
    }
}
