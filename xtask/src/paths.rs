//! Every path the tasks use, in one place.

use std::path::PathBuf;

/// The workspace root (the parent of xtask/).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The cargo target directory of the userspace build.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// Where the BPF crate is built (its own workspace, its own target dir).
pub fn bpf_target_dir() -> PathBuf {
    root().join("target/bpf")
}

/// The BPF object `cargo xtask build-ebpf` produces and the daemon's build.rs embeds.
pub fn bpf_object() -> PathBuf {
    bpf_target_dir().join("bpfel-unknown-none/release/probed")
}

/// Benchmark results.
pub fn bench_dir() -> PathBuf {
    // A read-only workspace (a kernel guest's: `cargo xtask vm`) writes elsewhere.
    std::env::var_os("PROBED_BENCH_DIR")
        .map_or_else(|| root().join("target/probed-bench"), PathBuf::from)
}

/// Tools xtask installs for the BPF build (bpf-linker), kept outside target/ so that
/// `cargo clean` does not force a reinstall.
pub fn tools_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache"),
        PathBuf::from,
    );
    cache.join("probed/tools")
}

/// The release probed binary.
pub fn probed_bin() -> PathBuf {
    target_dir().join("release/probed")
}
