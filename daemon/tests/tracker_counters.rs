//! The resolver counters of the summary: how many hits took the fast path, the published
//! mirror, a retained or replayed picture, or a rescan. They must add up with the hit lines
//! (every hit counted once, each `via` matching its counter), and show the design at work: a
//! process whose mappings do not change is answered on the fast path; hits queued behind
//! later changes are answered from pictures replayed out of the change reports.

mod common;

use std::path::PathBuf;

use common::{PrivateDir, Probed, Target, TargetCopy, num, parse_json, probe_summary};

/// Builds a fixture (cached) or panics with the compiler's message.
fn build(source: &str, out: &str, flags: &[&str]) -> PathBuf {
    probed::fixtures::build(source, out, flags).unwrap_or_else(|e| panic!("build {out}: {e}"))
}

/// A running two-thread target (its address space stays the same while it calls) makes
/// 2 × 25,000 probed calls: all are counted and resolved, the counters add up with the hit
/// lines, at least 99% of the hits took the fast path (in lock mode: or answered from their
/// captures before the first picture was published) and at most one rescan was needed.
#[test]
fn stable_process_takes_the_fast_path() {
    if !common::require_bpf("stable_process_takes_the_fast_path") {
        return;
    }
    const CALLS: u64 = 25_000;
    let copy = TargetCopy::new("tk_stable");
    let mut target = Target::start(&copy.path, &[&CALLS.to_string(), "2"]);
    let spec = copy.spec("uprobe", "probed_add");
    let probed = Probed::start(&["trace", &spec, "--format", "json"]);
    let round = target.go();
    assert_eq!(common::reported_tids(&round).len(), 2, "{round:?}");
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{:?}", end.stderr);
    let (hits, summary) = parse_json(&end.stdout);
    let summary = summary.expect("a summary line");
    common::assert_summary_adds_up(&summary);
    let p = probe_summary(&summary, &spec);
    assert_eq!(num(p, "hits"), 2 * CALLS, "{p}");
    assert_eq!(num(p, "lost"), 0, "{p}");
    assert_eq!(hits.len() as u64, 2 * CALLS);
    let r = common::assert_resolver_counters(&hits, &summary);
    let (via, unresolved) = common::via_counts(&hits);
    eprintln!("stable: via {via:?}, unresolved {unresolved:?}, resolver {r}");
    assert!(unresolved.is_empty(), "{unresolved:?}");
    assert!(
        hits.iter()
            .all(|h| h["module"] == copy.path_str() && h["symbol"] == "probed_add"),
        "every hit resolves to probed_add"
    );
    // Kseq mode: no picture at all; after the first hits' captures every hit is answered
    // from one at its counter value (`kseq_answered`), the mode's lock-free path.
    let fast = num(&r, "fast_path") + num(&r, "kseq_answered");
    // Lock mode (auto on 6.14+): the hits BPF records before the daemon has published its
    // first picture of the process (the first millisecond or so of this flood: 165–571 of
    // 50,000 in five runs) carry their own captures and answer from them; every later one
    // takes the fast path.
    let captured = num(&r, "captured");
    assert!(
        (fast + captured) * 100 >= 2 * CALLS * 99 && fast * 100 >= 2 * CALLS * 95,
        "fast path {fast} (+ {captured} captured) of {} hits: {r}",
        2 * CALLS
    );
    // The process was scanned once at start; anything else would be another process's exec
    // on this host (scanned eagerly too), not this stable one.
    assert!(num(&r, "rescans") <= 20, "{r}");
    target.finish();
}

/// probed is stopped (SIGSTOP) before the churn target starts, and resumed after its 300
/// dlopen rounds while it still runs: probed then first sees its exec and takes a snapshot of
/// the address space as it is now, after every change the queued hits saw. Each hit must
/// therefore be answered from the picture replayed to its own sequence: every one resolves to
/// the library its argument names, via `replayed` (the counter says so too), none through a
/// rescan, and the counters add up. In lock mode the same hits are answered from their own
/// captures (`via: captured`): the daemon's picture was never of their sequences; in kseq
/// mode from their captures or another hit's at the same counter value.
#[test]
fn queued_hits_resolve_from_replayed_pictures() {
    if !common::require_bpf("queued_hits_resolve_from_replayed_pictures") {
        return;
    }
    queued_hits("syscalls");
    if common::lock_mode_or_refusal() {
        queued_hits("lock");
    }
    if common::kseq_mode_or_refusal() {
        queued_hits("kseq");
    }
}

