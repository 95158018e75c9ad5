//! The per-hit path of a run: resolve the address (speculative resolver), symbolize it
//! (ELF cache), write it, and count everything that could not be done, by reason.
//!
//! One pipeline runs on the task that drains the ring buffer. It owns a resolver
//! [`Reader`] (the lock-free fast path) and borrows the shared [`Symbolizer`].

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::Write,
    sync::Arc,
};

use probed_common::{
    ArgStringsEvent, CAPTURE_FAILED, ChangeEvent, HitEvent, KIND_RETURN, MAX_FRAMES, OP_OTHER,
    PROC_EXEC, PROC_EXIT, PROC_FORK, ProcEvent, STACK_COPY_BYTES, StackCopyHitEvent, VmaInfo,
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
    resolve::{Hit, ProcKey, Reader, Reason, Resolution, Resolver, SeqSource, Snapshot, Via},
    spec::ProbeKind,
    symbolize::Symbolizer,
    track::{
        TrackerMode,
        captured::{self, Captured},
        changes::{self, Replay},
        paths::{self, PathIndex},
    },
    unwind::{Located, StackMode, Start, StopReason, Tables, Unwinder},
};

/// Lock mode: the mappings a hit captured (ebpf/src/capture.rs), by frame index; index
/// `MAX_FRAMES` holds the extra capture (an entry probe's caller return address, or a
/// return probe's function address).
#[derive(Clone, Copy, Debug)]
pub struct Captures<'a> {
    /// `CAPTURE_*` per index.
    pub status: &'a [u8],
    /// The mapping per index.
    pub vmas: &'a [VmaInfo],
}

/// One address's capture: its `CAPTURE_*` status and, if there is one, the mapping.
type Capture<'a> = (u8, Option<&'a VmaInfo>);

/// What resolving a hit's address gives: the symbolized answer or why not, the path taken
/// (`via`), and where the address was placed (file, offset) for the probe oracle.
type Answer = (
    Result<Resolved, &'static str>,
    &'static str,
    Option<(FileId, u64)>,
);

impl<'a> Captures<'a> {
    fn get(&self, i: usize) -> Capture<'a> {
        (
            self.status.get(i).copied().unwrap_or(CAPTURE_FAILED),
            self.vmas.get(i),
        )
    }
}

/// Lock mode: processes whose pictures are behind (a write section of their address space
/// ended, or a hit had to capture), rescanned at most once per drained batch, and the
/// sequence last published to BPF per process.
#[derive(Debug, Default)]
struct LockState {
    stale: HashSet<ProcKey>,
    published: HashMap<ProcKey, u64>,
    /// Hit addresses answered from captures, and hit captures that failed.
    captured: u64,
    capture_failed: u64,
    /// The same for stack frames.
    captured_frames: u64,
    capture_failed_frames: u64,
    /// Rescans made for stale processes, and pictures published to BPF.
    stale_rescans: u64,
    published_count: u64,
    /// Processes rescanned in this batch already (a captured hit of a process without a
    /// published picture rescans it at once, but once per batch).
    rescanned: HashSet<ProcKey>,
    /// Pictures made from captures, by process and mapping: consecutive hits in one
    /// mapping reuse one picture (cleared when it grows past `PICTURE_CACHE`).
    pictures: HashMap<(u32, [u64; 6]), Arc<Captured>>,
}

/// Most capture pictures kept (see `LockState::pictures`).
const PICTURE_CACHE: usize = 1024;

impl LockState {
    /// The picture a capture of `pid` makes (cached: see `pictures`).
    fn picture(&mut self, capture: Capture<'_>, pid: u32, paths: &PathIndex) -> Arc<Captured> {
        let (status, Some(vma)) = capture else {
            return Arc::new(Captured::Failed);
        };
        if status != probed_common::CAPTURE_FOUND {
            return Arc::new(captured::picture(status, vma, pid, paths));
        }
        let key = (
            pid,
            [vma.start, vma.end, vma.pgoff, vma.flags, vma.dev, vma.ino],
        );
        if let Some(p) = self.pictures.get(&key) {
            return p.clone();
        }
        if self.pictures.len() >= PICTURE_CACHE {
            self.pictures.clear();
        }
        let p = Arc::new(captured::picture(status, vma, pid, paths));
        self.pictures.insert(key, p.clone());
        p
    }
}

