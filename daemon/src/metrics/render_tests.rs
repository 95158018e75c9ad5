//! Tests of the exposition text: exact output, escaping, and that a strict parser of the
//! format (exposition_parser.rs, written from the format's description, not from `render`)
//! reads it back.

use super::*;
use crate::{
    metrics::exposition_parser::{parse, value},
    resolve::Counters,
};

fn probe(id: u32, spec: &str, output: &str) -> ProbeMetrics {
    ProbeMetrics {
        id,
        spec: spec.into(),
        output: output.into(),
        ..ProbeMetrics::default()
    }
}

fn small() -> MetricsSnapshot {
    let mut p = probe(0, "uprobe:/bin/t:f", "stdout");
    p.hits = 3;
    p.lost = 1;
    p.rate_limited = 0;
    p.written = 2;
    p.unresolved.insert("unmapped".into(), 1);
    MetricsSnapshot {
        probes: vec![p],
        resolver: Counters {
            fast: 1,
            fallback_in_flight: 1,
            from_mirror: 1,
            rescans: 1,
            ..Counters::default()
        },
        processes_tracked: 1,
        mirrors: 1,
        reloads: 2,
        uptime_seconds: 1.5,
        tracker: "syscalls",
        tracker_errors: [("exits_missed", 0), ("reports_lost", 2)].into(),
        stack_stops: vec![("end", 5), ("no_cfi", 1)],
        ..MetricsSnapshot::default()
    }
}

