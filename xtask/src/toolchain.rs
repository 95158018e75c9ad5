//! Finding (and on a fresh machine of the Debian kind, installing) what builds the BPF crate.
//!
//! Two routes, tried in order:
//! 1. **rustup nightly + rust-src** (what most aya users have): `cargo +nightly` with
//!    `-Zbuild-std=core`.
//! 2. **Debian's Rust** (`rustc-web`, `cargo-web`, `rust-web-src`) with `RUSTC_BOOTSTRAP=1`:
//!    used where rustup cannot fetch rust-src (no network but the package registries). It is
//!    installed with apt when missing and we are root.
//!
//! Either way the linker is `bpf-linker`, which must be built against the same LLVM major as
//! the compiler. If none is found it is installed from crates.io into [`paths::tools_dir`],
//! linked against the system `libLLVM.so.<major>` through a stub `LLVM_PREFIX`.
//! Every check is a file lookup or a `rustc -vV`, so a second run reinstalls nothing.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    exec::{exec, output},
    paths,
};

/// bpf-linker release known to work with aya-ebpf 0.2 (README, "Building the BPF object").
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages that provide a rustc with its library source (needed by build-std), and
/// the clippy of that rustc (`cargo xtask clippy-ebpf`).
const DEBIAN_RUST: [&str; 4] = ["rustc-web", "cargo-web", "rust-web-src", "rust-web-clippy"];
/// Debian's `cargo clippy` entry point (rust-web-clippy). Run by path: `cargo clippy` would
/// take the first `cargo-clippy` on PATH, which on a machine with rustup is rustup's.
const DEBIAN_CARGO_CLIPPY: &str = "/usr/bin/cargo-clippy";

/// How to invoke cargo for the BPF crate.
pub struct BpfToolchain {
    /// What to print about the choice.
    pub description: String,
    /// The cargo executable.
    cargo: PathBuf,
    /// `+nightly` for the rustup route.
    toolchain_arg: Option<&'static str>,
    /// The rustc to use (`RUSTC`), for the Debian route.
    rustc: Option<PathBuf>,
    /// The directory holding `bpf-linker`, prepended to PATH.
    linker_dir: PathBuf,
}

impl BpfToolchain {
    /// A `cargo` command for the BPF crate with this toolchain's environment.
    pub fn cargo(&self) -> Command {
        self.command(&self.cargo)
    }

    /// A `cargo clippy` command for the BPF crate with this toolchain's environment.
    pub fn clippy(&self) -> Command {
        if self.rustc.is_none() {
            let mut cmd = self.cargo();
            cmd.arg("clippy");
            return cmd;
        }
        let mut cmd = self.command(Path::new(DEBIAN_CARGO_CLIPPY));
        cmd.env("CARGO", &self.cargo).arg("clippy");
        cmd
    }

    /// `program` (cargo, or Debian's cargo-clippy) with this toolchain's environment.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        if let Some(arg) = self.toolchain_arg {
            cmd.arg(arg);
        }
        if let Some(rustc) = &self.rustc {
            cmd.env("RUSTC", rustc);
            // Debian's rustc is a stable compiler; build-std is a nightly feature.
            cmd.env("RUSTC_BOOTSTRAP", "1");
        }
        // The userspace build may run under `cargo xtask` with rustup's toolchain variables
        // set; they must not leak into the BPF build.
        for var in [
            "RUSTUP_TOOLCHAIN",
            "RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
            "CARGO_TARGET_DIR",
        ] {
            cmd.env_remove(var);
        }
        let path = env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![self.linker_dir.clone()];
        dirs.extend(env::split_paths(&path));
        cmd.env(
            "PATH",
            env::join_paths(dirs).expect("PATH entries are valid"),
        );
        cmd
    }
}

/// Finds a BPF toolchain, installing the missing parts where this machine allows it.
pub fn ensure() -> anyhow::Result<BpfToolchain> {
    if let Some(tc) = rustup_nightly()? {
        return Ok(tc);
    }
    debian_route()
}

/// The standard aya route: rustup nightly with rust-src, and a bpf-linker on PATH.
fn rustup_nightly() -> anyhow::Result<Option<BpfToolchain>> {
    let Ok(sysroot) = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])) else {
        return Ok(None);
    };
    let library = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if !library.exists() {
        eprintln!("xtask: rustup nightly has no rust-src component; trying Debian's Rust instead");
        return Ok(None);
    }
    let llvm = llvm_major(Command::new("rustc").arg("+nightly"))?;
    let linker_dir = ensure_bpf_linker(llvm, true)?;
    Ok(Some(BpfToolchain {
        description: format!("rustup nightly (LLVM {llvm}) + bpf-linker"),
        cargo: PathBuf::from("cargo"),
        toolchain_arg: Some("+nightly"),
        rustc: None,
        linker_dir,
    }))
}

