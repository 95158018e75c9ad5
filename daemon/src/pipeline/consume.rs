//! What a run asks of its consumer — one pipeline on the loop's thread, or several
//! pipelines on threads of their own (`shards.rs`) — so that `probed trace`, its replay and
//! the stop's drain are written once for both.

use std::io::{self, Write};

use probed_common::ProbeStats;

use super::{Pipeline, Stop};
use crate::{
    attach::AttachError,
    events::Event,
    output::{Aggregations, Summary},
    resolve::SeqSource,
};

/// BPF's counters of a probe, by id.
pub type Stats<'a> = &'a dyn Fn(u32) -> Result<ProbeStats, AttachError>;

/// The consumer of a run's ring buffer items.
///
/// Object-safe on purpose: a run picks its consumer at start (`--consumers`), and a virtual
/// call per item costs nothing next to the item's handling (~1 µs).
pub trait Consume {
    /// Handles one ring buffer item; false once the run should stop taking hits.
    fn handle_event(&mut self, event: &Event) -> bool;
    /// The same for an item the caller gives away (a consumer thread takes it as is).
    fn handle_owned(&mut self, event: Event) -> bool {
        self.handle_event(&event)
    }
    /// Counts an item left in the ring at a stop's deadline (a hit: `dropped_at_stop`).
    fn count_dropped(&mut self, event: &Event);
    /// Hit records read from the ring so far (handled or counted as dropped).
    fn hit_records(&self) -> u64;
    /// The end of a drained batch (lock mode rescans and publishes here).
    fn end_batch(&mut self);
    /// Hands the hits handled so far to the output.
    fn flush(&mut self) -> io::Result<()>;
    /// Whether the run should end, and why.
    fn stopped(&self) -> Option<Stop>;
    /// The run stops: its probes are detached, so nothing more comes but what its rings
    /// hold; consumers that read rings of their own drain theirs by `deadline` (called
    /// again with now: a second signal, stop draining).
    fn stopping(&mut self, _deadline: std::time::Instant) {}
    /// Hit records BPF wrote that were not read yet (see `Pipeline::unread_hits`).
    fn unread_hits(&self, stats: Stats<'_>) -> Result<u64, AttachError>;
    /// Writes the aggregations as they stand (`last`: at the end of the run).
    fn write_aggregations(&mut self, last: bool, elapsed_s: f64) -> io::Result<()>;
    /// The ids of the run's probes.
    fn probe_ids(&mut self) -> Vec<u32>;
    /// Fills the summary's per-probe and resolver parts.
    fn summarize(&mut self, summary: &mut Summary, stats: Stats<'_>) -> Result<(), AttachError>;
    /// The run's aggregations (the flame graph at the end).
    fn aggregations(&mut self) -> &Aggregations;
    /// Writes the summary and flushes; the last call of a run.
    fn finish(&mut self, summary: &Summary) -> io::Result<()>;
}

/// The [`Consume`] methods of a consumer of several shards that are asked after the run —
/// aggregations, summary, the last flush — answered by the shards added up (its `join()`,
/// which returns them; its `probe_ids` field: the run's probes). Shared by the dealt shards
/// (shards.rs) and the shards with a ring each (rings.rs).
macro_rules! after_the_run_the_sum {
    () => {
        fn write_aggregations(&mut self, last: bool, elapsed_s: f64) -> io::Result<()> {
            // Each shard holds a part until the end (`--interval` is refused with
            // consumers).
            if !last {
                return Ok(());
            }
            self.join().write_aggregations(true, elapsed_s)
        }

        fn probe_ids(&mut self) -> Vec<u32> {
            self.probe_ids.clone()
        }

        fn summarize(
            &mut self,
            summary: &mut Summary,
            stats: Stats<'_>,
        ) -> Result<(), AttachError> {
            self.join().summarize(summary, stats)
        }

        fn aggregations(&mut self) -> &Aggregations {
            self.join().aggregations()
        }

        fn finish(&mut self, summary: &Summary) -> io::Result<()> {
            self.join().finish(summary)
        }
    };
}
pub(super) use after_the_run_the_sum;

impl<W: Write, S: SeqSource> Consume for Pipeline<W, S> {
    fn handle_event(&mut self, event: &Event) -> bool {
        Pipeline::handle_event(self, event)
    }

    fn count_dropped(&mut self, event: &Event) {
        Pipeline::count_dropped(self, event);
    }

    fn hit_records(&self) -> u64 {
        self.hit_records
    }

    fn end_batch(&mut self) {
        Pipeline::end_batch(self);
    }

    fn flush(&mut self) -> io::Result<()> {
        Pipeline::flush(self)
    }

    fn stopped(&self) -> Option<Stop> {
        Pipeline::stopped(self)
    }

    fn unread_hits(&self, stats: Stats<'_>) -> Result<u64, AttachError> {
        Pipeline::unread_hits(self, stats)
    }

    fn write_aggregations(&mut self, last: bool, elapsed_s: f64) -> io::Result<()> {
        Pipeline::write_aggregations(self, last, elapsed_s)
    }

    fn probe_ids(&mut self) -> Vec<u32> {
        Pipeline::probe_ids(self)
    }

    fn summarize(&mut self, summary: &mut Summary, stats: Stats<'_>) -> Result<(), AttachError> {
        Pipeline::summarize(self, summary, stats)
    }

    fn aggregations(&mut self) -> &Aggregations {
        Pipeline::aggregations(self)
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        Pipeline::finish(self, summary)
    }
}
