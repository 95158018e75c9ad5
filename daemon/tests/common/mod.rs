//! Shared harness of the root/BPF integration tests: privilege gate, fixture targets, a
//! running `probed` whose output the test reads, ELF facts found with binutils (never with
//! probed's own code), and the BPF objects a process holds or the kernel has loaded.
//!
//! A test that needs root and BPF calls [`require_bpf`] first. Without root (or with a probed
//! built without its BPF object) it prints why and returns false — except under `CI=true`,
//! where it panics: in CI such a test must fail, never skip.
//!
//! Tests of one binary run in parallel and other test binaries or people may trace the same
//! fixture, so a test that attaches without `--pid` traces a [`TargetCopy`] (its own inode:
//! uprobes are keyed on the inode) and only ever sees its own processes.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

pub mod container;
pub mod daemon;
pub mod prometheus;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// How long a target may take to print a line it owes.
fn target_line_timeout() -> Duration {
    scaled(60)
}
/// How long probed may take to attach (it loads ELF files and the BPF object first).
pub(crate) fn attach_timeout() -> Duration {
    scaled(20)
}
/// How long probed may take to exit once told to.
fn exit_timeout() -> Duration {
    scaled(30)
}

/// `secs` times `PROBED_TEST_TIME_SCALE` (a whole factor, default 1): the kernel suites set
/// it in their emulated guests, where everything runs many times slower (`xtask/src/vm/
/// suite.rs`); these are limits for a wedged process, not expectations of speed.
fn scaled(secs: u64) -> Duration {
    let factor = std::env::var("PROBED_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    Duration::from_secs(secs * factor)
}

/// The probed binary cargo built for this test run.
pub fn probed_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_probed"))
}

/// Whether this kernel can run the lock-mode tracker, read from the tracefs formats the way
/// probed decides it: the 6.14+ mmap_lock events (a `write` argument, no `memcg_path`).
pub fn lock_mode_available() -> bool {
    let format =
        std::fs::read_to_string("/sys/kernel/tracing/events/mmap_lock/mmap_lock_released/format")
            .unwrap_or_default();
    format.contains("bool write") && !format.contains("memcg_path")
}

/// Whether this kernel can run the kseq-mode tracker: the 6.14+ address-space seqcount in
/// its BTF, decided by probed's own check.
pub fn kseq_mode_available() -> bool {
    probed::track::offsets::kseq_mode_unavailable().is_none()
}

/// Whether this kernel can run the kprobe-mode tracker, read the way probed decides it: a
/// kprobe PMU and the syscall functions in kallsyms (Debian's 6.1 and 6.12 have both; this
/// machine kind's 6.18 has no kprobes).
pub fn kprobe_mode_available() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
        && std::fs::read_to_string("/proc/kallsyms")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("__x64_sys_mmap"))
}

/// The mode `--tracker auto` picks on this kernel: where stacks are not copied for the
/// daemon's unwinder, kseq mode where the kernel has it, else lock mode where it has that;
/// else kprobes where the kernel has them, else syscalls (daemon/src/track/mode.rs).
pub fn auto_tracker(copied_stacks: bool) -> &'static str {
    if !copied_stacks && kseq_mode_available() {
        "kseq"
    } else if !copied_stacks && lock_mode_available() {
        "lock"
    } else if kprobe_mode_available() {
        "kprobes"
    } else {
        "syscalls"
    }
}

/// The mode a `probed trace` of this test run runs without `--tracker`: the one
/// `PROBED_TRACKER` names when the run forces one (the full run's syscall pass), else
/// [`auto_tracker`]'s.
pub fn trace_tracker(copied_stacks: bool) -> &'static str {
    match std::env::var("PROBED_TRACKER").ok().as_deref() {
        Some("lock") => "lock",
        Some("kseq") => "kseq",
        Some("kprobes") => "kprobes",
        Some("syscalls") => "syscalls",
        _ => auto_tracker(copied_stacks),
    }
}

/// For a test's kprobe-mode case: true where the kernel has kprobes; elsewhere (this machine
/// kind) checks that `probed trace --tracker kprobes` is refused with one error and a non-zero
/// exit, and returns false.
pub fn kprobe_mode_or_refusal() -> bool {
    if kprobe_mode_available() {
        return true;
    }
    refused("kprobes");
    false
}

