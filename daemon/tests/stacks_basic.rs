//! `probed trace --stack` against a C call chain main → chain_a → chain_b → stacks_leaf
//! (daemon/tests/fixtures/stacks_chain.c, frame pointers, no inlining): the stack of every
//! hit matches the chain exactly — symbols, modules, return-address offsets (from objdump)
//! and addresses (from /proc/PID/maps) — in a PIE executable and with the probed function in
//! a shared library; frames of a library dlclosed right after the hits, and of processes that
//! exit right after, still resolve; and `--aggregate stack` / `--flamegraph` count every hit.

mod common;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use common::{Probed, Target, num};
use serde_json::Value;

/// Compiler flags of the stack fixtures: frame pointers, nothing inlined.
const FLAGS: [&str; 3] = ["-O1", "-fno-omit-frame-pointer", "-fno-inline"];

/// The chain as a PIE executable with its own stacks_leaf.
fn chain_exe() -> PathBuf {
    probed::fixtures::build("stacks_chain.c", "stacks_chain", &FLAGS).expect("build stacks_chain")
}

/// The library holding stacks_leaf.
fn leaf_lib() -> PathBuf {
    let mut flags = FLAGS.to_vec();
    flags.extend(["-shared", "-fPIC"]);
    probed::fixtures::build("stacks_lib.c", "libstacks_leaf.so", &flags).expect("build lib")
}

/// The chain as a PIE executable linked with [`leaf_lib`] (its stacks_leaf).
fn chain_exe_with_lib(lib: &Path) -> PathBuf {
    let mut flags = FLAGS.to_vec();
    flags.extend(["-DLEAF_IN_LIB", lib.to_str().expect("UTF-8 path")]);
    probed::fixtures::build("stacks_chain.c", "stacks_chain_lib", &flags).expect("build")
}

/// One expected frame: symbol, module, and the offsets it may have in its symbol.
struct Want<'a> {
    symbol: &'a str,
    module: &'a Path,
    offsets: Vec<u64>,
}

impl<'a> Want<'a> {
    /// The probed instruction: offset 0 of `symbol`.
    fn probed(symbol: &'a str, module: &'a Path) -> Self {
        Self {
            symbol,
            module,
            offsets: vec![0],
        }
    }

    /// A return address in `caller` just after a call to `callee`.
    fn returns(caller: &'a str, module: &'a Path, callee: Option<&str>) -> Self {
        Self {
            symbol: caller,
            module,
            offsets: common::return_offsets(module, caller, callee),
        }
    }
}

/// Asserts that the stack of `hit` starts with exactly `want` (innermost first), with each
/// frame's address where `pid` maps it (when `pid` is given: the process still maps the
/// module), and that the frames past main are all in libc — but for the program's `_start`
/// as the last frame of a stack unwound by CFI (`--stack`, `auto`), which reaches the entry
/// point (its `stack_stop` then says `end`) where the frame-pointer walk stops in libc.
fn check_stack(hit: &Value, want: &[Want<'_>], pid: Option<u32>) {
    let stack = hit["stack"]
        .as_array()
        .unwrap_or_else(|| panic!("no stack in {hit}"));
    assert!(stack.len() > want.len(), "stack too short: {hit}");
    for (i, (frame, w)) in stack.iter().zip(want).enumerate() {
        assert_eq!(frame["symbol"], w.symbol, "frame {i} of {hit}");
        assert_eq!(
            frame["module"],
            w.module.to_str().expect("UTF-8"),
            "frame {i} of {hit}"
        );
        let offset = num(frame, "offset");
        assert!(
            w.offsets.contains(&offset),
            "frame {i} offset {offset:#x} not in {:x?}: {hit}",
            w.offsets
        );
        assert!(frame.get("unresolved").is_none(), "frame {i} of {hit}");
        if let Some(pid) = pid {
            let vaddr = common::symbol_vaddr(w.module, w.symbol) + offset;
            let addr =
                common::mapped_addr(pid, w.module, common::vaddr_to_file_offset(w.module, vaddr));
            assert_eq!(frame["addr"], format!("{addr:#x}"), "frame {i} of {hit}");
        }
    }
    let unwound = hit.get("stack_stop").is_some();
    let mut past_main = &stack[want.len()..];
    if unwound {
        assert_eq!(hit["stack_stop"], "end", "{hit}");
        let last = stack.last().expect("frames");
        assert_eq!(last["symbol"], "_start", "{hit}");
        assert_eq!(
            last["module"],
            want[want.len() - 1].module.to_str().expect("UTF-8")
        );
        past_main = &past_main[..past_main.len() - 1];
    }
    for frame in past_main {
        let module = frame["module"].as_str().unwrap_or_default();
        assert!(
            module.ends_with("/libc.so.6"),
            "a frame past main outside libc: {frame} in {hit}"
        );
    }
}

/// The JSON lines of a run, by type.
#[derive(Default)]
struct Lines {
    hits: Vec<Value>,
    folded: Vec<Value>,
    summary: Option<Value>,
}

fn parse(lines: &[String]) -> Lines {
    let mut out = Lines::default();
    for line in lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(out.summary.is_none(), "a line after the summary: {line}");
        match v["type"].as_str() {
            Some("hit") => out.hits.push(v),
            Some("folded") => out.folded.push(v),
            Some("summary") => out.summary = Some(v),
            other => panic!("unexpected line type {other:?}: {line}"),
        }
    }
    out
}

