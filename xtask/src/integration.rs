//! `cargo xtask integration-test`: the root/BPF integration suite inside a privileged
//! container.
//!
//! The test executables are built on the host (the same build as `cargo test`), then each
//! runs in its own `podman --runtime runc run --rm --privileged --pid=host` container of a
//! Debian image that holds the tools the tests call (gcc for the fixtures, binutils,
//! bpftool, bpftrace, util-linux, prometheus, systemd). The workspace and the target
//! directory are bind-mounted read-only at their own paths, so the paths cargo compiled into
//! the tests (`CARGO_BIN_EXE_probed`, `CARGO_MANIFEST_DIR` for the fixture sources) resolve
//! inside; each container has its own /tmp, where fixtures are compiled.
//!
//! The image: no registry is reachable on the machines we run on, so it is assembled with
//! `mmdebstrap` from the Debian package mirror (the one registry that is) and `podman import`ed,
//! tagged by a hash of its recipe: the first run takes about two minutes, later runs find it.
//! (A tar of the host's own /usr was the other way: 6.3 GB on our machines, against 1.1 GB.)

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::{build_ebpf, exec, paths, setup};

/// The Debian release of the image: the one the supported hosts run, so the test executables
/// built on the host find the same glibc in the container.
const SUITE: &str = "bookworm";

/// The package sources of the image.
const SOURCES: &[&str] = &[
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];

/// The image's packages (beyond Debian's essential set and apt), and why the tests need them.
const PACKAGES: &[(&str, &str)] = &[
    ("gcc", "fixtures are compiled from C at test time"),
    ("g++", "C++ fixtures (demangling)"),
    ("libc6-dev", "C headers for the fixtures"),
    (
        "libc6-dbg",
        "libc's separate debug file: probes and frame names of libc's static functions",
    ),
    ("binutils", "ELF facts from nm, readelf and objdump"),
    (
        "debuginfod",
        "a real debuginfod server serving a directory (tests/debuginfod.rs)",
    ),
    ("bpftool", "no BPF program or link may be left loaded"),
    ("bpftrace", "hit counts are compared with bpftrace's"),
    (
        "python3.11",
        "USDT probes of a real program (tests/trace_usdt.rs, trace_names.rs)",
    ),
    (
        "util-linux",
        "setpriv (dropping root), unshare (pid namespaces)",
    ),
    (
        "prometheus",
        "the metrics endpoint is scraped by a real Prometheus",
    ),
    ("systemd", "systemd-analyze checks the unit file"),
    (
        "strace",
        "the unit's syscall filter is checked against what probed calls",
    ),
    (
        "procps",
        "ps and friends, for a person debugging in the container",
    ),
];

/// The image's repository; the tag is the recipe's hash.
const IMAGE_REPO: &str = "localhost/probed-test";

/// Integration test executables that start containers themselves (daemon/tests/containers.rs):
/// they run on the host, since podman inside the test container would need a storage and
/// runtime of its own there.
const ON_HOST: &[&str] = &["containers"];

/// The executables the overlay pass of `--fixtures both` runs: those whose answers depend on
/// the identity of mapped files, which overlayfs splits in two (stat and /proc/PID/maps show
/// the overlay's (device, inode); a mapping's `f_inode`, which BPF reads and uprobes key on,
/// is the backing file's). Each maps fixtures from /tmp and checks hits resolved through
/// that identity: the probe table and plain hits (trace_basic), replayed pictures and their
/// names (stacks_basic's dlclosed/exited frames, stacks_names, tracker_churn,
/// tracker_threads, tracker_counters — the six tests of four executables that failed in
/// this pass before issue 13), exec and fork base pictures and the exec check of
/// `PROBED_FILES` through the backing file's user identity (tracker_exec, tracker_short),
/// per-process pictures across pid reuse (tracker_reuse), the resolver against /proc
/// (resolver_real), library names resolved in a process's mappings (trace_names). The others
/// add nothing there: their files' identities are not what they check (daemon wiring,
/// metrics, the unit, limits, stops, cleanup, errors, pairing, demangling, the manifests),
/// or they map nothing from /tmp; service_daemon alone takes ~505 s a pass (measured),
/// through the same pipeline as `probed trace`. `--fixtures overlay` still runs them all.
pub const OVERLAY_PASS: &[&str] = &[
    "trace_basic",
    "trace_names",
    "stacks_basic",
    "stacks_names",
    "stacks_cfi",
    "tracker_churn",
    "tracker_threads",
    "tracker_counters",
    "tracker_exec",
    "tracker_short",
    "tracker_reuse",
    "resolver_real",
];

