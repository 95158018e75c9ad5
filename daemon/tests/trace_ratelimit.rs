//! Per-probe limits enforced in BPF: the rate limit (GCRA token bucket, `--rate-limit`,
//! `--burst`) and the pid-namespace filter (`--container`), with exact bookkeeping:
//! hits = printed + not_printed + lost + rate_limited + filtered.
//!
//! The rate-limit bounds are the algorithm's own: from a full bucket of B tokens refilled at
//! R per second, over a span of T seconds at most B + R×T hits conform (exactly: B +
//! floor(R×T)), and when calls come far faster than R, one conforms per 1/R after the first
//! B. The clock is the same on both sides (BPF's ktime and Rust's Instant are both
//! CLOCK_MONOTONIC), so a span measured in the test around the calls bounds the span BPF saw.

mod common;

use std::{
    num::NonZeroU32,
    time::{Duration, Instant},
};

use common::{Probed, Target, TargetCopy, num, parse_json, probe_summary};
use probed::{
    attach::{AttachError, AttachRequest, RateLimit, Tracer},
    events::{Event, decode},
    spec::ProbeKind,
};
use probed_common::{ProbeStats, gcra, gcra_params};

/// Calls per round of the target (probed_add and probed_other each).
const M: u64 = 20_000;

/// `probed trace --rate-limit R --burst B`: the target calls probed_add M times as fast as it
/// can; exactly M hits are counted, printed + rate_limited (+ lost, 0 at this rate) == M,
/// at most B + R×T are printed over the measured wall time T, and more than B (the bucket
/// refilled while the calls ran: they take far longer than 1/R).
#[test]
fn rate_limit_bounds_printed_hits() {
    if !common::require_bpf("rate_limit_bounds_printed_hits") {
        return;
    }
    const R: u64 = 1000;
    const B: u64 = 50;
    let copy = TargetCopy::new("trl_cli");
    let mut target = Target::start(&copy.path, &[&M.to_string()]);
    let spec = copy.spec("uprobe", "probed_add");
    let pid = target.pid.to_string();
    let probed = Probed::start(&[
        "trace",
        &spec,
        "--pid",
        &pid,
        "--rate-limit",
        &R.to_string(),
        "--burst",
        &B.to_string(),
        "--format",
        "json",
    ]);
    let started = Instant::now();
    let round = target.go();
    let wall = started.elapsed();
    assert_eq!(common::reported_sum(&round), common::expected_sum(M as i64));
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let (hits, summary) = parse_json(&end.stdout);
    let summary = summary.expect("a summary line");
    let p = probe_summary(&summary, &spec);
    let printed = num(p, "printed");
    assert_eq!(num(p, "hits"), M, "{p}");
    assert_eq!(num(p, "lost"), 0, "{p}");
    assert_eq!(num(p, "filtered"), 0, "{p}");
    assert_eq!(printed + num(p, "rate_limited"), M, "{p}");
    assert_eq!(hits.len() as u64, printed);
    common::assert_summary_adds_up(&summary);

    let upper = B + (R as f64 * wall.as_secs_f64()).floor() as u64;
    eprintln!(
        "rate limit {R}/s burst {B}: {M} calls in {wall:?}, printed {printed} (bound {upper})"
    );
    assert!(
        printed <= upper,
        "{printed} printed > B + R×T = {upper} ({wall:?})"
    );
    // Calls cost at least ~0.5 µs each with a uprobe, so M of them span far more than 1/R:
    // the bucket must have refilled at least once.
    assert!(printed > B, "only the burst was printed: {p}");
    // Printed hits are in call order: argument 0 grows.
    let args: Vec<u64> = hits
        .iter()
        .map(|h| h["args"][0].as_u64().unwrap())
        .collect();
    assert!(args.windows(2).all(|w| w[0] < w[1]), "{args:?}");
    assert_eq!(
        args[..B as usize],
        (0..B).collect::<Vec<_>>()[..],
        "the burst"
    );
    target.finish();
}

