//! Embeds the BPF object built by `cargo xtask build-ebpf` into the probed binary.
//!
//! The object is embedded (not located at run time) so that one `probed` file is the whole
//! install: a systemd unit, a container image or a copy to another host cannot pair a daemon
//! with a BPF object of a different ABI (`probed-common` layouts).
//!
//! When the object is missing, the build still succeeds with an empty stub and a warning, so
//! `cargo build`, `cargo clippy` and unit tests work without the BPF toolchain; such a binary
//! refuses to trace with an error that says how to build the object. Set
//! `PROBED_REQUIRE_BPF=1` (xtask and CI do) to make a missing object a build error instead.
use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("probed.bpf.o");
    let object = match env::var_os("PROBED_BPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => manifest.join("../target/bpf/bpfel-unknown-none/release/probed"),
    };
    println!("cargo::rerun-if-env-changed=PROBED_BPF_OBJECT");
    println!("cargo::rerun-if-env-changed=PROBED_REQUIRE_BPF");
    println!("cargo::rerun-if-changed={}", object.display());
    println!("cargo::rustc-check-cfg=cfg(probed_bpf_stub)");
    // Set by RUSTFLAGS for the loom models of the resolver (see resolve/loom_tests.rs).
    println!("cargo::rustc-check-cfg=cfg(probed_loom)");
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).expect("write the embedded BPF object"),
        Err(err) => {
            if env::var_os("PROBED_REQUIRE_BPF").is_some_and(|v| v == "1") {
                panic!(
                    "PROBED_REQUIRE_BPF=1 but the BPF object {} cannot be read ({err}); \
                     run `cargo xtask build-ebpf` first",
                    object.display()
                );
            }
            println!(
                "cargo::warning=BPF object {} not found: building a probed that cannot trace \
                 (run `cargo xtask build-ebpf`, then build again)",
                object.display()
            );
            println!("cargo::rustc-cfg=probed_bpf_stub");
            fs::write(&out, []).expect("write the stub BPF object");
        }
    }
}
