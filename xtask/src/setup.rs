//! Host packages the tests and the demo need, installed with apt when missing (as root),
//! printing what is installed and why. Every check is a file lookup, so a second run
//! installs nothing.

use std::{path::Path, process::Command};

use anyhow::bail;

use crate::exec::exec;

/// A Debian package, a file that shows it is installed, and why it is needed.
struct Need {
    package: &'static str,
    file: &'static str,
    why: &'static str,
}

/// For the demo: a C compiler for the bundled example.
const DEMO: &[Need] = &[
    Need {
        package: "gcc",
        file: "/usr/bin/gcc",
        why: "the demo target is compiled from C",
    },
    Need {
        package: "libc6-dev",
        file: "/usr/include/stdio.h",
        why: "C headers for the demo target",
    },
];

/// For the test suite.
const TESTS: &[Need] = &[
    Need {
        package: "gcc",
        file: "/usr/bin/gcc",
        why: "test fixtures are compiled from C at test time",
    },
    Need {
        package: "g++",
        file: "/usr/bin/g++",
        why: "C++ fixtures (demangling tests)",
    },
    Need {
        package: "libc6-dev",
        file: "/usr/include/stdio.h",
        why: "C headers for the fixtures",
    },
    Need {
        package: "binutils",
        file: "/usr/bin/readelf",
        why: "tests check ELF offsets against readelf",
    },
    Need {
        package: "bpftrace",
        file: "/usr/bin/bpftrace",
        why: "hit counts are compared with bpftrace's",
    },
    Need {
        package: "bpftool",
        file: "/usr/sbin/bpftool",
        why: "tests check that no BPF program is left loaded",
    },
    Need {
        package: "util-linux",
        file: "/usr/bin/setpriv",
        why: "the missing-privileges test drops root",
    },
    Need {
        package: "prometheus",
        file: "/usr/bin/prometheus",
        why: "the metrics endpoint is scraped by a real Prometheus server",
    },
    Need {
        package: "systemd",
        file: "/usr/bin/systemd-analyze",
        why: "the systemd unit is verified and scored with systemd-analyze",
    },
    Need {
        package: "strace",
        file: "/usr/bin/strace",
        why: "the unit's system call filter is checked against probed's real calls",
    },
    // The integration tests run in privileged containers (xtask/src/integration.rs), and
    // the container tests (daemon/tests/containers.rs) trace targets in real, unprivileged
    // ones. runc, not crun: crun refuses this machine kind's hybrid cgroups.
    Need {
        package: "podman",
        file: "/usr/bin/podman",
        why: "the integration tests run in privileged containers, targets in containers",
    },
    Need {
        package: "runc",
        file: "/usr/sbin/runc",
        why: "podman's runtime (crun refuses hybrid cgroups)",
    },
    Need {
        package: "mmdebstrap",
        file: "/usr/bin/mmdebstrap",
        why: "builds the integration tests' Debian image from the package mirror",
    },
    Need {
        package: "gpg",
        file: "/usr/bin/gpg",
        why: "mmdebstrap checks the mirror's keyring with it",
    },
];

/// For `cargo xtask vm` (xtask/src/vm.rs): what virtme-ng needs to boot Debian's kernels
/// under QEMU. virtme-ng itself comes from PyPI into a venv (vm/venv.rs).
const VM: &[Need] = &[
    Need {
        package: "qemu-system-x86",
        file: "/usr/bin/qemu-system-x86_64",
        why: "the guests run other kernels (6.1, 6.12) in QEMU",
    },
    Need {
        package: "kmod",
        file: "/usr/sbin/depmod",
        why: "virtme-ng indexes the guest kernel's modules with depmod",
    },
    Need {
        package: "busybox-static",
        file: "/bin/busybox",
        why: "virtme-ng's initramfs is built around busybox",
    },
    Need {
        package: "udev",
        file: "/usr/bin/udevadm",
        why: "the guest's init finds its command and output ports through udev",
    },
    Need {
        package: "python3-venv",
        // The venv module's own files are under a versioned path (python3.11-venv).
        file: "/usr/share/doc/python3-venv/copyright",
        why: "virtme-ng is installed from PyPI into a venv under target/vm",
    },
];

/// Installs what the guests need.
pub fn vm() -> anyhow::Result<()> {
    ensure(VM)
}

/// Installs what the demo needs.
pub fn demo() -> anyhow::Result<()> {
    ensure(DEMO)
}

/// Installs what the tests need, and mounts tracefs (bpftrace, which the tests compare
/// with, needs it; probed mounts it itself when missing; the test containers bind-mount it).
pub fn tests() -> anyhow::Result<()> {
    ensure(TESTS)?;
    mount_tracefs()
}

fn mount_tracefs() -> anyhow::Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        return Ok(());
    }
    eprintln!("xtask: mounting tracefs at /sys/kernel/tracing (bpftrace needs it)");
    exec(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}

fn ensure(needs: &[Need]) -> anyhow::Result<()> {
    let missing: Vec<&Need> = needs
        .iter()
        .filter(|n| !Path::new(n.file).exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for n in &missing {
        eprintln!("xtask: installing {} ({})", n.package, n.why);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let names: Vec<&str> = missing.iter().map(|n| n.package).collect();
        bail!(
            "missing packages; install them as root: apt-get install {}",
            names.join(" ")
        );
    }
    exec(Command::new("apt-get").args(["update", "-q"]))?;
    exec(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing.iter().map(|n| n.package)),
    )
}