/// Checks that `probed trace --tracker MODE` is refused here with one error line naming the
/// mode, and a non-zero exit.
fn refused(mode: &str) {
    let copy = TargetCopy::new(&format!("{mode}_refused"));
    let spec = copy.spec("uprobe", "probed_add");
    let end = run_probed(&["trace", &spec, "--tracker", mode, "--duration", "1"]);
    assert!(!end.status.success(), "--tracker {mode} ran here: {end:?}");
    let errors: Vec<&String> = end.stderr.iter().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{end:?}");
    assert!(
        errors[0].contains(&format!("--tracker {mode} cannot be used")),
        "{end:?}"
    );
}

/// For a test's kseq-mode case: true where the kernel has kseq mode; elsewhere (Debian's 6.1
/// and 6.12) checks that `probed trace --tracker kseq` is refused with one error and a
/// non-zero exit, and returns false.
pub fn kseq_mode_or_refusal() -> bool {
    if kseq_mode_available() {
        return true;
    }
    refused("kseq");
    false
}

/// For a test's lock-mode case: true where the kernel has lock mode; elsewhere (Debian's 6.1
/// and 6.12 in the kernel suites) checks instead that `probed trace --tracker lock` is refused
/// with one error and a non-zero exit, and returns false.
pub fn lock_mode_or_refusal() -> bool {
    if lock_mode_available() {
        return true;
    }
    refused("lock");
    false
}

/// Whether root/BPF tests can run here; panics under CI=true when they cannot.
pub fn require_bpf(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let stub = probed_is_stub();
    let why = if !root {
        Some("needs root (CAP_SYS_ADMIN and CAP_SYS_PTRACE; see privileges.rs)")
    } else if stub {
        Some("probed was built without its BPF object (run `cargo xtask test`)")
    } else {
        None
    };
    match why {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: cannot run under CI=true: {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

fn probed_is_stub() -> bool {
    let out = Command::new(probed_bin())
        .arg("self-check")
        .output()
        .expect("run probed self-check");
    !out.status.success()
}

/// Builds the trace target fixture (shared, cached: trace it only with `--pid`).
pub fn trace_target() -> PathBuf {
    probed::fixtures::build("trace_target.c", "trace_target", &["-O2", "-pthread"])
        .expect("build trace_target")
}

/// One test's private copy of the trace target, in its own directory (removed on drop).
pub struct TargetCopy {
    /// The directory holding the copy.
    dir: PathBuf,
    /// The copy's absolute, canonical path.
    pub path: PathBuf,
}

impl TargetCopy {
    /// Copies the trace target to a new file named `name` (at most 15 bytes, so that it is
    /// also the processes' comm).
    pub fn new(name: &str) -> Self {
        assert!(name.len() <= 15, "{name} would be truncated in comm");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "probed-tests/{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create target copy dir");
        let path = dir.join(name);
        std::fs::copy(trace_target(), &path).expect("copy trace target");
        let path = path.canonicalize().expect("canonical target path");
        Self { dir, path }
    }

    /// The path as a string, for SPECs.
    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("UTF-8 temp path")
    }

    /// The file name, which is also the comm of its processes.
    pub fn comm(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("file name")
    }

    /// Makes the copy's directory chain and the copy readable and executable by every user,
    /// whatever the umask, and copies probed next to it; returns that probed (for running
    /// probed as an unprivileged user, who may not reach the build tree).
    pub fn share_with_everyone(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let probed = self.dir.join("probed");
        std::fs::copy(probed_bin(), &probed).expect("copy probed");
        let parent = self.dir.parent().expect("copy dir has a parent");
        for path in [parent, &self.dir, &self.path, &probed] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                .expect("chmod 755");
        }
        probed
    }

    /// `KIND:PATH:LOCATION` for this copy.
    pub fn spec(&self, kind: &str, location: &str) -> String {
        format!("{kind}:{}:{location}", self.path_str())
    }
}