/// Two probes in one BPF object, one limited, one not, on the same M calls: the unlimited
/// one delivers every hit; the limited one's delivered hits obey the GCRA bound pairwise on
/// BPF's own timestamps (no window of theirs holds more than B + R×window), and their number
/// is what the algorithm admits for the arrival times the unlimited probe recorded (±
/// SLACK). Then the probe id is reset for reuse.
#[test]
fn limited_and_unlimited_probes_in_one_object() {
    if !common::require_bpf("limited_and_unlimited_probes_in_one_object") {
        return;
    }
    const R: u64 = 2000;
    const B: u64 = 40;
    let copy = TargetCopy::new("trl_lib");
    let mut target = Target::start(&copy.path, &[&M.to_string()]);
    let pid = NonZeroU32::new(target.pid);
    let mut tracer = Tracer::load().expect("load BPF");
    let request = |id, symbol| AttachRequest {
        id,
        kind: ProbeKind::Entry,
        path: copy.path.clone(),
        file_offset: common::symbol_file_offset(&copy.path, symbol),
    };
    tracer
        .set_rate_limit(
            0,
            Some(RateLimit {
                per_sec: R,
                burst: B,
            }),
        )
        .expect("set rate limit");
    tracer
        .attach(&request(0, "probed_add"), pid)
        .expect("attach 0");
    tracer
        .attach(&request(1, "probed_other"), pid)
        .expect("attach 1");
    assert!(matches!(
        tracer.reset_probe(0),
        Err(AttachError::StillAttached(0))
    ));
    assert!(matches!(
        tracer.set_rate_limit(
            0,
            Some(RateLimit {
                per_sec: 0,
                burst: 1
            })
        ),
        Err(AttachError::InvalidRateLimit { .. })
    ));
    // The ring (4 MiB) holds the M + few hits of one run without draining.
    let mut ring = tracer.take_ring().expect("ring");
    let round = target.go();
    assert_eq!(common::reported_sum(&round), common::expected_sum(M as i64));
    tracer.detach_all();
    let (mut limited, mut unlimited) = (Vec::new(), Vec::new());
    while let Some(item) = ring.next() {
        if let Some(Event::Hit(hit)) = decode(&item) {
            match hit.probe_id {
                0 => limited.push(hit.ts_ns),
                1 => unlimited.push(hit.ts_ns),
                other => panic!("hit of unknown probe {other}"),
            }
        }
    }
    let (s0, s1) = (tracer.stats(0).unwrap(), tracer.stats(1).unwrap());
    eprintln!(
        "limited {s0:?} delivered {}; unlimited {s1:?} delivered {}",
        limited.len(),
        unlimited.len()
    );
    assert_eq!(s1.hits, M, "{s1:?}");
    assert_eq!((s1.rate_limited, s1.filtered, s1.lost), (0, 0, 0), "{s1:?}");
    assert_eq!(
        unlimited.len() as u64,
        M,
        "the unlimited probe is unaffected"
    );
    assert_eq!(s0.hits, M, "{s0:?}");
    assert_eq!(s0.lost, 0, "{s0:?}");
    assert_eq!(limited.len() as u64 + s0.rate_limited, M, "{s0:?}");

    // Pairwise GCRA bound on the delivered hits' own (BPF) timestamps.
    let (interval, tolerance) = gcra_params(R, B);
    for i in 0..limited.len() {
        for j in (i + 1..limited.len()).step_by(7) {
            let window = limited[j] - limited[i];
            assert!(
                (j - i + 1) as u64 <= B + window / interval,
                "hits {i}..={j} within {window} ns exceed B + R×T"
            );
        }
    }
    // The unlimited probe's hits are the arrival times (each probed_other call follows its
    // probed_add call by well under a microsecond, far below 1/R): the algorithm over them
    // admits what BPF admitted, up to SLACK hits whose 1/R boundary fell between the two
    // calls of one iteration.
    const SLACK: u64 = 2;
    let mut tat = 0;
    let simulated = unlimited
        .iter()
        .filter(|&&t| {
            gcra(tat, t, interval, tolerance)
                .map(|next| tat = next)
                .is_some()
        })
        .count() as u64;
    let got = limited.len() as u64;
    eprintln!(
        "GCRA over the recorded arrivals admits {simulated}; BPF admitted {got} over {:?}",
        Duration::from_nanos(unlimited[unlimited.len() - 1] - unlimited[0])
    );
    assert!(
        got.abs_diff(simulated) <= SLACK,
        "BPF admitted {got}, the algorithm {simulated}"
    );
    assert!(got > B, "the bucket never refilled");

    // Reuse: reset zeroes counters, flags and limit; the id then counts from 0 unlimited.
    tracer.reset_probe(0).expect("reset");
    assert_eq!(tracer.stats(0).unwrap(), ProbeStats::default());
    tracer
        .attach(&request(0, "probed_add"), pid)
        .expect("reattach");
    target.go();
    tracer.detach_all();
    let s0 = tracer.stats(0).unwrap();
    assert_eq!(
        s0,
        ProbeStats {
            hits: M,
            ..ProbeStats::default()
        },
        "after reset and reattach without a limit"
    );
    target.finish();
}

