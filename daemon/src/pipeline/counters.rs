//! The pipeline's counters: per probe (`ProbeCounts`), BPF's counters against what was
//! read (`unread_hits`), the run's summary, and the resolver's, lock mode's and the
//! unwinder's counters by name.

use std::{collections::BTreeMap, io::Write};

use super::Pipeline;
use crate::{
    attach::AttachError,
    output::{ProbeSummary, Summary},
    resolve::SeqSource,
};

/// Counts of one probe kept by the pipeline (BPF keeps hits and losses).
#[derive(Clone, Debug, Default)]
pub struct ProbeCounts {
    /// Hits written (or taken into the aggregations).
    pub printed: u64,
    /// Hits that arrived after the run stopped taking hits.
    pub not_printed: u64,
    /// Stack frames of this probe's hits that could not be resolved, by reason (a hit's own
    /// address always resolves: the probe answers where the resolver cannot, `by_probe`).
    pub unresolved: BTreeMap<&'static str, u64>,
    /// Hits answered by the probe's own location, by the resolver's reason.
    pub by_probe: BTreeMap<&'static str, u64>,
    /// Hits whose write failed (daemon mode: the output stays, the error is counted).
    pub write_errors: u64,
    /// Hits left in the ring buffer at the stop's drain deadline: counted, not processed.
    pub dropped_at_stop: u64,
    /// Hits the resolver placed at another (file, offset) than their probe's, where the
    /// kernel matched them: must stay 0 (a wrong answer otherwise).
    pub probe_mismatch: u64,
}

impl ProbeCounts {
    /// Adds `other`'s counts.
    pub fn absorb(&mut self, other: &ProbeCounts) {
        self.printed += other.printed;
        self.not_printed += other.not_printed;
        for (reason, n) in &other.unresolved {
            *self.unresolved.entry(reason).or_default() += n;
        }
        for (reason, n) in &other.by_probe {
            *self.by_probe.entry(reason).or_default() += n;
        }
        self.write_errors += other.write_errors;
        self.dropped_at_stop += other.dropped_at_stop;
        self.probe_mismatch += other.probe_mismatch;
    }
}

impl<W: Write, S: SeqSource> Pipeline<W, S> {
    /// Adds up another consumer thread's pipeline of the same run (same probes, other
    /// processes): its counters, its aggregations; its outputs were flushed.
    pub fn absorb(&mut self, other: Pipeline<W, S>) {
        for (mine, theirs) in self.probes.iter_mut().zip(&other.probes) {
            if let (Some(mine), Some(theirs)) = (mine, theirs) {
                mine.counts.absorb(&theirs.counts);
            }
        }
        self.printed += other.printed;
        self.unnamed += other.unnamed;
        self.unknown_probe += other.unknown_probe;
        self.stacks_truncated += other.stacks_truncated;
        self.hit_records += other.hit_records;
        self.stop = self.stop.or(other.stop);
        let (l, o) = (&mut self.lock, &other.lock);
        l.captured += o.captured;
        l.capture_failed += o.capture_failed;
        l.captured_frames += o.captured_frames;
        l.capture_failed_frames += o.capture_failed_frames;
        l.stale_rescans += o.stale_rescans;
        l.published_count += o.published_count;
        self.kseq.absorb_counts(&other.kseq);
        if let (Some(mine), Some(theirs)) = (&mut self.memo, &other.memo) {
            mine.hits += theirs.hits;
        }
        self.unwinder.absorb(&other.unwinder);
        self.unwind_tables.loads += other.unwind_tables.loads;
        self.aggregations.absorb(other.aggregations);
    }

    /// Lock and kseq modes: (captured, failed, captured frames, failed frames) so far, then
    /// kseq mode's (answered, missed, answered frames, missed frames).
    pub fn captures(&self) -> [u64; 8] {
        let (l, k) = (&self.lock, &self.kseq);
        [
            l.captured,
            l.capture_failed,
            l.captured_frames,
            l.capture_failed_frames,
            k.answered,
            k.missed,
            k.answered_frames,
            k.missed_frames,
        ]
    }

    /// The unwinder's stop counts by reason (`end`, `no_cfi`, …), for the metrics.
    pub fn stack_stops(&self) -> Vec<(&'static str, u64)> {
        self.unwinder.stops_by_reason()
    }

    /// The ids of the probes this pipeline prints, in order.
    pub fn probe_ids(&self) -> Vec<u32> {
        self.probes.iter().flatten().map(|s| s.probe.id).collect()
    }

