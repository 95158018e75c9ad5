//! Shared harness of the root/BPF integration tests: privilege gate, fixture targets, and a
//! running `probed` whose output the test reads.
//!
//! A test that needs root and BPF calls [`require_bpf`] first. Without root (or with a probed
//! built without its BPF object) it prints why and returns false — except under `CI=true`,
//! where it panics: in CI such a test must fail, never skip.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// The probed binary cargo built for this test run.
pub fn probed_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_probed"))
}

/// Whether root/BPF tests can run here; panics under CI=true when they cannot.
pub fn require_bpf(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let stub = probed_is_stub();
    let why = if !root {
        Some("needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE)")
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

/// Builds the trace target fixture.
pub fn trace_target() -> PathBuf {
    probed::fixtures::build("trace_target.c", "trace_target", &["-O2", "-pthread"])
        .expect("build trace_target")
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

    /// Lets the target make its calls; returns the lines it printed up to `done …`.
    pub fn go(&mut self) -> Vec<String> {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"go\n").expect("write go");
        stdin.flush().expect("flush go");
        let mut out = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .expect("target finishes its calls");
            let done = line.starts_with("done ");
            out.push(line);
            if done {
                return out;
            }
        }
    }

    /// Closes stdin so the target exits, and waits for it.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait target");
        assert!(status.success(), "target failed: {status}");
    }
}

/// A running `probed` child whose stdout lines arrive on a channel.
pub struct Probed {
    /// The child process.
    pub child: Child,
    /// Stdout lines.
    pub lines: mpsc::Receiver<String>,
    /// Stderr lines.
    pub errors: mpsc::Receiver<String>,
}

impl Probed {
    /// Starts `probed ARGS` and waits (up to 20 s) for its "tracing" line on stderr.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(probed_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start probed");
        let lines = line_channel(child.stdout.take().expect("stdout"));
        let errors = line_channel(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match errors.recv_timeout(left) {
                Ok(line) if line.contains("probed: tracing") => break,
                Ok(line) => eprintln!("probed stderr: {line}"),
                Err(_) => {
                    let status = child.try_wait().ok().flatten();
                    panic!("probed did not start tracing (status {status:?})");
                }
            }
        }
        Self {
            child,
            lines,
            errors,
        }
    }

    /// Sends `signal` and collects every stdout line until probed exits; returns the lines and
    /// the exit status.
    pub fn stop(mut self, signal: i32) -> (Vec<String>, std::process::ExitStatus) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our live child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.wait()
    }

    /// Waits (up to 60 s) for probed to exit on its own; returns stdout lines and status.
    pub fn wait(mut self) -> (Vec<String>, std::process::ExitStatus) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("probed did not exit");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            out.push(line);
        }
        for line in self.errors.try_iter() {
            eprintln!("probed stderr: {line}");
        }
        (out, status)
    }
}

/// Parses JSON lines, keeping hits and the summary apart.
pub fn parse_json(lines: &[String]) -> (Vec<serde_json::Value>, Option<serde_json::Value>) {
    let mut hits = Vec::new();
    let mut summary = None;
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"));
        match v["type"].as_str() {
            Some("hit") => hits.push(v),
            Some("summary") => summary = Some(v),
            other => panic!("unexpected line type {other:?}: {line}"),
        }
    }
    (hits, summary)
}

fn line_channel(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
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