/// Environment variables passed into the containers (and the VM guests) when set.
pub const PASS_ENV: &[&str] = &["CI", "RUST_BACKTRACE", "RUST_LOG", "RUST_TEST_THREADS"];

/// Where the containerized tests keep their files (compiled fixtures, target copies: all
/// under the temp dir, /tmp).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fixtures {
    /// A tmpfs /tmp, as on the hosts we run on.
    Tmpfs,
    /// /tmp in the container's overlayfs root (podman's overlay storage): every mapped
    /// file is an overlayfs file, whose mappings hold backing files, as in containers.
    Overlay,
    /// A tmpfs pass of every executable, then an overlay pass of those whose answers
    /// depend on mapped files' identities ([`OVERLAY_PASS`]).
    Both,
}

/// One run of the selected executables: where /tmp lives, and the change tracker forced on
/// every `probed trace` the tests start (`PROBED_TRACKER`), if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass {
    /// Where /tmp lives.
    pub tmp: Fixtures,
    /// `PROBED_TRACKER` in the container; `None`: probed's default (`auto`).
    pub tracker: Option<&'static str>,
    /// `PROBED_CONSUMERS` in the container (consumer threads of every `probed trace` that
    /// allows several); `None`: one.
    pub consumers: Option<&'static str>,
}

impl Pass {
    fn name(self) -> String {
        let mut name = self.tmp.name().to_string();
        if let Some(t) = self.tracker {
            name.push_str(&format!(", PROBED_TRACKER={t}"));
        }
        if let Some(c) = self.consumers {
            name.push_str(&format!(", PROBED_CONSUMERS={c}"));
        }
        name
    }
}

impl Fixtures {
    /// Whether `pass` (one of [`Fixtures::passes`] of `self`) runs `exe`: `both` runs every
    /// executable in its first pass, the [`OVERLAY_PASS`] set in the others.
    fn runs(self, index: usize, exe: &str) -> bool {
        !(self == Fixtures::Both && index > 0) || OVERLAY_PASS.contains(&exe)
    }

    /// The passes of this choice. `both` adds a syscall-tracker overlay pass: on 6.14+
    /// kernels (CI's) `auto` runs lock mode, so the syscall tracker — the one Debian's 6.1
    /// and 6.12 run, containers included — would otherwise go untested by the full run; and
    /// a pass with two consumer threads in every `probed trace` that allows them, so that
    /// the exactness tests (churn, exec, fork, short-lived, pid reuse, threads, stacks)
    /// also hold when processes are dealt to shards (pipeline/shards.rs).
    fn passes(self) -> &'static [Pass] {
        match self {
            Fixtures::Tmpfs => &[Pass {
                tmp: Fixtures::Tmpfs,
                tracker: None,
                consumers: None,
            }],
            Fixtures::Overlay => &[Pass {
                tmp: Fixtures::Overlay,
                tracker: None,
                consumers: None,
            }],
            Fixtures::Both => &[
                Pass {
                    tmp: Fixtures::Tmpfs,
                    tracker: None,
                    consumers: None,
                },
                Pass {
                    tmp: Fixtures::Overlay,
                    tracker: None,
                    consumers: None,
                },
                Pass {
                    tmp: Fixtures::Overlay,
                    tracker: Some("syscalls"),
                    consumers: None,
                },
                Pass {
                    tmp: Fixtures::Tmpfs,
                    tracker: None,
                    consumers: Some("2"),
                },
            ],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Fixtures::Tmpfs => "tmpfs",
            Fixtures::Overlay => "overlay",
            Fixtures::Both => "both",
        }
    }
}

/// A test executable cargo built.
pub struct TestExe {
    /// The test target's name (`trace_basic`, or the crate name for unit tests).
    pub name: String,
    /// The executable.
    pub path: PathBuf,
    /// The package's directory: cargo runs tests there, so do we.
    pub dir: PathBuf,
    /// An integration test (`tests/*.rs`), rather than a crate's unit tests.
    pub integration: bool,
}

/// What the runs added up to.
#[derive(Default)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// Executables that exited non-zero, with how.
    pub failures: Vec<String>,
}

