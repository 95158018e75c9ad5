//! [`MetricsSnapshot`] → Prometheus text exposition format 0.0.4, written by hand (a dozen
//! families do not need a client library and its global registry).
//!
//! Naming follows <https://prometheus.io/docs/practices/naming/>: every name starts with
//! `probed_`; counters end in `_total`; one family measures one thing, so that summing over
//! its labels means something (the resolver's fast path and its fallbacks are separate
//! families; fallbacks by reason add up to all fallbacks). Every per-probe family carries
//! the same identifying labels, `probe_id`, `spec` and `output`, so families join on them.

use std::fmt::Write as _;

use super::snapshot::{MetricsSnapshot, ProbeMetrics};

/// The Content-Type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metric families, in output order: (name, type, help).
const BUILD_INFO: Family = Family::gauge(
    "probed_build_info",
    "Always 1; the version label says which probed is running.",
);
const UPTIME: Family = Family::gauge("probed_uptime_seconds", "Seconds since the daemon started.");
const TRACKER_INFO: Family = Family::gauge(
    "probed_tracker_info",
    "Always 1; the mode label says which change tracker runs (kseq, lock, kprobes, syscalls).",
);
const TRACKER_ERRORS: Family = Family::counter(
    "probed_tracker_errors_total",
    "Times the change tracker fell back to rescans instead of replaying, by kind (inflight_full, reports_lost, tracked_full, lock_held_full, exits_missed); never a wrong answer.",
);
const STACK_STOPS: Family = Family::counter(
    "probed_stack_stops_total",
    "Copied-stack walks (stack = auto or dwarf) ended, by reason: end (the outermost frame), no_cfi, no_module, max_frames, stack_copy_end, bad_stack_read, bad_return_address, unwind_error, no_stack_copy.",
);
const CAPTURES: Family = Family::counter(
    "probed_captures_total",
    "Lock and kseq modes: addresses (what: hit, frame) answered from their hit-time capture (result: captured) or whose capture failed (result: failed, never guessed); kseq mode: answered from another hit's capture at the same address-space counter value (result: kseq) or held by none (result: kseq_missed, never guessed).",
);
const PROBES_ATTACHED: Family = Family::gauge(
    "probed_probes_attached",
    "Configured probes currently attached (not disabled).",
);
const PROBE_DISABLED: Family = Family::gauge(
    "probed_probe_disabled",
    "1 if the probe was detached for exceeding its disable_above rate, else 0.",
);
const HITS: Family = Family::counter(
    "probed_probe_hits_total",
    "Times the probe fired, counted in BPF before any rate limit.",
);
const LOST: Family = Family::counter(
    "probed_probe_lost_total",
    "Hits the kernel could not deliver because the ring buffer was full.",
);
const RATE_LIMITED: Family = Family::counter(
    "probed_probe_rate_limited_total",
    "Hits dropped in BPF by the probe's token bucket.",
);
const FILTERED: Family = Family::counter(
    "probed_probe_filtered_total",
    "Hits from processes outside the probe's container (pid namespace), dropped in BPF.",
);
const SELF_EXCLUDED: Family = Family::counter(
    "probed_probe_self_excluded_total",
    "Hits from probed's own processes, dropped in BPF: probed never traces itself.",
);
const DROPPED_AT_STOP: Family = Family::counter(
    "probed_probe_dropped_at_stop_total",
    "Hits still in the ring buffer at a stop's drain deadline: counted, not processed.",
);
const PROBE_MISMATCH: Family = Family::counter(
    "probed_probe_mismatch_total",
    "Hits the resolver placed at another (file, offset) than the kernel matched them to: wrong answers, expected 0.",
);
const WRITTEN: Family = Family::counter(
    "probed_probe_written_total",
    "Hits written to the probe's output.",
);
const WRITE_ERRORS: Family = Family::counter(
    "probed_probe_write_errors_total",
    "Hits whose write to the probe's output failed.",
);
const UNRESOLVED: Family = Family::counter(
    "probed_unresolved_addresses_total",
    "Stack frames of the probe's hits whose address could not be resolved, by reason.",
);
const BY_PROBE: Family = Family::counter(
    "probed_resolved_by_probe_total",
    "Hits the resolver could not answer (by its reason) that the probe's own location did.",
);
const FAST_PATH: Family = Family::counter(
    "probed_resolver_fast_path_total",
    "Addresses resolved by the speculative fast path (no lock, no syscall).",
);
const FALLBACKS: Family = Family::counter(
    "probed_resolver_fallbacks_total",
    "Addresses that missed the fast path, by reason.",
);
const FALLBACK_ANSWERS: Family = Family::counter(
    "probed_resolver_fallback_answers_total",
    "Fallbacks answered without a rescan, by the picture that answered.",
);
const CHANGE_REPORTS: Family = Family::counter(
    "probed_resolver_change_reports_total",
    "Mapping change reports from BPF, by whether they could be replayed.",
);
const RESCANS: Family = Family::counter(
    "probed_resolver_rescans_total",
    "Rescans of /proc/PID/maps, by result.",
);
const EXITED_DROPPED: Family = Family::counter(
    "probed_resolver_exited_dropped_total",
    "Exited processes whose pictures were dropped to stay within the retention bound.",
);
const PROCESSES: Family = Family::gauge(
    "probed_processes_tracked",
    "Live processes the resolver tracks.",
);
const MIRRORS: Family = Family::gauge(
    "probed_mirrors",
    "Per-process address-space mirrors the resolver holds, live and exited.",
);
const EXITED_RETAINED: Family = Family::gauge(
    "probed_exited_retained",
    "Mirrors of exited processes, kept for hits still queued.",
);
const MALFORMED: Family = Family::counter(
    "probed_malformed_events_total",
    "Ring-buffer records that could not be decoded.",
);
const UNNAMED: Family = Family::counter(
    "probed_unnamed_frames_total",
    "Addresses (hits, stack frames) whose mapping was found but whose file no source could name (printed with its identity).",
);
const UNKNOWN_PROBE: Family = Family::counter(
    "probed_unknown_probe_hits_total",
    "Hit records naming a probe id the daemon does not have (expected 0: an ABI or cookie mismatch).",
);
const RELOADS: Family = Family::counter(
    "probed_config_reloads_total",
    "Configuration reloads, by result (a rejected one keeps the old configuration).",
);

