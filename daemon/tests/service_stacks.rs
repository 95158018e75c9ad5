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
    assert_ne!(stats["tracker"], "kseq", "{stats}");
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
    if tracker != "lock" && tracker != "kseq" {
        // Kernels before 6.14 (the guests) run a replaying tracker, which takes copies.
        assert!(
            !common::lock_mode_available() && !common::kseq_mode_available(),
            "{tracker}"
        );
        return;
    }
    let exe = nofp_exe();
    let spec = format!("uprobe:{}:leaf", exe.display());
    let refused = daemon.ctl(&["add", &spec, "--stack=dwarf"]);
    assert!(!refused.status.success(), "{refused:?}");
    let text = format!("{:?}{:?}", refused.stdout, refused.stderr);
    assert!(
        text.contains("lock and kseq trackers cannot serve"),
        "{text}"
    );
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

/// Each daemon probe copies as much stack as it says (`stack_copy_kib` in the config,
/// `--stack-copy-kib` with `ctl add`): leaf called through 24 nested 1 KiB frames is cut at
/// the end of a 4 KiB copy (config probe) and unwound to `_start` with a 64 KiB one (ctl
/// probe at leaf's return). A size BPF has no path for, or a size without a copied stack,
/// is refused with its reason, the running probes untouched.
#[test]
fn daemon_copy_size_per_probe() {
    if !common::require_bpf("daemon_copy_size_per_probe") {
        return;
    }
    let exe = nofp_exe();
    let entry = format!("uprobe:{}:leaf", exe.display());
    let ret = format!("uretprobe:{}:leaf", exe.display());
    let config = format!(
        "[outputs.null]\nkind = \"file\"\npath = \"/dev/null\"\n\
         [[probes]]\nspec = \"{entry}\"\noutput = \"null\"\nstack = \"dwarf\"\nstack_copy_kib = 4\n"
    );
    let mut daemon = Daemon::start(PrivateDir::new("svc-stacks-size"), &config);
    let list = daemon.ctl_ok(&["list"]);
    assert_eq!(list["probes"][0]["stack_copy_kib"], 4, "{list}");
    let stop = |daemon: &Daemon, reason: &str, want: u64| {
        let mut stats = Value::Null;
        common::wait_until(Duration::from_secs(10), || {
            stats = daemon.ctl_ok(&["stats"]);
            stats["resolver"][reason] == want
        });
        assert_eq!(stats["resolver"][reason], want, "{reason}: {stats}");
    };
    let mut target = Target::start(&exe, &["calls", &N.to_string(), "24"]);
    target.go();
    stop(&daemon, "stack_stop_stack_copy_end", N);
    stop(&daemon, "stack_stop_end", 0);

    let added = daemon.ctl_ok(&[
        "add",
        &ret,
        "--output",
        "null",
        "--stack=dwarf",
        "--stack-copy-kib",
        "64",
    ]);
    assert!(added["id"].is_u64(), "{added}");
    target.go();
    target.finish();
    stop(&daemon, "stack_stop_stack_copy_end", 2 * N);
    stop(&daemon, "stack_stop_end", N);

    // Refused: by the client (no such size), by the daemon (a size without a copy).
    let bad = daemon.ctl(&["add", &ret, "--stack=dwarf", "--stack-copy-kib", "12"]);
    assert!(!bad.status.success(), "{bad:?}");
    assert!(
        format!("{:?}", bad.stderr).contains("is not a stack copy size in KiB"),
        "{bad:?}"
    );
    let line = daemon.reload(&format!(
        "{config}[[probes]]\nspec = \"{ret}\"\noutput = \"null\"\nstack_copy_kib = 8\n"
    ));
    assert!(
        line.contains("reload rejected") && line.contains("stack_copy_kib needs stack"),
        "{line}"
    );
    assert_eq!(
        daemon.ctl_ok(&["list"])["probes"].as_array().map(Vec::len),
        Some(2)
    );
    let (done, _) = daemon.stop(libc::SIGTERM, Duration::from_secs(5));
    assert!(done.status.success(), "{:?}", done.stderr);
}
