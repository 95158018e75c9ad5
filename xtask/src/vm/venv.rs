//! virtme-ng, from PyPI into a venv under target/vm (Debian 12 does not package it).

use std::{path::PathBuf, process::Command};

use crate::{exec, paths};

/// The version whose behaviour xtask relies on (`--force-9p`, `--exec` exit codes, modules
/// found beside an unpacked kernel).
const VIRTME_NG: &str = "virtme-ng==1.42";

/// The venv's bin directory: `vng` and the `virtme-run` it calls (so it goes on PATH).
pub fn bin_dir() -> PathBuf {
    paths::root().join("target/vm/venv/bin")
}

/// Creates the venv and installs virtme-ng when `vng` is not there yet.
pub fn ensure() -> anyhow::Result<PathBuf> {
    let bin = bin_dir();
    let stamp = bin.join(".probed-virtme-ng");
    if stamp.is_file() && std::fs::read_to_string(&stamp)? == VIRTME_NG {
        return Ok(bin);
    }
    eprintln!("xtask: installing {VIRTME_NG} from PyPI into target/vm/venv (boots the guests)");
    let venv = bin.parent().expect("bin has a parent").to_path_buf();
    exec::exec(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    exec::exec(
        Command::new(bin.join("pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .arg(VIRTME_NG),
    )?;
    std::fs::write(&stamp, VIRTME_NG)?;
    Ok(bin)
}