impl Tally {
    /// Adds a libtest `test result:` line of a test executable's stdout; says whether `line`
    /// was one.
    pub fn count(&mut self, line: &str) -> bool {
        let Some(result) = line.strip_prefix("test result: ") else {
            return false;
        };
        for part in result.split(['.', ';']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next()) {
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        }
        true
    }
}

/// `cargo xtask integration-test [--test NAME]... [ARGS]`: builds, then runs the selected
/// integration test executables (all without `--test`) in the container, passing `args`
/// (a name filter, `--nocapture`, …) to each.
pub fn run(only: &[String], fixtures: Fixtures, args: &[String]) -> anyhow::Result<()> {
    setup::tests()?;
    build_ebpf::run()?;
    let exes = build_tests()?;
    let integration: Vec<&TestExe> = exes.iter().filter(|e| e.integration).collect();
    if let Some(unknown) = only
        .iter()
        .find(|n| !integration.iter().any(|e| &e.name == *n))
    {
        bail!("no integration test named {unknown}");
    }
    let selected: Vec<&TestExe> = integration
        .into_iter()
        .filter(|e| only.is_empty() || only.contains(&e.name))
        .collect();
    run_in_container(&selected, fixtures, args)
}

/// Runs `exes` (integration tests) in the test container, once per pass of `fixtures`, those
/// in [`ON_HOST`] on the host (once: they start their own containers, from podman's overlay
/// storage); fails naming every executable that failed. The host is set up (`setup::tests`).
pub fn run_in_container(
    exes: &[&TestExe],
    fixtures: Fixtures,
    args: &[String],
) -> anyhow::Result<()> {
    if !is_root() {
        let why = "the integration suite needs root (a privileged container that loads BPF)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            bail!("cannot run under CI=true: {why}");
        }
        eprintln!("SKIPPED integration suite: {why}");
        return Ok(());
    }
    let image = image()?;
    let sysroot = exec::output(Command::new("rustc").args(["--print", "sysroot"]))?;
    let sysroot = PathBuf::from(sysroot.trim());
    let mut tally = Tally::default();
    let mut runs = 0;
    for (i, &pass) in fixtures.passes().iter().enumerate() {
        let start = Instant::now();
        let before = (tally.passed, tally.failed, tally.ignored);
        let mut ran = 0;
        for exe in exes {
            let on_host = ON_HOST.contains(&exe.name.as_str());
            if (on_host && i > 0) || !fixtures.runs(i, &exe.name) {
                continue;
            }
            let mut cmd = if on_host {
                let mut cmd = Command::new(&exe.path);
                cmd.current_dir(&exe.dir);
                cmd
            } else {
                container(&image, &sysroot, exe, pass)
            };
            cmd.args(args);
            let place = if on_host {
                "host".to_string()
            } else {
                format!("container, /tmp on {}", pass.name())
            };
            eprintln!("xtask: {} ({place}): {}", exe.name, exec::show(&cmd));
            let label = if on_host {
                exe.name.clone()
            } else {
                format!("{} [{}]", exe.name, pass.name())
            };
            run_one(&mut cmd, &label, &mut tally)?;
            ran += 1;
        }
        runs += ran;
        eprintln!(
            "xtask: integration pass, /tmp on {} ({image}): {ran} executables, {} tests \
             passed, {} failed, {} ignored, in {:.0} s",
            pass.name(),
            tally.passed - before.0,
            tally.failed - before.1,
            tally.ignored - before.2,
            start.elapsed().as_secs_f64()
        );
    }
    if !tally.failures.is_empty() {
        for f in &tally.failures {
            eprintln!("xtask:   FAILED {f}");
        }
        bail!(
            "{} of {runs} integration test executable runs failed",
            tally.failures.len(),
        );
    }
    Ok(())
}

