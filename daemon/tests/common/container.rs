//! Real containers for the tests: podman with the runc runtime (see
//! ../shared/design/TOOLCHAIN.md: crun refuses this machine's hybrid cgroups, no registry is
//! reachable). The image is imported from a rootfs assembled here — the trace target fixture
//! at [`APP`] plus the libraries `ldd` lists — and tagged with a hash of its content, so it
//! is built once and reused from podman's store while the fixture is unchanged.

use std::{
    collections::{HashMap, hash_map::DefaultHasher},
    hash::Hasher,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Mutex, OnceLock, mpsc},
    time::Duration,
};

/// Where the target lives inside the image: a path the host does not have.
pub const APP: &str = "/probed-ct/target";

/// The podman options every container of the tests runs with (TOOLCHAIN.md: the default
/// nofile limit exceeds the hard limit here; runc, not crun). Unprivileged: no
/// `--privileged`, its own pid and mount namespaces.
const RUN_OPTS: &[&str] = &[
    "--runtime",
    "runc",
    "run",
    "--network=none",
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=4096:4096",
];

/// Whether podman can run here; under CI=true its absence is a failure, not a skip.
pub fn require_podman(test: &str) -> bool {
    let ok = Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: podman is not installed (apt-get install podman runc), required under CI=true"
        );
    }
    eprintln!("SKIPPED {test}: podman is not installed (apt-get install podman runc)");
    false
}

fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run podman {args:?}: {e}"))
}

/// The test image of `variant` (built once per test binary run, and only if podman's store
/// lacks it). Images of different variants hold the same files plus a file naming the
/// variant, so each has its own layer and its target its own inode: tests running in
/// parallel never fire each other's uprobes (the kernel keys them on the inode).
pub fn image(variant: &str) -> String {
    static IMAGES: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let images = IMAGES.get_or_init(Mutex::default);
    let mut images = images.lock().expect("image table");
    images
        .entry(variant.to_string())
        .or_insert_with(|| build_image(variant))
        .clone()
}

fn build_image(variant: &str) -> String {
    let target = super::trace_target();
    let dir = std::env::temp_dir().join(format!("probed-image-{}-{variant}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir image dir");
    let marker = dir.join("variant");
    std::fs::write(&marker, variant).expect("write variant file");
    let mut files: Vec<(PathBuf, PathBuf)> = vec![
        (target.clone(), PathBuf::from(APP)),
        (marker, PathBuf::from("/probed-ct/variant")),
    ];
    let ldd = Command::new("ldd").arg(&target).output().expect("run ldd");
    assert!(ldd.status.success(), "ldd {}", target.display());
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux… (0x…)"
        if let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) {
            files.push((PathBuf::from(path), PathBuf::from(path)));
        }
    }
    let mut hash = DefaultHasher::new();
    for (from, to) in &files {
        hash.write(to.as_os_str().as_encoded_bytes());
        hash.write(&std::fs::read(from).expect("read image file"));
    }
    let name = format!("localhost/probed-test-target:{:016x}", hash.finish());
    if podman(&["image", "exists", &name]).status.success() {
        std::fs::remove_dir_all(&dir).ok();
        return name;
    }
    let root = dir.join("root");
    for (from, to) in &files {
        let dest = root.join(to.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(dest.parent().expect("a parent")).expect("mkdir rootfs");
        std::fs::copy(from, &dest).expect("copy into rootfs");
    }
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar rootfs");
    let out = podman(&["import", tar.to_str().expect("UTF-8 temp path"), &name]);
    assert!(
        out.status.success(),
        "podman import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
    name
}

/// A trace target running in its own unprivileged container (`podman run -i --rm`): it has
/// printed `ready 1` (it is its pid namespace's first process) and waits for `go`.
pub struct Container {
    /// The container's name.
    pub name: String,
    /// The `podman run` process.
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// The target's pid on the host (`podman inspect`'s State.Pid).
    pub host_pid: u32,
    /// Its pid inside the container, as it reported it.
    pub ns_pid: u32,
}

impl Container {
    /// Starts `APP ARGS` in a new container of the test image `variant` (see [`image`]).
    pub fn start(name: &str, variant: &str, args: &[&str]) -> Self {
        let image = image(variant);
        let name = format!("{name}-{}", std::process::id());
        // A container of a failed earlier run may hold the name.
        let _ = podman(&["rm", "-f", &name]);
        let mut child = Command::new("podman")
            .args(RUN_OPTS)
            .args(["-i", "--rm", "--name", &name, &image, APP])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start podman run");
        let stdin = child.stdin.take();
        let lines = super::line_channel(child.stdout.take().expect("piped stdout"));
        let ready = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("containerized target says ready");
        let ns_pid = ready
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from target: {ready}"));
        let out = podman(&["inspect", "-f", "{{.State.Pid}}", &name]);
        let host_pid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("podman inspect {name}: {out:?}"));
        Self {
            name,
            child,
            stdin,
            lines,
            host_pid,
            ns_pid,
        }
    }

    /// The target's pids inside its namespace chain, from /proc/PID/status `NSpid:` (host
    /// first, innermost last).
    pub fn nspids(&self) -> Vec<u32> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.host_pid))
            .expect("read status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .expect("NSpid line")
            .split_whitespace()
            .map(|n| n.parse().expect("numeric NSpid"))
            .collect()
    }

    /// `(st_dev, st_ino)` of `path` inside the container, through /proc/PID/root.
    pub fn stat(&self, path: &str) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(
            Path::new(&format!("/proc/{}/root", self.host_pid)).join(path.trim_start_matches('/')),
        )
        .expect("stat through /proc/PID/root");
        (meta.dev(), meta.ino())
    }

    /// Lets the target make one round of calls; returns its lines up to `done …`.
    pub fn go(&mut self) -> Vec<String> {
        self.send_go();
        self.rest_of_round()
    }

    /// Writes `go` without waiting for the round.
    pub fn send_go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"go\n").expect("write go");
        stdin.flush().expect("flush go");
    }

    /// The lines of a round already started, up to `done …`.
    pub fn rest_of_round(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .expect("target finishes its calls");
            let last = line.starts_with("done ");
            out.push(line);
            if last {
                return out;
            }
        }
    }

    /// Closes stdin so the target exits (its container stops and is removed), and waits.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait podman run");
        assert!(status.success(), "containerized target failed: {status}");
    }

    /// Closes stdin (the target ends its round, if one runs, then exits) without waiting.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Waits for `podman run` to return.
    pub fn wait(mut self) {
        let status = self.child.wait().expect("wait podman run");
        assert!(status.success(), "containerized target failed: {status}");
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = podman(&["rm", "-f", "-t", "0", &self.name]);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