/// The whole text for a one-probe snapshot, byte for byte.
#[test]
fn exact_output_of_a_small_snapshot() {
    let expected = r#"# HELP probed_build_info Always 1; the version label says which probed is running.
# TYPE probed_build_info gauge
probed_build_info{version="1.2.3"} 1
# HELP probed_uptime_seconds Seconds since the daemon started.
# TYPE probed_uptime_seconds gauge
probed_uptime_seconds 1.5
# HELP probed_tracker_info Always 1; the mode label says which change tracker runs (kseq, lock, kprobes, syscalls).
# TYPE probed_tracker_info gauge
probed_tracker_info{mode="syscalls"} 1
# HELP probed_tracker_errors_total Times the change tracker fell back to rescans instead of replaying, by kind (inflight_full, reports_lost, tracked_full, lock_held_full, exits_missed); never a wrong answer.
# TYPE probed_tracker_errors_total counter
probed_tracker_errors_total{kind="exits_missed"} 0
probed_tracker_errors_total{kind="reports_lost"} 2
# HELP probed_stack_stops_total Copied-stack walks (stack = auto or dwarf) ended, by reason: end (the outermost frame), no_cfi, no_module, max_frames, stack_copy_end, bad_stack_read, bad_return_address, unwind_error, no_stack_copy.
# TYPE probed_stack_stops_total counter
probed_stack_stops_total{reason="end"} 5
probed_stack_stops_total{reason="no_cfi"} 1
# HELP probed_captures_total Lock and kseq modes: addresses (what: hit, frame) answered from their hit-time capture (result: captured) or whose capture failed (result: failed, never guessed); kseq mode: answered from another hit's capture at the same address-space counter value (result: kseq) or held by none (result: kseq_missed, never guessed).
# TYPE probed_captures_total counter
probed_captures_total{what="hit",result="captured"} 0
probed_captures_total{what="hit",result="failed"} 0
probed_captures_total{what="frame",result="captured"} 0
probed_captures_total{what="frame",result="failed"} 0
probed_captures_total{what="hit",result="kseq"} 0
probed_captures_total{what="hit",result="kseq_missed"} 0
probed_captures_total{what="frame",result="kseq"} 0
probed_captures_total{what="frame",result="kseq_missed"} 0
# HELP probed_probes_attached Configured probes currently attached (not disabled).
# TYPE probed_probes_attached gauge
probed_probes_attached 1
# HELP probed_probe_disabled 1 if the probe was detached for exceeding its disable_above rate, else 0.
# TYPE probed_probe_disabled gauge
probed_probe_disabled{probe_id="0",spec="uprobe:/bin/t:f",output="stdout"} 0
# HELP probed_probe_hits_total Times the probe fired, counted in BPF before any rate limit.
# TYPE probed_probe_hits_total counter
probed_probe_hits_total{probe_id="0",spec="uprobe:/bin/t:f",output="stdout"} 3
# HELP probed_probe_lost_total Hits the kernel could not deliver because the ring buffer was full.
# TYPE probed_probe_lost_total counter
probed_probe_lost_total{probe_id="0",spec="uprobe:/bin/t:f",output="stdout"} 1
# HELP probed_probe_rate_limited_total Hits dropped in BPF by the probe's token bucket.
# TYPE probed_probe_rate_limited_total counter
probed_probe_rate_limited_total{probe_id="0",spec="uprobe:/bin/t:f",output="stdout"} 0
# HELP probed_probe_filtered_total Hits from processes outside the probe's container (pid namespace), dropped in BPF.
# TYPE probed_probe_filtered_total counter
probed_probe_filtered_total{probe_id="0",spec="uprobe:/bin/t:f",output="stdout"} 0
# HELP probed_probe_self_excluded_total Hits from probed's own processes, dropped in BPF: probed never traces itself.
# TYPE probed_probe_self_excluded_total counter
probed_probe_self_excluded_total{probe_id="0",spec="uprobe:/bin/t:f",output="stdout"} 0
# HELP probed_probe_dropped_at_stop_total Hits still in the ring buffer at a stop's drain deadline: counted, not processed.
# TYPE probed_probe_dropped_at_stop_total counter
probed_probe_dropped_at_stop_total{probe_id="0",spec="uprobe:/bin/t:f",output="stdout"} 0
# HELP probed_probe_mismatch_total Hits the resolver placed at another (file, offset) than the kernel matched them to: wrong answers, expected 0.
# TYPE probed_probe_mismatch_total counter
probed_probe_mismatch_total{probe_id="0",spec="uprobe:/bin/t:f",output="stdout"} 0
# HELP probed_probe_written_total Hits written to the probe's output.
# TYPE probed_probe_written_total counter
probed_probe_written_total{probe_id="0",spec="uprobe:/bin/t:f",output="stdout"} 2
# HELP probed_probe_write_errors_total Hits whose write to the probe's output failed.
# TYPE probed_probe_write_errors_total counter
probed_probe_write_errors_total{probe_id="0",spec="uprobe:/bin/t:f",output="stdout"} 0
# HELP probed_unresolved_addresses_total Stack frames of the probe's hits whose address could not be resolved, by reason.
# TYPE probed_unresolved_addresses_total counter
probed_unresolved_addresses_total{probe_id="0",spec="uprobe:/bin/t:f",output="stdout",reason="unmapped"} 1
# HELP probed_resolved_by_probe_total Hits the resolver could not answer (by its reason) that the probe's own location did.
# TYPE probed_resolved_by_probe_total counter
# HELP probed_resolver_fast_path_total Addresses resolved by the speculative fast path (no lock, no syscall).
# TYPE probed_resolver_fast_path_total counter
probed_resolver_fast_path_total 1
# HELP probed_resolver_fallbacks_total Addresses that missed the fast path, by reason.
# TYPE probed_resolver_fallbacks_total counter
probed_resolver_fallbacks_total{reason="no_snapshot"} 0
probed_resolver_fallbacks_total{reason="in_flight"} 1
probed_resolver_fallbacks_total{reason="seq_mismatch"} 0
probed_resolver_fallbacks_total{reason="hit_seq"} 0
probed_resolver_fallbacks_total{reason="changed"} 0
# HELP probed_resolver_fallback_answers_total Fallbacks answered without a rescan, by the picture that answered.
# TYPE probed_resolver_fallback_answers_total counter
probed_resolver_fallback_answers_total{source="mirror"} 1
probed_resolver_fallback_answers_total{source="retained"} 0
probed_resolver_fallback_answers_total{source="replayed"} 0
# HELP probed_resolver_change_reports_total Mapping change reports from BPF, by whether they could be replayed.
# TYPE probed_resolver_change_reports_total counter
probed_resolver_change_reports_total{result="replayed"} 0
probed_resolver_change_reports_total{result="unreplayable"} 0
# HELP probed_resolver_rescans_total Rescans of /proc/PID/maps, by result.
# TYPE probed_resolver_rescans_total counter
probed_resolver_rescans_total{result="published"} 1
probed_resolver_rescans_total{result="retried"} 0
probed_resolver_rescans_total{result="failed"} 0
# HELP probed_resolver_exited_dropped_total Exited processes whose pictures were dropped to stay within the retention bound.
# TYPE probed_resolver_exited_dropped_total counter
probed_resolver_exited_dropped_total 0
# HELP probed_processes_tracked Live processes the resolver tracks.
# TYPE probed_processes_tracked gauge
probed_processes_tracked 1
# HELP probed_mirrors Per-process address-space mirrors the resolver holds, live and exited.
# TYPE probed_mirrors gauge
probed_mirrors 1
# HELP probed_exited_retained Mirrors of exited processes, kept for hits still queued.
# TYPE probed_exited_retained gauge
probed_exited_retained 0
# HELP probed_malformed_events_total Ring-buffer records that could not be decoded.
# TYPE probed_malformed_events_total counter
probed_malformed_events_total 0
# HELP probed_unnamed_frames_total Addresses (hits, stack frames) whose mapping was found but whose file no source could name (printed with its identity).
# TYPE probed_unnamed_frames_total counter
probed_unnamed_frames_total 0
# HELP probed_unknown_probe_hits_total Hit records naming a probe id the daemon does not have (expected 0: an ABI or cookie mismatch).
# TYPE probed_unknown_probe_hits_total counter
probed_unknown_probe_hits_total 0
# HELP probed_config_reloads_total Configuration reloads, by result (a rejected one keeps the old configuration).
# TYPE probed_config_reloads_total counter
probed_config_reloads_total{result="applied"} 2
probed_config_reloads_total{result="rejected"} 0
"#;
    let got = render(&small(), "1.2.3");
    // Line by line first, so a failure names the first differing line.
    for (i, (g, e)) in got.lines().zip(expected.lines()).enumerate() {
        assert_eq!(g, e, "line {}", i + 1);
    }
    assert_eq!(got, expected);
}

