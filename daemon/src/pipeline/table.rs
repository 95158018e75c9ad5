//! The pipeline's probe table: probes by id (holes left by removed probes until their ids
//! are reused), each with its counts, output and stack mode, and where a probe is (the
//! answer for hits the resolver cannot place).

use std::{io::Write, sync::Arc};

use super::{Pipeline, ProbeCounts};
use crate::{
    output::Resolved, probes::Probe, resolve::SeqSource, symbolize::Symbolizer, unwind::StackMode,
};

/// One probe of the pipeline's table.
pub(super) struct Slot {
    pub(super) probe: Probe,
    /// The probe's file as its processes name it, and its symbol's name (for hits answered
    /// by the probe; made once, not per hit).
    module: Arc<str>,
    symbol: Option<Arc<str>>,
    pub(super) counts: ProbeCounts,
    /// Index of the writer its hits go to.
    pub(super) sink: usize,
    /// How its copied stacks are unwound, when not the run's mode (the daemon's probes each
    /// have their own).
    pub(super) stack_mode: Option<StackMode>,
}

impl Slot {
    pub(super) fn new(probe: Probe, sink: usize) -> Self {
        let module = probe.module_path().to_string_lossy().into();
        let symbol = probe.target.symbol.as_ref().map(|s| s.demangled().into());
        Self {
            probe,
            module,
            symbol,
            counts: ProbeCounts::default(),
            sink,
            stack_mode: None,
        }
    }
}

impl<W: Write, S: SeqSource> Pipeline<W, S> {
    /// Sets how probe `id`'s copied stacks are unwound (`auto` or `dwarf`; the run's mode
    /// otherwise).
    pub fn set_probe_stack_mode(&mut self, id: u32, mode: StackMode) {
        if let Some(Some(slot)) = self.probes.get_mut(id as usize) {
            slot.stack_mode = Some(mode);
        }
    }

    /// Adds a probe whose hits go to output `sink`. Its id must be free: the caller detached
    /// any earlier probe with that id and drained the ring buffer before reusing it, so no
    /// hit of the old probe can be taken for the new one.
    pub fn add_probe(&mut self, probe: Probe, sink: usize) {
        self.paths.add_probe(&probe);
        preload(&self.symbolizer, &probe);
        let id = probe.id as usize;
        if self.probes.len() <= id {
            self.probes.resize_with(id + 1, || None);
        }
        debug_assert!(
            self.probes[id].is_none(),
            "probe id {id} reused while in use"
        );
        self.probes[id] = Some(Slot::new(probe, sink));
    }

    /// Removes probe `id` from the table (after it was detached and the ring buffer
    /// drained), returning its counts.
    pub fn remove_probe(&mut self, id: u32) -> Option<(Probe, ProbeCounts)> {
        let slot = self.probes.get_mut(id as usize)?.take()?;
        Some((slot.probe, slot.counts))
    }

    /// Probe `id` and its counts, if it is in the table.
    pub fn probe(&self, id: u32) -> Option<(&Probe, &ProbeCounts)> {
        let slot = self.probes.get(id as usize)?.as_ref()?;
        Some((&slot.probe, &slot.counts))
    }

    /// Every probe in the table with its counts, by id.
    pub fn probes(&self) -> impl Iterator<Item = (&Probe, &ProbeCounts)> {
        self.probes
            .iter()
            .flatten()
            .map(|slot| (&slot.probe, &slot.counts))
    }

    /// Moves probe `id`'s hits to output `sink`.
    pub fn set_probe_sink(&mut self, id: u32, sink: usize) {
        if let Some(Some(slot)) = self.probes.get_mut(id as usize) {
            slot.sink = sink;
        }
    }

    /// Where probe `id` is, from its SPEC and ELF file.
    pub(super) fn probe_location(&self, id: usize) -> Resolved {
        let Some(slot) = self.probes.get(id).and_then(Option::as_ref) else {
            return Resolved::default();
        };
        let probe = &slot.probe;
        Resolved {
            module: slot.module.clone(),
            symbol: slot.symbol.clone(),
            offset: probe
                .target
                .symbol
                .as_ref()
                .map(|_| probe.target.offset_in_symbol),
            file_offset: probe.file_offset,
        }
    }
}

/// Gives the symbolizer a container probe's file as its SPEC was checked: the container may
/// stop before any hit is symbolized, and its file is not reachable from the host then.
pub(super) fn preload(symbolizer: &Symbolizer, probe: &Probe) {
    if let Some(c) = &probe.in_container {
        symbolizer.preload(probe.target.id, c.image.clone());
    }
}
