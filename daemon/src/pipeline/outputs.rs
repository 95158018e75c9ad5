//! The pipeline's outputs: writers by sink number, what a failed write does, the
//! aggregations, and the summary at the end.

use std::io::Write;

use super::Pipeline;
use crate::{
    output::{Aggregations, Summary, Writer},
    resolve::SeqSource,
};

impl<W: Write, S: SeqSource> Pipeline<W, S> {
    /// Feeds every handled hit to `aggregations`; writes hits one by one only if
    /// `print_hits` (a hit taken into the aggregations counts as printed for `--count` and
    /// the summary).
    pub fn with_aggregations(mut self, aggregations: Aggregations, print_hits: bool) -> Self {
        // Only counting stacks: a repeated stack need not be resolved again (stack_memo.rs).
        let only_stacks = aggregations.stacks.is_some() && aggregations.latency.is_none();
        self.memo = (only_stacks && !print_hits).then(Default::default);
        self.aggregations = aggregations;
        self.print_hits = print_hits;
        self
    }

    /// The run's aggregations (e.g. for the flame graph at the end).
    pub fn aggregations(&self) -> &Aggregations {
        &self.aggregations
    }

    /// Writes the aggregations as they stand, if any (`last` at the end of the run), to the
    /// first output.
    pub fn write_aggregations(&mut self, last: bool, elapsed_s: f64) -> std::io::Result<()> {
        if self.aggregations.is_empty() {
            return Ok(());
        }
        match self.writers.first_mut() {
            Some(Some(writer)) => writer.aggregations(&self.aggregations, last, elapsed_s),
            _ => Ok(()),
        }
    }

    /// A pipeline that keeps going when a write fails, counting the failure per probe (the
    /// daemon: a full disk under one output must not stop the others or the run).
    pub fn keep_going_on_write_errors(mut self) -> Self {
        self.stop_on_write_error = false;
        self
    }

    /// Installs (or, with `None`, closes) output number `sink`; returns the one it replaces.
    pub fn set_writer(&mut self, sink: usize, writer: Option<Writer<W>>) -> Option<Writer<W>> {
        if self.writers.len() <= sink {
            self.writers.resize_with(sink + 1, || None);
        }
        std::mem::replace(&mut self.writers[sink], writer)
    }

    /// Flushes buffered hits to the output.
    pub fn flush(&mut self) -> std::io::Result<()> {
        let mut result = Ok(());
        for writer in self.writers.iter_mut().flatten() {
            if let Err(err) = writer.flush() {
                result = Err(err);
            }
        }
        result
    }

    /// Writes the summary to the first output and flushes every output.
    pub fn finish(&mut self, summary: &Summary) -> std::io::Result<()> {
        if let Some(Some(writer)) = self.writers.first_mut() {
            writer.summary(summary)?;
        }
        self.flush()
    }
}