    /// How many hit records BPF wrote into the ring buffer that this pipeline has not read
    /// yet, from BPF's counters (`stats`): per probe, what was neither refused in BPF nor
    /// lost, less what was read. Exact once no probe can fire (links closed); a stop drains
    /// until it has read this many, not until the ring is empty (change reports of tracked
    /// processes keep coming and would keep it busy till the deadline).
    pub fn unread_hits(
        &self,
        stats: impl Fn(u32) -> Result<probed_common::ProbeStats, AttachError>,
    ) -> Result<u64, AttachError> {
        let mut unread = 0;
        for slot in self.probes.iter().flatten() {
            let written = stats(slot.probe.id)?.written();
            let c = &slot.counts;
            let read = c.printed + c.not_printed + c.write_errors + c.dropped_at_stop;
            unread += written.saturating_sub(read);
        }
        Ok(unread)
    }

    /// Fills the per-probe and resolver parts of `summary`; `stats` reads BPF's counters.
    pub fn summarize(
        &self,
        summary: &mut Summary,
        stats: impl Fn(u32) -> Result<probed_common::ProbeStats, AttachError>,
    ) -> Result<(), AttachError> {
        for (probe, counts) in self.probes() {
            let bpf = stats(probe.id)?;
            summary.probes.push(ProbeSummary {
                probe: probe.spec.text.clone(),
                probe_id: probe.id,
                file: probe.module_path().display().to_string(),
                hits: bpf.hits,
                printed: counts.printed,
                lost: bpf.lost,
                not_printed: counts.not_printed,
                rate_limited: bpf.rate_limited,
                filtered: bpf.filtered,
                self_excluded: bpf.self_excluded,
                counted_in_bpf: bpf.counted,
                dropped_at_stop: counts.dropped_at_stop,
                probe_mismatch: counts.probe_mismatch,
                unresolved: counts.unresolved.clone(),
                resolved_by_probe: counts.by_probe.clone(),
            });
        }
        summary.resolver = self
            .resolver_counters()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        // Gauges at the end of the run: processes still live (a traced container that
        // stopped is no longer among them), pictures of exited ones kept for queued hits
        // (bounded), and how often an ELF file was loaded (once per (device, inode) unless
        // evicted or transiently unavailable).
        let (mirrors, exited) = self.reader.resolver().population();
        let elf = self.symbolizer.stats();
        for (name, value) in [
            ("processes_tracked", (mirrors - exited) as u64),
            ("exited_retained", exited as u64),
            ("elf_loads", elf.loads),
            ("elf_load_failures", elf.load_failures),
            ("elf_shared", elf.shared),
            ("debuginfod_fetched", elf.debuginfod_fetched),
            ("debuginfod_failed", elf.debuginfod_failed),
            ("resymbolized", elf.resymbolized),
            ("unnamed", self.unnamed),
        ] {
            summary.resolver.insert(name.to_string(), value);
        }
        Ok(())
    }

    /// Addresses (hits and frames) whose mapping was found but whose file had no name.
    pub fn unnamed(&self) -> u64 {
        self.unnamed
    }

    /// The resolver's counters by name (summary, `ctl stats`, metrics).
    pub fn resolver_counters(&self) -> Vec<(&'static str, u64)> {
        let c = self.reader.resolver().counters();
        vec![
            ("fast_path", c.fast),
            ("fallback_no_snapshot", c.fallback_no_snapshot),
            ("fallback_in_flight", c.fallback_in_flight),
            ("fallback_seq_mismatch", c.fallback_seq_mismatch),
            ("fallback_hit_seq", c.fallback_hit_seq),
            ("fallback_changed", c.fallback_changed),
            ("from_mirror", c.from_mirror),
            ("retained", c.retained),
            ("replayed", c.replayed),
            ("changes_replayed", c.changes_replayed),
            ("changes_unreplayable", c.changes_unreplayable),
            ("exited_dropped", c.exited_dropped),
            ("rescans", c.rescans),
            ("rescan_retries", c.rescan_retries),
            ("rescan_failures", c.rescan_failures),
            ("stacks_truncated", self.stacks_truncated),
            ("stacks_memoized", self.memo.as_ref().map_or(0, |m| m.hits)),
            ("captured", self.lock.captured),
            ("capture_failed", self.lock.capture_failed),
            ("captured_frames", self.lock.captured_frames),
            ("capture_failed_frames", self.lock.capture_failed_frames),
            ("stale_rescans", self.lock.stale_rescans),
            ("mirror_published", self.lock.published_count),
            ("kseq_answered", self.kseq.answered),
            ("kseq_answered_frames", self.kseq.answered_frames),
            ("kseq_missed", self.kseq.missed),
            ("kseq_missed_frames", self.kseq.missed_frames),
            ("unknown_probe", self.unknown_probe),
        ]
        .into_iter()
        .chain(self.unwinder.stop_counts())
        .chain([("unwind_table_loads", self.unwind_tables.loads)])
        .collect()
    }
}
