//! The pipeline's event dispatch: each ring buffer item to its handler (hits and stacks to
//! a hit's handling, file names and strings records kept, process and mapping-change events
//! to lock mode's bookkeeping and the resolver), the tracker's lost reports noticed, and
//! the items left at a stop's deadline counted unprocessed.
//!
//! Apart from `pipeline.rs` (the state and a hit's handling) because it is routing: which
//! part of the pipeline an item concerns, not what that part does with it.

use std::io::Write;

use probed_common::{ChangeEvent, OP_OTHER, PROC_EXEC, PROC_EXIT, PROC_FORK, ProcEvent};

use super::{Captures, Pipeline};
use crate::{
    events::Event,
    resolve::{ProcKey, SeqSource},
    track::{apply, captured},
};

impl<W: Write, S: SeqSource> Pipeline<W, S> {
    /// Handles one ring buffer event; returns false once the run should stop taking hits.
    pub fn handle_event(&mut self, event: &Event) -> bool {
        let lost = event.lost_reports().unwrap_or(self.lost_reports);
        if lost != self.lost_reports {
            // Seen in the first event reserved after the loss: before any hit whose sequence
            // includes the lost change. Folded: under a flood every event can carry a new
            // loss.
            static FOLD: crate::fold::Fold = crate::fold::Fold::new(crate::fold::INTERVAL);
            if let Some(times) = FOLD.note(u64::from(lost.wrapping_sub(self.lost_reports))) {
                tracing::warn!(
                    lost = times,
                    "the change tracker lost reports (ring buffer full): dropping replayed pictures"
                );
            }
            self.lost_reports = lost;
            self.reader.resolver().distrust_all();
        }
        if event.hit().is_some() {
            self.hit_records += 1;
        }
        match event {
            Event::Hit(hit) => self.handle(hit, None),
            Event::Stack(e) => {
                let n = (e.nframes as usize).min(e.frames.len());
                self.handle(&e.hit, Some(&e.frames[..n]))
            }
            Event::CapturedHit(e) => {
                let status = [e.status as u8];
                let vmas = [e.vma];
                // The one capture is of the hit's address: index 0 for the hit itself.
                let captures = Captures {
                    status: &status,
                    vmas: &vmas,
                };
                self.handle_captured(&e.hit, None, captures)
            }
            Event::CapturedStack(e) => {
                let n = (e.stack.nframes as usize).min(e.stack.frames.len());
                let captures = Captures {
                    status: &e.status,
                    vmas: &e.vmas,
                };
                self.handle_captured(&e.stack.hit, Some(&e.stack.frames[..n]), captures)
            }
            Event::FileName(e) => {
                captured::learn(e, &self.paths);
                self.stop.is_none()
            }
            Event::StackCopy(e) => self.handle_stack_copy(e),
            Event::ArgStrings(e) => {
                self.pending_strings.keep(e);
                self.stop.is_none()
            }
            Event::Proc(proc) => {
                self.handle_proc(proc);
                self.stop.is_none()
            }
            Event::Change(change) => {
                self.handle_change(change);
                self.stop.is_none()
            }
        }
    }

    /// Counts an event left in the ring buffer at a stop's deadline, unprocessed: a hit
    /// counts as its probe's `dropped_at_stop`.
    pub fn count_dropped(&mut self, event: &Event) {
        let Some(hit) = event.hit() else { return };
        self.hit_records += 1;
        match self
            .probes
            .get_mut(hit.probe_id as usize)
            .and_then(Option::as_mut)
        {
            Some(slot) => slot.counts.dropped_at_stop += 1,
            None => self.unknown_probe += 1,
        }
    }

    /// A process exec'd, exited or forked: lock mode's bookkeeping, then the resolver's
    /// pictures (`track::apply`).
    fn handle_proc(&mut self, event: &ProcEvent) {
        if self
            .pid_filter
            .is_some_and(|p| p != event.pid && p != event.parent_pid)
        {
            return;
        }
        let proc = ProcKey::new(event.pid, event.proc_gen);
        match event.what {
            PROC_EXEC | PROC_FORK if self.lock_mode() => {
                self.lock.stale.insert(proc);
            }
            PROC_EXIT => {
                self.lock.exited(proc);
                self.kseq.forget(event.pid);
            }
            // A new address space: its counter starts again.
            PROC_EXEC => self.kseq.forget(event.pid),
            _ => {}
        }
        apply::proc_event(self.reader.resolver(), &self.paths, proc, event);
    }

    /// A mapping change finished: lock mode marks its process stale, and the change is
    /// replayed onto the process's pictures (`track::apply`).
    fn handle_change(&mut self, event: &ChangeEvent) {
        if self.pid_filter.is_some_and(|p| p != event.pid) {
            return;
        }
        let proc = ProcKey::new(event.pid, event.proc_gen);
        if self.lock_mode() && event.op == OP_OTHER {
            // Lock mode reports every change this way (and syscall mode its few unreplayable
            // ones): rescanned after the batch, once however many there were.
            self.lock.stale.insert(proc);
        }
        apply::change_event(self.reader.resolver(), &mut self.paths, proc, event);
    }
}
