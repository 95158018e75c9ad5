//! `probed trace --stack` on code built as distributions build it: a chain main → alpha →
//! beta → leaf compiled with `-O2 -fomit-frame-pointer` and no debug info
//! (daemon/tests/fixtures/stacks_nofp.c), where only `.eh_frame` describes the frames. BPF
//! copies the user stack; probed unwinds it with each module's CFI, against the hit's own
//! picture of the address space. Every stack reads leaf, beta, alpha, main (at the exact
//! return offsets, from objdump), then libc, then the program's `_start`, and says the walk
//! ended at the outermost frame — in modes `auto` and `dwarf`, at entry and at return.

mod common;

use std::path::{Path, PathBuf};

use common::{Probed, Target, num};
use serde_json::Value;

/// How distribution packages are built: optimized, no frame pointers, no debug info.
const FLAGS: [&str; 2] = ["-O2", "-fomit-frame-pointer"];

fn nofp_exe() -> PathBuf {
    let exe = probed::fixtures::build("stacks_nofp.c", "stacks_nofp", &FLAGS).expect("build");
    exe.canonicalize().expect("canonical path")
}

/// The section names of `bin`, from readelf.
fn sections(bin: &Path) -> String {
    let out = std::process::Command::new("readelf")
        .args(["-SW"])
        .arg(bin)
        .output()
        .expect("run readelf");
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Runs `probed trace SPEC --stack…` on 20 calls of the chain; returns the hits.
fn run(exe: &Path, spec: &str, stack_arg: &str) -> (Vec<Value>, Value) {
    let mut target = Target::start(exe, &["calls", "20"]);
    let pid = target.pid.to_string();
    let probed = Probed::start(&["trace", spec, "--pid", &pid, stack_arg, "--format", "json"]);
    target.go();
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    target.finish();
    let (hits, summary) = common::parse_json(&end.stdout);
    assert_eq!(hits.len(), 20, "{:?}", end.stdout);
    (hits, summary.expect("a summary"))
}

/// Asserts `hit`'s stack: `want` (symbol, offsets in it) innermost first in `exe`, then
/// only libc frames, then `exe`'s `_start`, and `stack_stop` = `end`.
fn check(hit: &Value, exe: &Path, want: &[(&str, Vec<u64>)]) {
    let stack = hit["stack"]
        .as_array()
        .unwrap_or_else(|| panic!("no stack: {hit}"));
    let module = exe.to_str().expect("UTF-8");
    assert!(stack.len() > want.len() + 1, "stack too short: {hit}");
    for (i, (frame, (symbol, offsets))) in stack.iter().zip(want).enumerate() {
        assert_eq!(frame["symbol"], *symbol, "frame {i} of {hit}");
        assert_eq!(frame["module"], module, "frame {i} of {hit}");
        let offset = num(frame, "offset");
        assert!(
            offsets.contains(&offset),
            "frame {i} offset {offset:#x} not in {offsets:x?}: {hit}"
        );
    }
    let (last, middle) = stack[want.len()..].split_last().expect("frames past main");
    for frame in middle {
        let m = frame["module"].as_str().unwrap_or_default();
        assert!(
            m.ends_with("/libc.so.6"),
            "a frame between main and _start outside libc: {frame} in {hit}"
        );
    }
    assert_eq!(last["symbol"], "_start", "{hit}");
    assert_eq!(last["module"], module, "{hit}");
    assert_eq!(hit["stack_stop"], "end", "{hit}");
    assert_eq!(hit["stack_truncated"], false, "{hit}");
}

/// Entry probe on leaf, modes auto (the default) and dwarf: leaf+0, beta, alpha, main.
#[test]
fn chain_without_frame_pointers_unwinds() {
    if !common::require_bpf("chain_without_frame_pointers_unwinds") {
        return;
    }
    let exe = nofp_exe();
    let text = sections(&exe);
    assert!(text.contains(".eh_frame"), "{text}");
    assert!(
        !text.contains(".debug_"),
        "the fixture has debug info: {text}"
    );
    let want = [
        ("leaf", vec![0]),
        ("beta", common::return_offsets(&exe, "beta", Some("leaf"))),
        ("alpha", common::return_offsets(&exe, "alpha", Some("beta"))),
        ("main", common::return_offsets(&exe, "main", Some("alpha"))),
    ];
    let spec = format!("uprobe:{}:leaf", exe.display());
    for arg in ["--stack", "--stack=dwarf"] {
        let (hits, summary) = run(&exe, &spec, arg);
        for hit in &hits {
            check(hit, &exe, &want);
        }
        assert_eq!(num(&summary["resolver"], "stack_stop_end"), 20, "{summary}");
    }
}

/// Return probe on leaf: the stack starts in beta (the address leaf returned to), then
/// alpha and main.
#[test]
fn chain_without_frame_pointers_unwinds_at_return() {
    if !common::require_bpf("chain_without_frame_pointers_unwinds_at_return") {
        return;
    }
    let exe = nofp_exe();
    let want = [
        ("beta", common::return_offsets(&exe, "beta", Some("leaf"))),
        ("alpha", common::return_offsets(&exe, "alpha", Some("beta"))),
        ("main", common::return_offsets(&exe, "main", Some("alpha"))),
    ];
    let spec = format!("uretprobe:{}:leaf", exe.display());
    let (hits, _) = run(&exe, &spec, "--stack");
    for hit in &hits {
        check(hit, &exe, &want);
    }
}

/// With libc's debug file installed (Debian: libc6-dbg, found by build-id), libc's static
/// `_int_malloc` attaches by name (`uprobe:libc:_int_malloc`), and every frame inside libc
/// is named: `_int_malloc`, then the libc functions that called it, then the program's main.
#[test]
fn libc_static_functions_by_debug_file() {
    if !common::require_bpf("libc_static_functions_by_debug_file") {
        return;
    }
    let bin = probed::fixtures::build("malloc_count.c", "malloc_count", &["-O2"])
        .expect("build malloc_count");
    let mut target = Target::start(&bin, &["200"]);
    let libc = common::mapped_libc(&target.pid.to_string());
    let id = common::build_id(&libc);
    let debug = format!("/usr/lib/debug/.build-id/{}/{}.debug", &id[..2], &id[2..]);
    assert!(
        Path::new(&debug).exists(),
        "{debug} is missing: install libc6-dbg (the debug file of {})",
        libc.display()
    );
    let pid = target.pid.to_string();
    let probed = Probed::start(&[
        "trace",
        "uprobe:libc:_int_malloc",
        "--pid",
        &pid,
        "--stack",
        "--format",
        "json",
    ]);
    target.go();
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    target.finish();
    let (hits, _) = common::parse_json(&end.stdout);
    assert!(!hits.is_empty(), "no hit of _int_malloc: {:?}", end.stdout);
    let libc_path = libc.to_str().expect("UTF-8");
    for hit in &hits {
        let stack = hit["stack"].as_array().expect("a stack");
        assert_eq!(stack[0]["symbol"], "_int_malloc", "{hit}");
        let main = stack
            .iter()
            .position(|f| f["symbol"] == "main")
            .unwrap_or_else(|| panic!("no main: {hit}"));
        assert!(main >= 2, "{hit}");
        for frame in &stack[..main] {
            assert_eq!(frame["module"], libc_path, "{hit}");
            assert!(
                frame["symbol"].is_string(),
                "an unnamed libc frame: {frame} in {hit}"
            );
        }
        assert_eq!(hit["stack_stop"], "end", "{hit}");
    }
}

/// The copy's size is the user's (`--stack-copy-kib`). leaf called through 24 nested
/// frames of 1 KiB (~25 KiB of stack): with 64 KiB every stack is unwound to `_start`
/// (leaf, beta, alpha, 24 × deep, main; stop reason `end`); with 16 and 4 KiB it is cut
/// where the copy ends (`stack_copy_end`), after at most 16 and 4 `deep` frames. A size
/// BPF has no path for is refused with one line.
#[test]
fn stack_copy_size_is_the_users() {
    if !common::require_bpf("stack_copy_size_is_the_users") {
        return;
    }
    const DEPTH: usize = 24;
    let exe = nofp_exe();
    let spec = format!("uprobe:{}:leaf", exe.display());
    let deep_frames = |hit: &Value| {
        hit["stack"]
            .as_array()
            .unwrap_or_else(|| panic!("no stack: {hit}"))
            .iter()
            .filter(|f| f["symbol"] == "deep")
            .count()
    };
    for (kib, stop, most_deep) in [
        ("64", "end", DEPTH),
        ("16", "stack_copy_end", 16),
        ("4", "stack_copy_end", 4),
    ] {
        let mut target = Target::start(&exe, &["calls", "20", &DEPTH.to_string()]);
        let pid = target.pid.to_string();
        let probed = Probed::start(&[
            "trace",
            &spec,
            "--pid",
            &pid,
            "--stack",
            "--stack-copy-kib",
            kib,
            "--format",
            "json",
        ]);
        target.go();
        let end = probed.stop(libc::SIGINT);
        assert!(end.status.success(), "{end:?}");
        target.finish();
        let (hits, summary) = common::parse_json(&end.stdout);
        let summary = summary.expect("a summary");
        assert_eq!(hits.len(), 20, "{kib} KiB: {:?}", end.stdout);
        for hit in &hits {
            assert_eq!(hit["stack_stop"], stop, "{kib} KiB: {hit}");
            let deep = deep_frames(hit);
            let names: Vec<&str> = hit["stack"]
                .as_array()
                .expect("a stack")
                .iter()
                .take(3)
                .map(|f| f["symbol"].as_str().unwrap_or("?"))
                .collect();
            // The copy starts at the page holding sp: a 4 KiB copy holds what lies above sp
            // on that page, which ASLR makes anything from a few bytes to 4 KiB — it may end
            // before alpha's frame (seen in CI: leaf, beta). The frames it gives are these.
            let whole = if kib == "4" { names.len().max(1) } else { 3 };
            assert_eq!(
                names,
                ["leaf", "beta", "alpha"][..whole],
                "{kib} KiB: {hit}"
            );
            if stop == "end" {
                assert_eq!(deep, DEPTH, "{kib} KiB: {hit}");
                let stack = hit["stack"].as_array().expect("a stack");
                assert_eq!(stack[3 + DEPTH]["symbol"], "main", "{hit}");
                assert_eq!(stack.last().expect("frames")["symbol"], "_start", "{hit}");
            } else {
                assert!(
                    deep <= most_deep && deep + 4 >= most_deep,
                    "{kib} KiB: {deep} deep frames: {hit}"
                );
            }
        }
        let stops = format!("stack_stop_{stop}");
        assert_eq!(num(&summary["resolver"], &stops), 20, "{summary}");
    }
    let refused = common::run_to_end(std::process::Command::new(common::probed_bin()).args([
        "trace",
        &spec,
        "--stack",
        "--stack-copy-kib",
        "12",
    ]));
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        refused
            .stderr
            .iter()
            .any(|l| l.contains("is not a stack copy size in KiB (one of [4, 8, 16, 32, 64])")),
        "{refused:?}"
    );
}
