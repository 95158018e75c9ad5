//! A running `probed daemon` for tests: its config in a private directory, its control
//! socket there too, its stdout/stderr lines on channels.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use super::{Finished, PrivateDir, attach_timeout, drain, line_channel, probed_bin, run_to_end};

/// The line probed prints on stderr once every probe of the config is attached.
pub const RUNNING: &str = "probed: daemon running";

/// A running daemon.
pub struct Daemon {
    /// The child.
    pub child: Child,
    /// Its private directory (config, socket, output files).
    pub dir: PrivateDir,
    /// Stdout lines.
    pub lines: mpsc::Receiver<String>,
    /// Stderr lines.
    pub errors: mpsc::Receiver<String>,
    /// Stderr lines read so far by the helpers.
    pub seen_errors: Vec<String>,
}

impl Daemon {
    /// The config file's path in `dir`.
    pub fn config_path(dir: &Path) -> PathBuf {
        dir.join("probed.toml")
    }

    /// The control socket's path in `dir`.
    pub fn socket_path(dir: &Path) -> PathBuf {
        dir.join("control.sock")
    }

    /// Writes `config` (the control socket line is added) and starts `probed daemon`; waits
    /// for its running line.
    pub fn start(dir: PrivateDir, config: &str) -> Self {
        Self::start_with(dir, config, |_| {})
    }

    /// As [`Daemon::start`], with a chance to change the command (environment, wrapper).
    pub fn start_with(dir: PrivateDir, config: &str, tweak: impl FnOnce(&mut Command)) -> Self {
        write_config(&dir.path, config);
        let mut cmd = Command::new(probed_bin());
        cmd.arg("daemon")
            .arg("--config")
            .arg(Self::config_path(&dir.path))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("start probed daemon");
        let lines = line_channel(child.stdout.take().expect("stdout"));
        let errors = line_channel(child.stderr.take().expect("stderr"));
        let mut daemon = Self {
            child,
            dir,
            lines,
            errors,
            seen_errors: Vec::new(),
        };
        let deadline = Instant::now() + attach_timeout();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match daemon.errors.recv_timeout(left) {
                Ok(line) => {
                    let running = line.contains(RUNNING);
                    daemon.seen_errors.push(line);
                    if running {
                        return daemon;
                    }
                }
                Err(_) => {
                    let _ = daemon.child.kill();
                    let status = daemon.child.wait().ok();
                    panic!(
                        "probed daemon did not start (status {status:?}); stderr: {:?}",
                        daemon.seen_errors
                    );
                }
            }
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        Self::socket_path(&self.dir.path)
    }

    /// Runs `probed ctl --json ARGS` against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Finished {
        let socket = self.socket();
        run_to_end(
            Command::new(probed_bin())
                .arg("ctl")
                .arg("--socket")
                .arg(&socket)
                .arg("--json")
                .args(args),
        )
    }

    /// `probed ctl --json ARGS`, which must succeed; its JSON reply.
    pub fn ctl_ok(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "ctl {args:?} failed: {:?}",
            out.stderr
        );
        serde_json::from_str(out.stdout.first().expect("a reply line")).expect("JSON reply")
    }

    /// Sends raw bytes on a new connection and reads one reply line ("" if none).
    pub fn raw(&self, bytes: &[u8]) -> String {
        let mut stream = UnixStream::connect(self.socket()).expect("connect control socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        // The daemon stops reading an oversized request and replies: the rest of the write
        // then fails (EPIPE), and the reply is still there to read.
        let _ = stream.write_all(bytes);
        let mut line = String::new();
        let _ = BufReader::new(&stream).read_line(&mut line);
        line
    }

    /// BPF's hit count of probe `id`, from `ctl stats`.
    pub fn hits(&self, id: u64) -> u64 {
        let stats = self.ctl_ok(&["stats"]);
        stats["probes"]
            .as_array()
            .expect("probes")
            .iter()
            .find(|p| p["id"].as_u64() == Some(id))
            .and_then(|p| p["hits"].as_u64())
            .unwrap_or_else(|| panic!("no probe {id} in {stats}"))
    }

    /// Rewrites the config (the socket line is kept) and sends SIGHUP; waits for the log
    /// line of the reload's outcome and returns it.
    pub fn reload(&mut self, config: &str) -> String {
        write_config(&self.dir.path, config);
        self.signal(libc::SIGHUP);
        self.wait_stderr(|l| l.contains("reloaded") || l.contains("reload rejected"))
    }

    /// Waits (up to 20 s) for a stderr line matching `want`; returns it.
    pub fn wait_stderr(&mut self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.errors.recv_timeout(left) {
                Ok(line) => {
                    let found = want(&line);
                    self.seen_errors.push(line.clone());
                    if found {
                        return line;
                    }
                }
                Err(_) => panic!("no such stderr line; seen: {:?}", self.seen_errors),
            }
        }
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill");
    }

    /// Sends `signal` and waits (up to `within`) for the exit; returns what was printed.
    pub fn stop(mut self, signal: i32, within: Duration) -> (Finished, PrivateDir) {
        let started = Instant::now();
        self.signal(signal);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                started.elapsed() < within,
                "probed daemon did not exit within {within:?} of signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = started.elapsed();
        let stdout = drain(&self.lines);
        let mut stderr = std::mem::take(&mut self.seen_errors);
        stderr.extend(drain(&self.errors));
        let dir = std::mem::replace(&mut self.dir, PrivateDir::new("daemon-done"));
        (
            Finished {
                status,
                stdout,
                stderr,
                elapsed,
            },
            dir,
        )
    }

    /// Resident memory of the daemon, in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Open file descriptors of the daemon.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read fd dir")
            .count()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Writes `config` into `dir`'s config file, with the control socket in `dir`.
fn write_config(dir: &Path, config: &str) {
    let text = format!(
        "control_socket = \"{}\"\n{config}",
        Daemon::socket_path(dir).display()
    );
    std::fs::write(Daemon::config_path(dir), text).expect("write config");
}

/// Lines of a file (empty if missing).
pub fn file_lines(path: &Path) -> Vec<String> {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        f.read_to_string(&mut text).expect("read output file");
    }
    text.lines().map(str::to_owned).collect()
}
