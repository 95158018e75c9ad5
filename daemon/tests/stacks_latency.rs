//! `probed trace --latency` against a function that sleeps known times
//! (daemon/tests/fixtures/stacks_latency.c: 2, 5 and 10 ms in turn, timed by the target
//! itself): every call is paired, and the reported p50 is within 10% of the target's own
//! median.

mod common;

use common::{Probed, Target, num};
use serde_json::Value;

/// 15 calls of sleepy (5 each of 2, 5, 10 ms) traced at entry and return with --latency
/// --format json: no per-hit lines; one final latency line for sleepy with count 15, no
/// unmatched entries or returns, min ≥ 2 ms, max ≥ 10 ms, p50 within 10% of the target's
/// own median, and log2 buckets that add up to the count.
#[test]
fn latency_p50_matches_the_truth() {
    if !common::require_bpf("latency_p50_matches_the_truth") {
        return;
    }
    const CALLS: u64 = 15;
    let bin = probed::fixtures::build("stacks_latency.c", "stacks_latency", &["-O1"])
        .expect("build stacks_latency");
    let mut target = Target::start(&bin, &[&CALLS.to_string()]);
    let pid = target.pid.to_string();
    let entry = format!("uprobe:{}:sleepy", bin.display());
    let ret = format!("uretprobe:{}:sleepy", bin.display());
    let probed = Probed::start(&[
        "trace",
        &entry,
        &ret,
        "--pid",
        &pid,
        "--latency",
        "--format",
        "json",
    ]);
    let round = target.go();
    let truth: u64 = round
        .iter()
        .find_map(|l| l.strip_prefix("median "))
        .expect("a median line")
        .parse()
        .expect("numeric median");
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    target.finish();
    let lines: Vec<Value> = end
        .stdout
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(
        lines.iter().all(|l| l["type"] != "hit"),
        "per-hit lines were printed"
    );
    let latency: Vec<&Value> = lines.iter().filter(|l| l["type"] == "latency").collect();
    assert_eq!(latency.len(), 1, "{:?}", end.stdout);
    let l = latency[0];
    assert_eq!(l["function"], "sleepy", "{l}");
    assert_eq!(l["final"], true, "{l}");
    assert_eq!(num(l, "count"), CALLS, "{l}");
    assert_eq!(num(l, "unmatched_entries"), 0, "{l}");
    assert_eq!(num(l, "unmatched_returns"), 0, "{l}");
    assert_eq!(num(l, "in_flight"), 0, "{l}");
    assert!(num(l, "min") >= 2_000_000, "{l}");
    assert!(num(l, "max") >= 10_000_000, "{l}");
    let p50 = num(l, "p50");
    let error = p50.abs_diff(truth) as f64 / truth as f64;
    assert!(
        error <= 0.10,
        "p50 {p50} ns vs the target's median {truth} ns: {:.1}% off",
        100.0 * error
    );
    let buckets: u64 = l["hist"]
        .as_array()
        .expect("hist")
        .iter()
        .map(|b| num(b, "count"))
        .sum();
    assert_eq!(buckets, CALLS, "{l}");
    assert_eq!(lines.last().expect("lines")["type"], "summary");
}
