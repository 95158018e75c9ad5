//! The daemon's answer to a metrics scrape: its counters copied into a [`MetricsSnapshot`]
//! (rendered by the HTTP task, not here, so the loop only copies numbers).

use crate::{
    metrics::{MetricsSnapshot, ProbeMetrics},
    service::{daemon::Daemon, kernel::Kernel, probe_set::Entry},
};

impl<K: Kernel> Daemon<K> {
    /// Probe `id`'s counters: BPF's (read from the per-probe map) and the pipeline's. Shared
    /// by scrapes and `ctl stats`.
    pub(super) fn probe_metrics(&self, id: u32, entry: &Entry) -> ProbeMetrics {
        // A probe whose counters cannot be read reports zeros rather than failing the whole
        // scrape or `ctl stats`.
        let bpf = self.kernel.stats(id).unwrap_or_default();
        let counts = self.pipeline.probe(id).map(|(_, c)| c);
        let by_reason = |m: &std::collections::BTreeMap<&'static str, u64>| {
            m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
        };
        ProbeMetrics {
            id,
            spec: entry.def.spec.clone(),
            output: entry.def.output.clone(),
            hits: bpf.hits,
            lost: bpf.lost,
            rate_limited: bpf.rate_limited,
            filtered: bpf.filtered,
            self_excluded: bpf.self_excluded,
            dropped_at_stop: counts.map_or(0, |c| c.dropped_at_stop),
            probe_mismatch: counts.map_or(0, |c| c.probe_mismatch),
            written: counts.map_or(0, |c| c.printed),
            write_errors: counts.map_or(0, |c| c.write_errors),
            unresolved: counts.map(|c| by_reason(&c.unresolved)).unwrap_or_default(),
            resolved_by_probe: counts.map(|c| by_reason(&c.by_probe)).unwrap_or_default(),
            disabled: entry.disabled.is_some(),
        }
    }

    /// Every counter the metrics endpoint reports, as of now. Per probe: BPF's counters
    /// (read from the per-probe map) and the pipeline's; daemon-wide: the resolver's.
    pub fn metrics_snapshot(&self) -> MetricsSnapshot {
        let probes = self
            .probes
            .iter()
            .map(|(id, entry)| self.probe_metrics(id, entry))
            .collect();
        let resolver = self.pipeline.resolver();
        let (mirrors, exited) = resolver.population();
        MetricsSnapshot {
            probes,
            resolver: resolver.counters(),
            processes_tracked: (mirrors - exited) as u64,
            mirrors: mirrors as u64,
            exited_retained: exited as u64,
            malformed_events: self.stream.malformed,
            unnamed_frames: self.pipeline.unnamed(),
            unknown_probe_hits: self.pipeline.unknown_probe,
            reloads: self.reloads,
            reload_failures: self.reload_failures,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            tracker: self.pipeline.tracker().as_str(),
            tracker_errors: self.kernel.tracker_errors().unwrap_or_default(),
            stack_stops: self.pipeline.stack_stops(),
            captures: self.pipeline.captures(),
        }
    }
}
