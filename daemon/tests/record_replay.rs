//! `probed trace --record FILE` and `probed replay FILE`: a replay of a real run prints what
//! the run printed — every hit line byte for byte, the same resolver counters — with every
//! seam read meeting its recorded answer; and a recording that is not one, or whose probed
//! file changed since, is one clear error.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{Probed, Target, probed_bin};
use serde_json::{Value, json};

fn nofp_exe() -> PathBuf {
    let exe = probed::fixtures::build(
        "stacks_nofp.c",
        "stacks_nofp",
        &["-O2", "-fomit-frame-pointer"],
    )
    .expect("build");
    exe.canonicalize().expect("canonical path")
}

fn scratch(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("probed-rr-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// `probed replay ARGS`: (success, stdout, stderr).
fn replay(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(probed_bin())
        .arg("replay")
        .args(args)
        .output()
        .expect("run probed replay");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The hit lines and the summary of JSON output.
fn split(lines: &[String]) -> (Vec<String>, Value) {
    let (last, hits) = lines.split_last().expect("a summary line");
    (
        hits.to_vec(),
        serde_json::from_str(last).expect("summary JSON"),
    )
}

/// Entry and return probes with copied stacks (CFI-unwound) on 20 calls: the replay's JSON
/// equals the run's, its seams never diverged, and its other modes count the same hits.
#[test]
fn replay_prints_what_the_run_printed() {
    if !common::require_bpf("replay_prints_what_the_run_printed") {
        return;
    }
    let exe = nofp_exe();
    let rec = scratch("run.rec");
    let mut target = Target::start(&exe, &["calls", "20"]);
    let pid = target.pid.to_string();
    let entry = format!("uprobe:{}:leaf", exe.display());
    let ret = format!("uretprobe:{}:leaf", exe.display());
    let probed = Probed::start(&[
        "trace",
        &entry,
        &ret,
        "--pid",
        &pid,
        "--stack",
        "--format",
        "json",
        "--record",
        rec.to_str().expect("UTF-8"),
    ]);
    target.go();
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    target.finish();
    let (live_hits, live_summary) = split(&end.stdout);
    assert_eq!(live_hits.len(), 40, "{:?}", end.stdout);

    let (ok, stdout, stderr) = replay(&[rec.to_str().unwrap(), "--format", "json", "--measure"]);
    assert!(ok, "{stderr}");
    let lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
    let (hits, summary) = split(&lines);
    assert_eq!(hits, live_hits, "replayed hit lines differ from the run's");
    assert_eq!(summary["probes"], live_summary["probes"]);
    assert_eq!(summary["resolver"], live_summary["resolver"]);
    assert_eq!(summary["ended_by"], "replay");
    let measured: Value =
        serde_json::from_str(stderr.lines().last().expect("a measurement line")).expect("JSON");
    assert_eq!(measured["seq_diverged"], 0, "{measured}");
    assert_eq!(measured["maps_diverged"], 0, "{measured}");
    assert!(measured["events"].as_u64().unwrap() >= 40, "{measured}");

    // Another output from the same recording: the stacks counted, 20 per probe.
    let (ok, stdout, stderr) = replay(&[
        rec.to_str().unwrap(),
        "--aggregate",
        "stack",
        "--format",
        "json",
    ]);
    assert!(ok, "{stderr}");
    let folded: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "folded" && v["final"] == true)
        .unwrap_or_else(|| panic!("no final folded line: {stdout}"));
    assert_eq!(folded["hits"], 40, "{folded}");
    let counted: u64 = folded["stacks"]
        .as_array()
        .expect("stacks")
        .iter()
        .map(|s| s["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 40, "{folded}");
    let (ok, stdout, stderr) = replay(&[rec.to_str().unwrap(), "--summary-only"]);
    assert!(ok, "{stderr}");
    assert!(!stdout.contains("leaf+"), "a hit printed: {stdout}");
    let _ = std::fs::remove_file(&rec);
}

/// Four processes with stacks, recorded, replayed with one consumer thread and with three
/// (`--consumers 3`): the same hit lines (in another interleaving of processes, each
/// thread's in its order), the same per-probe counts, and every seam read meeting its
/// recorded answer in both. Copied stacks (`--stack`) run a replaying mode, whose items are
/// dealt from one ring (pipeline/shards.rs); `--stack=fp` runs kseq mode where the kernel
/// has it, where each consumer reads a ring of its own (pipeline/rings.rs,
/// recording/ring_lanes.rs) — the summary says which.
#[test]
fn consumer_threads_print_what_one_prints() {
    if !common::require_bpf("consumer_threads_print_what_one_prints") {
        return;
    }
    consumers_print_what_one_prints("--stack", false);
    let kseq = common::auto_tracker(false) == "kseq";
    consumers_print_what_one_prints("--stack=fp", kseq);
}

fn consumers_print_what_one_prints(stack: &str, rings: bool) {
    let exe = nofp_exe();
    let rec = scratch("threads.rec");
    let mut targets: Vec<Target> = (0..4)
        .map(|_| Target::start(&exe, &["calls", "200"]))
        .collect();
    let entry = format!("uprobe:{}:leaf", exe.display());
    let ret = format!("uretprobe:{}:leaf", exe.display());
    let probed = Probed::start(&[
        "trace",
        &entry,
        &ret,
        stack,
        "--format",
        "json",
        "--record",
        rec.to_str().expect("UTF-8"),
    ]);
    for t in &mut targets {
        t.go();
    }
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    for t in targets {
        t.finish();
    }
    let (live_hits, _) = split(&end.stdout);
    assert_eq!(live_hits.len(), 1600, "{:?}", end.stderr);

    let mut replays = Vec::new();
    for consumers in ["1", "3"] {
        let (ok, stdout, stderr) = replay(&[
            rec.to_str().unwrap(),
            "--format",
            "json",
            "--consumers",
            consumers,
            "--measure",
        ]);
        assert!(ok, "{stderr}");
        let measured: Value =
            serde_json::from_str(stderr.lines().last().expect("a measurement line")).expect("JSON");
        assert_eq!(measured["seq_diverged"], 0, "{consumers}: {measured}");
        assert_eq!(measured["maps_diverged"], 0, "{consumers}: {measured}");
        let lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
        replays.push(split(&lines));
    }
    let (one, one_summary) = &replays[0];
    let (three, three_summary) = &replays[1];
    assert_eq!(one, &live_hits, "one consumer prints the run's lines");
    let by_thread = |hits: &[String]| {
        let mut threads: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
        for line in hits {
            let v: Value = serde_json::from_str(line).expect("hit JSON");
            threads
                .entry(v["tid"].as_u64().expect("tid"))
                .or_default()
                .push(line.clone());
        }
        threads
    };
    let (a, b) = (by_thread(one), by_thread(three));
    assert_eq!(a.len(), 4, "four threads");
    assert_eq!(
        a, b,
        "each thread's lines, in order, the same with three consumers"
    );
    assert_eq!(one_summary["probes"], three_summary["probes"]);
    assert_eq!(
        one_summary["resolver"]["fast_path"], three_summary["resolver"]["fast_path"],
        "{one_summary} {three_summary}"
    );
    assert_eq!(
        one_summary["resolver"]["kseq_answered"], three_summary["resolver"]["kseq_answered"],
        "{one_summary} {three_summary}"
    );
    assert_eq!(three_summary["consumers"], 3, "{stack}: {three_summary}");
    let expected_rings = if rings { json!(3) } else { Value::Null };
    assert_eq!(
        three_summary["rings"], expected_rings,
        "{stack}: a ring per consumer in kseq mode only: {three_summary}"
    );
    let _ = std::fs::remove_file(&rec);
}

/// A file that is not a recording, a missing one, and a recording whose probed file was
/// replaced: each one line saying so, and a non-zero exit.
#[test]
fn replay_refuses_what_it_cannot_replay() {
    let junk = scratch("junk");
    std::fs::write(&junk, b"not a recording\n").unwrap();
    let (ok, _, stderr) = replay(&[junk.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("is not a probed recording"), "{stderr}");
    let _ = std::fs::remove_file(&junk);

    let (ok, _, stderr) = replay(&["/nonexistent/run.rec"]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/run.rec"), "{stderr}");

    // A recording of a probe on a copy of the fixture, then the copy replaced by another
    // file at the same path (a package upgrade does this): its inode differs.
    let exe = nofp_exe();
    let copy = scratch("bin");
    std::fs::copy(&exe, &copy).unwrap();
    let spec = format!("uprobe:{}:leaf", copy.display());
    let (dev, ino) = dev_ino(&copy);
    let rec = scratch("changed.rec");
    let header = probed::recording::Header {
        version: probed::recording::VERSION,
        specs: vec![spec.clone()],
        pid: None,
        stack_mode: None,
        tracker: probed::track::TrackerMode::Syscalls,
        probes: vec![probed::recording::RecordedProbe {
            id: 0,
            spec,
            dev,
            ino,
        }],
    };
    probed::recording::Recorder::create(&rec, &header)
        .unwrap()
        .finish()
        .unwrap();
    // Unchanged: it replays (nothing to print but the summary).
    let (ok, _, stderr) = replay(&[rec.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let replaced = scratch("bin.new");
    std::fs::copy(&exe, &replaced).unwrap();
    std::fs::rename(&replaced, &copy).unwrap();
    let (ok, _, stderr) = replay(&[rec.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("changed since the recording"), "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("probed: error"))
            .count(),
        1,
        "{stderr}"
    );
    let _ = std::fs::remove_file(&rec);
    let _ = std::fs::remove_file(&copy);
}

fn dev_ino(path: &Path) -> (u64, u64) {
    let id = probed::file_id::FileId::of_path(path).expect("stat");
    (id.dev, id.ino)
}

/// `--aggregate stack` alone remembers a frame-pointer stack by its raw addresses and
/// sequence (pipeline/stack_memo.rs): the live run, which counts repeats from the memo,
/// folds exactly what a replay that resolves every hit (`--print-hits` turns the memo off)
/// folds. Syscall tracker: in lock mode a hit that came before probed published its picture
/// of the process carries captured mappings and is not remembered — in a 20-call run, often
/// every hit.
#[test]
fn remembered_stacks_fold_as_resolved_ones() {
    if !common::require_bpf("remembered_stacks_fold_as_resolved_ones") {
        return;
    }
    let exe = probed::fixtures::build(
        "stacks_nofp.c",
        "stacks_fp",
        &["-O1", "-fno-omit-frame-pointer"],
    )
    .expect("build")
    .canonicalize()
    .expect("canonical path");
    let rec = scratch("memo.rec");
    let mut target = Target::start(&exe, &["calls", "20"]);
    let pid = target.pid.to_string();
    let spec = format!("uprobe:{}:leaf", exe.display());
    let probed = Probed::start(&[
        "trace",
        &spec,
        "--pid",
        &pid,
        "--stack=fp",
        "--aggregate",
        "stack",
        "--tracker",
        "syscalls",
        "--format",
        "json",
        "--record",
        rec.to_str().expect("UTF-8"),
    ]);
    target.go();
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    target.finish();
    let folded = |lines: &[String]| -> Value {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["type"] == "folded" && v["final"] == true)
            .unwrap_or_else(|| panic!("no final folded line: {lines:?}"))
    };
    let live = folded(&end.stdout);
    let (_, live_summary) = split(&end.stdout);
    assert_eq!(live["hits"], 20, "{live}");
    assert!(
        live_summary["resolver"]["stacks_memoized"]
            .as_u64()
            .unwrap()
            > 0,
        "{live_summary}"
    );
    let (ok, stdout, stderr) = replay(&[
        rec.to_str().unwrap(),
        "--aggregate",
        "stack",
        "--print-hits",
        "--format",
        "json",
    ]);
    assert!(ok, "{stderr}");
    let lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
    let (_, summary) = split(&lines);
    assert_eq!(summary["resolver"]["stacks_memoized"], 0, "{summary}");
    assert_eq!(folded(&lines)["stacks"], live["stacks"]);
    let _ = std::fs::remove_file(&rec);
}
