//! Bad input: each mistake gets one line on stderr that says what is wrong, a non-zero exit,
//! and nothing attached — even when the other SPECs of the run are fine.

mod common;

use std::{process::Command, thread};

use common::{Finished, Target, TargetCopy};

/// Asserts `end` is a failed run that printed nothing on stdout and exactly one line on
/// stderr, `probed: error: …`, containing each of `needles`.
fn assert_one_line_error(end: &Finished, needles: &[&str]) {
    assert!(!end.status.success(), "exit status {:?}", end.status);
    assert!(end.stdout.is_empty(), "stdout: {:?}", end.stdout);
    assert_eq!(end.stderr.len(), 1, "stderr: {:?}", end.stderr);
    let line = &end.stderr[0];
    assert!(line.starts_with("probed: error: "), "{line}");
    for needle in needles {
        assert!(line.contains(needle), "{line:?} does not say {needle:?}");
    }
}

/// A SPEC of unknown syntax (wrong probe type, missing parts, relative path) is refused, and
/// the message shows the expected form.
#[test]
fn unknown_spec_syntax() {
    if !common::require_bpf("unknown_spec_syntax") {
        return;
    }
    let expected = "expected uprobe:/path/to/binary:symbol";
    for (spec, says) in [
        ("kprobe:/bin/true:main", "unknown probe type `kprobe`"),
        ("uprobe:/bin/true", "cannot parse `uprobe:/bin/true`"),
        ("uprobe:bin/true:main", "must be absolute"),
    ] {
        let end = common::run_probed(&["trace", spec, "--format", "json"]);
        assert_one_line_error(&end, &[says, expected]);
    }
}

/// A SPEC naming a file that does not exist is refused, naming the file.
#[test]
fn missing_file() {
    if !common::require_bpf("missing_file") {
        return;
    }
    let end = common::run_probed(&["trace", "uprobe:/nonexistent/probed-test/bin:main"]);
    assert_one_line_error(&end, &["/nonexistent/probed-test/bin", "no such file"]);
}

/// A SPEC naming a file that is not ELF (an executable shell script) is refused.
#[test]
fn not_an_elf_file() {
    if !common::require_bpf("not_an_elf_file") {
        return;
    }
    let copy = TargetCopy::new("te_script");
    let script = copy.path.with_file_name("script.sh");
    std::fs::write(&script, "#!/bin/sh\necho main\n").expect("write script");
    let spec = format!("uprobe:{}:main", script.display());
    let end = common::run_probed(&["trace", &spec]);
    assert_one_line_error(&end, &[&script.display().to_string(), "not an ELF file"]);
}

/// A symbol that is not in the file is refused, and the message suggests the close names.
#[test]
fn symbol_not_found_suggests_close_names() {
    if !common::require_bpf("symbol_not_found_suggests_close_names") {
        return;
    }
    let target = common::trace_target();
    let spec = format!("uprobe:{}:probed_ad", target.display());
    let end = common::run_probed(&["trace", &spec]);
    assert_one_line_error(
        &end,
        &["`probed_ad` not found", "did you mean", "probed_add"],
    );
}

/// `--pid` of a process that has exited is refused before anything is attached.
#[test]
fn dead_pid() {
    if !common::require_bpf("dead_pid") {
        return;
    }
    let mut child = Command::new("true").spawn().expect("run true");
    let pid = child.id();
    assert!(child.wait().expect("wait true").success());
    let spec = format!("uprobe:{}:probed_add", common::trace_target().display());
    let end = common::run_probed(&["trace", &spec, "--pid", &pid.to_string()]);
    assert_one_line_error(&end, &[&format!("no process with pid {pid}")]);
}

/// Run as `nobody` (no capabilities), probed says it lacks privileges and names the
/// capabilities it needs.
#[test]
fn not_enough_privileges() {
    if !common::require_bpf("not_enough_privileges") {
        return;
    }
    let copy = TargetCopy::new("te_nobody");
    let probed = copy.share_with_everyone();
    let spec = copy.spec("uprobe", "probed_add");
    let end = common::run_to_end_exec_retry(|| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&probed)
            .args(["trace", &spec]);
        cmd
    });
    assert_one_line_error(
        &end,
        &[
            "not enough privileges",
            "missing CAP_SYS_ADMIN, CAP_SYS_PTRACE",
        ],
    );
}

