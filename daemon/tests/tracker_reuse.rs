//! pid reuse: two successive processes get the same host pid (the launcher writes pid-1 to
//! the initial namespace's /proc/sys/kernel/ns_last_pid before forking) and run two different
//! non-PIE programs whose probed function lies at the same address. A resolver keyed on the
//! pid alone would answer the second process's hits from the first one's picture (or the
//! other way round) and name the wrong file; probed's process identity (pid + generation)
//! must keep them apart.

mod common;

use std::{collections::BTreeMap, path::PathBuf, sync::Mutex};

use common::{PrivateDir, Probed, Target, num, parse_json, probe_summary};
use serde_json::Value;

/// Program `which` (1 or 2), non-PIE.
fn program(which: u32) -> PathBuf {
    let define = format!("-DWHICH={which}");
    probed::fixtures::build(
        "tracker_reuse.c",
        &format!("tracker_reuse_{which}"),
        &["-O2", "-no-pie", &define],
    )
    .unwrap_or_else(|e| panic!("build tracker_reuse {which}: {e}"))
}

/// Argument `i` of a hit.
fn arg(hit: &Value, i: usize) -> u64 {
    hit["args"][i]
        .as_u64()
        .unwrap_or_else(|| panic!("no argument {i}: {hit}"))
}

/// Runs PAIRS pairs of CALLS calls per process under probed; with `hold_daemon`, probed is
/// stopped (SIGSTOP) from before the first call until every process has exited, so every hit
/// is resolved only after its pid already belongs to the next process (or to none).
fn run_reuse(name: &str, pairs_wanted: u64, calls: u64, hold_daemon: bool) {
    // Both tests of this file steer the host-wide pid cursor (ns_last_pid) and run in
    // parallel threads by default: one test's launcher set the cursor just before the other
    // test forked a long-lived process (its probed or its target), which took the pid for
    // good and made all 200 retries of a pair miss (CI, stop 23: "pair 0 1544 -1"). One
    // at a time, the only racers left are unrelated short-lived forks.
    static PID_CURSOR: Mutex<()> = Mutex::new(());
    let _one_at_a_time = PID_CURSOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = PrivateDir::new(name);
    let progs = [
        dir.copy(&program(1), "reuse1"),
        dir.copy(&program(2), "reuse2"),
    ];
    let vaddrs = progs
        .each_ref()
        .map(|p| common::symbol_vaddr(p, "reuse_fn"));
    assert_eq!(vaddrs[0], vaddrs[1], "reuse_fn must lie at one address");
    let specs = progs
        .each_ref()
        .map(|p| format!("uprobe:{}:reuse_fn", p.display()));
    let probed = Probed::start(&["trace", &specs[0], &specs[1], "--format", "json"]);
    let prog2 = progs[1].to_str().expect("UTF-8 path");
    let mut target = Target::start(
        &progs[0],
        &[
            "--launch",
            &pairs_wanted.to_string(),
            &calls.to_string(),
            prog2,
        ],
    );
    let probed_pid = i32::try_from(probed.pid()).expect("pid fits i32");
    if hold_daemon {
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        assert_eq!(unsafe { libc::kill(probed_pid, libc::SIGSTOP) }, 0);
    }
    let lines = target.go();
    if hold_daemon {
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(probed_pid, libc::SIGCONT) }, 0);
    }
    // "pair P PID1 PID2" (PID2 is -1 if no fork got PID1 back).
    let pairs: BTreeMap<u64, (u64, i64)> = lines
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.strip_prefix("pair ")?.split_whitespace().collect();
            Some((f[0].parse().ok()?, (f[1].parse().ok()?, f[2].parse().ok()?)))
        })
        .collect();
    assert_eq!(pairs.len() as u64, pairs_wanted, "{lines:?}");
    let reused: Vec<u64> = pairs
        .iter()
        .filter(|(_, (first, second))| i64::try_from(*first).ok() == Some(*second))
        .map(|(p, _)| *p)
        .collect();
    eprintln!(
        "{name}: {} of {pairs_wanted} pairs shared a pid",
        reused.len()
    );
    assert!(reused.len() as u64 * 10 >= pairs_wanted * 9, "{lines:?}");

    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{:?}", end.stderr);
    let (hits, summary) = parse_json(&end.stdout);
    let summary = summary.expect("a summary line");
    common::assert_summary_adds_up(&summary);
    let ran = |which: u64| {
        pairs
            .values()
            .filter(|(_, second)| which == 1 || *second > 0)
            .count() as u64
    };
    for (which, spec) in [1, 2].into_iter().zip(&specs) {
        let p = probe_summary(&summary, spec);
        assert_eq!(num(p, "hits"), ran(which) * calls, "{p}");
        assert_eq!(num(p, "lost"), 0, "{p}");
    }
    assert_eq!(hits.len() as u64, (ran(1) + ran(2)) * calls);
    let (via, unresolved) = common::via_counts(&hits);
    let resolver = common::assert_resolver_counters(&hits, &summary);
    eprintln!("{name}: via {via:?}, unresolved {unresolved:?}, resolver {resolver}");

    // Per (pair, program): the pids seen and the hits that named the wrong file.
    let mut pids: BTreeMap<(u64, u64), BTreeMap<u64, u64>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for h in &hits {
        let (which, pair) = (arg(h, 0), arg(h, 1));
        *pids
            .entry((pair, which))
            .or_default()
            .entry(num(h, "pid"))
            .or_default() += 1;
        let prog = &progs[usize::try_from(which - 1).expect("which is 1 or 2")];
        if h["module"] != prog.to_str().expect("UTF-8") || h["symbol"] != "reuse_fn" {
            wrong.push(h);
        }
    }
    assert!(
        wrong.is_empty(),
        "{} hits not resolved to their own program (unresolved {unresolved:?}); first: {}",
        wrong.len(),
        wrong[0]
    );
    for (pair, (first, second)) in &pairs {
        let seen = |which| pids.get(&(*pair, which)).cloned().unwrap_or_default();
        assert_eq!(seen(1), BTreeMap::from([(*first, calls)]), "pair {pair}");
        if let Ok(second) = u64::try_from(*second) {
            assert_eq!(seen(2), BTreeMap::from([(second, calls)]), "pair {pair}");
        }
    }
    target.finish();
}

/// 20 pairs of processes, each pair one host pid: the first runs program 1, exits, and the
/// second (same pid, checked) runs program 2; both call reuse_fn (same address in both
/// files) 2,000 times right before exiting. Every hit is counted and resolved, program 1's
/// hits to program 1's file and program 2's to program 2's, with the pid the launcher
/// reported for that pair, and at least 90% of the pairs really shared a pid.
#[test]
fn reused_pid_never_aliases() {
    if !common::require_bpf("reused_pid_never_aliases") {
        return;
    }
    run_reuse("tr_reuse", 20, 2_000, false);
}

/// The same with probed stopped (SIGSTOP) while the 5 pairs run, so that every hit is
/// resolved only after its process exited and its pid was taken by the next one: still
/// every hit resolved to its own program.
#[test]
fn reused_pid_never_aliases_with_hits_queued() {
    if !common::require_bpf("reused_pid_never_aliases_with_hits_queued") {
        return;
    }
    run_reuse("tr_reuse_held", 5, 1_000, true);
}
