//! `cargo xtask test`: the whole suite — unit tests and the root/BPF integration tests.
//!
//! Integration tests attach real uprobes, so they need root (or CAP_SYS_ADMIN +
//! CAP_SYS_PTRACE: see daemon/src/privileges.rs) and the real BPF object embedded in probed. Without root they print why
//! they skip; with `CI=true` they fail instead (see daemon/tests/common/mod.rs).

use std::process::Command;

use crate::{build_ebpf, exec::exec, paths, setup};

/// Builds the BPF object, then runs every test of the workspace against a probed that
/// embeds it, then (for a full run, without a filter) the loom models of the resolver's
/// sequence and snapshot publication.
pub fn run(extra: &[String]) -> anyhow::Result<()> {
    setup::tests()?;
    build_ebpf::run()?;
    exec(
        Command::new(env!("CARGO"))
            .current_dir(paths::root())
            .env("PROBED_REQUIRE_BPF", "1")
            .args(["test", "--workspace", "--release"])
            .args(extra),
    )?;
    if extra.is_empty() {
        loom()?;
    }
    Ok(())
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
