//! Stack frames of C++ and Rust programs come out demangled: a C++ chain in namespaces and a
//! class template (daemon/tests/fixtures/stacks_cpp.cpp, g++), and a Rust chain through a
//! generic impl (stacks_rust.rs, rustc with frame pointers, legacy and v0 mangling).

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{PrivateDir, Probed, Target, parse_json};
use serde_json::Value;

/// Compiles `cmd` (its output path already given), panicking with the compiler's errors.
fn compile(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The rustc of this toolchain: $RUSTC, else the one next to $CARGO, else PATH's.
fn rustc() -> PathBuf {
    if let Some(rustc) = std::env::var_os("RUSTC") {
        return rustc.into();
    }
    std::env::var_os("CARGO")
        .map(|cargo| PathBuf::from(cargo).with_file_name("rustc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "rustc".into())
}

/// The defined symbol of `bin` whose raw name contains `part` (exactly one).
fn mangled(bin: &Path, part: &str) -> String {
    let out = Command::new("nm")
        .arg("--defined-only")
        .arg(bin)
        .output()
        .expect("run nm");
    let names: Vec<String> = String::from_utf8(out.stdout)
        .expect("UTF-8 nm output")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|n| n.contains(part))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        names.len(),
        1,
        "symbols of {} with {part}: {names:?}",
        bin.display()
    );
    names.into_iter().next().expect("one name")
}

/// Traces `symbol` of `bin` with --stack in a target running `calls` calls per round, and
/// returns the hits.
fn trace_stacks(bin: &Path, symbol: &str, calls: u64) -> Vec<Value> {
    let mut target = Target::start(bin, &[&calls.to_string()]);
    let spec = format!("uprobe:{}:{symbol}", bin.display());
    let pid = target.pid.to_string();
    let probed = Probed::start(&["trace", &spec, "--pid", &pid, "--stack", "--format", "json"]);
    target.go();
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    target.finish();
    let (hits, _) = parse_json(&end.stdout);
    assert_eq!(hits.len() as u64, calls, "{:?}", end.stdout);
    hits
}

/// Asserts that every hit's symbol is `want[0]` and its stack starts with `want`
/// (innermost first), every one of those frames in `bin`.
fn check(hits: &[Value], bin: &Path, want: &[&str]) {
    let module = bin.to_str().expect("UTF-8 path");
    for hit in hits {
        assert_eq!(hit["symbol"], want[0], "{hit}");
        let stack = hit["stack"].as_array().expect("a stack");
        let names: Vec<&str> = stack.iter().filter_map(|f| f["symbol"].as_str()).collect();
        assert!(stack.len() >= want.len(), "{names:?}");
        for (i, (frame, name)) in stack.iter().zip(want).enumerate() {
            assert_eq!(frame["symbol"], *name, "frame {i}: {names:?}");
            assert_eq!(frame["module"], module, "frame {i}: {hit}");
        }
    }
}

/// C++: a member of a class template in nested namespaces, called from a namespaced
/// function taking a const reference, called from main: demangled with namespaces, template
/// arguments, parameter types and const.
#[test]
fn cpp_frames_are_demangled() {
    if !common::require_bpf("cpp_frames_are_demangled") {
        return;
    }
    let dir = PrivateDir::new("stacks_cpp");
    let bin = dir.path.join("stacks_cpp");
    let source = probed::fixtures::source_dir().join("stacks_cpp.cpp");
    compile(
        Command::new("g++")
            .args(["-O1", "-fno-omit-frame-pointer", "-fno-inline", "-o"])
            .arg(&bin)
            .arg(source),
    );
    let symbol = mangled(&bin, "4leaf");
    let hits = trace_stacks(&bin, &symbol, 5);
    check(
        &hits,
        &bin,
        &[
            "shapes::detail::Holder<int>::leaf(int) const",
            "shapes::middle(shapes::detail::Holder<int> const&, int)",
            "main",
        ],
    );
}

/// Rust, legacy and v0 mangling: crate::module::function paths without hashes, the generic
/// impl's method as each scheme names it.
#[test]
fn rust_frames_are_demangled() {
    if !common::require_bpf("rust_frames_are_demangled") {
        return;
    }
    let dir = PrivateDir::new("stacks_rust");
    let source = probed::fixtures::source_dir().join("stacks_rust.rs");
    // Legacy is rustc's default (naming it explicitly needs -Z unstable-options).
    for (mangling, run) in [
        (None, "stacks_rust::engine::worker::Job<T>::run"),
        (
            Some("-Csymbol-mangling-version=v0"),
            "<stacks_rust::engine::worker::Job<u32>>::run",
        ),
    ] {
        let bin = dir.path.join(if mangling.is_some() {
            "rust_v0"
        } else {
            "rust_legacy"
        });
        compile(
            Command::new(rustc())
                .args([
                    "--edition=2021",
                    "--crate-name=stacks_rust",
                    "-Cforce-frame-pointers=yes",
                    "-Copt-level=1",
                ])
                .args(mangling)
                .arg("-o")
                .arg(&bin)
                .arg(&source),
        );
        let symbol = mangled(&bin, "6engine4leaf");
        let hits = trace_stacks(&bin, &symbol, 5);
        check(
            &hits,
            &bin,
            &["stacks_rust::engine::leaf", run, "stacks_rust::main"],
        );
    }
}
