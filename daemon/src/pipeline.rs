//! The per-hit path of a run: resolve the address (speculative resolver), symbolize it
//! (ELF cache), write it, and count everything that could not be done, by reason.
//!
//! One pipeline runs on the task that drains the ring buffer. It owns a resolver
//! [`Reader`] (the lock-free fast path) and borrows the shared [`Symbolizer`].
//!
//! This file holds the pipeline itself: its state and a hit's handling. The rest is in
//! `pipeline/`: event dispatch (`dispatch.rs`), the probe table (`table.rs`), a hit's and
//! its frames' lookups (`lookup.rs`), lock mode's captures and rescans (`lock.rs`), the outputs
//! (`outputs.rs`) and the counters (`counters.rs`). Tracker events are applied to the
//! resolver by `track::apply`.

mod arg_strings;
mod assign;
mod chunk_out;
mod consume;
mod counters;
mod dispatch;
mod kseq;
mod lock;
mod lookup;
mod names;
mod outputs;
mod rings;
mod shards;
mod stack_memo;
mod table;

use std::{io::Write, sync::Arc};

use probed_common::{CAPTURE_FAILED, HitEvent, KIND_RETURN, MAX_FRAMES};

pub use assign::{Assigner, lanes};
pub use consume::{Consume, Stats};
pub use counters::ProbeCounts;
pub use lock::Captures;
use lock::LockState;
use lookup::UNNAMED;
pub use rings::{Control, Feed, RingShards};
pub use shards::{Feeding, ItemHook, Padded, Shard, Shards, consumer};
use table::{Slot, preload};

use crate::{
    output::{Aggregations, HitRecord, Writer, record::comm_str},
    probes::Probe,
    resolve::{ProcKey, Reader, Resolver, SeqSource},
    spec::ProbeKind,
    symbolize::Symbolizer,
    track::{TrackerMode, paths::PathIndex},
    unwind::{StackMode, Start, StopReason, Tables, Unwinder},
};

/// Why the pipeline asks the run to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// `--count` hits were printed.
    Count,
    /// The output is gone (e.g. a closed pipe).
    OutputClosed,
}

/// Resolves, symbolizes and writes hits.
pub struct Pipeline<W: Write, S: SeqSource> {
    /// The probes, indexed by id (a removed probe leaves a hole until its id is reused).
    probes: Vec<Option<Slot>>,
    /// The outputs, indexed by sink number; `probed trace` has one (0), which also takes
    /// the aggregations and the summary.
    writers: Vec<Option<Writer<W>>>,
    /// Whether a failed write ends the run (`probed trace`: a closed pipe) or is counted
    /// and the run goes on (the daemon: one bad output must not stop the others).
    stop_on_write_error: bool,
    /// Stop after this many printed hits.
    limit: Option<u64>,
    /// Hits printed so far.
    printed: u64,
    /// Set once the run should end.
    stop: Option<Stop>,
    /// This task's resolver handle.
    reader: Reader<S>,
    /// Only this process's lifecycle events matter (`--pid`), if set.
    pid_filter: Option<u32>,
    /// Paths of mapped files by identity, for replayed mappings.
    paths: PathIndex,
    /// Addresses (hits and stack frames) whose mapping was found but whose file no source
    /// could name: printed with the file's identity, never under another file's name.
    unnamed: u64,
    /// The names hits carry, shared (pipeline/names.rs).
    names: names::Names,
    /// The last stack's frames, kept for the next one (`resolve_stack`).
    frame_buf: Vec<crate::output::Frame>,
    /// The tracker's lost-report count as of the last event.
    lost_reports: u32,
    /// ELF symbol cache shared with other pipelines.
    symbolizer: Arc<Symbolizer>,
    /// Hits naming a probe id this run does not have (an ABI or cookie mismatch).
    pub unknown_probe: u64,
    /// String arguments waiting for their hit.
    pending_strings: arg_strings::PendingStrings,
    /// Stacks cut at an impossible frame (see stack_check.rs).
    pub stacks_truncated: u64,
    /// Hit records read from the ring buffer (handled or counted at a stop), all probes.
    pub hit_records: u64,
    /// What the run aggregates; every handled hit is fed to it.
    aggregations: Aggregations,
    /// Whether hits are written one by one (off when aggregations take the output).
    print_hits: bool,
    /// Lock mode's bookkeeping (unused in syscall mode).
    lock: LockState,
    /// Kseq mode: captures by counter value, answering hits that skipped theirs.
    kseq: kseq::KseqStore,
    /// The tracker's hooks (lock mode: changes are rescanned, not replayed).
    tracker: TrackerMode,
    /// How copied stacks are unwound (`auto` or `dwarf`; `fp` stacks come walked).
    stack_mode: StackMode,
    /// The CFI unwinder of copied stacks, with its stop counts.
    unwinder: Unwinder,
    /// Unwind tables per file.
    unwind_tables: Tables,
    /// Folded stacks by raw stack, in runs that only count stacks (see `with_aggregations`).
    memo: Option<stack_memo::StackMemo>,
}

