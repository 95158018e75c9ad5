//! `cargo xtask build`: the BPF object, then a release probed that embeds it.

use std::process::Command;

use crate::{build_ebpf, exec::exec, paths};

/// Builds everything a user runs: the BPF object and `target/release/probed`.
pub fn run() -> anyhow::Result<()> {
    build_ebpf::run()?;
    exec(
        Command::new(env!("CARGO"))
            .current_dir(paths::root())
            .env("PROBED_REQUIRE_BPF", "1")
            .args([
                "build",
                "--release",
                "--package",
                "probed",
                "--bin",
                "probed",
            ]),
    )
}
