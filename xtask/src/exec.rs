//! Running commands: one place that prints what runs and names the command that failed.

use std::process::{Command, ExitStatus, Output};

use anyhow::{Context as _, bail};

/// Runs `cmd` with inherited stdio; fails naming the command if it cannot start or exits
/// non-zero.
pub fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed: {status}", show(cmd));
    }
    Ok(())
}

/// Runs `cmd` with inherited stdio and returns its exit status.
pub fn status(cmd: &mut Command) -> anyhow::Result<ExitStatus> {
    eprintln!("xtask: running {}", show(cmd));
    cmd.status()
        .with_context(|| format!("cannot start `{}`", show(cmd)))
}

/// Runs `cmd` quietly and returns its stdout; fails naming the command on a non-zero exit.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .output()
        .with_context(|| format!("cannot start `{}`", show(cmd)))?;
    if !status.success() {
        bail!(
            "`{}` failed: {status}\n{}",
            show(cmd),
            String::from_utf8_lossy(&stderr)
        );
    }
    Ok(String::from_utf8(stdout)?)
}

/// The command line as a person would type it.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}