impl<W: Write, S: SeqSource> Pipeline<W, S> {
    /// A pipeline writing to `writer` that stops after `limit` printed hits.
    pub fn new(
        probes: Vec<Probe>,
        writer: Writer<W>,
        limit: Option<u64>,
        resolver: &Arc<Resolver<S>>,
        symbolizer: Arc<Symbolizer>,
    ) -> Self {
        let stop = (limit == Some(0)).then_some(Stop::Count);
        let paths = PathIndex::from_probes(&probes);
        let mut table: Vec<Option<Slot>> = Vec::new();
        for probe in probes {
            preload(&symbolizer, &probe);
            let id = probe.id as usize;
            if table.len() <= id {
                table.resize_with(id + 1, || None);
            }
            table[id] = Some(Slot::new(probe, 0));
        }
        Self {
            probes: table,
            writers: vec![Some(writer)],
            stop_on_write_error: true,
            limit,
            printed: 0,
            stop,
            paths,
            unnamed: 0,
            names: names::Names::default(),
            frame_buf: Vec::new(),
            lost_reports: 0,
            reader: Reader::new(resolver),
            pid_filter: None,
            symbolizer,
            unknown_probe: 0,
            pending_strings: Default::default(),
            stacks_truncated: 0,
            hit_records: 0,
            aggregations: Aggregations::default(),
            print_hits: true,
            lock: LockState::default(),
            kseq: kseq::KseqStore::default(),
            tracker: TrackerMode::Syscalls,
            stack_mode: StackMode::Auto,
            unwinder: Unwinder::new(),
            unwind_tables: Tables::default(),
            memo: None,
        }
    }

    /// The tracker's hooks, for `ctl stats` and the metrics.
    pub fn tracker(&self) -> TrackerMode {
        self.tracker
    }

    /// The tracker's hooks. In lock mode changes are reported without contents, so changed
    /// processes are rescanned after each batch and their pictures' sequences published to
    /// BPF (`end_batch`).
    pub fn with_tracker(mut self, tracker: TrackerMode) -> Self {
        self.tracker = tracker;
        self
    }

    fn lock_mode(&self) -> bool {
        self.tracker == TrackerMode::Lock
    }

    fn kseq_mode(&self) -> bool {
        self.tracker == TrackerMode::Kseq
    }

    /// Unwinds copied stacks in `mode` (`dwarf`: CFI only; otherwise CFI where a module has
    /// it, frame pointers elsewhere).
    pub fn with_stack_mode(mut self, mode: StackMode) -> Self {
        self.stack_mode = mode;
        self
    }

    /// The resolver this pipeline reads through.
    pub fn resolver(&self) -> &Arc<Resolver<S>> {
        self.reader.resolver()
    }

    /// Restricts eager process tracking to one pid.
    pub fn with_pid_filter(mut self, pid: Option<u32>) -> Self {
        self.pid_filter = pid;
        self
    }

    /// Whether the run should end, and why.
    pub fn stopped(&self) -> Option<Stop> {
        self.stop
    }