/// The `podman run` of one test executable; `sysroot` is the Rust toolchain's.
fn container(image: &str, sysroot: &Path, exe: &TestExe, pass: Pass) -> Command {
    let mut cmd = Command::new("podman");
    cmd.args([
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--privileged",
        "--pid=host",
    ])
    .args(["--network=none", "--stop-timeout=5"])
    // podman's default nofile exceeds this machine kind's hard limit of 20,000.
    .args([
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=4096:4096",
    ]);
    // The workspace and the build at their own paths; the toolchain too, since a test
    // compiles a Rust fixture (stacks_demangle, with $RUSTC) with the rustc of the build.
    let mut ro = vec![paths::root(), sysroot.to_path_buf()];
    let target = paths::target_dir();
    if !target.starts_with(paths::root()) {
        ro.push(target);
    }
    for dir in ro {
        cmd.arg("--volume").arg(volume(&dir, "ro"));
    }
    cmd.arg("--env")
        .arg(format!("RUSTC={}", sysroot.join("bin/rustc").display()));
    // The tests' files (compiled fixtures, private copies of targets) go to /tmp: a tmpfs,
    // as on the hosts we run on, or the container's own overlayfs root, as in containers,
    // where a mapping holds overlayfs's backing file (the real inode, which BPF reads and
    // uprobes key on) while stat and /proc/PID/maps show the overlay's identity.
    if pass.tmp == Fixtures::Tmpfs {
        cmd.args(["--tmpfs", "/tmp:rw,exec,mode=1777"]);
    }
    if let Some(tracker) = pass.tracker {
        cmd.arg("--env").arg(format!("PROBED_TRACKER={tracker}"));
    }
    if let Some(consumers) = pass.consumers {
        cmd.arg("--env")
            .arg(format!("PROBED_CONSUMERS={consumers}"));
    }
    // What tracing needs: tracefs (the tracker's tracepoints, bpftrace), BTF (probed's
    // offsets), bpffs and debugfs where the host has them.
    for dir in [
        "/sys/kernel/tracing",
        "/sys/kernel/btf",
        "/sys/fs/bpf",
        "/sys/kernel/debug",
    ] {
        if Path::new(dir).is_dir() {
            cmd.arg("--volume").arg(volume(Path::new(dir), "rw"));
        }
    }
    for var in PASS_ENV {
        if let Ok(value) = std::env::var(var) {
            cmd.arg("--env").arg(format!("{var}={value}"));
        }
    }
    cmd.arg("--workdir").arg(&exe.dir).arg(image).arg(&exe.path);
    cmd
}

fn volume(dir: &Path, mode: &str) -> String {
    format!("{0}:{0}:{mode}", dir.display())
}

/// Runs one test executable, copying its stdout through and adding its `test result:`
/// lines to `tally`.
fn run_one(cmd: &mut Command, name: &str, tally: &mut Tally) -> anyhow::Result<()> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", exec::show(cmd)))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut out = std::io::stdout().lock();
    let mut saw_result = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the test's output")?;
        writeln!(out, "{line}")?;
        saw_result |= tally.count(&line);
    }
    drop(out);
    let status = child.wait()?;
    if !status.success() {
        tally.failures.push(format!("{name} ({status})"));
    } else if !saw_result {
        tally
            .failures
            .push(format!("{name} (exited 0 without a `test result:` line)"));
    }
    Ok(())
}