/// Debian's rustc-web route, installing the packages when missing.
fn debian_route() -> anyhow::Result<BpfToolchain> {
    let rustc = PathBuf::from("/usr/bin/rustc");
    let cargo = PathBuf::from("/usr/bin/cargo");
    let library = Path::new("/usr/lib/rustlib/src/rust/library/core");
    let clippy = Path::new(DEBIAN_CARGO_CLIPPY);
    if !(rustc.exists() && cargo.exists() && library.exists() && clippy.exists()) {
        install_debian_rust()?;
    }
    let llvm = llvm_major(&mut Command::new(&rustc))?;
    let linker_dir = ensure_bpf_linker(llvm, false)?;
    Ok(BpfToolchain {
        description: format!("Debian rustc-web (LLVM {llvm}, RUSTC_BOOTSTRAP=1) + bpf-linker"),
        cargo,
        toolchain_arg: None,
        rustc: Some(rustc),
        linker_dir,
    })
}

fn install_debian_rust() -> anyhow::Result<()> {
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "no BPF toolchain: install rustup nightly with rust-src \
             (`rustup toolchain install nightly --component rust-src`) and \
             `cargo install bpf-linker`"
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "no BPF toolchain: run as root so xtask can `apt-get install {}`, or install \
             rustup nightly with rust-src and bpf-linker",
            DEBIAN_RUST.join(" ")
        );
    }
    eprintln!(
        "xtask: installing Debian's {} (Rust 1.96 with its library source and clippy): the BPF \
         crate is built with -Zbuild-std=core, which needs rust-src, and rustup cannot fetch it \
         here",
        DEBIAN_RUST.join(", ")
    );
    exec(Command::new("apt-get").args(["update", "-q"]))?;
    exec(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(DEBIAN_RUST),
    )
}

/// The LLVM major version a rustc was built with (`LLVM version: 22.1.8`).
fn llvm_major(rustc: &mut Command) -> anyhow::Result<u32> {
    let text = output(rustc.arg("-vV"))?;
    parse_llvm_major(&text).with_context(|| format!("no LLVM version in `rustc -vV`:\n{text}"))
}

fn parse_llvm_major(rustc_vv: &str) -> Option<u32> {
    let version = rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))?;
    version.split('.').next()?.trim().parse().ok()
}

/// Returns the directory of a bpf-linker built for LLVM `major`, installing one if needed.
fn ensure_bpf_linker(major: u32, trust_path: bool) -> anyhow::Result<PathBuf> {
    let dir = paths::tools_dir().join(format!("llvm-{major}"));
    let bin = dir.join("bin");
    if bin.join("bpf-linker").exists() {
        return Ok(bin);
    }
    // bpf-linker does not say which LLVM it links; one on PATH is trusted only on the rustup
    // route, where the user installed both (the usual aya set-up).
    if trust_path
        && let Ok(path) = output(Command::new("sh").args(["-c", "command -v bpf-linker"]))
        && let Some(parent) = Path::new(path.trim()).parent()
    {
        return Ok(parent.to_path_buf());
    }
    let libllvm = find_libllvm(major).with_context(|| {
        format!(
            "bpf-linker must be built against LLVM {major} (the compiler's), but no \
             libLLVM.so.{major} was found; install Debian's libllvm{major} or llvm-{major}-dev"
        )
    })?;
    // bpf-linker's build script asks `llvm-config` for the library; the system llvm-config may
    // be another version, so give it a prefix that holds just the right libLLVM.so.
    let stub = dir.join("llvm-prefix");
    std::fs::create_dir_all(stub.join("lib"))?;
    let link = stub.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)?;
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} (feature llvm-{major}, linked to \
         {}) into {}: the BPF linker must use the compiler's LLVM",
        libllvm.display(),
        dir.display()
    );
    exec(
        Command::new("cargo")
            .env("LLVM_PREFIX", &stub)
            .env_remove("RUSTUP_TOOLCHAIN")
            .args(["install", "--locked", "--root"])
            .arg(&dir)
            .args(["bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}")),
    )?;
    Ok(bin)
}

/// Finds the shared libLLVM of one major version in the usual library directories.
fn find_libllvm(major: u32) -> Option<PathBuf> {
    let dirs = ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"];
    let names = [
        format!("libLLVM.so.{major}.1"),
        format!("libLLVM-{major}.so"),
        format!("libLLVM.so.{major}"),
    ];
    dirs.iter()
        .flat_map(|d| names.iter().map(move |n| Path::new(d).join(n)))
        .find(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The LLVM major is read from the line rustc prints, not from rustc's own version.
    #[test]
    fn llvm_major_from_rustc_vv() {
        let text = "rustc 1.96.0 (ac68faa20 2026-05-25)\nhost: x86_64-unknown-linux-gnu\nrelease: 1.96.0\nLLVM version: 22.1.8\n";
        assert_eq!(parse_llvm_major(text), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0\n"), None);
    }
}
