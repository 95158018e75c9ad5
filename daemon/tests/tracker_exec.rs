//! exec: a traced process calls a probed function of its program, then execs another program
//! (same pid, new address space, new generation) that calls its own probed function. Hits
//! before and after the exec must resolve to the program that really ran.

mod common;

use std::path::PathBuf;

use common::{PrivateDir, Probed, Target, num, parse_json, probe_summary};
use serde_json::Value;

/// Builds a fixture (cached) or panics with the compiler's message.
fn build(source: &str, out: &str) -> PathBuf {
    probed::fixtures::build(source, out, &["-O2"]).unwrap_or_else(|e| panic!("build {out}: {e}"))
}

/// Argument `i` of a hit.
fn arg(hit: &Value, i: usize) -> u64 {
    hit["args"][i]
        .as_u64()
        .unwrap_or_else(|| panic!("no argument {i}: {hit}"))
}

/// Runs program A (which execs B) under probed, A started after probed or, with
/// `running_before`, before it and named with `--pid`; checks every hit (see the tests).
fn run_exec(name: &str, running_before: bool) {
    const CALLS: u64 = 2_000;
    let dir = PrivateDir::new(name);
    let a = dir.copy(&build("tracker_exec_a.c", "tracker_exec_a"), "exec_a");
    let b = dir.copy(&build("tracker_exec_b.c", "tracker_exec_b"), "exec_b");
    let specs = [
        format!("uprobe:{}:exec_a_fn", a.display()),
        format!("uprobe:{}:exec_b_fn", b.display()),
    ];
    let b_str = b.to_str().expect("UTF-8 path");
    let target_args = [CALLS.to_string(), b_str.to_owned()];
    let target_args = target_args.each_ref().map(String::as_str);
    let mut args = vec!["trace", &specs[0], &specs[1], "--format", "json"];
    let (mut target, probed) = if running_before {
        let target = Target::start(&a, &target_args);
        let pid = target.pid.to_string();
        args.extend(["--pid", &pid]);
        let probed = Probed::start(&args);
        (target, probed)
    } else {
        let probed = Probed::start(&args);
        (Target::start(&a, &target_args), probed)
    };
    let lines = target.go();
    // "a PID SUM" from program A, "b PID SUM" from program B: one pid.
    let pid_of = |prefix: &str| -> u32 {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:?}"))
    };
    assert_eq!(pid_of("a "), target.pid);
    assert_eq!(pid_of("b "), target.pid, "exec keeps the pid");
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{:?}", end.stderr);
    let (hits, summary) = parse_json(&end.stdout);
    let summary = summary.expect("a summary line");
    common::assert_summary_adds_up(&summary);
    for spec in &specs {
        let p = probe_summary(&summary, spec);
        assert_eq!(num(p, "hits"), CALLS, "{p}");
        assert_eq!(num(p, "lost"), 0, "{p}");
    }
    assert_eq!(hits.len() as u64, 2 * CALLS);

    let (via, unresolved) = common::via_counts(&hits);
    eprintln!("{name}: via {via:?}, unresolved {unresolved:?}");
    common::assert_resolver_counters(&hits, &summary);
    let mut last_a_ts = 0;
    let mut first_b_ts = u64::MAX;
    let mut expected_i = [0u64; 2];
    for h in &hits {
        assert_eq!(num(h, "pid"), u64::from(target.pid), "{h}");
        assert!(h.get("unresolved").is_none(), "unresolved: {h}");
        let which = arg(h, 1);
        let (module, symbol, comm) = match which {
            1 => (&a, "exec_a_fn", "exec_a"),
            2 => (&b, "exec_b_fn", "exec_b"),
            _ => panic!("bad which in {h}"),
        };
        assert_eq!(h["module"], module.to_str().expect("UTF-8"), "{h}");
        assert_eq!(h["symbol"], symbol, "{h}");
        assert_eq!(num(h, "offset"), 0, "{h}");
        assert_eq!(h["comm"], comm, "{h}");
        // One thread: each program's calls arrive in order.
        let slot = usize::try_from(which - 1).expect("small");
        assert_eq!(arg(h, 0), expected_i[slot], "{h}");
        expected_i[slot] += 1;
        let ts = num(h, "ts_ns");
        if which == 1 {
            last_a_ts = last_a_ts.max(ts);
        } else {
            first_b_ts = first_b_ts.min(ts);
        }
    }
    assert!(last_a_ts < first_b_ts, "A's hits all precede B's");
    target.finish();
}

/// Program A, started after probed (probed sees both execs), makes 2,000 calls of exec_a_fn,
/// then execs program B in the same process, which makes 2,000 calls of exec_b_fn: every hit
/// has the target's pid, A's hits resolve to A's file and exec_a_fn, B's to B's file and
/// exec_b_fn (the second argument says which program made the call), A's all come before
/// B's, each program's in call order, and none is unresolved.
#[test]
fn exec_resolves_each_program_in_one_pid() {
    if !common::require_bpf("exec_resolves_each_program_in_one_pid") {
        return;
    }
    run_exec("tx_exec_new", false);
}

/// The same with program A already running when probed starts, traced with `--pid`: its hits
/// resolve from the picture taken at start, B's from the exec report.
#[test]
fn exec_of_a_process_running_before_probed() {
    if !common::require_bpf("exec_of_a_process_running_before_probed") {
        return;
    }
    run_exec("tx_exec_old", true);
}
