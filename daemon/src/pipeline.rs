//! The per-hit path of a run: resolve the address (speculative resolver), symbolize it
//! (ELF cache), write it, and count everything that could not be done, by reason.
//!
//! One pipeline runs on the task that drains the ring buffer. It owns a resolver
//! [`Reader`] (the lock-free fast path) and borrows the shared [`Symbolizer`].

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
};

use probed_common::{
    ChangeEvent, HitEvent, KIND_RETURN, PROC_EXEC, PROC_EXIT, PROC_FORK, ProcEvent,
};

use crate::{
    attach::AttachError,
    elf::FileSource,
    events::Event,
    file_id::FileId,
    output::{
        Aggregations, Frame, HitRecord, ProbeSummary, Resolved, Summary, Writer, record::comm_str,
    },
    probes::Probe,
    resolve::{ProcKey, Reader, Resolver, SeqSource, SharedSnapshot, Snapshot},
    spec::ProbeKind,
    symbolize::Symbolizer,
    track::changes::{self, PathLookup, Replay},
};

/// Why the pipeline asks the run to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// `--count` hits were printed.
    Count,
    /// The output is gone (e.g. a closed pipe).
    OutputClosed,
}

/// Counts of one probe kept by the pipeline (BPF keeps hits and losses).
#[derive(Clone, Debug, Default)]
struct ProbeCounts {
    printed: u64,
    not_printed: u64,
    unresolved: BTreeMap<&'static str, u64>,
    by_probe: BTreeMap<&'static str, u64>,
}