/// Threads whose string arguments may wait for their hit at once (see `pending_strings`).
const MAX_PENDING_STRINGS: usize = 65536;

/// The reason given for an address whose mapping was found but whose file no source could
/// name (see `track::paths`).
const UNNAMED: &str = "unnamed";

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

/// One probe of the pipeline's table.
struct Slot {
    probe: Probe,
    /// The probe's file as its processes name it (for hits answered by the probe).
    module: String,
    counts: ProbeCounts,
    /// Index of the writer its hits go to.
    sink: usize,
    /// How its copied stacks are unwound, when not the run's mode (the daemon's probes each
    /// have their own).
    stack_mode: Option<StackMode>,
}

impl Slot {
    fn new(probe: Probe, sink: usize) -> Self {
        let module = probe.module_path().to_string_lossy().into_owned();
        Self {
            probe,
            module,
            counts: ProbeCounts::default(),
            sink,
            stack_mode: None,
        }
    }
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
    /// The tracker's lost-report count as of the last event.
    lost_reports: u32,
    /// ELF symbol cache shared with other pipelines.
    symbolizer: Arc<Symbolizer>,
    /// Hits naming a probe id this run does not have (an ABI or cookie mismatch).
    pub unknown_probe: u64,
    /// String arguments waiting for their hit, by thread (BPF writes them just before it).
    pending_strings: HashMap<u32, Box<ArgStringsEvent>>,
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
    /// The tracker's hooks (lock mode: changes are rescanned, not replayed).
    tracker: TrackerMode,
    /// How copied stacks are unwound (`auto` or `dwarf`; `fp` stacks come walked).
    stack_mode: StackMode,
    /// The CFI unwinder of copied stacks, with its stop counts.
    unwinder: Unwinder,
    /// Unwind tables per file.
    unwind_tables: Tables,
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
            lost_reports: 0,
            reader: Reader::new(resolver),
            pid_filter: None,
            symbolizer,
            unknown_probe: 0,
            pending_strings: HashMap::new(),
            stacks_truncated: 0,
            hit_records: 0,
            aggregations: Aggregations::default(),
            print_hits: true,
            lock: LockState::default(),
            tracker: TrackerMode::Syscalls,
            stack_mode: StackMode::Auto,
            unwinder: Unwinder::new(),
            unwind_tables: Tables::default(),
        }
    }

    /// Lock mode: (captured, failed, captured frames, failed frames) so far.
    pub fn captures(&self) -> [u64; 4] {
        let l = &self.lock;
        [
            l.captured,
            l.capture_failed,
            l.captured_frames,
            l.capture_failed_frames,
        ]
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

    /// Lock mode, after each drained batch: rescans each process whose picture is behind
    /// (once, however many changes it reported in the batch) and publishes the sequence of
    /// the full picture now held, so that BPF lets hits of that sequence skip their captures.
    /// A rescan is taken only if the sequence was even and unchanged across the read (the
    /// mirror's own rule); otherwise nothing is published and hits keep capturing.
    pub fn end_batch(&mut self) {
        self.lock.rescanned.clear();
        self.refresh_stale();
    }

    fn refresh_stale(&mut self) {
        if self.lock.stale.is_empty() {
            return;
        }
        let resolver = self.reader.resolver().clone();
        for proc in std::mem::take(&mut self.lock.stale) {
            self.lock.stale_rescans += 1;
            match resolver.track(proc) {
                Ok(snap) if !snap.is_partial() && snap.seq().is_multiple_of(2) => {
                    if self.lock.published.insert(proc, snap.seq()) != Some(snap.seq()) {
                        resolver.seq().publish(proc, snap.seq());
                        self.lock.published_count += 1;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(%proc, error = %err, "rescan of a changed process failed");
                    self.lock.published.remove(&proc);
                }
            }
        }
    }

    /// Unwinds copied stacks in `mode` (`dwarf`: CFI only; otherwise CFI where a module has
    /// it, frame pointers elsewhere).
    pub fn with_stack_mode(mut self, mode: StackMode) -> Self {
        self.stack_mode = mode;
        self
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

    /// Sets how probe `id`'s copied stacks are unwound (`auto` or `dwarf`; the run's mode
    /// otherwise).
    pub fn set_probe_stack_mode(&mut self, id: u32, mode: StackMode) {
        if let Some(Some(slot)) = self.probes.get_mut(id as usize) {
            slot.stack_mode = Some(mode);
        }
    }

    /// The unwinder's stop counts by reason (`end`, `no_cfi`, …), for the metrics.
    pub fn stack_stops(&self) -> Vec<(&'static str, u64)> {
        self.unwinder.stops_by_reason()
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

    /// The resolver this pipeline reads through.
    pub fn resolver(&self) -> &Arc<Resolver<S>> {
        self.reader.resolver()
    }

    /// Restricts eager process tracking to one pid.
    pub fn with_pid_filter(mut self, pid: Option<u32>) -> Self {
        self.pid_filter = pid;
        self
    }

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
                // Kept for the thread's next hit. Bounded: a strings record whose hit was
                // lost (full ring) is replaced by the thread's next one.
                if self.pending_strings.len() >= MAX_PENDING_STRINGS {
                    self.pending_strings.clear();
                }
                self.pending_strings.insert(e.tid, e.clone());
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
                if self.lock_mode() {
                    self.lock.stale.insert(proc);
                }
                if let Some(base) = changes::exec_base(event, &self.paths) {
                    resolver.add_base(proc, event.ticket, base);
                }
                if let Err(err) = resolver.track(proc) {
                    tracing::debug!(%proc, error = %err, "eager snapshot after exec failed");
                }
            }
            PROC_EXIT => {
                self.lock.stale.remove(&proc);
                self.lock.pictures.retain(|k, _| k.0 != event.pid);
                self.lock.published.remove(&proc);
                resolver.exited(proc);
            }
            PROC_FORK => {
                if self.lock_mode() {
                    self.lock.stale.insert(proc);
                }
                resolver.fork(
                    ProcKey::new(event.parent_pid, event.parent_gen),
                    event.parent_seq,
                    proc,
                    event.ticket,
                )
            }
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
        if self.lock_mode() && event.op == OP_OTHER {
            // Lock mode reports every change this way (and syscall mode its few unreplayable
            // ones): rescanned after the batch, once however many there were.
            self.lock.stale.insert(proc);
        }
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

    /// Handles one hit (with its user stack, innermost first, if captured); returns false
    /// once the run should stop taking hits.
    pub fn handle(&mut self, hit: &HitEvent, frames: Option<&[u64]>) -> bool {
        self.handle_inner(hit, frames, None, None)
    }

    /// Lock mode: handles a hit that carries the kernel's mappings of its addresses: each
    /// address resolves from its capture (`via: captured`), never from a picture of another
    /// time; a failed capture is counted (`capture_failed`), never guessed.
    pub fn handle_captured(
        &mut self,
        hit: &HitEvent,
        frames: Option<&[u64]>,
        captures: Captures<'_>,
    ) -> bool {
        let proc = ProcKey::new(hit.pid, hit.proc_gen);
        if hit.seq.is_multiple_of(2)
            && self.lock.published.get(&proc) != Some(&hit.seq)
            && self.lock.rescanned.insert(proc)
        {
            // BPF had no published picture of this sequence: get one now (once per batch),
            // so that the next hits of a process that stopped changing stop capturing
            // (a flood of captured hits would otherwise fill the ring before the batch ends).
            self.lock.stale.insert(proc);
            self.refresh_stale();
        }
        self.handle_inner(hit, frames, Some(captures), None)
    }

    /// Handles a hit with a stack copy: unwinds it (unwind/), then handles it with the
    /// frames found.
    pub fn handle_stack_copy(&mut self, e: &StackCopyHitEvent) -> bool {
        let len = (e.stack_len as usize).min(STACK_COPY_BYTES);
        let start = Start {
            ip: e.ip,
            sp: e.sp,
            bp: e.bp,
            stack_base: e.stack_base,
            stack: &e.stack[..len],
        };
        let frames = self.unwind(&e.hit, start);
        self.handle_inner(&e.hit, Some(&frames.0), None, Some(frames.1))
    }

    /// Unwinds a copied stack against the hit's own picture of its address space.
    fn unwind(&mut self, hit: &HitEvent, start: Start<'_>) -> (Vec<u64>, StopReason) {
        let proc = ProcKey::new(hit.pid, hit.proc_gen);
        let (seq, pid) = (hit.seq, hit.pid);
        let mode = self
            .probes
            .get(hit.probe_id as usize)
            .and_then(|s| s.as_ref()?.stack_mode)
            .unwrap_or(self.stack_mode);
        let reader = &mut self.reader;
        let tables = &mut self.unwind_tables;
        let walk = self.unwinder.walk(
            start,
            mode,
            MAX_FRAMES,
            crate::stack_check::mmap_min_addr(),
            crate::stack_check::user_limit(),
            |addr| {
                reader.resolve_with(proc, addr, Some(seq), |r| {
                    let Ok(found) = r.outcome else {
                        return Located::Without(StopReason::NoModule);
                    };
                    let vma = found.vma;
                    if paths::is_unnamed(&vma.path) {
                        return Located::Without(StopReason::NoModule);
                    }
                    let source = FileSource::mapped(vma.file, &vma.path, pid, vma.start, vma.end);
                    match tables.get(&source) {
                        Ok(table) => match table.vaddr(found.file_offset) {
                            Some(vaddr) => Located::Cfi(table, vaddr),
                            None => Located::Without(StopReason::NoCfi),
                        },
                        Err(_) => Located::Without(StopReason::NoCfi),
                    }
                })
            },
        );
        (walk.frames, walk.stop)
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
        // Typed arguments, with the strings BPF wrote just before this hit (same thread,
        // same timestamp); a hit whose strings record was lost shows them as missing.
        let typed_args = probe.args.as_ref().map(|plan| {
            let strings = if plan.has_strings() {
                self.pending_strings
                    .remove(&hit.tid)
                    .filter(|e| e.ts_ns == hit.ts_ns && e.probe_id == hit.probe_id)
            } else {
                None
            };
            let raw = if is_return {
                [hit.retval, 0, 0, 0, 0, 0]
            } else {
                hit.args
            };
            plan.values(&raw, strings.as_deref())
        });
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
        if self.print_hits {
            let written = match self.writers.get_mut(slot.sink) {
                Some(Some(writer)) => writer.hit(&record),
                _ => Err(std::io::Error::other("the probe's output is closed")),
            };
            if let Err(err) = written {
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
        }
        slot.counts.printed += 1;
        self.printed += 1;
        if self.limit.is_some_and(|n| self.printed >= n) {
            self.stop = Some(Stop::Count);
            return false;
        }
        true
    }

    /// Where probe `id` is, from its SPEC and ELF file.
    fn probe_location(&self, id: usize) -> Resolved {
        let Some(slot) = self.probes.get(id).and_then(Option::as_ref) else {
            return Resolved::default();
        };
        let probe = &slot.probe;
        Resolved {
            module: slot.module.clone(),
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

    /// Address → mapping → symbol, as of the hit's sequence, or, in lock mode, from the
    /// address's capture (`capture`: status and mapping). `back` bytes are subtracted for the
    /// lookup (1 for return addresses, so that a call at the very end of a function is not
    /// attributed to the next one) and added back to the reported offset.
    fn resolve(
        &mut self,
        proc: ProcKey,
        hit: &HitEvent,
        addr: u64,
        back: u64,
        capture: Option<Capture<'_>>,
    ) -> Answer {
        let pid = hit.pid;
        let lookup = addr.wrapping_sub(back);
        if let Some(cap) = capture {
            let picture = self.lock.picture(cap, pid, &self.paths);
            let symbolizer = &self.symbolizer;
            let unnamed = &mut self.unnamed;
            return with_captured(&mut self.lock, false, hit.seq, &picture, lookup, |r| {
                hit_answer(symbolizer, unnamed, pid, back, r)
            });
        }
        let symbolizer = &self.symbolizer;
        let unnamed = &mut self.unnamed;
        self.reader.resolve_with(proc, lookup, Some(hit.seq), |r| {
            hit_answer(symbolizer, unnamed, pid, back, r)
        })
    }

    /// Resolves every frame of a hit's user stack through the resolver, as of the hit's
    /// sequence: frames in libraries since unloaded, or of a process since gone, resolve
    /// against the picture of the hit's time.
    /// `fp_walk`: the frames are the kernel's frame-pointer walk, which misses the caller
    /// of a function probed at its first instruction (added here from `ret_addr`).
    fn resolve_stack(
        &mut self,
        proc: ProcKey,
        hit: &HitEvent,
        frames: &[u64],
        captures: Option<Captures<'_>>,
        fp_walk: bool,
    ) -> Vec<Frame> {
        let mut out = Vec::with_capacity(frames.len() + 1);
        let at_entry = fp_walk
            && hit.kind != KIND_RETURN
            && self
                .probes
                .get(hit.probe_id as usize)
                .and_then(Option::as_ref)
                .is_some_and(|slot| {
                    slot.probe.target.symbol.is_some() && slot.probe.target.offset_in_symbol == 0
                });
        for (i, &addr) in frames.iter().enumerate() {
            // The innermost frame of an entry probe is the probed instruction itself; every
            // other frame is a return address, looked up one byte back so that a call at the
            // very end of a function is not attributed to the next one.
            let back = u64::from(i > 0 || hit.kind == KIND_RETURN);
            out.push(self.resolve_frame(proc, hit, addr, back, captures.map(|c| c.get(i))));
            if i == 0 && at_entry && hit.ret_addr != 0 && frames.get(1) != Some(&hit.ret_addr) {
                // At a function's first instruction the caller has not been given a frame
                // yet (no push rbp): the frame-pointer walk skips it, so BPF read its return
                // address from the top of the stack. Kernels since 6.11 add it themselves
                // when that instruction is `push %rbp` (perf_callchain_user's fix-up for
                // uprobes at function entry): then it is already the next frame.
                let cap = captures.map(|c| c.get(MAX_FRAMES));
                out.push(self.resolve_frame(proc, hit, hit.ret_addr, 1, cap));
            }
        }
        out
    }

    /// One stack frame: its mapping (as of the hit's sequence, or from its capture) and
    /// symbol.
    fn resolve_frame(
        &mut self,
        proc: ProcKey,
        hit: &HitEvent,
        addr: u64,
        back: u64,
        capture: Option<Capture<'_>>,
    ) -> Frame {
        let pid = hit.pid;
        let lookup = addr.wrapping_sub(back);
        if let Some(cap) = capture {
            let picture = self.lock.picture(cap, pid, &self.paths);
            let symbolizer = &self.symbolizer;
            let unnamed = &mut self.unnamed;
            return with_captured(&mut self.lock, true, hit.seq, &picture, lookup, |r| {
                frame_answer(symbolizer, unnamed, pid, addr, back, r)
            });
        }
        let symbolizer = &self.symbolizer;
        let unnamed = &mut self.unnamed;
        self.reader.resolve_with(proc, lookup, Some(hit.seq), |r| {
            frame_answer(symbolizer, unnamed, pid, addr, back, r)
        })
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
            let bpf = stats(slot.probe.id)?;
            let written = bpf.hits - bpf.lost - bpf.rate_limited - bpf.filtered - bpf.self_excluded;
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
            ("captured", self.lock.captured),
            ("capture_failed", self.lock.capture_failed),
            ("captured_frames", self.lock.captured_frames),
            ("capture_failed_frames", self.lock.capture_failed_frames),
            ("stale_rescans", self.lock.stale_rescans),
            ("mirror_published", self.lock.published_count),
            ("unknown_probe", self.unknown_probe),
        ]
        .into_iter()
        .chain(self.unwinder.stop_counts())
        .chain([("unwind_table_loads", self.unwind_tables.loads)])
        .collect()
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

/// Answers `f` from a capture's picture, as the resolver would from a picture of the hit's
/// time (`via: captured`), counting captures and failed ones.
fn with_captured<R>(
    lock: &mut LockState,
    frame: bool,
    seq: u64,
    picture: &Captured,
    lookup: u64,
    f: impl FnOnce(Resolution<Hit<'_>>) -> R,
) -> R {
    let outcome = match picture {
        Captured::Picture(snap) => match snap.lookup(lookup) {
            Some(vma) => Ok(Hit {
                vma,
                file_offset: vma.file_offset(lookup),
                probe: None,
            }),
            None => Err(Reason::from(snap.miss(lookup))),
        },
        Captured::Unmapped => Err(Reason::Unmapped),
        Captured::Failed => Err(Reason::CaptureFailed),
    };
    let counter = match (matches!(picture, Captured::Failed), frame) {
        (true, false) => &mut lock.capture_failed,
        (false, false) => &mut lock.captured,
        (true, true) => &mut lock.capture_failed_frames,
        (false, true) => &mut lock.captured_frames,
    };
    *counter += 1;
    f(Resolution {
        via: Via::Captured,
        seq: Some(seq),
        outcome,
    })
}

/// A hit's address: the resolver's answer, symbolized.
fn hit_answer(
    symbolizer: &Symbolizer,
    unnamed: &mut u64,
    pid: u32,
    back: u64,
    r: Resolution<Hit<'_>>,
) -> Answer {
    let via = r.via.as_str();
    let found = match r.outcome {
        Ok(found) => found,
        Err(reason) => return (Err(reason.as_str()), via, None),
    };
    let vma = found.vma;
    let place = Some((vma.file, found.file_offset));
    if paths::is_unnamed(&vma.path) {
        *unnamed += 1;
        return (Err(UNNAMED), via, place);
    }
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
    (resolved, via, place)
}

/// A stack frame: the resolver's answer, symbolized.
fn frame_answer(
    symbolizer: &Symbolizer,
    unnamed: &mut u64,
    pid: u32,
    addr: u64,
    back: u64,
    r: Resolution<Hit<'_>>,
) -> Frame {
    let found = match r.outcome {
        Ok(found) => found,
        Err(reason) => {
            return Frame {
                addr,
                module: None,
                symbol: None,
                offset: None,
                unresolved: Some(reason.as_str()),
                file: None,
            };
        }
    };
    let vma = found.vma;
    if paths::is_unnamed(&vma.path) {
        *unnamed += 1;
        return Frame {
            addr,
            module: None,
            symbol: None,
            offset: None,
            unresolved: Some(UNNAMED),
            file: Some(vma.file.to_string()),
        };
    }
    let source = FileSource::mapped(vma.file, &vma.path, pid, vma.start, vma.end);
    let module = Some(vma.path.to_string_lossy().into_owned());
    symbolizer.symbolize_with(&source, found.file_offset, |sym| match sym {
        Ok(sym) => Frame {
            addr,
            module,
            symbol: Some(sym.symbol.demangled().to_owned()),
            offset: Some(sym.offset + back),
            unresolved: None,
            file: None,
        },
        // The module is known even when no symbol covers the address (a stripped
        // library's internal function).
        Err(why) => Frame {
            addr,
            module,
            symbol: None,
            offset: None,
            unresolved: Some(why.as_str()),
            file: None,
        },
    })
}

/// Gives the symbolizer a container probe's file as its SPEC was checked: the container may
/// stop before any hit is symbolized, and its file is not reachable from the host then.
fn preload(symbolizer: &Symbolizer, probe: &Probe) {
    if let Some(c) = &probe.in_container {
        symbolizer.preload(probe.target.id, c.image.clone());
    }
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