impl Drop for TargetCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running target from `trace_target.c`: it has printed `ready PID` and waits for `go`.
pub struct Target {
    /// The child process.
    pub child: Child,
    /// Its stdin (write `go`; close to let it exit).
    stdin: Option<ChildStdin>,
    /// Its stdout lines.
    lines: mpsc::Receiver<String>,
    /// The pid it reported.
    pub pid: u32,
}

impl Target {
    /// Starts `bin` with `args` and waits for its `ready` line.
    pub fn start(bin: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start target");
        let stdin = child.stdin.take();
        let lines = line_channel(child.stdout.take().expect("piped stdout"));
        let ready = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("target says ready");
        let pid = ready
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from target: {ready}"));
        assert_eq!(pid, child.id());
        Self {
            child,
            stdin,
            lines,
            pid,
        }
    }

    /// Starts `bin` with `args` as the first process of a new pid namespace (`unshare --pid
    /// --fork`, util-linux), like a container's init, and waits for its `ready` line (which
    /// says pid 1). `pid` is its pid in *our* namespace; `child` is the unshare process.
    pub fn start_in_new_pidns(bin: &Path, args: &[&str]) -> Self {
        let mut child = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start unshare (util-linux)");
        let stdin = child.stdin.take();
        let lines = line_channel(child.stdout.take().expect("piped stdout"));
        let ready = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("namespaced target says ready");
        assert_eq!(
            ready, "ready 1",
            "the target is its namespace's first process"
        );
        let pid = child_of(child.id()).expect("unshare's child in /proc");
        Self {
            child,
            stdin,
            lines,
            pid,
        }
    }