/// Resolves, symbolizes and writes hits.
pub struct Pipeline<W: Write, S: SeqSource> {
    /// The run's probes, indexed by id.
    probes: Vec<Probe>,
    /// Each probe's file as an absolute, canonical path (for hits answered by the probe).
    probe_modules: Vec<String>,
    /// Per-probe counts, indexed by id.
    counts: Vec<ProbeCounts>,
    /// The output.
    writer: Writer<W>,
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
    paths: Paths,
    /// The tracker's lost-report count as of the last event.
    lost_reports: u32,
    /// ELF symbol cache shared with other pipelines.
    symbolizer: Arc<Symbolizer>,
    /// Hits naming a probe id this run does not have (an ABI or cookie mismatch).
    pub unknown_probe: u64,
    /// What the run aggregates; every handled hit is fed to it.
    aggregations: Aggregations,
    /// Whether hits are written one by one (off when aggregations take the output).
    print_hits: bool,
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
        let paths = Paths::from_probes(&probes);
        let probe_modules = probes
            .iter()
            .map(|p| {
                std::fs::canonicalize(&p.spec.path)
                    .unwrap_or_else(|_| p.spec.path.clone())
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        Self {
            probe_modules,
            counts: vec![ProbeCounts::default(); probes.len()],
            probes,
            writer,
            limit,
            printed: 0,
            stop,
            paths,
            lost_reports: 0,
            reader: Reader::new(resolver),
            pid_filter: None,
            symbolizer,
            unknown_probe: 0,
            aggregations: Aggregations::default(),
            print_hits: true,
        }
    }

    /// Feeds every handled hit to `aggregations`; writes hits one by one only if
    /// `print_hits` (a hit taken into the aggregations counts as printed for `--count` and
    /// the summary).
    pub fn with_aggregations(mut self, aggregations: Aggregations, print_hits: bool) -> Self {
        self.aggregations = aggregations;
        self.print_hits = print_hits;
        self
    }

    /// The run's aggregations (e.g. for the flame graph at the end).
    pub fn aggregations(&self) -> &Aggregations {
        &self.aggregations
    }

    /// Writes the aggregations as they stand, if any (`last` at the end of the run).
    pub fn write_aggregations(&mut self, last: bool, elapsed_s: f64) -> std::io::Result<()> {
        if self.aggregations.is_empty() {
            return Ok(());
        }
        self.writer
            .aggregations(&self.aggregations, last, elapsed_s)
    }

    /// Restricts eager process tracking to one pid.
    pub fn with_pid_filter(mut self, pid: Option<u32>) -> Self {
        self.pid_filter = pid;
        self
    }

    /// Handles one ring buffer event; returns false once the run should stop taking hits.
    pub fn handle_event(&mut self, event: &Event) -> bool {
        let lost = match event {
            Event::Hit(e) => e.lost_reports,
            Event::Stack(e) => e.hit.lost_reports,
            Event::Proc(e) => e.lost_reports,
            Event::Change(e) => e.lost_reports,
        };
        if lost != self.lost_reports {
            // Seen in the first event reserved after the loss: before any hit whose sequence
            // includes the lost change.
            tracing::warn!(
                lost = lost.wrapping_sub(self.lost_reports),
                "the change tracker lost reports (ring buffer full): dropping replayed pictures"
            );
            self.lost_reports = lost;
            self.reader.resolver().distrust_all();
        }
        match event {
            Event::Hit(hit) => self.handle(hit, None),
            Event::Stack(e) => {
                let n = (e.nframes as usize).min(e.frames.len());
                self.handle(&e.hit, Some(&e.frames[..n]))
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

    /// A process exec'd or exited. At exec its new address space starts from the kernel's
    /// report (program and loader text) and is also scanned now, so that even a process that
    /// exits right after its first hit resolves; at exit its pictures are kept (bounded) for
    /// the hits still queued.
    fn handle_proc(&mut self, event: &ProcEvent) {
        if self
            .pid_filter
            .is_some_and(|p| p != event.pid && p != event.parent_pid)
        {
            return;
        }
        let proc = ProcKey::new(event.pid, event.proc_gen);
        let resolver = self.reader.resolver().clone();
        match event.what {
            PROC_EXEC => {
                if let Some(base) = changes::exec_base(event, &self.paths) {
                    resolver.add_base(proc, event.ticket, base);
                }
                if let Err(err) = resolver.track(proc) {
                    tracing::debug!(%proc, error = %err, "eager snapshot after exec failed");
                }
            }
            PROC_EXIT => resolver.exited(proc),
            PROC_FORK => resolver.fork(
                ProcKey::new(event.parent_pid, event.parent_gen),
                event.parent_seq,
                proc,
                event.ticket,
            ),
            _ => {}
        }
    }

    /// A mapping change finished: replay it onto the process's pictures.
    fn handle_change(&mut self, event: &ChangeEvent) {
        if self.pid_filter.is_some_and(|p| p != event.pid) {
            return;
        }
        let proc = ProcKey::new(event.pid, event.proc_gen);
        let resolver = self.reader.resolver().clone();
        if !resolver.is_tracked(proc) {
            // BPF reports only processes it tracks: this one just started being tracked (it
            // mapped a probed file). Start its pictures from what the report says (a partial
            // base: nothing else is known yet, and the process may exit before a scan), then
            // scan it for the rest.
            if let Replay::Change(change) = changes::replay(event, &self.paths, None) {
                let empty =
                    Snapshot::partial(event.ticket.wrapping_mul(2).wrapping_sub(2), Vec::new());
                resolver.add_base(proc, event.ticket.wrapping_sub(1), empty);
                resolver.change(proc, event.ticket, Some(change));
            }
            if let Err(err) = resolver.track(proc) {
                tracing::debug!(%proc, error = %err, "scan of a newly tracked process failed");
            }
            return;
        }
        self.paths.current = resolver.snapshot(proc);
        match changes::replay(event, &self.paths, self.paths.current.as_deref()) {
            Replay::Nothing => {}
            Replay::Change(change) => resolver.change(proc, event.ticket, Some(change)),
            Replay::Unknown => {
                tracing::debug!(
                    op = event.op,
                    ret = event.ret,
                    flags = event.flags,
                    args = ?event.args,
                    "change report cannot be replayed"
                );
                resolver.change(proc, event.ticket, None);
            }
        }
    }

    /// Whether the run should end, and why.
    pub fn stopped(&self) -> Option<Stop> {
        self.stop
    }

    /// Handles one hit; returns false once the run should stop taking hits.
    /// Handles one hit (with its user stack, innermost first, if captured); returns false
    /// once the run should stop taking hits.
    pub fn handle(&mut self, hit: &HitEvent, frames: Option<&[u64]>) -> bool {
        let id = hit.probe_id as usize;
        if id >= self.probes.len() {
            self.unknown_probe += 1;
            return self.stop.is_none();
        }
        if self.stop.is_some() {
            self.counts[id].not_printed += 1;
            return false;
        }
        let proc = ProcKey::new(hit.pid, hit.proc_gen);
        let (mut resolved, mut via) = self.resolve(proc, hit.pid, hit.seq, hit.ip, 0);
        if let Err(reason) = resolved {
            // The kernel matched this hit to the probe's (inode, offset) when it fired, so the
            // probe itself is an exact answer the resolver could not give (a hit in the
            // middle of a mapping change, or of a process gone without a picture). Counted
            // apart, by the resolver's reason, so the resolver's own record stays visible.
            *self.counts[id].by_probe.entry(reason).or_default() += 1;
            resolved = Ok(self.probe_location(id));
            via = "probe";
        }
        let stack = frames.map(|frames| self.resolve_stack(proc, hit, frames));
        let probe = &self.probes[id];
        let comm = comm_str(&hit.comm);
        let is_return = hit.kind == KIND_RETURN;
        let record = HitRecord {
            probe: &probe.spec.text,
            probe_id: hit.probe_id,
            kind: if is_return {
                ProbeKind::Return
            } else {
                ProbeKind::Entry
            },
            pid: hit.pid,
            tid: hit.tid,
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
        };
        self.aggregations.add(&record);
        if self.print_hits && self.writer.hit(&record).is_err() {
            self.stop = Some(Stop::OutputClosed);
            return false;
        }
        self.counts[id].printed += 1;
        self.printed += 1;
        if self.limit.is_some_and(|n| self.printed >= n) {
            self.stop = Some(Stop::Count);
            return false;
        }
        true
    }

    /// Where probe `id` is, from its SPEC and ELF file.
    fn probe_location(&self, id: usize) -> Resolved {
        let probe = &self.probes[id];
        Resolved {
            module: self.probe_modules[id].clone(),
            symbol: probe
                .target
                .symbol
                .as_ref()
                .map(|s| s.demangled().to_owned()),
            offset: probe
                .target
                .symbol
                .as_ref()
                .map(|_| probe.target.offset_in_symbol),
            file_offset: probe.file_offset,
        }
    }

    /// Address → mapping → symbol, as of the hit's sequence. `back` bytes are subtracted for
    /// the lookup (1 for return addresses, so that a call at the very end of a function is
    /// not attributed to the next one) and added back to the reported offset.
    fn resolve(
        &mut self,
        proc: ProcKey,
        pid: u32,
        seq: u64,
        addr: u64,
        back: u64,
    ) -> (Result<Resolved, &'static str>, &'static str) {
        let symbolizer = &self.symbolizer;
        let lookup = addr.wrapping_sub(back);
        self.reader.resolve_with(proc, lookup, Some(seq), |r| {
            let via = r.via.as_str();
            let found = match r.outcome {
                Ok(found) => found,
                Err(reason) => return (Err(reason.as_str()), via),
            };
            let vma = found.vma;
            let source = FileSource::mapped(vma.file, &vma.path, pid, vma.start, vma.end);
            let module = vma.path.to_string_lossy().into_owned();
            let resolved = symbolizer.symbolize_with(&source, found.file_offset, |sym| match sym {
                Ok(sym) => Ok(Resolved {
                    module,
                    symbol: Some(sym.symbol.demangled().to_owned()),
                    offset: Some(sym.offset + back),
                    file_offset: found.file_offset + back,
                }),
                Err(why) => Err(why.as_str()),
            });
            (resolved, via)
        })
    }

    /// Resolves every frame of a hit's user stack through the resolver, as of the hit's
    /// sequence: frames in libraries since unloaded, or of a process since gone, resolve
    /// against the picture of the hit's time.
    fn resolve_stack(&mut self, proc: ProcKey, hit: &HitEvent, frames: &[u64]) -> Vec<Frame> {
        let mut out = Vec::with_capacity(frames.len() + 1);
        let probe = &self.probes[hit.probe_id as usize];
        let at_entry = hit.kind != KIND_RETURN
            && probe.target.symbol.is_some()
            && probe.target.offset_in_symbol == 0;
        for (i, &addr) in frames.iter().enumerate() {
            // The innermost frame of an entry probe is the probed instruction itself; every
            // other frame is a return address, looked up one byte back so that a call at the
            // very end of a function is not attributed to the next one.
            let back = u64::from(i > 0 || hit.kind == KIND_RETURN);
            out.push(self.resolve_frame(proc, hit, addr, back));
            if i == 0 && at_entry && hit.ret_addr != 0 && frames.get(1) != Some(&hit.ret_addr) {
                // At a function's first instruction the caller has not been given a frame
                // yet (no push rbp): the frame-pointer walk skips it, so BPF read its return
                // address from the top of the stack. Kernels since 6.11 add it themselves
                // when that instruction is `push %rbp` (perf_callchain_user's fix-up for
                // uprobes at function entry): then it is already the next frame.
                out.push(self.resolve_frame(proc, hit, hit.ret_addr, 1));
            }
        }
        out
    }

    /// One stack frame: its mapping (as of the hit's sequence) and symbol.
    fn resolve_frame(&mut self, proc: ProcKey, hit: &HitEvent, addr: u64, back: u64) -> Frame {
        let symbolizer = &self.symbolizer;
        let pid = hit.pid;
        self.reader
            .resolve_with(proc, addr.wrapping_sub(back), Some(hit.seq), |r| {
                let found = match r.outcome {
                    Ok(found) => found,
                    Err(reason) => {
                        return Frame {
                            addr,
                            module: None,
                            symbol: None,
                            offset: None,
                            unresolved: Some(reason.as_str()),
                        };
                    }
                };
                let vma = found.vma;
                let source = FileSource::mapped(vma.file, &vma.path, pid, vma.start, vma.end);
                let module = Some(vma.path.to_string_lossy().into_owned());
                symbolizer.symbolize_with(&source, found.file_offset, |sym| match sym {
                    Ok(sym) => Frame {
                        addr,
                        module,
                        symbol: Some(sym.symbol.demangled().to_owned()),
                        offset: Some(sym.offset + back),
                        unresolved: None,
                    },
                    // The module is known even when no symbol covers the address (a
                    // stripped library's internal function).
                    Err(why) => Frame {
                        addr,
                        module,
                        symbol: None,
                        offset: None,
                        unresolved: Some(why.as_str()),
                    },
                })
            })
    }

    /// Fills the per-probe and resolver parts of `summary`; `stats` reads BPF's counters.
    pub fn summarize(
        &self,
        summary: &mut Summary,
        stats: impl Fn(u32) -> Result<probed_common::ProbeStats, AttachError>,
    ) -> Result<(), AttachError> {
        for (probe, counts) in self.probes.iter().zip(&self.counts) {
            let bpf = stats(probe.id)?;
            summary.probes.push(ProbeSummary {
                probe: probe.spec.text.clone(),
                probe_id: probe.id,
                hits: bpf.hits,
                printed: counts.printed,
                lost: bpf.lost,
                not_printed: counts.not_printed,
                unresolved: counts.unresolved.clone(),
                resolved_by_probe: counts.by_probe.clone(),
            });
        }
        let c = self.reader.resolver().counters();
        summary.resolver = [
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
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(())
    }

    /// Flushes buffered hits to the output.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }

    /// Writes the summary and flushes the output.
    pub fn finish(&mut self, summary: &Summary) -> std::io::Result<()> {
        self.writer.summary(summary)
    }
}

/// Paths of mapped files by identity: from the probe table, the process's newest picture, or
/// its /proc/PID/map_files while it lives; remembered once found.
struct Paths {
    known: RefCell<HashMap<FileId, Arc<Path>>>,
    /// The newest picture of the process whose report is being replayed.
    current: Option<SharedSnapshot>,
}

impl Paths {
    fn from_probes(probes: &[Probe]) -> Self {
        let known = probes
            .iter()
            .map(|p| {
                let path =
                    std::fs::canonicalize(&p.spec.path).unwrap_or_else(|_| p.spec.path.clone());
                (p.target.id, Arc::from(path))
            })
            .collect();
        Self {
            known: RefCell::new(known),
            current: None,
        }
    }
}

impl PathLookup for Paths {
    fn path_of(&self, file: FileId, pid: u32, start: u64, end: u64) -> Option<Arc<Path>> {
        if let Some(p) = self.known.borrow().get(&file) {
            return Some(p.clone());
        }
        let found = self
            .current
            .as_ref()
            .and_then(|s| {
                s.vmas()
                    .iter()
                    .find(|v| v.file == file)
                    .map(|v| v.path.clone())
            })
            .or_else(|| {
                let link =
                    std::fs::read_link(format!("/proc/{pid}/map_files/{start:x}-{end:x}")).ok()?;
                let text = link.to_string_lossy();
                let path = text
                    .strip_suffix(" (deleted)")
                    .map_or_else(|| link.clone(), PathBuf::from);
                Some(Arc::from(path))
            })?;
        self.known.borrow_mut().insert(file, found.clone());
        Some(found)
    }
}