/// Sends `signal` to probed (SIGSTOP holds it while the target runs, SIGCONT resumes it).
fn signal(probed: &Probed, signal: i32) {
    let pid = i32::try_from(probed.pid()).expect("pid fits i32");
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill probed");
}

/// Whether process `pid` maps `file`.
fn maps(pid: u32, file: &Path) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .expect("read maps")
        .lines()
        .any(|l| l.ends_with(file.to_str().expect("UTF-8")))
}

/// In a PIE executable, every hit's stack is stacks_leaf (offset 0: it sets up a frame, so
/// the caller is found from the return address on the stack top), chain_b, chain_a and main
/// at their return offsets, at the addresses the process maps them at, then libc: unwound
/// from a stack copy by CFI (`--stack`, mode `auto`).
#[test]
fn pie_chain_matches_exactly() {
    if !common::require_bpf("pie_chain_matches_exactly") {
        return;
    }
    pie_chain("--stack");
}

/// The same with the kernel's frame-pointer walk (`--stack=fp`): no stack copy, no
/// `stack_stop`, the frames past main in libc.
#[test]
fn pie_chain_matches_exactly_fp() {
    if !common::require_bpf("pie_chain_matches_exactly_fp") {
        return;
    }
    pie_chain("--stack=fp");
}

fn pie_chain(stack_arg: &str) {
    let exe = chain_exe().canonicalize().expect("canonical path");
    let mut target = Target::start(&exe, &["calls", "20"]);
    let spec = format!("uprobe:{}:stacks_leaf", exe.display());
    let pid = target.pid.to_string();
    let probed = Probed::start(&["trace", &spec, "--pid", &pid, stack_arg, "--format", "json"]);
    target.go();
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let lines = parse(&end.stdout);
    assert_eq!(lines.hits.len(), 20, "{:?}", end.stdout);
    let want = [
        Want::probed("stacks_leaf", &exe),
        Want::returns("chain_b", &exe, None),
        Want::returns("chain_a", &exe, Some("chain_b")),
        Want::returns("main", &exe, Some("chain_a")),
    ];
    for hit in &lines.hits {
        check_stack(hit, &want, Some(target.pid));
        assert_eq!(
            hit.get("stack_stop").is_some(),
            stack_arg != "--stack=fp",
            "{hit}"
        );
    }
    target.finish();
}

/// With stacks_leaf in a shared library (no frame of its own), the innermost frame is the
/// library's and its callers are the executable's, exactly.
#[test]
fn library_chain_matches_exactly() {
    if !common::require_bpf("library_chain_matches_exactly") {
        return;
    }
    let lib = leaf_lib().canonicalize().expect("canonical path");
    let exe = chain_exe_with_lib(&lib).canonicalize().expect("canonical");
    let mut target = Target::start(&exe, &["calls", "20"]);
    let spec = format!("uprobe:{}:stacks_leaf", lib.display());
    let pid = target.pid.to_string();
    let probed = Probed::start(&["trace", &spec, "--pid", &pid, "--stack", "--format", "json"]);
    target.go();
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let lines = parse(&end.stdout);
    assert_eq!(lines.hits.len(), 20, "{:?}", end.stdout);
    let want = [
        Want::probed("stacks_leaf", &lib),
        Want::returns("chain_b", &exe, None),
        Want::returns("chain_a", &exe, Some("chain_b")),
        Want::returns("main", &exe, Some("chain_a")),
    ];
    for hit in &lines.hits {
        check_stack(hit, &want, Some(target.pid));
    }
    target.finish();
}