/// One metric family's name, type and help text.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
}

impl Family {
    const fn counter(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind: "counter",
            help,
        }
    }

    const fn gauge(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind: "gauge",
            help,
        }
    }
}

/// A sample value: counters are integers, printed exactly (an f64 would round above 2^53).
#[derive(Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

/// Renders `snapshot` for `version` (the `probed_build_info` label). Every family's HELP and
/// TYPE lines come once, before its samples, even when it has none.
pub fn render(snapshot: &MetricsSnapshot, version: &str) -> String {
    let mut w = Writer::default();
    w.family(&BUILD_INFO);
    w.sample(&BUILD_INFO, &[("version", version)], Value::Int(1));
    w.family(&UPTIME);
    w.sample(&UPTIME, &[], Value::Float(snapshot.uptime_seconds));
    w.family(&TRACKER_INFO);
    if !snapshot.tracker.is_empty() {
        w.sample(&TRACKER_INFO, &[("mode", snapshot.tracker)], Value::Int(1));
    }
    w.family(&TRACKER_ERRORS);
    for (kind, n) in &snapshot.tracker_errors {
        w.sample(&TRACKER_ERRORS, &[("kind", kind)], Value::Int(*n));
    }
    w.family(&STACK_STOPS);
    for (reason, n) in &snapshot.stack_stops {
        w.sample(&STACK_STOPS, &[("reason", reason)], Value::Int(*n));
    }
    w.family(&CAPTURES);
    let [
        captured,
        failed,
        captured_frames,
        failed_frames,
        kseq,
        kseq_missed,
        kseq_frames,
        kseq_missed_frames,
    ] = snapshot.captures;
    for (what, result, v) in [
        ("hit", "captured", captured),
        ("hit", "failed", failed),
        ("frame", "captured", captured_frames),
        ("frame", "failed", failed_frames),
        ("hit", "kseq", kseq),
        ("hit", "kseq_missed", kseq_missed),
        ("frame", "kseq", kseq_frames),
        ("frame", "kseq_missed", kseq_missed_frames),
    ] {
        w.sample(
            &CAPTURES,
            &[("what", what), ("result", result)],
            Value::Int(v),
        );
    }
    w.family(&PROBES_ATTACHED);
    let attached = snapshot.probes.iter().filter(|p| !p.disabled).count();
    w.sample(&PROBES_ATTACHED, &[], Value::Int(attached as u64));

    let probes = &snapshot.probes;
    w.per_probe(&PROBE_DISABLED, probes, |p| u64::from(p.disabled));
    w.per_probe(&HITS, probes, |p| p.hits);
    w.per_probe(&LOST, probes, |p| p.lost);
    w.per_probe(&RATE_LIMITED, probes, |p| p.rate_limited);
    w.per_probe(&FILTERED, probes, |p| p.filtered);
    w.per_probe(&SELF_EXCLUDED, probes, |p| p.self_excluded);
    w.per_probe(&DROPPED_AT_STOP, probes, |p| p.dropped_at_stop);
    w.per_probe(&PROBE_MISMATCH, probes, |p| p.probe_mismatch);
    w.per_probe(&WRITTEN, probes, |p| p.written);
    w.per_probe(&WRITE_ERRORS, probes, |p| p.write_errors);
    w.per_probe_reason(&UNRESOLVED, probes, |p| &p.unresolved);
    w.per_probe_reason(&BY_PROBE, probes, |p| &p.resolved_by_probe);

    let r = &snapshot.resolver;
    w.family(&FAST_PATH);
    w.sample(&FAST_PATH, &[], Value::Int(r.fast));
    w.labelled(
        &FALLBACKS,
        "reason",
        &[
            ("no_snapshot", r.fallback_no_snapshot),
            ("in_flight", r.fallback_in_flight),
            ("seq_mismatch", r.fallback_seq_mismatch),
            ("hit_seq", r.fallback_hit_seq),
            ("changed", r.fallback_changed),
        ],
    );
    w.labelled(
        &FALLBACK_ANSWERS,
        "source",
        &[
            ("mirror", r.from_mirror),
            ("retained", r.retained),
            ("replayed", r.replayed),
        ],
    );
    w.labelled(
        &CHANGE_REPORTS,
        "result",
        &[
            ("replayed", r.changes_replayed),
            ("unreplayable", r.changes_unreplayable),
        ],
    );
    w.labelled(
        &RESCANS,
        "result",
        &[
            ("published", r.rescans),
            ("retried", r.rescan_retries),
            ("failed", r.rescan_failures),
        ],
    );
    w.family(&EXITED_DROPPED);
    w.sample(&EXITED_DROPPED, &[], Value::Int(r.exited_dropped));

    for (family, value) in [
        (&PROCESSES, snapshot.processes_tracked),
        (&MIRRORS, snapshot.mirrors),
        (&EXITED_RETAINED, snapshot.exited_retained),
        (&MALFORMED, snapshot.malformed_events),
        (&UNNAMED, snapshot.unnamed_frames),
        (&UNKNOWN_PROBE, snapshot.unknown_probe_hits),
    ] {
        w.family(family);
        w.sample(family, &[], Value::Int(value));
    }
    w.labelled(
        &RELOADS,
        "result",
        &[
            ("applied", snapshot.reloads),
            ("rejected", snapshot.reload_failures),
        ],
    );
    w.out
}

