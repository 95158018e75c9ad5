//! Booting a guest kernel with virtme-ng and running one command in it as root.
//!
//! The guest's root filesystem is the host's `/`, shared read-only over 9p (virtme-ng puts a
//! throwaway writable layer over /etc, /var, /tmp…), so the workspace, the built test
//! executables and the host's tools (gcc, bpftrace, bpftool) are at their own paths. The
//! command is a shell script written under target/vm/scripts: it mounts what tracing needs,
//! changes to the caller's directory and runs the command; its stdout, stderr and exit code
//! come back through virtme-ng's virtio-serial ports.

use std::{
    io::{BufRead as _, BufReader, Read, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{kernel::Kernel, venv};
use crate::{exec, paths};

/// Guest memory: the integration tests' fixtures, probed and bpftrace fit with room.
const MEMORY: &str = "2G";

/// Guest CPUs: two, so threads of a traced process really run concurrently (and the machine
/// has two cores).
const CPUS: &str = "2";

/// Modules the guest's udev loads for QEMU's q35 machine (SATA, watchdogs, SMBus, PC
/// speaker, PS/2, KVM, CPU crypto) and nothing here uses (taken from the guest's lsmod).
/// Under emulation, loading them was most of udev's settle time at boot.
const BLACKLIST: &[&str] = &[
    "kvm_amd",
    "kvm_intel",
    "kvm",
    "irqbypass",
    "ccp",
    "iTCO_wdt",
    "iTCO_vendor_support",
    "intel_pmc_bxt",
    "i6300esb",
    "watchdog",
    "lpc_ich",
    "i2c_i801",
    "i2c_smbus",
    "qemu_fw_cfg",
    "ahci",
    "libahci",
    "libata",
    "scsi_mod",
    "scsi_common",
    "sr_mod",
    "cdrom",
    "evdev",
    "psmouse",
    "serio_raw",
    "pcspkr",
    "button",
    "crct10dif_pclmul",
    "crc32_pclmul",
    "crc32c_intel",
    "ghash_clmulni_intel",
    "sha512_ssse3",
    "sha256_ssse3",
    "sha1_ssse3",
    "aesni_intel",
    "gf128mul",
    "crypto_simd",
    "cryptd",
];

/// A booted-per-command guest of one kernel.
pub struct Guest {
    /// The kernel it boots.
    pub kernel: Kernel,
    /// virtme-ng's bin directory.
    bin: PathBuf,
    /// Whether to use KVM, and why (or why not).
    kvm: (bool, &'static str),
}

/// What came back from the guest.
pub struct Outcome {
    /// The command's exit code (virtme-ng passes it back), or None if the run was stopped at
    /// its time limit.
    pub code: Option<i32>,
    /// Wall time from starting QEMU to its exit.
    pub elapsed: Duration,
    /// How vng ended, as the shell would say it (`exit 255` is virtme-ng's word for a guest
    /// that ended before the command did: a kernel panic, QEMU's own exit).
    pub status: String,
}

impl Guest {
    /// Installs what booting needs (host packages, virtme-ng, the kernel) and decides on KVM.
    pub fn prepare(kernel: Kernel) -> anyhow::Result<Self> {
        crate::setup::vm()?;
        let bin = venv::ensure()?;
        Ok(Self {
            kernel,
            bin,
            kvm: kvm(),
        })
    }

    /// Boots the guest and runs `argv` (`label` names it in messages) in `cwd` as root with
    /// `env` set, sending each line of the guest's stdout to `on_stdout` and its stderr to
    /// ours; stops QEMU after `limit`.
    pub fn run(
        &self,
        label: &str,
        argv: &[String],
        cwd: &Path,
        env: &[(String, String)],
        limit: Option<Duration>,
        mut on_stdout: impl FnMut(&str),
    ) -> anyhow::Result<Outcome> {
        let script = write_script(argv, cwd, env)?;
        let mut cmd = self.command(&script, cwd);
        eprintln!(
            "xtask: booting kernel {}: {} ({}, {}) for: {}",
            self.kernel.line.name,
            self.kernel.package,
            self.kernel.version,
            if self.kvm.0 { "KVM" } else { "QEMU emulation" },
            label
        );
        eprintln!("xtask: {}", self.kvm.1);
        let start = Instant::now();
        // Pipes, never a shared regular file: QEMU opens the stdout and stderr ports'
        // files each on its own, and lines written through two descriptors of one
        // regular file overwrite each other.
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{}`", exec::show(&cmd)))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let copier = std::thread::spawn(move || copy_stderr(stderr));
        let pid = child.id();
        let stopped = limit.map(|limit| Watchdog::start(pid, limit));
        let stdout = child.stdout.take().expect("piped stdout");
        for line in BufReader::new(stdout).lines() {
            on_stdout(&line.context("reading the guest's stdout")?);
        }
        let status = child.wait()?;
        let _ = copier.join();
        let _ = std::fs::remove_file(&script);
        let timed_out = stopped.is_some_and(|w| w.finish());
        Ok(Outcome {
            code: if timed_out { None } else { status.code() },
            elapsed: start.elapsed(),
            status: status.to_string(),
        })
    }

    /// The vng command line that runs `script`.
    fn command(&self, script: &Path, cwd: &Path) -> Command {
        let mut cmd = Command::new(self.bin.join("vng"));
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![self.bin.clone()];
        dirs.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(dirs).expect("PATH entries"));
        if !self.kvm.0 {
            cmd.arg("--disable-kvm");
            // QEMU 7.2's multi-threaded TCG (one host thread per vCPU, its default) now and
            // then runs a vCPU on code translated before another vCPU re-patched it: the
            // kernel's live patching of a static key (a tracepoint probed attaches or
            // detaches, perf's sched hooks) ends in "Oops: int3" at the patched site and a
            // panic (6.12: kernel_clone+0xdb during probed's clone3, __schedule+0x423 on an
            // idle CPU; 1 boot in 4 of stacks_cfi's guest run, 2026-12-06). One host thread
            // running both vCPUs in turn never interleaves a patch with a translation; the
            // guest still has two CPUs (`tcg_thread`, README "Kernels").
            cmd.arg(format!("--qemu-opts=-accel tcg,thread={}", tcg_thread()));
        }
        // QEMU 7.2's virtiofsd is too old for virtme-ng: the root goes over 9p.
        cmd.arg("--force-9p")
            .args(["--memory", MEMORY, "--cpus", CPUS])
            // The kernel's console on stderr at warning level and above (oops, panic, RCU
            // stalls, OOM kills): a guest that ends in the middle of a test says why.
            // `--verbose` turns the console on (at loglevel 7); the `loglevel=4` appended
            // after it wins.
            .arg("--verbose")
            .arg("--cwd")
            .arg(cwd)
            .arg("--append")
            .arg(format!(
                "module_blacklist={} loglevel=4",
                BLACKLIST.join(",")
            ))
            .arg("--run")
            .arg(&self.kernel.vmlinuz)
            .arg("--exec")
            .arg(format!("sh {}", script.display()));
        cmd
    }
}

/// How TCG runs the vCPUs: `single` (default, see `command`), or `multi` from
/// `PROBED_VM_TCG_THREAD=multi` to compare.
fn tcg_thread() -> &'static str {
    match std::env::var("PROBED_VM_TCG_THREAD").as_deref() {
        Ok("multi") => "multi",
        _ => "single",
    }
}

/// KVM only when it can run a stock kernel: the host's CPU offers hardware virtualization
/// (vmx/svm). `kvm_pvm` (this machine kind) runs only PVM-built guests; Debian's kernels
/// hang or fail with emulation errors under it.
fn kvm() -> (bool, &'static str) {
    if !Path::new("/dev/kvm").exists() {
        return (
            false,
            "no /dev/kvm: QEMU emulation (slow: minutes per boot)",
        );
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hw {
        (true, "KVM: the CPU has vmx/svm")
    } else {
        (
            false,
            "/dev/kvm without vmx/svm (kvm_pvm boots only PVM guests, not Debian's kernels): \
             QEMU emulation",
        )
    }
}

/// The script lines that put a tmpfs on the guest's /tmp. A workspace under /tmp (a CI
/// checkout, `ci-local`'s clone) would be hidden by it: the host's /tmp is first bound aside
/// and the workspace bound back at its own path on the tmpfs.
fn tmp_mounts(workspace: &Path) -> String {
    let mut s = String::new();
    let under_tmp = workspace
        .strip_prefix("/tmp")
        .ok()
        .filter(|r| !r.as_os_str().is_empty());
    if under_tmp.is_some() {
        s.push_str("mkdir -p /run/probed-host-tmp\n");
        s.push_str("mount --bind /tmp /run/probed-host-tmp\n");
    }
    s.push_str("mount -t tmpfs -o mode=1777 tmpfs /tmp\n");
    if let Some(rel) = under_tmp {
        let ws = quote(&workspace.to_string_lossy());
        let aside = quote(
            &Path::new("/run/probed-host-tmp")
                .join(rel)
                .to_string_lossy(),
        );
        s.push_str(&format!("mkdir -p {ws}\nmount --bind {aside} {ws}\n"));
    }
    s
}

/// Numbers the scripts of one xtask process.
static SCRIPTS: AtomicU32 = AtomicU32::new(0);

/// The guest's script: set-up, then `argv` with its exit code passed back.
fn write_script(argv: &[String], cwd: &Path, env: &[(String, String)]) -> anyhow::Result<PathBuf> {
    let dir = paths::root().join("target/vm/scripts");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!(
        "guest-{}-{}.sh",
        std::process::id(),
        SCRIPTS.fetch_add(1, Ordering::Relaxed)
    ));
    let mut s = String::from("set -e\n");
    // virtme-ng's /tmp is an overlay; BPF reads a mapped overlay file's backing inode, not
    // the one stat shows (README "Containers and Kubernetes"), and the tests compile their
    // fixtures into /tmp: a tmpfs, as on real hosts.
    s.push_str(&tmp_mounts(&paths::root()));
    s.push_str(
        "[ -d /sys/fs/bpf ] && ! mountpoint -q /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf\n",
    );
    s.push_str(
        "[ -d /sys/kernel/tracing/events ] || mount -t tracefs tracefs /sys/kernel/tracing\n",
    );
    s.push_str("mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug\n");
    // The service tests open thousands of descriptors.
    s.push_str("ulimit -n 20000\n");
    for (k, v) in env {
        s.push_str(&format!("export {k}={}\n", quote(v)));
    }
    s.push_str(&format!("cd {}\n", quote(&cwd.to_string_lossy())));
    s.push_str("set +e\n");
    let words: Vec<String> = argv.iter().map(|a| quote(a)).collect();
    s.push_str(&words.join(" "));
    s.push('\n');
    std::fs::write(&path, s)?;
    Ok(path)
}

/// `s` as one shell word.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Copies the guest's stderr (its commands' stderr and the kernel's console) through to
/// ours, without the console's one warning per blacklisted module at boot.
fn copy_stderr(from: impl Read) {
    let mut err = std::io::stderr();
    for line in BufReader::new(from).split(b'\n') {
        let Ok(line) = line else { break };
        if is_boot_noise(&line) {
            continue;
        }
        if err
            .write_all(&line)
            .and_then(|_| err.write_all(b"\n"))
            .is_err()
        {
            break;
        }
    }
}

/// A console line the guest prints at every boot, saying nothing about the run: a module
/// of [`BLACKLIST`] refused, or (6.12) udev offering a compressed module to the kernel's
/// loader first.
fn is_boot_noise(line: &[u8]) -> bool {
    line.ends_with(b" is blacklisted") || line.ends_with(b"Invalid ELF header magic: != ELF")
}

/// Kills vng's process group (QEMU included) if the run outlives its limit.
struct Watchdog {
    done: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<bool>,
}

impl Watchdog {
    fn start(pid: u32, limit: Duration) -> Self {
        let (done, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            if rx.recv_timeout(limit).is_ok() {
                return false;
            }
            eprintln!(
                "xtask: the guest ran past its limit of {} s: stopping it",
                limit.as_secs()
            );
            // vng and the QEMU it starts are in the process group led by our child.
            // SAFETY: kill has no memory-safety preconditions; the group is our child's.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            true
        });
        Self { done, thread }
    }

    /// Whether the run was stopped.
    fn finish(self) -> bool {
        let _ = self.done.send(());
        self.thread.join().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_noise_is_dropped_and_oopses_are_not() {
        assert!(is_boot_noise(
            b"[   11.0933] Module sha1_ssse3 is blacklisted"
        ));
        assert!(is_boot_noise(
            b"[    4.1998] Invalid ELF header magic: != ELF"
        ));
        assert!(!is_boot_noise(
            b"[   61.2000] Kernel panic - not syncing: Fatal exception"
        ));
        assert!(!is_boot_noise(
            b"[   61.1000] BUG: unable to handle page fault"
        ));
    }

    #[test]
    fn quote_survives_single_quotes() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn script_changes_directory_and_quotes_arguments() {
        let path = write_script(
            &["echo".into(), "a 'b'".into()],
            Path::new("/work/x y"),
            &[("CI".into(), "true".into())],
        )
        .unwrap();
        let s = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(s.contains("\nexport CI='true'\n"), "{s}");
        assert!(s.contains("\ncd '/work/x y'\n"), "{s}");
        assert!(s.ends_with("\n'echo' 'a '\\''b'\\'''\n"), "{s}");
        assert!(s.contains("mount -t tmpfs"), "{s}");
    }

    /// A workspace under /tmp stays visible over the guest's tmpfs /tmp; others need nothing.
    #[test]
    fn workspace_under_tmp_is_bound_back() {
        let s = tmp_mounts(Path::new("/tmp/ci.x/project"));
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines,
            [
                "mkdir -p /run/probed-host-tmp",
                "mount --bind /tmp /run/probed-host-tmp",
                "mount -t tmpfs -o mode=1777 tmpfs /tmp",
                "mkdir -p '/tmp/ci.x/project'",
                "mount --bind '/run/probed-host-tmp/ci.x/project' '/tmp/ci.x/project'",
            ]
        );
        let s = tmp_mounts(Path::new("/work/main"));
        assert_eq!(s, "mount -t tmpfs -o mode=1777 tmpfs /tmp\n");
    }
}
