//! `cargo xtask test`: the whole suite — unit tests and loom models on the host, the root/BPF
//! integration tests in a privileged container (`integration.rs`), and their kernel-dependent
//! part in guests of Debian's 6.1 and 6.12 kernels (`vm/suite.rs`); `--kernel LINE` runs only
//! that line's guest.
//!
//! Integration tests attach real uprobes, so they need root (or CAP_SYS_ADMIN +
//! CAP_SYS_PTRACE: see daemon/src/privileges.rs) and the real BPF object embedded in probed.
//! Without root they print why they skip; with `CI=true` they fail instead (see
//! daemon/tests/common/mod.rs).

use std::process::Command;

use crate::{build_ebpf, exec::exec, integration, paths, setup, vm};

/// Builds the BPF object and every test executable against a probed that embeds it; runs
/// the unit and doc tests on the host, the integration tests in the test container (or, with
/// `host`, everything on the host through `cargo test`; `fixtures` says where the
/// containerized tests keep their files) and both kernel suites (only the `kernels` given,
/// when some are; see [`KERNELS_IN_FULL_RUN`]), then, for a full run (no `args`), the loom models of the
/// resolver's sequence and snapshot publication. `args` go to the test executables (a name
/// filter, `--nocapture`, …).
pub fn run(
    host: bool,
    fixtures: integration::Fixtures,
    kernels: &[String],
    args: &[String],
) -> anyhow::Result<()> {
    setup::tests()?;
    build_ebpf::run()?;
    if !kernels.is_empty() {
        let exes = integration::build_tests()?;
        for line in kernels {
            vm::suite(line, &exes, args)?;
        }
        return Ok(());
    }
    if host {
        exec(cargo_test().arg("--").args(args))?;
    } else {
        let exes = integration::build_tests()?;
        exec(cargo_test().args(["--lib", "--bins", "--"]).args(args))?;
        exec(cargo_test().args(["--doc", "--"]).args(args))?;
        let integration: Vec<_> = exes.iter().filter(|e| e.integration).collect();
        integration::run_in_container(&integration, fixtures, args)?;
        if KERNELS_IN_FULL_RUN {
            kernel_suites(&exes, args)?;
        }
    }
    if args.is_empty() {
        loom()?;
    }
    Ok(())
}

/// Whether a full `cargo xtask test` (what .ci/run runs) also runs the kernel suites: yes.
/// They were out of it for a while: in whole ci-local runs the 6.1 suite hit its budget in
/// stacks_cfi and the 6.12 guest ended during stacks_basic. stacks_cfi's two cases run in
/// parallel on one fixture, and on 6.12 (measured) a pid-scoped uretprobe of one fired for
/// the other's process too; pid-scoped probes now also filter in BPF (`PROBE_FLAG_PID`).
const KERNELS_IN_FULL_RUN: bool = true;

/// Every kernel line's suite, each run even when another failed (so one CI run reports both);
/// fails naming the lines that failed. A guest that cannot be prepared or booted is a
/// failure, never a skip.
fn kernel_suites(exes: &[integration::TestExe], args: &[String]) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for line in vm::LINES {
        if let Err(e) = vm::suite(line.name, exes, args) {
            eprintln!("xtask: kernel {} suite failed: {e:#}", line.name);
            failed.push(line.name);
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "the kernel suites failed on {}",
        failed.join(", ")
    );
    Ok(())
}

/// `cargo test` of the workspace as every run builds it (release, BPF object required), so
/// no run rebuilds what another built.
fn cargo_test() -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(paths::root())
        .env("PROBED_REQUIRE_BPF", "1")
        .args(["test", "--workspace", "--release"]);
    cmd
}

/// The loom models (daemon/src/resolve/loom_tests.rs): the same resolver code with loom's
/// atomics and locks, every interleaving checked. A separate build (cfg probed_loom) in its
/// own target directory.
fn loom() -> anyhow::Result<()> {
    exec(
        Command::new(env!("CARGO"))
            .current_dir(paths::root())
            .env("RUSTFLAGS", "--cfg probed_loom")
            .env("CARGO_TARGET_DIR", paths::root().join("target/loom"))
            .args([
                "test",
                "--release",
                "-p",
                "probed",
                "--lib",
                "resolve::loom",
            ]),
    )
}