    /// Handles one hit (with its user stack, innermost first, if captured); returns false
    /// once the run should stop taking hits.
    pub fn handle(&mut self, hit: &HitEvent, frames: Option<&[u64]>) -> bool {
        self.handle_inner(hit, frames, None, None)
    }

    /// Handles a hit with a stack copy: unwinds it (unwind/), then handles it with the
    /// frames found.
    pub fn handle_stack_copy(&mut self, e: &crate::events::StackCopy) -> bool {
        let head = &e.head;
        let start = Start {
            ip: head.ip,
            sp: head.sp,
            bp: head.bp,
            stack_base: head.stack_base,
            stack: &e.stack,
        };
        let (frames, stop) = self.unwind(&head.hit, start);
        let go_on = self.handle_inner(&head.hit, Some(&frames), None, Some(stop));
        self.unwinder.give_back(frames);
        go_on
    }

    /// Handles a hit: its stack walked by the kernel (`unwound` None: frame pointers, cut at
    /// the first impossible frame) or unwound here (`Some(why it ended)`); in lock mode with
    /// the kernel's mappings of its addresses (`captures`).
    fn handle_inner(
        &mut self,
        hit: &HitEvent,
        frames: Option<&[u64]>,
        captures: Option<Captures<'_>>,
        unwound: Option<StopReason>,
    ) -> bool {
        let id = hit.probe_id as usize;
        let Some(slot) = self.probes.get_mut(id).and_then(Option::as_mut) else {
            self.unknown_probe += 1;
            return self.stop.is_none();
        };
        if self.stop.is_some() {
            slot.counts.not_printed += 1;
            return false;
        }
        // A stack counted before, at the same sequence: counted again under its folded text
        // (pipeline/stack_memo.rs says when that is exact).
        let memo_frames = frames.filter(|_| {
            self.memo.is_some()
                && unwound.is_none()
                && captures.is_none()
                && slot.probe.args.is_none()
        });
        if let (Some(memo), Some(raw)) = (&mut self.memo, memo_frames)
            && let Some((entry, cut)) = memo.lookup(hit, raw)
            && let Some(stacks) = &mut self.aggregations.stacks
        {
            stacks.count_entry(entry);
            memo.hits += 1;
            if cut {
                self.stacks_truncated += 1;
            }
            slot.counts.printed += 1;
            self.printed += 1;
            if self.limit.is_some_and(|n| self.printed >= n) {
                self.stop = Some(Stop::Count);
                return false;
            }
            return true;
        }
        let proc = ProcKey::new(hit.pid, hit.proc_gen);
        // Which capture is the hit's address: the only one of a plain hit; in a stack, frame
        // 0 for an entry probe (the probed instruction), the extra one for a return probe
        // (whose frame 0 is the return address).
        let cap = captures.map(|c| match frames {
            None => c.get(0),
            Some(_) if hit.kind == KIND_RETURN => c.get(MAX_FRAMES),
            Some(f) if f.first() == Some(&hit.ip) => c.get(0),
            Some(_) => (CAPTURE_FAILED, None),
        });
        let (mut resolved, mut via, place) = self.resolve(proc, hit, hit.ip, 0, cap);
        // A free oracle on every hit: the kernel matched it to the probe's (inode, offset)
        // when it fired, so where the resolver put it must be that same place.
        if let Some((file, file_offset)) = place
            && let Some(slot) = self.probes[id].as_mut()
            && (file != slot.probe.target.id || file_offset != slot.probe.file_offset)
        {
            slot.counts.probe_mismatch += 1;
            static FOLD: crate::fold::Fold = crate::fold::Fold::new(crate::fold::INTERVAL);
            if let Some(times) = FOLD.note(1) {
                tracing::error!(
                    probe = %slot.probe.spec.text,
                    expected = %format!("{}+{:#x}", slot.probe.target.id, slot.probe.file_offset),
                    resolved = %format!("{file}+{file_offset:#x}"),
                    pid = hit.pid,
                    times,
                    "the resolver disagrees with the kernel about a hit's place"
                );
            }
        }
        let by_resolver = resolved.is_ok();
        if let Err(reason) = resolved {
            // The kernel matched this hit to the probe's (inode, offset) when it fired, so the
            // probe itself is an exact answer the resolver could not give (a hit in the
            // middle of a mapping change, or of a process gone without a picture). Counted
            // apart, by the resolver's reason, so the resolver's own record stays visible.
            if let Some(slot) = self.probes[id].as_mut() {
                *slot.counts.by_probe.entry(reason).or_default() += 1;
            }
            resolved = Ok(self.probe_location(id));
            via = "probe";
        }
        // A frame-pointer walk through code without frame pointers ends in junk: cut it at
        // the first frame that cannot be a user code address (stack_check.rs).
        let (frames, stack_truncated) = match frames {
            Some(frames) if unwound.is_none() => {
                let valid = crate::stack_check::valid_prefix(frames);
                (Some(&frames[..valid]), valid < frames.len())
            }
            other => (other, false),
        };
        if stack_truncated {
            self.stacks_truncated += 1;
        }
        let stack =
            frames.map(|frames| self.resolve_stack(proc, hit, frames, captures, unwound.is_none()));
        let Some(slot) = self.probes[id].as_mut() else {
            return self.stop.is_none();
        };
        // A hit always resolves (the probe answers where the resolver cannot); its frames
        // may not: those are the probe's `unresolved`, by reason (unnamed files apart: their
        // mapping was found, see `unnamed`).
        for frame in stack.iter().flatten() {
            if let Some(reason) = frame.unresolved
                && reason != UNNAMED
            {
                *slot.counts.unresolved.entry(reason).or_default() += 1;
            }
        }
        let probe = &slot.probe;
        let comm = comm_str(&hit.comm);
        let is_return = hit.kind == KIND_RETURN;
        let typed_args = (probe.args.as_ref()).map(|plan| self.pending_strings.values(plan, hit));
        let mut record = HitRecord {
            probe: &probe.spec.text,
            probe_id: hit.probe_id,
            kind: if is_return {
                ProbeKind::Return
            } else {
                ProbeKind::Entry
            },
            pid: hit.pid,
            tid: hit.tid,
            // 0: BPF could not read them (see probed_common::PidOffsets).
            ns_pid: (hit.ns_pid != 0).then_some(hit.ns_pid),
            ns_tid: (hit.ns_tid != 0).then_some(hit.ns_tid),
            comm: &comm,
            ts_ns: hit.ts_ns,
            addr: hit.ip,
            resolved,
            via,
            args: (!is_return).then_some(hit.args),
            retval: is_return.then_some(hit.retval),
            ret_addr: (is_return || hit.ret_addr != 0).then_some(hit.ret_addr),
            seq: hit.seq,
            stack,
            stack_truncated,
            stack_stop: unwound.map(StopReason::as_str),
            typed_args,
        };
        self.aggregations.add(&record);
        if let (Some(memo), Some(stacks)) = (&mut self.memo, &self.aggregations.stacks)
            && memo_frames.is_some()
            && by_resolver
            && record
                .stack
                .as_ref()
                .is_some_and(|s| !s.is_empty() && s.iter().all(|f| f.unresolved.is_none()))
            && let Some(entry) = stacks.last_entry()
        {
            memo.remember(entry, stack_truncated);
        }
        let written = self
            .print_hits
            .then(|| match self.writers.get_mut(slot.sink) {
                Some(Some(writer)) => writer.hit(&record),
                _ => Err(std::io::Error::other("the probe's output is closed")),
            });
        if let Some(frames) = record.stack.take() {
            self.frame_buf = frames;
        }
        if let Some(Err(err)) = written {
            if self.stop_on_write_error {
                // Not written: counted as not printed, so the summary still adds up.
                slot.counts.not_printed += 1;
                self.stop = Some(Stop::OutputClosed);
                return false;
            }
            if slot.counts.write_errors == 0 {
                tracing::error!(probe = %probe.spec.text, error = %err, "cannot write hits");
            }
            slot.counts.write_errors += 1;
            return true;
        }
        slot.counts.printed += 1;
        self.printed += 1;
        if self.limit.is_some_and(|n| self.printed >= n) {
            self.stop = Some(Stop::Count);
            return false;
        }
        true
    }
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