/// `--container PID`: one process runs in a new pid namespace (unshare --pid --fork), its
/// twin on the host; both make the same calls at once. With `--container <the namespaced
/// one>` exactly its N hits are printed and the twin's N are counted as filtered.
#[test]
fn container_keeps_only_its_namespace() {
    if !common::require_bpf("container_keeps_only_its_namespace") {
        return;
    }
    const N: u64 = 300;
    let copy = TargetCopy::new("trl_ns");
    let mut inside = Target::start_in_new_pidns(&copy.path, &[&N.to_string()]);
    let mut outside = Target::start(&copy.path, &[&N.to_string()]);
    assert_ne!(
        std::fs::read_link(format!("/proc/{}/ns/pid", inside.pid)).unwrap(),
        std::fs::read_link(format!("/proc/{}/ns/pid", outside.pid)).unwrap(),
        "the fixture runs in its own pid namespace"
    );
    let spec = copy.spec("uprobe", "probed_add");
    let container = inside.pid.to_string();
    let probed = Probed::start(&[
        "trace",
        &spec,
        "--container",
        &container,
        "--format",
        "json",
    ]);
    let (in_round, out_round) = std::thread::scope(|s| {
        let o = s.spawn(|| outside.go());
        let i = inside.go();
        (i, o.join().expect("host twin"))
    });
    assert_eq!(
        common::reported_sum(&in_round),
        common::expected_sum(N as i64)
    );
    assert_eq!(
        common::reported_sum(&out_round),
        common::expected_sum(N as i64)
    );
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{end:?}");
    let (hits, summary) = parse_json(&end.stdout);
    assert_eq!(hits.len() as u64, N, "only the namespaced process's hits");
    for (i, hit) in hits.iter().enumerate() {
        // Pids in hits are the host's view.
        assert_eq!(num(hit, "pid"), u64::from(inside.pid), "{hit}");
        assert_eq!(hit["args"][0], i as u64, "{hit}");
        assert_eq!(hit["symbol"], "probed_add", "{hit}");
    }
    let summary = summary.expect("a summary line");
    let p = probe_summary(&summary, &spec);
    assert_eq!(num(p, "hits"), 2 * N, "{p}");
    assert_eq!(num(p, "printed"), N, "{p}");
    assert_eq!(num(p, "filtered"), N, "{p}");
    assert_eq!(num(p, "rate_limited"), 0, "{p}");
    common::assert_summary_adds_up(&summary);
    inside.finish();
    outside.finish();
}

/// `--container` naming a process that has exited is one clear error, before anything is
/// attached, with a non-zero exit.
#[test]
fn container_of_a_dead_pid_is_an_error() {
    if !common::require_bpf("container_of_a_dead_pid_is_an_error") {
        return;
    }
    let copy = TargetCopy::new("trl_dead");
    let mut gone = std::process::Command::new("true")
        .spawn()
        .expect("run true");
    let pid = gone.id();
    gone.wait().expect("reap true");
    let spec = copy.spec("uprobe", "probed_add");
    let end = common::run_probed(&["trace", &spec, "--container", &pid.to_string()]);
    assert!(!end.status.success(), "{end:?}");
    let text = end.stderr.join("\n");
    assert!(
        text.contains("--container") && text.contains(&format!("no process with pid {pid}")),
        "{text}"
    );
    assert!(!text.contains("probed: tracing"), "{text}");
    assert_eq!(
        end.stderr.iter().filter(|l| l.contains("error")).count(),
        1,
        "one error line: {text}"
    );
}
