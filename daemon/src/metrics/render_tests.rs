//! Tests of the exposition text: exact output, escaping, and that a strict parser of the
//! format (below, written from the format's description, not from `render`) reads it back.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::resolve::Counters;

/// One parsed sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses text exposition format 0.0.4 strictly: every line ends with `\n`; `# HELP` and
/// `# TYPE` at most once per family and before its samples; a family's samples contiguous;
/// names and label names from the legal character sets; label values with only the `\\`,
/// `\"` and `\n` escapes; values Go-float syntax. Returns the samples and each family's type.
fn parse(text: &str) -> Result<(Vec<Sample>, BTreeMap<String, String>), String> {
    let body = text.strip_suffix('\n').ok_or("no final line feed")?;
    let mut types = BTreeMap::new();
    let mut helps = BTreeSet::new();
    let mut closed = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    for line in body.split('\n') {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest
                .split_once(' ')
                .ok_or(format!("HELP without text: {line}"))?;
            check_name(name, true)?;
            unescape(help, false)?;
            if !helps.insert(name.to_owned()) {
                return Err(format!("second HELP for {name}"));
            }
            enter(&mut current, &mut closed, name)?;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE: {line}"))?;
            check_name(name, true)?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("unknown type {kind}"));
            }
            if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                return Err(format!("second TYPE for {name}"));
            }
            enter(&mut current, &mut closed, name)?;
        } else if line.starts_with('#') {
            return Err(format!("unexpected comment: {line}"));
        } else {
            let (series, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let inner = rest
                        .strip_suffix('}')
                        .ok_or(format!("unclosed labels: {line}"))?;
                    (name, parse_labels(inner)?)
                }
            };
            check_name(name, true)?;
            if !types.contains_key(name) {
                return Err(format!("sample before TYPE: {line}"));
            }
            enter(&mut current, &mut closed, name)?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().map_err(|e| format!("bad value {v}: {e}"))?,
            };
            samples.push((name.to_owned(), labels, value));
        }
    }
    Ok((samples, types))
}

/// Moves to family `name`; a family seen before and left is an error (not contiguous).
fn enter(
    current: &mut Option<String>,
    closed: &mut BTreeSet<String>,
    name: &str,
) -> Result<(), String> {
    if current.as_deref() == Some(name) {
        return Ok(());
    }
    if closed.contains(name) {
        return Err(format!("family {name} is not contiguous"));
    }
    if let Some(prev) = current.replace(name.to_owned()) {
        closed.insert(prev);
    }
    Ok(())
}

/// Metric names `[a-zA-Z_:][a-zA-Z0-9_:]*`; label names the same without `:`.
fn check_name(name: &str, metric: bool) -> Result<(), String> {
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (metric && c == ':');
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(ok_first);
    if first_ok && chars.all(|c| ok_first(c) || c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("bad name {name:?}"))
    }
}

/// `k="v",k="v"` (a trailing comma allowed, as the format allows).
fn parse_labels(mut s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (name, rest) = s.split_once("=\"").ok_or(format!("bad label at {s}"))?;
        check_name(name, false)?;
        // The value ends at the first `"` not escaped.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or("unterminated label value")?;
        let value = unescape(&rest[..end], true)?;
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
    Ok(labels)
}

/// Undoes `\\`, `\n` and (in label values) `\"`; any other escape, or a raw `"` in a label
/// value, is an error.
fn unescape(s: &str, label: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('"') if label => out.push('"'),
                other => return Err(format!("bad escape \\{other:?} in {s:?}")),
            },
            '"' if label => return Err(format!("raw quote in {s:?}")),
            '\n' => return Err("raw line feed".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The value of the one sample of `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].2
}

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
# HELP probed_tracker_info Always 1; the mode label says which change tracker runs (lock, kprobes, syscalls).
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
# HELP probed_captures_total Lock mode: addresses (what: hit, frame) answered from their hit-time capture (result: captured) or whose capture failed (result: failed, never guessed).
# TYPE probed_captures_total counter
probed_captures_total{what="hit",result="captured"} 0
probed_captures_total{what="hit",result="failed"} 0
probed_captures_total{what="frame",result="captured"} 0
probed_captures_total{what="frame",result="failed"} 0
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

/// The test parser itself rejects what the format forbids (else the tests above prove
/// nothing).
#[test]
fn the_test_parser_rejects_bad_text() {
    assert!(parse("# TYPE a_total counter\na_total 1\n").is_ok());
    for bad in [
        "# TYPE a gauge\na 1",                                      // no final LF
        "a 1\n",                                                    // sample before TYPE
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",                    // TYPE twice
        "# TYPE a gauge\na{x=\"1\"} 1\n# TYPE b gauge\nb 1\na 2\n", // not contiguous
        "# TYPE a gauge\na{x=\"a\"b\"} 1\n",                        // raw quote
        "# TYPE a gauge\na{x=\"\\t\"} 1\n",                         // unknown escape
        "# TYPE a gauge\na{1x=\"a\"} 1\n",                          // bad label name
        "# TYPE a gauge\na one\n",                                  // bad value
        "# TYPE 1a gauge\n1a 1\n",                                  // bad metric name
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
    // A sample whose own name has no TYPE line (the TYPE is for `a`, not `a_total`).
    assert!(parse("# TYPE a counter\na_total 1\n").is_err());
}
