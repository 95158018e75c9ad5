//! `cargo xtask test`: the whole suite — unit tests and the root/BPF integration tests.
//!
//! Integration tests attach real uprobes, so they need root (or CAP_BPF + CAP_PERFMON +
//! CAP_SYS_PTRACE) and the real BPF object embedded in probed. Without root they print why
//! they skip; with `CI=true` they fail instead (see daemon/tests/common/mod.rs).

use std::process::Command;

use crate::{build_ebpf, exec::exec, paths, setup};

/// Builds the BPF object, then runs every test of the workspace against a probed that
/// embeds it.
pub fn run(extra: &[String]) -> anyhow::Result<()> {
    setup::tests()?;
    build_ebpf::run()?;
    exec(
        Command::new(env!("CARGO"))
            .current_dir(paths::root())
            .env("PROBED_REQUIRE_BPF", "1")
            .args(["test", "--workspace", "--release"])
            .args(extra),
    )
}
