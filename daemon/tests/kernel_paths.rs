//! The kernel-dependent paths, on whatever kernel runs the tests (the host's, or Debian's 6.1
//! and 6.12 in `cargo xtask test --kernel`): `probed self-check` names the kernel and the
//! path it chose for each part, and those choices match what the kernel has; namespace pids
//! read in BPF through BTF offsets are exact.

mod common;

use common::{Probed, Target, TargetCopy, num, parse_json};

/// `(major, minor)` of the running kernel.
fn version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(['.', '-']);
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap();
    (next(), next())
}

/// The `path: PART: …` line of self-check's output.
fn path_line<'a>(out: &'a str, part: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("path: {part}: ")))
        .unwrap_or_else(|| panic!("no `path: {part}:` line in:\n{out}"))
}

/// self-check exits 0, prints `uname -r`, and for each kernel-dependent part the path taken.
/// Where a feature's presence is reported, it is checked against the mainline version that
/// brought it (Debian's 6.1 and 6.12 and the CI host's kernel backport none of them).
#[test]
fn self_check_names_the_kernel_and_the_paths() {
    if !common::require_bpf("self_check_names_the_kernel_and_the_paths") {
        return;
    }
    let out = std::process::Command::new(common::probed_bin())
        .arg("self-check")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}\n{:?}", out.stderr);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        stdout.starts_with(&format!("kernel: {} (", release.trim())),
        "{stdout}"
    );
    let v = version();
    let says = |part: &str, since: (u32, u32), present: &str, absent: &str| {
        let line = path_line(&stdout, part);
        let want = if v >= since { present } else { absent };
        assert!(line.contains(want), "kernel {v:?}, want `{want}`: {line}");
    };
    says(
        "uprobe attach",
        (6, 6),
        "BPF_TRACE_UPROBE_MULTI: present",
        "BPF_TRACE_UPROBE_MULTI: absent",
    );
    says(
        "uprobe attach",
        (6, 6),
        "probed trace: a file's probes through uprobe_multi links",
        "one perf-event uprobe link per probe",
    );
    says(
        "return-probe address",
        (6, 4),
        "the probed function's (bpf_get_func_ip)",
        "the probed function's (utask->return_instances->func)",
    );
    says(
        "rescan path",
        (6, 11),
        "PROCMAP_QUERY ioctl: present",
        "PROCMAP_QUERY ioctl: absent",
    );
    says(
        "process exit",
        (6, 16),
        "with group_dead",
        "the main thread's sched_process_exit",
    );
    // Every kernel we test has the BTF members: replay and namespace pids must be chosen.
    assert!(
        path_line(&stdout, "change reports").contains("replayed from BPF's reports"),
        "{stdout}"
    );
    assert!(
        path_line(&stdout, "container pids").contains("read in BPF"),
        "{stdout}"
    );
    // auto = kseq mode where the kernel has the address-space seqcount (mainline 6.14; Debian's
    // 6.12.95 has it too, its stable series took the change), kprobes on the syscall
    // functions elsewhere where the kernel has kprobes (Debian's do), syscall tracepoints
    // elsewhere; the mode that really ran agrees.
    let mode = common::auto_tracker(false);
    if v >= (6, 14) {
        assert_eq!(mode, "kseq", "kernel {v:?}: auto would run {mode}");
    }
    if v < (6, 12) {
        assert_ne!(mode, "kseq", "kernel {v:?}: auto would run {mode}");
    }
    let hooks = path_line(&stdout, "tracker hooks");
    assert!(hooks.contains(&format!("{mode}: ")), "{hooks}");
    assert!(
        stdout.contains(&format!("ok: change tracker runs in {mode} mode")),
        "{stdout}"
    );
    assert!(stdout.contains("ok: BPF programs load and pass the verifier"));
}

/// A process in a new pid namespace (its init) and its twin on the host call probed_add N
/// times each; every hit has the host pid in `pid` and the namespace's own in `ns_pid`
/// (1 inside; the host pid outside), exactly N hits each.
#[test]
fn ns_pids_are_exact_in_a_new_pid_namespace() {
    if !common::require_bpf("ns_pids_are_exact_in_a_new_pid_namespace") {
        return;
    }
    const N: u64 = 200;
    let copy = TargetCopy::new("kp_ns");
    let mut inside = Target::start_in_new_pidns(&copy.path, &[&N.to_string()]);
    let mut outside = Target::start(&copy.path, &[&N.to_string()]);
    let spec = copy.spec("uprobe", "probed_add");
    let probed = Probed::start(&["trace", &spec, "--format", "json"]);
    inside.go();
    outside.go();
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let (hits, _) = parse_json(&end.stdout);
    let of = |pid: u32| {
        hits.iter()
            .filter(|h| num(h, "pid") == u64::from(pid))
            .collect::<Vec<_>>()
    };
    let (ins, outs) = (of(inside.pid), of(outside.pid));
    assert_eq!(ins.len() as u64, N);
    assert_eq!(outs.len() as u64, N);
    assert_eq!(hits.len() as u64, 2 * N, "no other hits");
    for h in ins {
        assert_eq!(num(h, "ns_pid"), 1, "{h}");
        assert_eq!(num(h, "ns_tid"), 1, "{h}");
    }
    for h in outs {
        assert_eq!(num(h, "ns_pid"), u64::from(outside.pid), "{h}");
        assert_eq!(num(h, "ns_tid"), num(h, "tid"), "{h}");
    }
    inside.finish();
    outside.finish();
}