    /// Lets the target make one round of calls; returns the lines it printed up to and
    /// including `done …` (or `calls …` in `--loop` mode).
    pub fn go(&mut self) -> Vec<String> {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"go\n").expect("write go");
        stdin.flush().expect("flush go");
        let mut out = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(target_line_timeout())
                .expect("target finishes its calls");
            let last = line.starts_with("done ") || line.starts_with("calls ");
            out.push(line);
            if last {
                return out;
            }
        }
    }

    /// Closes stdin so the target exits, and waits for it; asserts it exited cleanly.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait target");
        assert!(status.success(), "target failed: {status}");
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // A failed test must not leave its target waiting forever.
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The pid (in our namespace) of a child of process `parent`, from /proc/*/stat.
pub fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid …; comm may hold spaces and parentheses.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
}

/// The thread ids a target reported (`tid TID` lines) in one round.
pub fn reported_tids(lines: &[String]) -> BTreeSet<u32> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("tid "))
        .map(|t| t.parse().expect("numeric tid"))
        .collect()
}

/// The `done SUM` a target printed.
pub fn reported_sum(lines: &[String]) -> i64 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("done "))
        .expect("a done line")
        .parse()
        .expect("numeric sum")
}

/// The SUM one thread of the target reports for `calls` calls (see trace_target.c).
pub fn expected_sum(calls: i64) -> i64 {
    4 * calls * (calls - 1) + 16 * calls
}

/// The calls a `--loop` target reported (`calls N rate R sum S`).
pub fn reported_calls(lines: &[String]) -> u64 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("calls "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a calls line")
        .parse()
        .expect("numeric calls")
}

/// A running `probed` child whose stdout and stderr lines arrive on channels.
pub struct Probed {
    /// The child process.
    pub child: Child,
    /// Stdout lines.
    pub lines: mpsc::Receiver<String>,
    /// Stderr lines.
    pub errors: mpsc::Receiver<String>,
    /// Stderr lines read while waiting for the "tracing" line (that line included).
    early_errors: Vec<String>,
    /// When the "tracing" line arrived.
    tracing_since: Instant,
}

/// How a probed run ended and what it printed.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Stdout lines.
    pub stdout: Vec<String>,
    /// Stderr lines.
    pub stderr: Vec<String>,
    /// Wall time from start (from the "tracing" line for [`Probed`]) to exit.
    pub elapsed: Duration,
}

impl Probed {
    /// Starts `probed ARGS` and waits (up to 20 s) for its "tracing" line on stderr.
    pub fn start(args: &[&str]) -> Self {
        Self::start_command(Command::new(probed_bin()).args(args))
    }

    /// As [`Probed::start`], for a command that runs probed some other way (e.g. in a
    /// container).
    pub fn start_command(cmd: &mut Command) -> Self {
        let args = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start probed");
        let lines = line_channel(child.stdout.take().expect("stdout"));
        let errors = line_channel(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + attach_timeout();
        let mut early_errors = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match errors.recv_timeout(left) {
                Ok(line) => {
                    let tracing = line.contains("probed: tracing");
                    early_errors.push(line);
                    if tracing {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    panic!(
                        "probed {args} did not start tracing (status {status:?}); stderr: \
                         {early_errors:?}"
                    );
                }
            }
        }
        Self {
            child,
            lines,
            errors,
            early_errors,
            tracing_since: Instant::now(),
        }
    }

    /// The probed process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and collects everything probed prints until it exits.
    pub fn stop(self, signal: i32) -> Finished {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill probed");
        self.wait()
    }

    /// Waits (up to 30 s) for probed to exit on its own; returns what it printed.
    pub fn wait(mut self) -> Finished {
        let deadline = Instant::now() + exit_timeout();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("probed did not exit within {:?}", exit_timeout());
            }
            thread::sleep(Duration::from_millis(10));
        };
        let elapsed = self.tracing_since.elapsed();
        let stdout = drain(&self.lines);
        let mut stderr = std::mem::take(&mut self.early_errors);
        stderr.extend(drain(&self.errors));
        Finished {
            status,
            stdout,
            stderr,
            elapsed,
        }
    }
}

impl Drop for Probed {
    fn drop(&mut self) {
        // Reaped children make try_wait return Some; anything else is a failed test's probed.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `probed ARGS` to its end (at most 30 s), e.g. a run that must fail before tracing.
pub fn run_probed(args: &[&str]) -> Finished {
    run_to_end(Command::new(probed_bin()).args(args))
}

/// Runs `cmd` to its end (at most 30 s) with stdin closed, collecting its output.
pub fn run_to_end(cmd: &mut Command) -> Finished {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start command");
    let lines = line_channel(child.stdout.take().expect("stdout"));
    let errors = line_channel(child.stderr.take().expect("stderr"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > exit_timeout() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within {:?}", exit_timeout());
        }
        thread::sleep(Duration::from_millis(10));
    };
    Finished {
        status,
        stdout: drain(&lines),
        stderr: drain(&errors),
        elapsed: started.elapsed(),
    }
}

/// Runs the command `make` builds to its end, again (up to 10 times) while its exec fails with
/// ETXTBSY: a binary a test just copied can be "busy" for a moment, because a child another
/// test thread forked meanwhile inherited the copy's write descriptor until that child execs.
pub fn run_to_end_exec_retry(mut make: impl FnMut() -> Command) -> Finished {
    for _ in 0..10 {
        let out = run_to_end(&mut make());
        if !out.stderr.iter().any(|l| l.contains("Text file busy")) {
            return out;
        }
        thread::sleep(Duration::from_millis(100));
    }
    run_to_end(&mut make())
}

/// Every line until the writer closes its end (it has exited), waiting at most 10 s.
pub fn drain(rx: &mpsc::Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => out.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => return out,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("output still open after exit (inherited by a child?)")
            }
        }
    }
}

/// Parses JSON lines, keeping hits and the summary apart; panics on anything else or on a
/// line after the summary.
pub fn parse_json(lines: &[String]) -> (Vec<serde_json::Value>, Option<serde_json::Value>) {
    let mut hits = Vec::new();
    let mut summary = None;
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"));
        assert!(summary.is_none(), "a line after the summary: {line}");
        match v["type"].as_str() {
            Some("hit") => hits.push(v),
            Some("summary") => summary = Some(v),
            other => panic!("unexpected line type {other:?}: {line}"),
        }
    }
    (hits, summary)
}

/// The summary entry of the probe whose SPEC is `spec`.
pub fn probe_summary<'a>(summary: &'a serde_json::Value, spec: &str) -> &'a serde_json::Value {
    summary["probes"]
        .as_array()
        .expect("probes array")
        .iter()
        .find(|p| p["probe"] == spec)
        .unwrap_or_else(|| panic!("no summary for {spec}: {summary}"))
}

/// A JSON number field as u64.
pub fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// Checks the summary's bookkeeping: for every probe, hits == printed + not_printed + lost
/// + rate_limited + filtered + self_excluded + dropped_at_stop.
pub fn assert_summary_adds_up(summary: &serde_json::Value) {
    for p in summary["probes"].as_array().expect("probes array") {
        assert_eq!(
            num(p, "hits"),
            num(p, "printed")
                + num(p, "not_printed")
                + num(p, "lost")
                + num(p, "rate_limited")
                + num(p, "filtered")
                + num(p, "self_excluded")
                + num(p, "dropped_at_stop"),
            "hits != printed + not_printed + lost + rate_limited + filtered + self_excluded + \
             dropped_at_stop in {p}"
        );
        // The resolver's place of every hit agreed with the kernel's (the probe's).
        assert_eq!(
            num(p, "probe_mismatch"),
            0,
            "the resolver misplaced hits: {p}"
        );
    }
}

/// The C library process `pid` (`"self"`: this test) maps, canonical.
pub fn mapped_libc(pid: &str) -> PathBuf {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    let path = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))
        })
        .expect("libc in the maps");
    PathBuf::from(path).canonicalize().expect("canonical libc")
}

/// Runs a binutils tool and returns its stdout.
fn binutils(tool: &str, args: &[&str], file: &Path) -> String {
    let out = Command::new(tool)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("run {tool} (install binutils): {e}"));
    assert!(out.status.success(), "{tool} {args:?} {}", file.display());
    String::from_utf8(out.stdout).expect("UTF-8 binutils output")
}

fn hex(text: &str) -> u64 {
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("not hex: {text}: {e}"))
}

/// The virtual address of `symbol` in `bin`, from `nm`.
pub fn symbol_vaddr(bin: &Path, symbol: &str) -> u64 {
    binutils("nm", &["--defined-only"], bin)
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, _kind, name) = (f.next()?, f.next()?, f.next()?);
            (name == symbol).then(|| hex(addr))
        })
        .unwrap_or_else(|| panic!("nm: no {symbol} in {}", bin.display()))
}

/// The file offset of virtual address `vaddr` in `bin`, from `readelf`'s PT_LOAD headers.
pub fn vaddr_to_file_offset(bin: &Path, vaddr: u64) -> u64 {
    binutils("readelf", &["-lW"], bin)
        .lines()
        .filter(|l| l.trim_start().starts_with("LOAD"))
        .find_map(|l| {
            // LOAD Offset VirtAddr PhysAddr FileSiz MemSiz Flg Align
            let f: Vec<&str> = l.split_whitespace().collect();
            let (offset, start, filesz) = (hex(f[1]), hex(f[2]), hex(f[4]));
            (start <= vaddr && vaddr < start + filesz).then(|| vaddr - start + offset)
        })
        .unwrap_or_else(|| panic!("readelf: {vaddr:#x} in no PT_LOAD of {}", bin.display()))
}

/// Offsets into `caller` of the instructions after its calls (to `callee`, if named: any
/// call otherwise), from objdump: where a return into `caller` lands.
pub fn return_offsets(bin: &Path, caller: &str, callee: Option<&str>) -> Vec<u64> {
    let start = symbol_vaddr(bin, caller);
    let out = Command::new("objdump")
        .args([
            "-d",
            "--no-show-raw-insn",
            &format!("--disassemble={caller}"),
        ])
        .arg(bin)
        .output()
        .expect("run objdump");
    let text = String::from_utf8(out.stdout).expect("UTF-8 objdump output");
    let insns: Vec<(u64, &str)> = text
        .lines()
        .filter_map(|l| {
            let (addr, rest) = l.trim_start().split_once(":\t")?;
            Some((u64::from_str_radix(addr, 16).ok()?, rest))
        })
        .collect();
    let offsets: Vec<u64> = insns
        .windows(2)
        .filter(|w| {
            w[0].1.starts_with("call") && callee.is_none_or(|c| w[0].1.contains(&format!("<{c}")))
        })
        .map(|w| w[1].0 - start)
        .collect();
    assert!(!offsets.is_empty(), "no call in {caller}: {text}");
    offsets
}

/// The GNU build-id of `bin` in hex, from `readelf -n`.
pub fn build_id(bin: &Path) -> String {
    binutils("readelf", &["-n"], bin)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_owned))
        .unwrap_or_else(|| panic!("readelf: no build-id in {}", bin.display()))
}

/// The file offset of `symbol` in `bin`, found with nm and readelf.
pub fn symbol_file_offset(bin: &Path, symbol: &str) -> u64 {
    vaddr_to_file_offset(bin, symbol_vaddr(bin, symbol))
}

/// Offset from the start of `symbol` to its second instruction, from `objdump` (a `+N` that
/// lands on an instruction boundary).
pub fn second_instruction(bin: &Path, symbol: &str) -> u64 {
    let start = symbol_vaddr(bin, symbol);
    let text = binutils(
        "objdump",
        &[
            "-d",
            "--no-show-raw-insn",
            &format!("--disassemble={symbol}"),
        ],
        bin,
    );
    let mut addrs = text.lines().filter_map(|l| {
        let (addr, _) = l.trim_start().split_once(":\t")?;
        u64::from_str_radix(addr, 16).ok()
    });
    assert_eq!(addrs.next(), Some(start), "objdump of {symbol}: {text}");
    addrs.next().expect("a second instruction") - start
}

/// The byte at `file_offset` of `bin` as the file holds it.
pub fn file_byte(bin: &Path, file_offset: u64) -> u8 {
    let mut f = std::fs::File::open(bin).expect("open binary");
    f.seek(SeekFrom::Start(file_offset)).expect("seek");
    let mut b = [0u8];
    f.read_exact(&mut b).expect("read byte");
    b[0]
}

/// The mapping of `bin` in process `pid` that holds `file_offset`: (start, end, offset).
fn mapping_of(pid: u32, bin: &Path, file_offset: u64) -> (u64, u64, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    maps.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || Path::new(f[5]) != bin {
                return None;
            }
            let (start, end) = f[0].split_once('-')?;
            let (start, end, off) = (hex(start), hex(end), hex(f[2]));
            (off <= file_offset && file_offset < off + (end - start)).then_some((start, end, off))
        })
        .unwrap_or_else(|| {
            panic!(
                "{} offset {file_offset:#x} not mapped in {pid}",
                bin.display()
            )
        })
}

/// The address at which process `pid` maps `file_offset` of `bin`.
pub fn mapped_addr(pid: u32, bin: &Path, file_offset: u64) -> u64 {
    let (start, _, off) = mapping_of(pid, bin, file_offset);
    start + (file_offset - off)
}

/// The byte process `pid` sees at `file_offset` of `bin` (read from /proc/PID/mem). A
/// uprobe is a breakpoint written into the process's copy of the page, so this differs from
/// [`file_byte`] exactly while a uprobe is installed there.
pub fn text_byte(pid: u32, bin: &Path, file_offset: u64) -> u8 {
    let addr = mapped_addr(pid, bin, file_offset);
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open mem");
    mem.seek(SeekFrom::Start(addr)).expect("seek mem");
    let mut b = [0u8];
    mem.read_exact(&mut b).expect("read mem");
    b[0]
}

/// The software breakpoint instruction's first byte on this architecture.
pub const BREAKPOINT_BYTE: u8 = if cfg!(target_arch = "x86_64") {
    0xcc
} else {
    // aarch64 `brk #0x5` is d4 20 00 a0, little-endian.
    0xa0
};

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// BPF object ids (programs, maps, links).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BpfIds {
    /// Program ids.
    pub progs: BTreeSet<u32>,
    /// Map ids.
    pub maps: BTreeSet<u32>,
    /// Link ids.
    pub links: BTreeSet<u32>,
}

impl BpfIds {
    /// The ids of `self` that are also in `other`.
    pub fn intersection(&self, other: &Self) -> Self {
        Self {
            progs: self.progs.intersection(&other.progs).copied().collect(),
            maps: self.maps.intersection(&other.maps).copied().collect(),
            links: self.links.intersection(&other.links).copied().collect(),
        }
    }

    /// No ids at all.
    pub fn is_empty(&self) -> bool {
        self.progs.is_empty() && self.maps.is_empty() && self.links.is_empty()
    }
}

/// The BPF objects process `pid` holds file descriptors to (programs also through links),
/// from /proc/PID/fdinfo.
pub fn held_by(pid: u32) -> BpfIds {
    let mut ids = BpfIds::default();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for fd in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        // A link's fdinfo names its program too: the link holds that program.
        if let Some(id) = field("link_id:") {
            ids.links.insert(id);
        }
        if let Some(id) = field("prog_id:") {
            ids.progs.insert(id);
        } else if let Some(id) = field("map_id:") {
            ids.maps.insert(id);
        }
    }
    ids
}

/// The types of the BPF links process `pid` holds (`uprobe_multi`, `perf`, …), from
/// /proc/PID/fdinfo, one entry per link.
pub fn link_types(pid: u32) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("link_type:"))
                .map(|t| t.trim().to_owned())
        })
        .collect()
}

/// How many uprobe_multi links process `pid` holds (fdinfo says `uprobe_multi` or, for
/// return probes, `uretprobe_multi`).
pub fn multi_links(pid: u32) -> usize {
    link_types(pid)
        .iter()
        .filter(|t| *t == "uprobe_multi" || *t == "uretprobe_multi")
        .count()
}

/// Whether the running kernel has uprobe_multi links (6.6+), read from its BTF on its own
/// (an oracle independent of probed's detection).
pub fn kernel_has_uprobe_multi() -> bool {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap_or_default();
    btf.windows(b"bpf_uprobe_multi_link\0".len())
        .any(|w| w == b"bpf_uprobe_multi_link\0")
}

/// The BPF objects the kernel has loaded right now, from `bpftool`.
pub fn loaded() -> BpfIds {
    let list = |what: &str| -> BTreeSet<u32> {
        let out = Command::new("bpftool")
            .args([what, "show", "--json"])
            .output()
            .unwrap_or_else(|e| panic!("run bpftool (apt-get install bpftool): {e}"));
        assert!(out.status.success(), "bpftool {what} show failed");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        v.as_array()
            .expect("bpftool list")
            .iter()
            .map(|o| u32::try_from(num(o, "id")).expect("id fits u32"))
            .collect()
    };
    BpfIds {
        progs: list("prog"),
        maps: list("map"),
        links: list("link"),
    }
}

/// Names of the loaded programs with these ids, from `bpftool` (names may be truncated).
pub fn prog_names(ids: &BTreeSet<u32>) -> BTreeSet<String> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("run bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array()
        .expect("bpftool list")
        .iter()
        .filter(|p| ids.contains(&u32::try_from(num(p, "id")).expect("id fits u32")))
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}

/// Waits (up to `timeout`) until none of `ids` is loaded; returns the ones still loaded.
/// The kernel frees a program or link shortly after its last reference goes, not at once.
pub fn wait_unloaded(ids: &BpfIds, timeout: Duration) -> BpfIds {
    let mut left = ids.intersection(&loaded());
    wait_until(timeout, || {
        left = ids.intersection(&loaded());
        left.is_empty()
    });
    left
}

/// Lines of `stream` on a channel, which closes when the stream does.
pub fn line_channel(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A private directory under the temp dir, removed on drop. Tests that attach without `--pid`
/// copy their fixtures into one, so the inodes their uprobes are keyed on are theirs alone.
pub struct PrivateDir {
    /// The directory (canonical).
    pub path: PathBuf,
}

impl PrivateDir {
    /// A new, empty directory whose name starts with `name`.
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "probed-tests/{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create private dir");
        let path = path.canonicalize().expect("canonical private dir");
        Self { path }
    }

    /// Copies `src` into the directory as `name` (executable); returns the copy's path.
    pub fn copy(&self, src: &Path, name: &str) -> PathBuf {
        let dst = self.path.join(name);
        std::fs::copy(src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        dst
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// How many hits each resolver path (`via`) answered, and how many hits were unresolved,
/// by reason.
pub fn via_counts(
    hits: &[serde_json::Value],
) -> (
    std::collections::BTreeMap<String, u64>,
    std::collections::BTreeMap<String, u64>,
) {
    let mut via = std::collections::BTreeMap::new();
    let mut unresolved = std::collections::BTreeMap::new();
    for h in hits {
        let path = h["via"].as_str().unwrap_or("(none)").to_owned();
        *via.entry(path).or_insert(0) += 1;
        if let Some(why) = h["unresolved"].as_str() {
            *unresolved.entry(why.to_owned()).or_insert(0) += 1;
        }
    }
    (via, unresolved)
}

/// Checks the summary's resolver counters against the hit lines: every hit is counted once,
/// as a fast-path answer or as one fallback; `fast_path`, `from_mirror`, `retained` and
/// `replayed` equal the hits answered by that path, and the remaining fallbacks are the hits
/// marked `rescan` (answered by a rescan, or not at all). Returns the resolver counters.
pub fn assert_resolver_counters(
    hits: &[serde_json::Value],
    summary: &serde_json::Value,
) -> serde_json::Value {
    let r = summary["resolver"].clone();
    let (via, _) = via_counts(hits);
    let by = |path: &str| via.get(path).copied().unwrap_or(0);
    let fallbacks: u64 = r
        .as_object()
        .expect("resolver counters")
        .iter()
        .filter(|(k, _)| k.starts_with("fallback_"))
        .map(|(k, v)| v.as_u64().unwrap_or_else(|| panic!("{k} not a number")))
        .sum();
    let n = hits.len() as u64;
    // Lock mode: hits that carried a capture are answered from it (`via: captured`) or, if
    // it failed, by their probe; they never reach the resolver. 0 in syscall mode.
    let (captured, capture_failed) = (
        r.get("captured").and_then(|v| v.as_u64()).unwrap_or(0),
        r.get("capture_failed")
            .and_then(|v| v.as_u64())
            .unwrap_or(0),
    );
    // Kseq mode: hits that skipped their capture are answered from a capture at the same
    // counter value (`via: kseq`), or, when none holds them, by their probe (counted missed).
    let (kseq_answered, kseq_missed) = (
        r.get("kseq_answered").and_then(|v| v.as_u64()).unwrap_or(0),
        r.get("kseq_missed").and_then(|v| v.as_u64()).unwrap_or(0),
    );
    assert_eq!(
        num(&r, "fast_path") + fallbacks + captured + capture_failed + kseq_answered + kseq_missed,
        n,
        "fast_path + fallbacks + captured + capture_failed + kseq_* != hits: {r}"
    );
    // Each resolver path's count is the hits reported with that `via`, except hits whose
    // mapping the resolver found but whose symbol could not be read (the mapped file gone
    // by the time the hit was symbolized): those are answered by their probe (`via: probe`).
    let mut symbol_failures = 0;
    for (counter, path) in [
        ("fast_path", "fast"),
        ("from_mirror", "mirror"),
        ("retained", "retained"),
        ("replayed", "replayed"),
        ("captured", "captured"),
        ("kseq_answered", "kseq"),
    ] {
        let counted = r.get(counter).and_then(|v| v.as_u64()).unwrap_or(0);
        let reported = by(path);
        assert!(counted >= reported, "{counter}: {r} vs {via:?}");
        symbol_failures += counted - reported;
    }
    // A hit the resolver could not answer is answered by its probe (`via: probe`).
    assert_eq!(
        fallbacks - num(&r, "from_mirror") - num(&r, "retained") - num(&r, "replayed")
            + symbol_failures
            + capture_failed
            + kseq_missed,
        by("rescan") + by("probe"),
        "other fallbacks vs rescan and probe hits: {r} vs {via:?}"
    );
    assert_eq!(
        by("fast")
            + by("mirror")
            + by("retained")
            + by("replayed")
            + by("rescan")
            + by("probe")
            + by("captured")
            + by("kseq"),
        n,
        "a hit with an unknown via: {via:?}"
    );
    r
}
