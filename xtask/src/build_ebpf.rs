//! `cargo xtask build-ebpf`: builds the BPF object the daemon embeds.

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
