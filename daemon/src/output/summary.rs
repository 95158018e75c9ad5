//! The end-of-run summary: per probe, what fired, what was delivered, lost or unresolved.

use std::collections::BTreeMap;

use serde::Serialize;

/// Counters of one probe for one run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProbeSummary {
    /// The SPEC as given.
    pub probe: String,
    /// The probe id.
    pub probe_id: u32,
    /// The probed file (a library name resolved to its path).
    pub file: String,
    /// Times the probe fired while the run admitted hits (counted in BPF, before the self
    /// filter, the namespace filter and the rate limit): `hits = printed + not_printed +
    /// lost + rate_limited + filtered + self_excluded + counted_in_bpf + dropped_at_stop`.
    pub hits: u64,
    /// Hits written to the output (or, when aggregations take the output and hits are not
    /// printed one by one, taken into the aggregations).
    pub printed: u64,
    /// Hits the kernel could not deliver because the ring buffer was full (counted in BPF).
    pub lost: u64,
    /// Hits delivered after the run's end condition (--count) was met, so not printed.
    pub not_printed: u64,
    /// Hits over the probe's rate limit (--rate-limit), dropped in BPF.
    pub rate_limited: u64,
    /// Hits from processes outside the probe's pid namespace (--container) or, for a probe
    /// scoped to one process (--pid), from another process, dropped in BPF.
    pub filtered: u64,
    /// Hits from probed's own processes (this one or any other running probed), dropped in
    /// BPF: probed never traces itself.
    pub self_excluded: u64,
    /// Hits counted in BPF and not written (`--count-in-bpf`); absent from JSON when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub counted_in_bpf: u64,
    /// Hits still in the ring buffer when the stop's drain deadline passed (or at a second
    /// SIGINT): read and counted, not processed.
    pub dropped_at_stop: u64,
    /// Hits the resolver placed elsewhere than their probe's (file, offset), where the
    /// kernel matched them: a wrong answer of the resolver's, so always expected to be 0.
    pub probe_mismatch: u64,
    /// Stack frames of the probe's hits that could not be resolved, by reason.
    pub unresolved: BTreeMap<&'static str, u64>,
    /// Hits the resolver could not answer (by its reason) but the probe's own location did:
    /// the kernel matched the hit to the probe's (inode, offset).
    pub resolved_by_probe: BTreeMap<&'static str, u64>,
}

/// The whole run's summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Why the run ended (`"signal"`, `"duration"`, `"count"`, `"error"`).
    pub ended_by: &'static str,
    /// Run time in seconds.
    pub duration_s: f64,
    /// Per-probe counters, in probe id order.
    pub probes: Vec<ProbeSummary>,
    /// How addresses were resolved: counter name → count (fast path, fallbacks…).
    pub resolver: BTreeMap<String, u64>,
    /// The change tracker's hooks (`lock`, `kprobes` or `syscalls`).
    pub tracker: &'static str,
    /// The change tracker's error counters (`probed_common::TRACK_ERROR_NAMES`): cases where
    /// it fell back to rescans instead of replaying (never a wrong answer).
    pub tracker_errors: BTreeMap<&'static str, u64>,
    /// Consumer threads, when more than one (0: one).
    #[serde(skip_serializing_if = "is_zero")]
    pub consumers: u64,
    /// Ring buffers BPF wrote to, each read by a consumer thread of its own, when more than
    /// one (0: one ring, whose items are dealt to the threads if there are several).
    #[serde(skip_serializing_if = "is_zero")]
    pub rings: u64,
}

/// For `skip_serializing_if`.
fn is_zero(n: &u64) -> bool {
    *n == 0
}