fn queued_hits(tracker: &str) {
    const ROUNDS: u64 = 300;
    let dir = PrivateDir::new("tk_replayed");
    let target_bin = dir.copy(
        &build("churn_target.c", "churn_target", &["-O2", "-ldl"]),
        "churn",
    );
    let libs = [1, 2].map(|which| {
        let define = format!("-DWHICH={which}");
        let built = build(
            "churn_lib.c",
            &format!("churn_lib_{which}"),
            &["-O2", "-shared", "-fPIC", &define],
        );
        dir.copy(&built, &format!("libkc{which}.so"))
    });
    let specs = libs
        .each_ref()
        .map(|l| format!("uprobe:{}:churn_fn", l.display()));
    let probed = Probed::start(&[
        "trace",
        &specs[0],
        &specs[1],
        "--format",
        "json",
        "--tracker",
        tracker,
    ]);
    let probed_pid = i32::try_from(probed.pid()).expect("pid fits i32");
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    assert_eq!(unsafe { libc::kill(probed_pid, libc::SIGSTOP) }, 0);
    let lib_args = libs.each_ref().map(|l| l.to_str().expect("UTF-8 path"));
    let mut target = Target::start(
        &target_bin,
        &[lib_args[0], lib_args[1], &ROUNDS.to_string()],
    );
    let round = target.go();
    assert!(
        round
            .iter()
            .any(|l| l.starts_with(&format!("done {}", 2 * ROUNDS))),
        "{round:?}"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(probed_pid, libc::SIGCONT) }, 0);
    let end = probed.stop(libc::SIGINT);
    assert!(end.status.success(), "{:?}", end.stderr);
    let (hits, summary) = parse_json(&end.stdout);
    let summary = summary.expect("a summary line");
    common::assert_summary_adds_up(&summary);
    for spec in &specs {
        let p = probe_summary(&summary, spec);
        assert_eq!(num(p, "hits"), ROUNDS, "{p}");
        assert_eq!(num(p, "lost"), 0, "{p}");
    }
    assert_eq!(hits.len() as u64, 2 * ROUNDS);
    let r = common::assert_resolver_counters(&hits, &summary);
    let (via, unresolved) = common::via_counts(&hits);
    eprintln!("replayed: via {via:?}, unresolved {unresolved:?}, resolver {r}");
    for h in &hits {
        let which = h["args"][0].as_u64().expect("argument 0");
        let lib = &libs[usize::try_from(which - 1).expect("which is 1 or 2")];
        assert_eq!(h["module"], lib.to_str().expect("UTF-8"), "{h}");
        assert_eq!(h["symbol"], "churn_fn", "{h}");
    }
    assert_eq!(summary["tracker"], tracker);
    if tracker == "syscalls" {
        assert_eq!(num(&r, "replayed"), 2 * ROUNDS, "{r}");
        assert!(num(&r, "changes_replayed") >= 10 * ROUNDS, "{r}");
    } else if tracker == "lock" {
        assert_eq!(num(&r, "captured"), 2 * ROUNDS, "{r}");
        assert_eq!(via.get("captured").copied(), Some(2 * ROUNDS), "{via:?}");
    } else {
        // Kseq mode: each hit's own capture, or one at the same counter value (a round's
        // dlopen moves it); nothing from a picture, nothing missed.
        assert_eq!(
            num(&r, "captured") + num(&r, "kseq_answered"),
            2 * ROUNDS,
            "{r}"
        );
        assert_eq!(num(&r, "fast_path") + num(&r, "kseq_missed"), 0, "{r}");
    }
    target.finish();
}