/// A SPEC or output name with a backslash, a double quote and a line feed is escaped in
/// label values and reads back unchanged.
#[test]
fn label_values_are_escaped() {
    let nasty = "uprobe:/tmp/a\\b\"c\nd:f";
    let mut p = probe(7, nasty, "out\"put");
    p.hits = 5;
    p.unresolved.insert("why\\\"\n".into(), 2);
    let snap = MetricsSnapshot {
        probes: vec![p],
        ..MetricsSnapshot::default()
    };
    let text = render(&snap, "v\"1\n");
    assert!(
        text.contains(
            "probed_probe_hits_total{probe_id=\"7\",spec=\"uprobe:/tmp/a\\\\b\\\"c\\nd:f\",output=\"out\\\"put\"} 5\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("probed_build_info{version=\"v\\\"1\\n\"} 1\n"),
        "{text}"
    );
    let (samples, _) = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        value(
            &samples,
            "probed_probe_hits_total",
            &[("spec", nasty), ("output", "out\"put")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &samples,
            "probed_unresolved_addresses_total",
            &[("spec", nasty), ("reason", "why\\\"\n")]
        ),
        2.0
    );
    assert_eq!(
        value(&samples, "probed_build_info", &[("version", "v\"1\n")]),
        1.0
    );
}

/// A bigger snapshot parses; every family has exactly one HELP and TYPE; counters end in
/// `_total` and gauges do not; every value reads back; fallbacks by reason add up.
#[test]
fn output_parses_and_reads_back() {
    let mut probes = Vec::new();
    for id in 0..3 {
        let mut p = probe(
            id,
            &format!("uprobe:/bin/t:f{id}"),
            ["stdout", "hits"][id as usize % 2],
        );
        p.hits = 1000 + u64::from(id);
        p.lost = u64::from(id);
        p.rate_limited = 10 * u64::from(id);
        p.written = 900 + u64::from(id);
        p.filtered = 20 + u64::from(id);
        p.write_errors = 30 + u64::from(id);
        p.disabled = id == 2;
        p.unresolved.insert("unmapped".into(), 3);
        p.unresolved.insert("not_file_backed".into(), 4);
        p.resolved_by_probe
            .insert("in_flight".into(), u64::from(id) + 1);
        probes.push(p);
    }
    let snap = MetricsSnapshot {
        probes,
        resolver: Counters {
            fast: 123,
            fallback_no_snapshot: 1,
            fallback_in_flight: 2,
            fallback_seq_mismatch: 3,
            fallback_hit_seq: 4,
            fallback_changed: 5,
            rescan_failures: 6,
            ..Counters::default()
        },
        processes_tracked: 4,
        mirrors: 3,
        exited_retained: 2,
        malformed_events: 1,
        unnamed_frames: 3,
        unknown_probe_hits: 5,
        reload_failures: 9,
        uptime_seconds: 3600.25,
        ..MetricsSnapshot::default()
    };
    let text = render(&snap, "0.1.0");
    let (samples, types) = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for (name, kind) in &types {
        assert!(name.starts_with("probed_"), "{name}");
        match kind.as_str() {
            "counter" => assert!(name.ends_with("_total"), "{name}"),
            "gauge" => assert!(!name.ends_with("_total"), "{name}"),
            other => panic!("{name}: {other}"),
        }
        assert_eq!(
            text.matches(&format!("# HELP {name} ")).count(),
            1,
            "{name}"
        );
    }
    for id in 0..3u32 {
        let pid = id.to_string();
        let l = [("probe_id", pid.as_str())];
        assert_eq!(
            value(&samples, "probed_probe_hits_total", &l),
            1000.0 + f64::from(id)
        );
        assert_eq!(
            value(&samples, "probed_probe_lost_total", &l),
            f64::from(id)
        );
        assert_eq!(
            value(&samples, "probed_probe_rate_limited_total", &l),
            10.0 * f64::from(id)
        );
        assert_eq!(
            value(&samples, "probed_probe_written_total", &l),
            900.0 + f64::from(id)
        );
        assert_eq!(
            value(&samples, "probed_probe_filtered_total", &l),
            20.0 + f64::from(id)
        );
        assert_eq!(
            value(&samples, "probed_probe_write_errors_total", &l),
            30.0 + f64::from(id)
        );
        assert_eq!(
            value(&samples, "probed_probe_disabled", &l),
            f64::from(u8::from(id == 2))
        );
        let r = [("probe_id", pid.as_str()), ("reason", "not_file_backed")];
        assert_eq!(
            value(&samples, "probed_unresolved_addresses_total", &r),
            4.0
        );
        let r = [("probe_id", pid.as_str()), ("reason", "in_flight")];
        assert_eq!(
            value(&samples, "probed_resolved_by_probe_total", &r),
            f64::from(id) + 1.0
        );
    }
    assert_eq!(value(&samples, "probed_probes_attached", &[]), 2.0);
    let fallbacks: f64 = samples
        .iter()
        .filter(|(n, _, _)| n == "probed_resolver_fallbacks_total")
        .map(|s| s.2)
        .sum();
    assert_eq!(fallbacks, 15.0);
    assert_eq!(
        value(&samples, "probed_resolver_fast_path_total", &[]),
        123.0
    );
    assert_eq!(
        value(
            &samples,
            "probed_resolver_rescans_total",
            &[("result", "failed")]
        ),
        6.0
    );
    assert_eq!(
        value(
            &samples,
            "probed_config_reloads_total",
            &[("result", "rejected")]
        ),
        9.0
    );
    assert_eq!(value(&samples, "probed_uptime_seconds", &[]), 3600.25);
    assert_eq!(value(&samples, "probed_exited_retained", &[]), 2.0);
    assert_eq!(value(&samples, "probed_malformed_events_total", &[]), 1.0);
    assert_eq!(value(&samples, "probed_unnamed_frames_total", &[]), 3.0);
    assert_eq!(value(&samples, "probed_unknown_probe_hits_total", &[]), 5.0);
}

/// Counters are printed as exact integers, even above 2^53 where an f64 would round.
#[test]
fn large_counters_are_exact() {
    let mut p = probe(0, "s", "o");
    p.hits = u64::MAX;
    let text = render(
        &MetricsSnapshot {
            probes: vec![p],
            ..MetricsSnapshot::default()
        },
        "v",
    );
    assert!(text.contains("} 18446744073709551615\n"), "{text}");
}

/// Non-finite floats are spelled as the format wants (Rust's own would be `inf`).
#[test]
fn non_finite_floats_use_the_format_spelling() {
    for (v, s) in [
        (f64::INFINITY, "+Inf"),
        (f64::NEG_INFINITY, "-Inf"),
        (f64::NAN, "NaN"),
        (0.0, "0"),
    ] {
        let snap = MetricsSnapshot {
            uptime_seconds: v,
            ..MetricsSnapshot::default()
        };
        let text = render(&snap, "v");
        assert!(
            text.contains(&format!("\nprobed_uptime_seconds {s}\n")),
            "{s}: {text}"
        );
        parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    }
}
