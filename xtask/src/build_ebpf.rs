//! `cargo xtask build-ebpf`: builds the BPF object the daemon embeds; `cargo xtask
//! clippy-ebpf`: lints the BPF crate (the workspace's `cargo clippy` does not cover it).

use std::time::Instant;

use anyhow::Context as _;

use crate::{exec::exec, paths, toolchain};

/// Builds ebpf/ in release mode into `target/bpf`; cargo's own freshness check makes a run
/// with nothing changed take well under a second.
pub fn run() -> anyhow::Result<()> {
    let start = Instant::now();
    let tc = toolchain::ensure()?;
    eprintln!("xtask: building the BPF object with {}", tc.description);
    let mut cmd = tc.cargo();
    cmd.current_dir(paths::root().join("ebpf"))
        .args(["build", "--release", "--target-dir"])
        .arg(paths::bpf_target_dir());
    exec(&mut cmd).context("building the BPF crate (ebpf/)")?;
    let object = paths::bpf_object();
    let size = std::fs::metadata(&object)
        .with_context(|| format!("the build did not produce {}", object.display()))?
        .len();
    eprintln!(
        "xtask: BPF object {} ({size} bytes) ready in {:.1}s",
        object.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs clippy on ebpf/ with the BPF toolchain, warnings denied (the lints: ebpf/Cargo.toml).
pub fn clippy() -> anyhow::Result<()> {
    let tc = toolchain::ensure()?;
    eprintln!("xtask: linting the BPF crate with {}", tc.description);
    let mut cmd = tc.clippy();
    cmd.current_dir(paths::root().join("ebpf"))
        .args(["--release", "--target-dir"])
        .arg(paths::bpf_target_dir())
        .args(["--", "-D", "warnings"]);
    exec(&mut cmd).context("linting the BPF crate (ebpf/)")
}
