//! Short-lived processes: 200 processes, released together, each hit a probe once and exit at
//! once. Every hit must resolve with module and symbol, although every process is gone long
//! before probed reads its hit: the pictures come from what probed saw at exec (or fork) and
//! from replayed change reports, kept for exited processes.

mod common;

use std::{collections::BTreeSet, path::PathBuf};

use common::{PrivateDir, Probed, Target, num, parse_json, probe_summary};
use serde_json::Value;

/// Processes per run.
const N: u64 = 200;

/// Runs `tracker_short N [mode]` under probed; checks one resolved hit per process.
fn run_short(name: &str, mode: Option<&str>) {
    let built = probed::fixtures::build("tracker_short.c", "tracker_short", &["-O2"])
        .unwrap_or_else(|e| panic!("build tracker_short: {e}"));
    let dir = PrivateDir::new(name);
    let bin: PathBuf = dir.copy(&built, "short");
    let spec = format!("uprobe:{}:short_fn", bin.display());
    let probed = Probed::start(&["trace", &spec, "--format", "json"]);
    let n = N.to_string();
    let mut args = vec![n.as_str()];
    args.extend(mode);
    let mut target = Target::start(&bin, &args);
    let lines = target.go();
    assert!(
        lines.iter().any(|l| l == &format!("done {N} 0")),
        "every child ran: {lines:?}"
    );
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{:?}", end.stderr);
    let (hits, summary) = parse_json(&end.stdout);
    let summary = summary.expect("a summary line");
    common::assert_summary_adds_up(&summary);
    let p = probe_summary(&summary, &spec);
    assert_eq!(num(p, "hits"), N, "{p}");
    assert_eq!(num(p, "lost"), 0, "{p}");
    assert_eq!(hits.len() as u64, N);

    let (via, unresolved) = common::via_counts(&hits);
    let resolver = common::assert_resolver_counters(&hits, &summary);
    eprintln!("{name}: via {via:?}, unresolved {unresolved:?}, resolver {resolver}");
    // One hit per child: distinct pids, each the pid the child passed, indexes 0..N.
    let mut pids = BTreeSet::new();
    let mut indexes = BTreeSet::new();
    for h in &hits {
        let arg = |i: usize| -> u64 {
            h["args"][i]
                .as_u64()
                .unwrap_or_else(|| panic!("argument {i}: {h}"))
        };
        assert_eq!(arg(1), num(h, "pid"), "{h}");
        assert_ne!(num(h, "pid"), u64::from(target.pid), "{h}");
        pids.insert(num(h, "pid"));
        indexes.insert(arg(0));
    }
    assert_eq!(pids.len() as u64, N, "one hit per process");
    assert_eq!(indexes, (0..N).collect::<BTreeSet<u64>>());
    let bad: Vec<&Value> = hits
        .iter()
        .filter(|h| h["module"] != bin.to_str().expect("UTF-8") || h["symbol"] != "short_fn")
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {N} hits not resolved to short_fn in {}: {unresolved:?}; first: {}",
        bad.len(),
        bin.display(),
        bad[0]
    );
    target.finish();
}

/// 200 children that each exec the fixture again, wait on a shared pipe (released together),
/// call short_fn once and _exit: 200 hits, one per pid, every one resolved to short_fn in the
/// fixture.
#[test]
fn short_lived_exec_children_all_resolve() {
    if !common::require_bpf("short_lived_exec_children_all_resolve") {
        return;
    }
    run_short("ts_exec", None);
}

/// The same with children that never exec (forked copies of the parent, as in a pre-forking
/// server): every hit resolved as well.
#[test]
fn short_lived_fork_children_all_resolve() {
    if !common::require_bpf("short_lived_fork_children_all_resolve") {
        return;
    }
    run_short("ts_fork", Some("--fork-only"));
}
