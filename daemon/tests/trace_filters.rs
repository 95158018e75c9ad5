//! What limits a run: `--pid` (one process, not its twin), `--count` (exactly N printed
//! hits), `--duration` (ends on time), and the summary's bookkeeping on each.

mod common;

use std::{collections::BTreeMap, thread, time::Duration};

use common::{Probed, Target, TargetCopy, num, parse_json, probe_summary};

/// Two processes of the same binary, 3 threads each, make the same calls at the same time;
/// `--pid` of one gives exactly the hits of all its threads and none of its twin's, and BPF
/// counted only those.
#[test]
fn pid_traces_one_process_not_its_twin() {
    if !common::require_bpf("pid_traces_one_process_not_its_twin") {
        return;
    }
    const N: u64 = 40;
    const THREADS: u64 = 3;
    let copy = TargetCopy::new("tf_twins");
    let args = [N.to_string(), THREADS.to_string()];
    let args = [args[0].as_str(), args[1].as_str()];
    let mut chosen = Target::start(&copy.path, &args);
    let mut twin = Target::start(&copy.path, &args);
    let spec = copy.spec("uprobe", "probed_add");
    let pid = chosen.pid.to_string();
    let probed = Probed::start(&["trace", &spec, "--pid", &pid, "--format", "json"]);
    // Both make their calls concurrently.
    let (chosen_round, twin_round) = thread::scope(|s| {
        let t = s.spawn(|| twin.go());
        let c = chosen.go();
        (c, t.join().expect("twin thread"))
    });
    let expected = THREADS as i64 * common::expected_sum(N as i64);
    assert_eq!(common::reported_sum(&chosen_round), expected);
    assert_eq!(common::reported_sum(&twin_round), expected);
    let tids = common::reported_tids(&chosen_round);
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let (hits, summary) = parse_json(&end.stdout);

    let mut seen = BTreeMap::<u64, u64>::new();
    for hit in &hits {
        assert_eq!(num(hit, "pid"), u64::from(chosen.pid), "{hit}");
        let tid = num(hit, "tid");
        assert!(tids.contains(&(tid as u32)), "{hit}");
        let calls = seen.entry(tid).or_default();
        assert_eq!(hit["args"][0], *calls, "{hit}");
        *calls += 1;
    }
    let per_thread: Vec<u64> = seen.values().copied().collect();
    assert_eq!(per_thread, vec![N; THREADS as usize], "hits per thread");
    let summary = summary.expect("a summary line");
    let p = probe_summary(&summary, &spec);
    assert_eq!(num(p, "hits"), N * THREADS, "BPF count: {p}");
    for hit in &hits {
        assert_eq!(hit["symbol"], "probed_add", "{hit}");
    }
    common::assert_summary_adds_up(&summary);
    chosen.finish();
    twin.finish();
}

/// `--count N` ends the run by itself after exactly N printed hits (of several probes, while
/// the target makes far more calls); the summary says `count`, its printed total is N, and
/// hits == printed + not_printed + lost for each probe.
#[test]
fn count_stops_after_exactly_n_hits() {
    if !common::require_bpf("count_stops_after_exactly_n_hits") {
        return;
    }
    const COUNT: u64 = 25;
    let copy = TargetCopy::new("tf_count");
    let mut target = Target::start(&copy.path, &["200"]);
    let specs = [
        copy.spec("uprobe", "probed_add"),
        copy.spec("uretprobe", "probed_other"),
    ];
    let probed = Probed::start(&[
        "trace",
        &specs[0],
        &specs[1],
        "--format",
        "json",
        "--count",
        &COUNT.to_string(),
    ]);
    let round = target.go();
    assert_eq!(common::reported_sum(&round), common::expected_sum(200));
    let end = probed.wait();
    assert!(end.status.success(), "{end:?}");
    let (hits, summary) = parse_json(&end.stdout);
    assert_eq!(hits.len() as u64, COUNT, "{hits:?}");
    let summary = summary.expect("a summary line");
    assert_eq!(summary["ended_by"], "count", "{summary}");
    let printed: u64 = summary["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .map(|p| num(p, "printed"))
        .sum();
    assert_eq!(printed, COUNT, "{summary}");
    common::assert_summary_adds_up(&summary);
    target.finish();
}

/// `--duration 1.5` ends the run on time (not before, and within a bounded delay after),
/// says `duration` in the summary, and every call made meanwhile was printed.
#[test]
fn duration_ends_on_time() {
    if !common::require_bpf("duration_ends_on_time") {
        return;
    }
    const N: u64 = 30;
    let copy = TargetCopy::new("tf_duration");
    let mut target = Target::start(&copy.path, &[&N.to_string()]);
    let spec = copy.spec("uprobe", "probed_add");
    let probed = Probed::start(&["trace", &spec, "--format", "json", "--duration", "1.5"]);
    target.go();
    let end = probed.wait();
    assert!(end.status.success(), "{end:?}");
    // Measured from the "tracing" line, which probed prints just before its clock starts.
    assert!(
        end.elapsed >= Duration::from_millis(1400),
        "ended early: {:?}",
        end.elapsed
    );
    assert!(
        end.elapsed < Duration::from_millis(4000),
        "ended late: {:?}",
        end.elapsed
    );
    let (hits, summary) = parse_json(&end.stdout);
    assert_eq!(hits.len() as u64, N);
    let summary = summary.expect("a summary line");
    assert_eq!(summary["ended_by"], "duration", "{summary}");
    let secs = summary["duration_s"].as_f64().expect("duration_s");
    assert!((1.5..3.5).contains(&secs), "duration_s {secs}");
    assert_eq!(num(probe_summary(&summary, &spec), "hits"), N);
    common::assert_summary_adds_up(&summary);
    target.finish();
}
