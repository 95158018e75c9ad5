//! What one scrape reports: plain data, filled by the daemon loop at scrape time.

use std::collections::BTreeMap;

use crate::resolve::Counters;

/// Everything the metrics endpoint reports, as of one moment of the daemon loop.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// One entry per configured probe (attached or disabled), in probe id order.
    pub probes: Vec<ProbeMetrics>,
    /// The resolver's counters (fast path, fallbacks by reason, rescans…), summed over
    /// its readers. The same struct the run summary is built from, so the two cannot drift.
    pub resolver: Counters,
    /// Live processes the resolver tracks (mirrors of processes not known to have exited).
    pub processes_tracked: u64,
    /// Per-process mirrors (address-space pictures) the resolver holds, live and exited.
    pub mirrors: u64,
    /// Mirrors of exited processes, kept for hits still queued.
    pub exited_retained: u64,
    /// Ring-buffer records that could not be decoded.
    pub malformed_events: u64,
    /// Addresses (hits, stack frames) whose mapping was found but whose file had no name.
    pub unnamed_frames: u64,
    /// Hit records naming a probe id the daemon does not have.
    pub unknown_probe_hits: u64,
    /// Configuration reloads applied (SIGHUP or control socket).
    pub reloads: u64,
    /// Configuration reloads rejected (the old configuration kept running).
    pub reload_failures: u64,
    /// Seconds since the daemon started.
    pub uptime_seconds: f64,
    /// The change tracker's mode (`lock`, `kprobes`, `syscalls`).
    pub tracker: &'static str,
    /// The change tracker's error counters by kind (`probed_common::TRACK_ERROR_NAMES`).
    pub tracker_errors: BTreeMap<&'static str, u64>,
    /// Copied-stack walks (probes with `stack = "auto"|"dwarf"`) ended, by reason.
    pub stack_stops: Vec<(&'static str, u64)>,
    /// Lock and kseq modes: addresses answered from hit-time captures and captures that
    /// failed, for hits and for stack frames: (captured, failed, captured frames, failed
    /// frames); then kseq mode's answers from a capture at the hit's counter value and
    /// addresses none held: (kseq, kseq_missed, the same for frames).
    pub captures: [u64; 8],
}

/// One probe's counters: what a scrape reports, and the counter part of a `ctl stats` row.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeMetrics {
    /// The probe id (stable for the probe's lifetime; also its BPF cookie).
    pub id: u32,
    /// The SPEC as configured.
    pub spec: String,
    /// The name of the output the probe writes to.
    pub output: String,
    /// Times the probe fired (counted in BPF, before any rate limit).
    pub hits: u64,
    /// Hits the kernel could not deliver because the ring buffer was full (counted in BPF).
    pub lost: u64,
    /// Hits dropped by the probe's token bucket (counted in BPF).
    pub rate_limited: u64,
    /// Hits from processes outside the probe's container (pid namespace), dropped in BPF.
    pub filtered: u64,
    /// Hits from probed's own processes, dropped in BPF (probed never traces itself).
    pub self_excluded: u64,
    /// Hits left in the ring buffer at a stop's drain deadline (counted, not processed).
    pub dropped_at_stop: u64,
    /// Hits the resolver placed elsewhere than the kernel did (must stay 0).
    pub probe_mismatch: u64,
    /// Hits written to the probe's output.
    pub written: u64,
    /// Hits whose write to the output failed (the output stays; the daemon goes on).
    pub write_errors: u64,
    /// Stack frames of the probe's hits that could not be resolved, by reason.
    pub unresolved: BTreeMap<String, u64>,
    /// Hits the resolver could not answer (by its reason) but the probe's own location did.
    pub resolved_by_probe: BTreeMap<String, u64>,
    /// Whether the probe was detached for exceeding its `disable_above` rate.
    pub disabled: bool,
}