/// Hits in a library that is dlclosed right after them resolve exactly, every frame, even
/// when probed only reads them after the library is gone (probed is stopped meanwhile; two
/// dlopen/dlclose rounds). Stacks copied for the CFI unwinder (`--stack`: syscall tracker).
#[test]
fn dlclosed_library_frames_resolve() {
    if !common::require_bpf("dlclosed_library_frames_resolve") {
        return;
    }
    dlclosed_library_frames("--stack");
}

/// The same with the kernel's frame-pointer walk (`--stack=fp`): on 6.14+ kernels `auto`
/// runs lock mode, where each frame carries its own hit-time capture.
#[test]
fn dlclosed_library_frames_resolve_fp() {
    if !common::require_bpf("dlclosed_library_frames_resolve_fp") {
        return;
    }
    dlclosed_library_frames("--stack=fp");
}

fn dlclosed_library_frames(stack_arg: &str) {
    let lib = leaf_lib().canonicalize().expect("canonical path");
    let exe = chain_exe().canonicalize().expect("canonical path");
    let lib_arg = lib.to_str().expect("UTF-8");
    let mut target = Target::start(&exe, &["dlclose", lib_arg, "5"]);
    let spec = format!("uprobe:{lib_arg}:stacks_leaf");
    let pid = target.pid.to_string();
    let probed = Probed::start(&["trace", &spec, "--pid", &pid, stack_arg, "--format", "json"]);
    signal(&probed, libc::SIGSTOP);
    target.go();
    target.go();
    assert!(!maps(target.pid, &lib), "the library is still mapped");
    signal(&probed, libc::SIGCONT);
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let lines = parse(&end.stdout);
    assert_eq!(lines.hits.len(), 10, "{:?}", end.stdout);
    assert_tracker(&lines, stack_arg);
    let want = [
        Want::probed("stacks_leaf", &lib),
        Want::returns("chain_b", &exe, None),
        Want::returns("chain_a", &exe, Some("chain_b")),
        Want::returns("main", &exe, Some("chain_a")),
    ];
    // The resolver's and tracker's counters go with any failure below (a 6.1 guest once
    // answered every frame `no_snapshot_at_seq`: which counter moved was not said).
    eprintln!(
        "summary: {}",
        lines.summary.as_ref().map_or(Value::Null, Clone::clone)
    );
    for hit in &lines.hits {
        check_stack(hit, &want, None);
    }
    target.finish();
}

/// The tracker `auto` must have chosen for a run with `stack_arg`: lock mode for
/// frame-pointer stacks where the kernel has the 6.14+ mmap_lock tracepoints, a replaying
/// mode (kprobes or syscalls) for copied stacks (lock mode cannot capture frames found after
/// the hit) and older kernels; the one `PROBED_TRACKER` names when set.
fn assert_tracker(lines: &Lines, stack_arg: &str) {
    let summary = lines.summary.as_ref().expect("a summary");
    assert_eq!(
        summary["tracker"],
        common::trace_tracker(stack_arg != "--stack=fp"),
        "{summary}"
    );
}

/// A process that exits right after its hit resolves exactly, every frame: one traced with
/// --pid from before probed started, and one started (and exited) while probed was
/// stopped, known to probed only from the kernel's exec and mapping reports (`--stack`:
/// copied stacks, syscall tracker).
#[test]
fn exited_process_frames_resolve() {
    if !common::require_bpf("exited_process_frames_resolve") {
        return;
    }
    exited_process_frames("--stack");
}

/// The same with frame-pointer stacks (`--stack=fp`: lock mode on 6.14+ kernels).
#[test]
fn exited_process_frames_resolve_fp() {
    if !common::require_bpf("exited_process_frames_resolve_fp") {
        return;
    }
    exited_process_frames("--stack=fp");
}

