//! A replayed mapping is named after its own file: a program alternately dlopens two builds
//! of one library source (libcb_a.so, libcb_b.so) that land at the same address, and each
//! library calls back into the program's probed `callback`. Every stack's library frame must
//! name the library really mapped at the hit (the callback's argument says which), with its
//! symbol, and the frame below it `main` — from a plain directory and from an overlayfs
//! mount (where the kernel maps a backing file whose identity is not the one /proc shows).
//! Names learned from /proc at processing time would name whichever library is mapped
//! *then* (issue 13: half the stacks named the wrong library).

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{Probed, Target};
use serde_json::Value;

/// Rounds of the churn: one dlopen, call and dlclose each, alternating the libraries.
const ROUNDS: usize = 5_000;

/// Compiler flags: frame pointers, nothing inlined.
const FLAGS: [&str; 3] = ["-O1", "-fno-omit-frame-pointer", "-fno-inline"];

/// The program and the two libraries, built once (cached by the fixtures module).
fn binaries() -> [PathBuf; 3] {
    let mut exe_flags = FLAGS.to_vec();
    exe_flags.extend(["-rdynamic", "-ldl"]);
    let exe = probed::fixtures::build("names_cb_target.c", "names_cb_target", &exe_flags)
        .expect("build names_cb_target");
    let lib = |name: &str, tag: &str| {
        let mut flags = FLAGS.to_vec();
        // A define that changes nothing but the build's hash: two files of one source.
        flags.extend(["-shared", "-fPIC", tag]);
        probed::fixtures::build("names_cb_lib.c", name, &flags).expect("build library")
    };
    [
        exe,
        lib("libcb_a.so", "-DCB_BUILD=1"),
        lib("libcb_b.so", "-DCB_BUILD=2"),
    ]
}