/// When the last of several SPECs is bad, the run fails with one line naming it and attaches
/// nothing: no hit (and no summary) is printed although the target calls the good SPECs'
/// functions all along.
#[test]
fn one_bad_spec_attaches_nothing() {
    if !common::require_bpf("one_bad_spec_attaches_nothing") {
        return;
    }
    let copy = TargetCopy::new("te_onebad");
    let mut target = Target::start(&copy.path, &["--loop", "1", "--wait"]);
    let bad = copy.spec("uprobe", "no_such_function");
    let specs = [
        copy.spec("uprobe", "probed_add"),
        copy.spec("uretprobe", "probed_add"),
        bad.clone(),
    ];
    let (end, calls) = thread::scope(|s| {
        let looping = s.spawn(|| common::reported_calls(&target.go()));
        let end =
            common::run_probed(&["trace", "--format", "json", &specs[0], &specs[1], &specs[2]]);
        (end, looping.join().expect("target thread"))
    });
    assert!(calls > 0);
    assert_one_line_error(&end, &[&bad, "`no_such_function` not found"]);
    target.finish();
}

/// A SPEC the kernel refuses at attach time (a breakpoint instruction, in a running
/// process) fails the run with one line, after the good SPEC before it was attached.
#[test]
fn kernel_refused_attach() {
    if !common::require_bpf("kernel_refused_attach") {
        return;
    }
    let copy = TargetCopy::new("te_refused");
    let target = Target::start(&copy.path, &["5"]);
    let end = common::run_probed(&[
        "trace",
        &copy.spec("uprobe", "probed_add"),
        &copy.spec("uprobe", "probed_trap"),
    ]);
    assert_one_line_error(&end, &["cannot attach", copy.path_str()]);
    target.finish();
}

/// A library name nothing provides is one error naming every place looked in; a wildcard
/// matching no function and a malformed one are one error each; `probed list` of a bad
/// pattern too. Nothing is attached (the runs fail before tracing).
#[test]
fn library_and_wildcard_errors() {
    if !common::require_bpf("library_and_wildcard_errors") {
        return;
    }
    let end = common::run_probed(&["trace", "uprobe:libprobed-nope:f"]);
    assert_one_line_error(
        &end,
        &[
            "library `libprobed-nope` not found (looked in",
            "/etc/ld.so.cache",
            "/usr/lib/x86_64-linux-gnu",
        ],
    );
    let target = common::trace_target();
    let spec = format!("uprobe:{}:nothing_here_*", target.display());
    let end = common::run_probed(&["trace", &spec]);
    assert_one_line_error(&end, &["no function in", "matches `nothing_here_*`"]);
    let spec = format!("uprobe:{}:probed_[ad", target.display());
    let end = common::run_probed(&["trace", &spec]);
    assert_one_line_error(&end, &["unclosed `[`"]);
    let spec = format!("uprobe:{}:probed_*+4", target.display());
    let end = common::run_probed(&["trace", &spec]);
    assert_one_line_error(&end, &["a wildcard cannot take +OFFSET"]);
    let end = common::run_probed(&["list", "uprobe:libc"]);
    assert_one_line_error(&end, &["cannot parse `uprobe:libc`"]);
    let end = common::run_probed(&["list", "uprobe:libc:probed_nothing_*"]);
    assert_one_line_error(&end, &["nothing in", "matches"]);
}

/// `--tracker lock` or `kseq` with stacks copied for the daemon's unwinder (`--stack`) is refused with
/// one line saying why and what to use instead, before anything is attached (on every
/// kernel: copied stacks are checked before the kernel's tracepoints).
#[test]
fn lock_tracker_refused_with_copied_stacks() {
    if !common::require_bpf("lock_tracker_refused_with_copied_stacks") {
        return;
    }
    let copy = TargetCopy::new("te_lockstack");
    for mode in ["lock", "kseq"] {
        let end = common::run_probed(&[
            "trace",
            &copy.spec("uprobe", "probed_add"),
            "--tracker",
            mode,
            "--stack",
        ]);
        assert_one_line_error(
            &end,
            &[
                &format!("--tracker {mode} cannot be used"),
                "use --stack=fp",
            ],
        );
    }
}