fn exited_process_frames(stack_arg: &str) {
    let dir = common::PrivateDir::new("stacks_exit");
    let exe = dir.copy(&chain_exe(), "stacks_exit");
    let want = [
        Want::probed("stacks_leaf", &exe),
        Want::returns("chain_b", &exe, None),
        Want::returns("chain_a", &exe, Some("chain_b")),
        Want::returns("main", &exe, Some("chain_a")),
    ];
    let spec = format!("uprobe:{}:stacks_leaf", exe.display());

    let mut target = Target::start(&exe, &["exit"]);
    let pid = target.pid.to_string();
    let probed = Probed::start(&["trace", &spec, "--pid", &pid, stack_arg, "--format", "json"]);
    signal(&probed, libc::SIGSTOP);
    target.go();
    target.finish();
    signal(&probed, libc::SIGCONT);
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let lines = parse(&end.stdout);
    assert_eq!(lines.hits.len(), 1, "{:?}", end.stdout);
    assert_tracker(&lines, stack_arg);
    check_stack(&lines.hits[0], &want, None);

    let probed = Probed::start(&["trace", &spec, stack_arg, "--format", "json"]);
    signal(&probed, libc::SIGSTOP);
    let mut target = Target::start(&exe, &["exit"]);
    target.go();
    target.finish();
    signal(&probed, libc::SIGCONT);
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let lines = parse(&end.stdout);
    assert_eq!(lines.hits.len(), 1, "{:?}", end.stdout);
    check_stack(&lines.hits[0], &want, None);
}

/// Every `<title>` of an SVG; panics unless it is well-formed XML.
fn svg_titles(svg: &[u8]) -> Vec<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(svg);
    let mut buf = Vec::new();
    let (mut titles, mut in_title, mut depth) = (Vec::<String>::new(), false, 0i64);
    loop {
        match reader.read_event_into(&mut buf).expect("well-formed XML") {
            Event::Start(e) => {
                depth += 1;
                in_title = e.name().as_ref() == b"title";
                if in_title {
                    titles.push(String::new());
                }
            }
            Event::End(_) => {
                depth -= 1;
                in_title = false;
            }
            Event::Text(t) if in_title => {
                let text = t.decode().expect("UTF-8");
                titles.last_mut().expect("in a title").push_str(&text);
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    assert_eq!(depth, 0, "unbalanced elements");
    titles
}

/// `--aggregate stack --flamegraph F --interval` in JSON: no per-hit lines; interim folded
/// lines while running; the final folded line's counts add up to the hits BPF counted, in
/// one stack ending main;chain_a;chain_b;stacks_leaf; the SVG parses as XML and names every
/// function of the chain with that count.
#[test]
fn folded_and_flamegraph_count_every_hit() {
    if !common::require_bpf("folded_and_flamegraph_count_every_hit") {
        return;
    }
    const CALLS: u64 = 50;
    let exe = chain_exe().canonicalize().expect("canonical path");
    let dir = common::PrivateDir::new("stacks_svg");
    let svg = dir.path.join("chain.svg");
    let mut target = Target::start(&exe, &["calls", &CALLS.to_string()]);
    let spec = format!("uprobe:{}:stacks_leaf", exe.display());
    let pid = target.pid.to_string();
    let svg_arg = svg.to_str().expect("UTF-8");
    let probed = Probed::start(&[
        "trace",
        &spec,
        "--pid",
        &pid,
        "--aggregate",
        "stack",
        "--flamegraph",
        svg_arg,
        "--interval",
        "0.1",
        "--format",
        "json",
    ]);
    target.go();
    target.go();
    // An interim report arrives while probed runs.
    let first = probed
        .lines
        .recv_timeout(Duration::from_secs(10))
        .expect("an interval report");
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let mut all = vec![first];
    all.extend(end.stdout);
    let lines = parse(&all);
    assert!(lines.hits.is_empty(), "per-hit lines were printed");
    assert_eq!(lines.folded[0]["final"], false, "{:?}", lines.folded[0]);
    let last = lines.folded.last().expect("a folded line");
    assert_eq!(last["final"], true, "{last}");
    let summary = lines.summary.expect("a summary");
    let hits = num(&summary["probes"][0], "hits");
    assert_eq!(hits, 2 * CALLS, "{summary}");
    assert_eq!(num(last, "hits"), hits, "{last}");
    let stacks = last["stacks"].as_array().expect("stacks");
    let counted: u64 = stacks.iter().map(|s| num(s, "count")).sum();
    assert_eq!(counted, hits, "{last}");
    assert_eq!(stacks.len(), 1, "{last}");
    let folded = stacks[0]["stack"].as_str().expect("folded text");
    assert!(
        folded.ends_with(";main;chain_a;chain_b;stacks_leaf"),
        "{folded}"
    );

    let titles = svg_titles(&std::fs::read(&svg).expect("read the SVG"));
    for name in ["main", "chain_a", "chain_b", "stacks_leaf"] {
        let want = format!("{name} ({hits} hits");
        assert!(
            titles.iter().any(|t| t.starts_with(&want)),
            "{want} not in {titles:?}"
        );
    }
    target.finish();
}