/// A private directory under the temp dir, removed on drop (after any mount on it).
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("probed-tests/names-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        Self(dir.canonicalize().expect("canonical test dir"))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An overlayfs mount (lower/upper/work inside a [`Dir`]); unmounted on drop.
struct Overlay {
    merged: PathBuf,
    /// The tmpfs holding the layers.
    base: PathBuf,
    _dir: Dir,
}

impl Overlay {
    /// Mounts an overlay whose lower layer holds `files`.
    fn with(files: &[PathBuf]) -> Self {
        let dir = Dir::new("overlay");
        // The layers live on a tmpfs of their own: the suite's second pass keeps /tmp on the
        // container's overlayfs root, and overlayfs refuses an upper or work directory that
        // is itself on overlayfs.
        let base = dir.0.join("layers");
        std::fs::create_dir_all(&base).expect("create layers dir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "layers"])
            .arg(&base)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs at {}", base.display());
        let [lower, upper, work, merged] =
            ["lower", "upper", "work", "merged"].map(|d| base.join(d));
        for d in [&lower, &upper, &work, &merged] {
            std::fs::create_dir_all(d).expect("create overlay dir");
        }
        copy_into(files, &lower);
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let status = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount overlay at {}", merged.display());
        Self {
            merged,
            base,
            _dir: dir,
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
        let _ = Command::new("umount").arg("-l").arg(&self.base).status();
    }
}

/// Copies `files` into `dir` under the names the test uses.
fn copy_into(files: &[PathBuf], dir: &Path) -> [PathBuf; 3] {
    let names = ["names_cb_target", "libcb_a.so", "libcb_b.so"];
    for (file, name) in files.iter().zip(names) {
        std::fs::copy(file, dir.join(name)).expect("copy fixture");
    }
    names.map(|n| dir.join(n))
}

/// Runs the churn from `dir` (holding the program and libraries) under `probed trace
/// --stack` and checks every stack.
fn churn_names_libraries(dir: &Path) {
    let [exe, lib_a, lib_b] = ["names_cb_target", "libcb_a.so", "libcb_b.so"].map(|n| dir.join(n));
    let rounds = ROUNDS.to_string();
    let mut target = Target::start(
        &exe,
        &[lib_a.to_str().unwrap(), lib_b.to_str().unwrap(), &rounds],
    );
    let spec = format!("uprobe:{}:callback", exe.display());
    let pid = target.pid.to_string();
    // The frame-pointer walk (the fixtures keep frame pointers): this test is about naming
    // the frames of libraries replaced under churn, 5,000 hits in a burst; stack copies
    // (`--stack`'s CFI) are stacks_cfi's.
    // All 5,000 must be printed: the drain at stop gets 30 s, not the default 2 s, which a
    // starved CPU may exceed (ci-local run 17, with a guest and builds beside it: 4,960
    // printed; the summary was not in the message then).
    let probed = Probed::start(&[
        "trace",
        &spec,
        "--pid",
        &pid,
        "--stack=fp",
        "--drain-timeout",
        "30",
        "--format",
        "json",
    ]);
    let done = target.go();
    let end = probed.stop(libc::SIGINT);
    target.finish();
    assert!(end.status.success(), "{:?}", end.stderr);
    let same: usize = done
        .last()
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .expect("done ROUNDS SAME");
    assert!(
        same > 0,
        "the libraries never shared an address: nothing tested ({done:?})"
    );

    let mut hits = Vec::new();
    let mut summary = None;
    for line in &end.stdout {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        match v["type"].as_str() {
            Some("hit") => hits.push(v),
            Some("summary") => summary = Some(v),
            other => panic!("unexpected line type {other:?}: {line}"),
        }
    }
    // The summary says where missing hits went (lost: ring full; dropped_at_stop: drain).
    assert_eq!(
        hits.len(),
        ROUNDS,
        "stderr: {:?}; summary: {summary:?}",
        end.stderr
    );
    let mut right = 0;
    for hit in &hits {
        let which = hit["args"][0].as_u64().expect("callback's argument");
        let lib = match which {
            1 => &lib_a,
            2 => &lib_b,
            other => panic!("callback({other}) in {hit}"),
        };
        assert_ne!(hit["via"], "probe", "the resolver had every report: {hit}");
        let stack = hit["stack"].as_array().expect("a stack");
        let frame = |i: usize| &stack[i];
        assert_eq!(frame(0)["symbol"], "callback", "{hit}");
        assert_eq!(frame(0)["module"], exe.to_str().unwrap(), "{hit}");
        assert_eq!(
            frame(1)["module"],
            lib.to_str().unwrap(),
            "the library frame names the library mapped at the hit: {hit}"
        );
        assert_eq!(frame(1)["symbol"], "cb_call", "{hit}");
        assert!(frame(1).get("unresolved").is_none(), "{hit}");
        assert_eq!(frame(2)["symbol"], "main", "{hit}");
        assert_eq!(frame(2)["module"], exe.to_str().unwrap(), "{hit}");
        right += 1;
    }
    assert_eq!(right, ROUNDS);
    let summary = summary.expect("a summary line");
    assert_eq!(summary["resolver"]["unnamed"], 0, "{summary}");
    assert_eq!(summary["resolver"]["elf_load_failures"], 0, "{summary}");
    eprintln!(
        "{}: {right}/{ROUNDS} stacks name the mapped library ({same} rounds at a shared address)",
        dir.display()
    );
}

/// From a plain directory.
#[test]
fn churn_names_each_library_plain() {
    if !common::require_bpf("churn_names_each_library_plain") {
        return;
    }
    let dir = Dir::new("plain");
    copy_into(&binaries(), &dir.0);
    churn_names_libraries(&dir.0);
}

/// From an overlayfs mount: the mappings hold backing files; frames are named by the overlay
/// paths the process used, and the hits are answered by the resolver, not the probe.
#[test]
fn churn_names_each_library_overlay() {
    if !common::require_bpf("churn_names_each_library_overlay") {
        return;
    }
    let overlay = Overlay::with(&binaries());
    churn_names_libraries(&overlay.merged);
}