/// One line of `cargo --message-format=json` (the fields used here).
#[derive(Deserialize)]
struct Message {
    reason: String,
    target: Option<Target>,
    profile: Option<Profile>,
    executable: Option<PathBuf>,
    manifest_path: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

#[derive(Deserialize)]
struct Profile {
    test: bool,
}

/// Builds every test executable of the workspace (release, real BPF object embedded) and
/// lists them.
pub fn build_tests() -> anyhow::Result<Vec<TestExe>> {
    let json = exec::output(
        Command::new(env!("CARGO"))
            .current_dir(paths::root())
            .env("PROBED_REQUIRE_BPF", "1")
            .args(["test", "--workspace", "--release", "--no-run"])
            .args(["--message-format=json-render-diagnostics"])
            .stderr(Stdio::inherit()),
    )?;
    let mut exes = Vec::new();
    for line in json.lines() {
        let msg: Message =
            serde_json::from_str(line).with_context(|| format!("cargo's JSON message: {line}"))?;
        let (Some(target), Some(profile), Some(path), Some(manifest)) =
            (msg.target, msg.profile, msg.executable, msg.manifest_path)
        else {
            continue;
        };
        if msg.reason != "compiler-artifact" || !profile.test {
            continue;
        }
        exes.push(TestExe {
            integration: target.kind.iter().any(|k| k == "test"),
            name: target.name,
            path,
            dir: manifest
                .parent()
                .context("manifest path has a parent")?
                .to_path_buf(),
        });
    }
    if !exes.iter().any(|e| e.integration) {
        bail!("cargo built no integration test executable");
    }
    Ok(exes)
}

/// The test image, built and imported when no image of this recipe exists.
fn image() -> anyhow::Result<String> {
    let tag = format!("{IMAGE_REPO}:{:016x}", fnv1a(recipe().as_bytes()));
    if podman_ok(&["image", "exists", &tag])? {
        eprintln!("xtask: test image {tag} (built before)");
        return Ok(tag);
    }
    let names: Vec<&str> = PACKAGES.iter().map(|(p, _)| *p).collect();
    eprintln!(
        "xtask: building the test image {tag}: Debian {SUITE} with {} (mmdebstrap, then \
         podman import; once per recipe)",
        names.join(" ")
    );
    let start = Instant::now();
    let mut rootfs = Command::new("mmdebstrap");
    rootfs
        .args(["--variant=apt", "--mode=root", "--format=tar"])
        .arg(format!("--include={}", names.join(",")))
        // Documentation is of no use to the tests.
        .args(["--dpkgopt=path-exclude=/usr/share/doc/*"])
        .args(["--dpkgopt=path-exclude=/usr/share/man/*"])
        .args(["--dpkgopt=path-exclude=/usr/share/locale/*"])
        .args([SUITE, "-"])
        .args(SOURCES)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    eprintln!(
        "xtask: running {} | podman import - {tag}",
        exec::show(&rootfs)
    );
    let mut rootfs_child = rootfs
        .spawn()
        .context("cannot start mmdebstrap (apt-get install mmdebstrap)")?;
    let tar = rootfs_child.stdout.take().expect("piped stdout");
    let imported = Command::new("podman")
        .args(["import", "--change", &format!("ENV PATH={PATH}"), "-", &tag])
        .stdin(tar)
        .stdout(Stdio::null())
        .status()
        .context("cannot start podman import")?;
    let built = rootfs_child.wait()?;
    if !built.success() || !imported.success() {
        // An import of a tar cut short must not be taken for the image next time.
        let _ = podman_ok(&["rmi", "--force", &tag]);
        bail!("building the test image failed: mmdebstrap {built}, podman import {imported}");
    }
    eprintln!(
        "xtask: test image {tag} built in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    remove_stale(&tag)?;
    Ok(tag)
}

/// PATH in the containers.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything that decides the image's content; its hash tags the image.
fn recipe() -> String {
    format!("mmdebstrap --variant=apt {SUITE} {SOURCES:?} {PACKAGES:?} docs-excluded PATH={PATH}")
}

/// Removes test images of older recipes.
fn remove_stale(keep: &str) -> anyhow::Result<()> {
    let listed = exec::output(Command::new("podman").args([
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "--filter",
        &format!("reference={IMAGE_REPO}"),
    ]))?;
    // Only this repository's images, whatever the filter's matching rules.
    let ours = |image: &&str| {
        image
            .rsplit_once(':')
            .is_some_and(|(repo, _)| repo == IMAGE_REPO)
    };
    for old in listed.lines().filter(ours).filter(|l| *l != keep) {
        eprintln!("xtask: removing the test image of an older recipe, {old}");
        podman_ok(&["rmi", old])?;
    }
    Ok(())
}

fn podman_ok(args: &[&str]) -> anyhow::Result<bool> {
    Ok(Command::new("podman")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("cannot start podman {}", args.join(" ")))?
        .success())
}

/// 64-bit FNV-1a: a hash that stays the same across Rust versions (std's does not promise to).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name of the overlay set is an integration test (a rename would silently drop
    /// it from the pass), and `both` runs only those in its overlay pass.
    #[test]
    fn overlay_pass_names_real_tests() {
        for name in OVERLAY_PASS {
            let file = paths::root().join(format!("daemon/tests/{name}.rs"));
            assert!(file.is_file(), "{} is missing", file.display());
        }
        for later in [1, 2] {
            assert!(Fixtures::Both.runs(later, "tracker_churn"));
            assert!(!Fixtures::Both.runs(later, "service_daemon"));
        }
        assert!(Fixtures::Both.runs(0, "service_daemon"));
        assert!(Fixtures::Overlay.runs(0, "service_daemon"));
        // The full run keeps the syscall tracker tested (auto picks lock mode on 6.14+).
        assert!(Fixtures::Both.passes().contains(&Pass {
            tmp: Fixtures::Overlay,
            tracker: Some("syscalls"),
            consumers: None,
        }));
        // And the exactness tests with consumer threads.
        assert!(
            Fixtures::Both
                .passes()
                .iter()
                .any(|p| p.consumers == Some("2"))
        );
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