/// Accumulates the exposition text.
#[derive(Default)]
struct Writer {
    out: String,
}

impl Writer {
    /// The `# HELP` and `# TYPE` lines of `f`.
    fn family(&mut self, f: &Family) {
        self.out.push_str("# HELP ");
        self.out.push_str(f.name);
        self.out.push(' ');
        escape_help(&mut self.out, f.help);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(f.name);
        self.out.push(' ');
        self.out.push_str(f.kind);
        self.out.push('\n');
    }

    /// One sample line: `name{k="v",…} value`.
    fn sample(&mut self, f: &Family, labels: &[(&str, &str)], value: Value) {
        self.out.push_str(f.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label_value(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        match value {
            Value::Int(v) => {
                let _ = write!(self.out, "{v}");
            }
            Value::Float(v) => push_float(&mut self.out, v),
        }
        self.out.push('\n');
    }

    /// A family with one sample per probe.
    fn per_probe(
        &mut self,
        f: &Family,
        probes: &[ProbeMetrics],
        value: impl Fn(&ProbeMetrics) -> u64,
    ) {
        self.family(f);
        for p in probes {
            let id = p.id.to_string();
            let labels = [
                ("probe_id", id.as_str()),
                ("spec", &p.spec),
                ("output", &p.output),
            ];
            self.sample(f, &labels, Value::Int(value(p)));
        }
    }

    /// A family with one sample per probe and reason (only the reasons that occurred).
    fn per_probe_reason<'p>(
        &mut self,
        f: &Family,
        probes: &'p [ProbeMetrics],
        counts: impl Fn(&'p ProbeMetrics) -> &'p std::collections::BTreeMap<String, u64>,
    ) {
        self.family(f);
        for p in probes {
            let id = p.id.to_string();
            for (reason, n) in counts(p) {
                let labels = [
                    ("probe_id", id.as_str()),
                    ("spec", &p.spec),
                    ("output", &p.output),
                    ("reason", reason),
                ];
                self.sample(f, &labels, Value::Int(*n));
            }
        }
    }

    /// A family with one sample per value of a single label; every value is written, zero
    /// or not, so a rate() over it starts from the first scrape.
    fn labelled(&mut self, f: &Family, label: &str, values: &[(&str, u64)]) {
        self.family(f);
        for (v, n) in values {
            self.sample(f, &[(label, v)], Value::Int(*n));
        }
    }
}

/// Label values escape backslash, double quote and line feed (the format's only escapes).
fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escapes backslash and line feed (a double quote is literal there).
fn escape_help(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Floats as Go's ParseFloat reads them: `+Inf`, `-Inf`, `NaN` spelled the format's way
/// (Rust would print `inf`/`NaN`).
fn push_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
