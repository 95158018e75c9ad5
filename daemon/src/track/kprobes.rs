//! Kprobe mode's hooks: a kprobe and a kretprobe on each mapping syscall's own function
//! (`__x64_sys_mmap`, …), with the same entry/exit logic and reports as syscall mode.
//!
//! Why: a syscall tracepoint, once any is enabled, puts every syscall of every thread on the
//! host on the slow path (the syscall-trace work flag is per thread, not per syscall). A
//! kprobe on `__x64_sys_mmap` costs only mmap calls. Debian's and Ubuntu's kernels have
//! kprobes; where the 6.14+ mmap_lock tracepoints exist, lock mode costs less still.
//!
//! What a kretprobe adds: the kernel keeps a fixed pool of return instances per kretprobe
//! (`max(10, 2 × possible CPUs)` for perf-created ones). A return that finds the pool empty
//! is skipped; the change stays open until the thread's next tracked entry or its exit
//! closes it as a missed exit (ebpf/src/track.rs `close_missed_exit`): the daemon is told a
//! report is missing and rescans. Slower, never wrong.

use std::path::Path;

/// The prefix of the syscall functions on this architecture.
#[cfg(target_arch = "x86_64")]
const PREFIX: &str = "__x64_sys_";
/// Kprobe mode is built for x86-64 only (the BPF entries read x86-64 user registers).
#[cfg(not(target_arch = "x86_64"))]
const PREFIX: &str = "";

/// The syscalls, as in [`super::tracepoints::SYSCALLS`], with their kprobe entry programs;
/// every return goes to [`EXIT_PROGRAM`]. `required`: without it the mode cannot run (the
/// others may be configured out, e.g. System V shm without CONFIG_SYSVIPC, and are skipped
/// as syscall mode skips a missing tracepoint).
pub const FUNCTIONS: [(&str, &str, bool); 9] = [
    ("mmap", "probed_kmmap_enter", true),
    ("munmap", "probed_kmunmap_enter", true),
    ("mremap", "probed_kmremap_enter", true),
    ("mprotect", "probed_kmprotect_enter", true),
    ("pkey_mprotect", "probed_kmprotect_enter", false),
    ("brk", "probed_kbrk_enter", true),
    ("shmat", "probed_kother_enter", false),
    ("shmdt", "probed_kother_enter", false),
    ("remap_file_pages", "probed_kother_enter", false),
];

/// The kretprobe program every function's return runs.
pub const EXIT_PROGRAM: &str = "probed_kmm_exit";

/// Where the kernel lists its perf event sources; aya attaches kprobes through the `kprobe`
/// one.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// The kernel function of a syscall.
pub fn function(syscall: &str) -> String {
    format!("{PREFIX}{syscall}")
}

/// The syscalls whose functions kprobe mode can hook on this kernel (those of [`FUNCTIONS`]
/// in kallsyms), or why kprobe mode cannot run here. Read once at start: kallsyms is
/// ~120,000 lines (about 50 ms to read).
pub fn available() -> Result<Vec<&'static str>, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("kprobe mode is built for x86-64 only".into());
    }
    if !Path::new(KPROBE_PMU).exists() {
        return Err(format!(
            "the kernel has no kprobes (no {KPROBE_PMU}: built without CONFIG_KPROBES or \
             CONFIG_KPROBE_EVENTS)"
        ));
    }
    let text = std::fs::read_to_string("/proc/kallsyms")
        .map_err(|e| format!("cannot read /proc/kallsyms: {e}"))?;
    let present = present(&text);
    match missing_required(&present) {
        Some(why) => Err(why),
        None => Ok(present),
    }
}

/// The syscalls of [`FUNCTIONS`] whose function a `/proc/kallsyms` text has.
fn present(kallsyms: &str) -> Vec<&'static str> {
    let names: std::collections::HashSet<&str> = kallsyms
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|name| name.starts_with(PREFIX))
        .collect();
    FUNCTIONS
        .iter()
        .filter(|(s, _, _)| names.contains(function(s).as_str()))
        .map(|(s, _, _)| *s)
        .collect()
}

/// Why kprobe mode cannot run with only the `present` syscalls' functions; `None` if every
/// required one is there.
fn missing_required(present: &[&str]) -> Option<String> {
    let missing: Vec<String> = FUNCTIONS
        .iter()
        .filter(|(s, _, required)| *required && !present.contains(s))
        .map(|(s, _, _)| function(s))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the kernel has no function {} to put kprobes on",
            missing.join(", ")
        )
    })
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Every required syscall function must be in kallsyms; optional ones may be missing.
    #[test]
    fn required_functions() {
        let all = "ffffffff8130b690 T __x64_sys_mmap\n\
                   ffffffff81610120 T __x64_sys_brk\n\
                   ffffffff81611870 T __x64_sys_munmap\n\
                   ffffffff816161a0 T __x64_sys_mprotect\n\
                   ffffffff81619080 T __x64_sys_mremap\n\
                   ffffffff81aade50 T __x64_sys_shmat\n";
        assert_eq!(missing_required(&present(all)), None);
        assert_eq!(
            present(all),
            ["mmap", "munmap", "mremap", "mprotect", "brk", "shmat"]
        );
        let no_brk = all.replace("__x64_sys_brk", "__x64_sys_brk_old");
        let why = missing_required(&present(&no_brk)).expect("brk is required");
        assert!(why.contains("__x64_sys_brk"), "{why}");
        // Module symbols carry a fourth column; a name must match whole.
        assert!(missing_required(&present("0 T __x64_sys_mmapx [m]\n")).is_some());
    }
}
