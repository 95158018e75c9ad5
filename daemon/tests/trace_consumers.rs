//! Several consumer threads in a live run (`--consumers 2`). In kseq mode each reads a BPF
//! ring of its own (ebpf ring.rs, pipeline/rings.rs): every hit printed once, each
//! process's hits in the order they fired, both rings given work. On kernels without kseq
//! mode the threads are dealt one ring's items (pipeline/shards.rs): the same output.

mod common;

use std::{collections::BTreeMap, process::Command};

use common::{Probed, Target, probed_bin};
use serde_json::Value;

const PROCS: usize = 4;
const CALLS: usize = 300;

#[test]
fn two_consumers_print_every_hit_once_each_process_in_order() {
    if !common::require_bpf("two_consumers_print_every_hit_once_each_process_in_order") {
        return;
    }
    let rings = common::auto_tracker(false) == "kseq";
    let exe = probed::fixtures::build(
        "stacks_nofp.c",
        "stacks_nofp",
        &["-O2", "-fomit-frame-pointer"],
    )
    .expect("build")
    .canonicalize()
    .expect("canonical path");
    let calls = CALLS.to_string();
    // Started one after another by a process that runs a thread per child (the line
    // readers): their pids are not consecutive, which BPF's rings must not care about.
    let mut targets: Vec<Target> = (0..PROCS)
        .map(|_| Target::start(&exe, &["calls", &calls]))
        .collect();
    let entry = format!("uprobe:{}:leaf", exe.display());
    let ret = format!("uretprobe:{}:leaf", exe.display());
    let probed = Probed::start_command(
        Command::new(probed_bin())
            .env("RUST_LOG", "probed::trace::ring_feed=debug")
            .args(["trace", &entry, &ret, "--stack=fp", "--consumers", "2"])
            .args(["--format", "json"]),
    );
    for t in &mut targets {
        t.go();
    }
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let pids: Vec<u64> = targets.iter().map(|t| u64::from(t.pid)).collect();
    for t in targets {
        t.finish();
    }

    let (summary, hits) = end.stdout.split_last().expect("a summary line");
    let summary: Value = serde_json::from_str(summary).expect("summary JSON");
    let mut by_pid: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    for line in hits {
        let v: Value = serde_json::from_str(line).expect("hit JSON");
        assert_eq!(v["symbol"], "leaf", "{line}");
        by_pid
            .entry(v["pid"].as_u64().expect("pid"))
            .or_default()
            .push((v["ts_ns"].as_u64().expect("ts_ns"), v["kind"].to_string()));
    }
    assert_eq!(by_pid.keys().copied().collect::<Vec<_>>(), {
        let mut p = pids.clone();
        p.sort_unstable();
        p
    });
    for (pid, hits) in &by_pid {
        assert_eq!(
            hits.len(),
            2 * CALLS,
            "pid {pid}: an entry and a return a call"
        );
        assert!(
            hits.windows(2).all(|w| w[0].0 <= w[1].0),
            "pid {pid}: hits out of the order they fired in"
        );
        assert!(
            hits.windows(2).all(|w| w[0].1 != w[1].1),
            "pid {pid}: entries and returns alternate"
        );
    }
    for probe in summary["probes"].as_array().expect("probes") {
        assert_eq!(probe["hits"], probe["printed"], "{summary}");
        assert_eq!(probe["probe_mismatch"], 0, "{summary}");
        assert_eq!(probe["lost"], 0, "{summary}");
    }
    assert_eq!(summary["consumers"], 2, "{summary}");
    if rings {
        assert_eq!(summary["rings"], 2, "a ring each in kseq mode: {summary}");
        // Ring 1's thread says what it read: processes get rings in turn, so it had hits
        // of two of the four.
        let read: u64 = end
            .stderr
            .iter()
            .filter(|l| l.contains("ring read to its end") && l.contains("ring=1"))
            .filter_map(|l| l.split("hit_records=").nth(1))
            .filter_map(|n| n.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(
            read,
            (2 * 2 * CALLS) as u64,
            "ring 1 had two processes' hits: {:?}",
            end.stderr
        );
    } else {
        assert!(summary["rings"].is_null(), "one ring dealt: {summary}");
    }
}
