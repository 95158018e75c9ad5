//! `probed daemon` with stack modes per probe: a config probe with `stack = "dwarf"` has its
//! copied stacks unwound with CFI, every frame exact and every walk ending at the outermost
//! frame (a chain built without frame pointers, as distributions build); the daemon then
//! runs a replaying tracker, never lock mode. While lock mode runs, `ctl add --stack=dwarf`
//! is refused with one clear reason and `ctl add --stack` (frame pointers) is taken.

mod common;

use std::{path::PathBuf, time::Duration};

use common::{
    PrivateDir, Target,
    daemon::{Daemon, file_lines},
};
use serde_json::Value;

/// Calls of the chain per run.
const N: u64 = 20;

/// The chain main → alpha → beta → leaf, `-O2 -fomit-frame-pointer`, no debug info.
fn nofp_exe() -> PathBuf {
    let exe = probed::fixtures::build(
        "stacks_nofp.c",
        "stacks_nofp",
        &["-O2", "-fomit-frame-pointer"],
    )
    .expect("build");
    exe.canonicalize().expect("canonical path")
}

#[test]
fn daemon_unwinds_copied_stacks() {
    if !common::require_bpf("daemon_unwinds_copied_stacks") {
        return;
    }
    let exe = nofp_exe();
    let spec = format!("uprobe:{}:leaf", exe.display());
    let dir = PrivateDir::new("svc-stacks");
    let file = dir.path.join("hits.jsonl");
    let config = format!(
        "[outputs.hits]\nkind = \"file\"\npath = \"{}\"\n[[probes]]\nspec = \"{spec}\"\noutput = \"hits\"\nstack = \"dwarf\"\n",
        file.display()
    );
    let daemon = Daemon::start(dir, &config);
    let stats = daemon.ctl_ok(&["stats"]);
    assert_ne!(stats["tracker"], "lock", "{stats}");
    let list = daemon.ctl_ok(&["list"]);
    assert_eq!(list["probes"][0]["stack"], "dwarf", "{list}");

    let mut target = Target::start(&exe, &["calls", &N.to_string()]);
    target.go();
    target.finish();
    let mut hits = 0;
    common::wait_until(Duration::from_secs(10), || {
        hits = daemon.hits(0);
        hits >= N
    });
    assert_eq!(hits, N);
    // Every walk of the copies ended at the outermost frame.
    let mut stats = Value::Null;
    common::wait_until(Duration::from_secs(10), || {
        stats = daemon.ctl_ok(&["stats"]);
        stats["resolver"]["stack_stop_end"] == N
    });
    assert_eq!(stats["resolver"]["stack_stop_end"], N, "{stats}");
    let (done, dir) = daemon.stop(libc::SIGTERM, Duration::from_secs(5));
    assert!(done.status.success(), "{:?}", done.stderr);

    let want = [
        ("leaf", vec![0]),
        ("beta", common::return_offsets(&exe, "beta", Some("leaf"))),
        ("alpha", common::return_offsets(&exe, "alpha", Some("beta"))),
        ("main", common::return_offsets(&exe, "main", Some("alpha"))),
    ];
    let lines: Vec<Value> = file_lines(&dir.path.join("hits.jsonl"))
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "hit")
        .collect();
    assert_eq!(lines.len() as u64, N);
    for hit in &lines {
        let stack = hit["stack"].as_array().expect("a stack");
        for (i, (symbol, offsets)) in want.iter().enumerate() {
            assert_eq!(stack[i]["symbol"], *symbol, "frame {i} of {hit}");
            assert!(
                offsets.contains(&common::num(&stack[i], "offset")),
                "frame {i} of {hit}"
            );
        }
        assert_eq!(stack.last().expect("frames")["symbol"], "_start", "{hit}");
        assert_eq!(hit["stack_stop"], "end", "{hit}");
    }
}

#[test]
fn copied_stacks_refused_under_lock_mode() {
    if !common::require_bpf("copied_stacks_refused_under_lock_mode") {
        return;
    }
    let daemon = Daemon::start(PrivateDir::new("svc-stacks-lock"), "");
    let tracker = daemon.ctl_ok(&["stats"])["tracker"].clone();
    if tracker != "lock" {
        // Kernels before 6.14 (the guests) run a replaying tracker, which takes copies.
        assert!(!common::lock_mode_available(), "{tracker}");
        return;
    }
    let exe = nofp_exe();
    let spec = format!("uprobe:{}:leaf", exe.display());
    let refused = daemon.ctl(&["add", &spec, "--stack=dwarf"]);
    assert!(!refused.status.success(), "{refused:?}");
    let text = format!("{:?}{:?}", refused.stdout, refused.stderr);
    assert!(text.contains("lock tracker cannot serve"), "{text}");
    assert!(
        daemon.ctl_ok(&["list"])["probes"]
            .as_array()
            .expect("probes")
            .is_empty()
    );
    daemon.ctl_ok(&["add", &spec, "--stack"]);
    let list = daemon.ctl_ok(&["list"]);
    assert_eq!(list["probes"][0]["stack"], "fp", "{list}");
    let (done, _) = daemon.stop(libc::SIGTERM, Duration::from_secs(5));
    assert!(done.status.success(), "{:?}", done.stderr);
}
