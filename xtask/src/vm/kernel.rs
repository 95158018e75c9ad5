//! The guest kernels: Debian's own packages, downloaded with `apt-get download` (which checks
//! each file against the suite's signed index) and unpacked under target/vm/kernels/.
//!
//! Each kernel line has an apt sources file of its own and private `Dir::State::Lists` and
//! `Dir::Cache`, so the host's apt configuration is neither used nor changed. The unpacked
//! tree is reused as long as it is complete (its `probed-kernel` stamp is written last):
//! later runs need no network. Remove target/vm/kernels/LINE to take a newer update.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{exec, paths};

/// A kernel line we test on, and where Debian ships it.
pub struct Line {
    /// As given to `--kernel`.
    pub name: &'static str,
    /// Who runs it.
    pub who: &'static str,
    /// apt sources: the newest `linux-image-amd64` of these is the kernel taken.
    sources: &'static [&'static str],
    /// The kernel release the metapackage must point to (a check that the suite still ships
    /// this line).
    release_prefix: &'static str,
}

/// Every line `--kernel` accepts.
pub const LINES: &[Line] = &[
    Line {
        name: "6.1",
        who: "Debian 12 (bookworm)",
        sources: &[
            "deb http://deb.debian.org/debian bookworm main",
            "deb http://deb.debian.org/debian-security bookworm-security main",
        ],
        release_prefix: "linux-image-6.1.0-",
    },
    Line {
        name: "6.12",
        who: "Debian 13 (trixie); bookworm-backports",
        // Backports' build of trixie's kernel: signed by the bookworm keys the host has.
        sources: &["deb http://deb.debian.org/debian bookworm-backports main"],
        release_prefix: "linux-image-6.12.",
    },
];

/// Looks a line up by its `--kernel` name.
pub fn line(name: &str) -> anyhow::Result<&'static Line> {
    LINES.iter().find(|l| l.name == name).with_context(|| {
        let names: Vec<&str> = LINES.iter().map(|l| l.name).collect();
        format!("no kernel line {name}; known: {}", names.join(", "))
    })
}

/// An unpacked kernel package.
pub struct Kernel {
    /// The line it belongs to.
    pub line: &'static Line,
    /// The package (`linux-image-6.1.0-42-amd64`) and its version.
    pub package: String,
    /// The package version.
    pub version: String,
    /// `boot/vmlinuz-…` in the unpacked tree; vng finds `lib/modules/…` beside it.
    pub vmlinuz: PathBuf,
}

/// The stamp written once a tree is complete: package, version, vmlinuz file name.
const STAMP: &str = "probed-kernel";

/// The line's kernel, downloaded and unpacked on first use.
pub fn install(line: &'static Line) -> anyhow::Result<Kernel> {
    let dir = paths::root().join("target/vm/kernels").join(line.name);
    if let Some(kernel) = read_stamp(line, &dir)? {
        return Ok(kernel);
    }
    eprintln!(
        "xtask: downloading Debian's {} kernel ({}) with apt-get download",
        line.name, line.who
    );
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    for sub in ["lists/partial", "cache/archives/partial", "debs"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let sources = dir.join("sources.list");
    fs::write(&sources, line.sources.join("\n") + "\n")?;
    let apt = |tool: &str| {
        let mut cmd = Command::new(tool);
        cmd.arg("-q")
            .arg(format!("-oDir::Etc::SourceList={}", sources.display()))
            // No other sources: the host's sources.list.d stays out.
            .arg("-oDir::Etc::SourceParts=/nonexistent")
            // The files go to target/, which apt's unprivileged _apt user cannot write.
            .arg("-oAPT::Sandbox::User=root")
            .arg(format!(
                "-oDir::State::Lists={}",
                dir.join("lists").display()
            ))
            .arg(format!("-oDir::Cache={}", dir.join("cache").display()));
        cmd
    };
    exec::exec(apt("apt-get").arg("update"))?;
    let depends = exec::output(apt("apt-cache").args(["depends", "linux-image-amd64"]))?;
    let package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with(line.release_prefix))
        .with_context(|| {
            format!(
                "linux-image-amd64 of {:?} depends on no {}*: {depends}",
                line.sources, line.release_prefix
            )
        })?
        .to_string();
    let version = exec::output(apt("apt-cache").args(["show", "--no-all-versions", &package]))?
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .with_context(|| format!("apt-cache show {package}: no Version"))?
        .to_string();
    // apt-get download verifies the file's hash against the signed index it fetched.
    exec::exec(
        apt("apt-get")
            .current_dir(dir.join("debs"))
            .args(["download", &format!("{package}={version}")]),
    )?;
    let deb = fs::read_dir(dir.join("debs"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let root = dir.join("root");
    exec::exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let vmlinuz = fs::read_dir(root.join("boot"))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("vmlinuz-"))
        .with_context(|| format!("{} holds no boot/vmlinuz-*", deb.display()))?;
    // The .deb is not needed once unpacked (110 MB).
    fs::remove_file(&deb)?;
    fs::write(
        dir.join(STAMP),
        format!("{package}\n{version}\n{vmlinuz}\n"),
    )?;
    read_stamp(line, &dir)?.context("stamp just written")
}

/// The kernel a complete earlier download left, if any.
fn read_stamp(line: &'static Line, dir: &Path) -> anyhow::Result<Option<Kernel>> {
    let Ok(stamp) = fs::read_to_string(dir.join(STAMP)) else {
        return Ok(None);
    };
    let mut fields = stamp.lines();
    let (Some(package), Some(version), Some(vmlinuz)) =
        (fields.next(), fields.next(), fields.next())
    else {
        bail!("{} is damaged; remove {}", STAMP, dir.display());
    };
    let vmlinuz = dir.join("root/boot").join(vmlinuz);
    if !vmlinuz.is_file() {
        bail!("{} is missing; remove {}", vmlinuz.display(), dir.display());
    }
    Ok(Some(Kernel {
        line,
        package: package.to_string(),
        version: version.to_string(),
        vmlinuz,
    }))
}
