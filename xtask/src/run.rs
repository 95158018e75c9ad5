//! `cargo xtask run -- ARGS`: builds, then runs probed with ARGS.

use std::process::Command;

use anyhow::bail;

use crate::{build, exec::status, paths};

/// Builds probed and runs it with `args`, exiting with its exit code.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    build::run()?;
    let code = status(Command::new(paths::probed_bin()).args(args))?;
    if !code.success() {
        bail!("probed exited with {code}");
    }
    Ok(())
}
