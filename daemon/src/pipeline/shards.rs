//! Several consumer threads (`--consumers N`): the ring's items dealt by process to N
//! pipelines, each on a thread of its own with its own resolver [`Reader`] on the shared
//! mirror, its own symbol lookups into the shared ELF cache, its lines written whole into
//! the one output.
//!
//! **Why by process.** The resolver's ordering rule is per process: every change report of a
//! process with ticket ≤ S/2 is applied before a hit of that process stamped S is resolved.
//! The ring holds a process's reports and hits in that order; a shard gets all of a
//! process's items, in ring order, through one FIFO channel, so the rule holds in each
//! shard as it does in one pipeline, and a thread's hits (a thread is in one process) are
//! written in hit order. Lines of different processes interleave by chunk.
//!
//! **What crosses processes**, and how it keeps its order:
//! - a fork report: the child's picture is copied from the parent's as of the fork, so the
//!   child's shard waits (`Work::Wait`) until the parent's shard has handled every item
//!   dealt to it before the fork. Waits point only at items dealt earlier, so they cannot
//!   wait on each other in a circle;
//! - a file name (lock mode names a file once for all processes): to every shard;
//! - a strings record (it carries the thread, not the process): kept until its thread's
//!   hit, which follows it in the ring, and dealt just before that hit.
//!
//! The dispatcher runs on the loop's thread (decode, deal, count hit records per probe for
//! the stop's drain); channels are bounded, so a consumer that falls behind slows the
//! dispatcher and the ring fills — counted as lost in BPF, as with one consumer.
//! Aggregations and counters are per shard and added up at the end (`join`).

use std::{
    collections::HashMap,
    io::{self, Write},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
};

use probed_common::{HitEvent, PROC_FORK};

use super::{
    Pipeline, Stop,
    consume::{Consume, Stats},
};
use crate::{
    attach::AttachError,
    events::Event,
    output::{Aggregations, Format, Summary, Writer},
    resolve::SeqSource,
};

/// Items a shard is handed at once (fewer at a batch's end): big enough that a channel
/// send is rare next to the items' handling, small enough that the shards start while the
/// dispatcher is still dealing a batch.
const CHUNK: usize = 256;
/// Chunks waiting per shard before the dispatcher waits for that shard.
const QUEUE: usize = 64;
/// Bytes a shard's output keeps before writing its whole lines without a flush.
const KEEP_AT_MOST: usize = 1 << 20;
/// Strings records waiting for their hit at once (as `arg_strings::MAX_PENDING`).
const MAX_PENDING_STRINGS: usize = 65536;

/// The shard of a process.
pub fn shard_of(pid: u32, shards: usize) -> usize {
    pid as usize % shards.max(1)
}

/// The process an item belongs to (`None`: to every process, or to its thread's next hit).
fn owner(event: &Event) -> Option<u32> {
    match event {
        Event::Proc(p) => Some(p.pid),
        Event::Change(c) => Some(c.pid),
        Event::FileName(_) | Event::ArgStrings(_) => None,
        other => other.hit().map(|h| h.pid),
    }
}

/// Called by a shard before it handles item `n` of the ring (numbered from 1 in ring order)
/// and before a batch's end (with the number of items dealt by then): a replay's seams
/// give back the answers the recorded run read at that point.
pub type ItemHook = Arc<dyn Fn(usize, u64) + Send + Sync>;

/// One shard's output: its lines kept until a flush, then written whole under the shared
/// destination's lock (a line is never split between shards).
pub struct ChunkOut<W: Write> {
    buf: Vec<u8>,
    out: Arc<Mutex<W>>,
}

impl<W: Write> ChunkOut<W> {
    /// A shard's output onto `out`.
    pub fn new(out: Arc<Mutex<W>>) -> Self {
        Self {
            buf: Vec::new(),
            out,
        }
    }
}

impl<W: Write> ChunkOut<W> {
    /// Writes the whole lines kept so far (a long drain between flushes stays bounded).
    fn write_lines(&mut self) -> io::Result<()> {
        let Some(end) = self.buf.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let written = out.write_all(&self.buf[..=end]);
        self.buf.drain(..=end);
        written
    }
}

impl<W: Write> Write for ChunkOut<W> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    // The formatters write a line in many small pieces: one copy each, no loop.
    #[inline]
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= KEEP_AT_MOST {
            self.write_lines()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.buf.is_empty() {
            let written = out.write_all(&self.buf);
            self.buf.clear();
            written?;
        }
        out.flush()
    }
}

/// What a shard is handed.
enum Work {
    /// Item `n` of the ring: a plain hit (most items; 144 bytes, where an `Event` is a
    /// kilobyte for the paths of reports).
    Hit(u64, HitEvent),
    /// Item `n` of the ring, any other kind.
    Item(u64, Box<Event>),
    /// A hit left in the ring at the stop's deadline: counted, not handled.
    Dropped(Box<Event>),
    /// Wait until shard `shard` has handled `done` items (a fork crossing shards).
    Wait { shard: usize, done: u64 },
    /// A drained batch ended after `n` items: lock mode's rescans, then a flush.
    EndBatch(u64),
}

/// A counter on a cache line of its own: each shard bumps its own after every item, and
/// neighbours on one line would make the cores pass that line back and forth per item.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct Padded(pub AtomicU64);

/// What the shards and the dispatcher share.
struct Shared {
    /// Items (handled or counted) per shard.
    done: Vec<Padded>,
    /// A shard's output failed: the run ends as with one consumer.
    closed: AtomicBool,
}

/// A consumer that can be one of several: a pipeline, or a test's stand-in.
pub trait Shard: Consume + Send + 'static {
    /// Adds up another shard of the same run (at the end).
    fn absorb(&mut self, other: Self)
    where
        Self: Sized;
}

impl<W: Write + Send + 'static, S: SeqSource + Send + Sync + 'static> Shard for Pipeline<W, S> {
    fn absorb(&mut self, other: Self) {
        Pipeline::absorb(self, other);
    }
}

/// N consumers (pipelines) on threads of their own, fed by process.
pub struct Shards<P: Shard> {
    senders: Vec<mpsc::SyncSender<Vec<Work>>>,
    pending: Vec<Vec<Work>>,
    /// Items dealt per shard (what `Work::Wait` waits for).
    dealt: Vec<u64>,
    workers: Vec<thread::JoinHandle<P>>,
    shared: Arc<Shared>,
    /// Strings records by thread, with their item numbers, until their hit.
    strings: HashMap<u32, (u64, Event)>,
    /// Ring items seen.
    items: u64,
    hit_records: u64,
    /// The run's probes, and hit records read per probe (the stop's `unread_hits`).
    probe_ids: Vec<u32>,
    read: HashMap<u32, u64>,
    /// The shards added up, once joined.
    merged: Option<P>,
}

impl<P: Shard> Shards<P> {
    /// Starts one thread per consumer of `shards` (shard i: processes with
    /// `shard_of(pid) == i`), `hook` called as [`ItemHook`] says.
    pub fn start(mut shards: Vec<P>, hook: Option<ItemHook>) -> io::Result<Self> {
        let n = shards.len();
        let probe_ids = shards
            .first_mut()
            .map(Consume::probe_ids)
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            done: (0..n).map(|_| Padded::default()).collect(),
            closed: AtomicBool::new(false),
        });
        let mut senders = Vec::with_capacity(n);
        let mut workers = Vec::with_capacity(n);
        for (me, pipeline) in shards.into_iter().enumerate() {
            let (tx, rx) = mpsc::sync_channel(QUEUE);
            let shared = shared.clone();
            let hook = hook.clone();
            let worker = thread::Builder::new()
                .name(format!("probed-consumer-{me}"))
                .spawn(move || work(me, pipeline, &rx, &shared, hook.as_deref()))?;
            senders.push(tx);
            workers.push(worker);
        }
        Ok(Self {
            senders,
            pending: (0..n).map(|_| Vec::with_capacity(CHUNK)).collect(),
            dealt: vec![0; n],
            workers,
            shared,
            strings: HashMap::new(),
            items: 0,
            hit_records: 0,
            probe_ids,
            read: HashMap::new(),
            merged: None,
        })
    }

    fn push(&mut self, shard: usize, work: Work) {
        if matches!(work, Work::Hit(..) | Work::Item(..) | Work::Dropped(_)) {
            self.dealt[shard] += 1;
        }
        self.pending[shard].push(work);
        if self.pending[shard].len() >= CHUNK {
            self.send(shard);
        }
    }

    fn send(&mut self, shard: usize) {
        if self.pending[shard].is_empty() {
            return;
        }
        let chunk = std::mem::replace(&mut self.pending[shard], Vec::with_capacity(CHUNK));
        if let Some(tx) = self.senders.get(shard)
            && tx.send(chunk).is_err()
        {
            // The shard's thread is gone (it panicked): `join` says so.
            self.shared.closed.store(true, Ordering::Relaxed);
        }
    }

    fn count_hit(&mut self, event: &Event) {
        if let Some(hit) = event.hit() {
            self.hit_records += 1;
            *self.read.entry(hit.probe_id).or_default() += 1;
        }
    }

    /// Item `n`, as handed to a shard.
    fn work(n: u64, event: Event) -> Work {
        match event {
            Event::Hit(hit) => Work::Hit(n, hit),
            other => Work::Item(n, Box::new(other)),
        }
    }

    /// Deals one item to its shard(s).
    fn deal(&mut self, event: Event) {
        self.items += 1;
        self.count_hit(&event);
        let n = self.senders.len();
        let item = self.items;
        match (&event, owner(&event)) {
            (Event::ArgStrings(s), _) => {
                if self.strings.len() >= MAX_PENDING_STRINGS {
                    self.strings.clear();
                }
                self.strings.insert(s.tid, (item, event));
            }
            (Event::FileName(_), _) => {
                for shard in 0..n {
                    self.push(shard, Work::Item(item, Box::new(event.clone())));
                }
            }
            (Event::Proc(p), Some(pid)) if p.what == PROC_FORK => {
                let child = shard_of(pid, n);
                let parent = shard_of(p.parent_pid, n);
                if child != parent {
                    // The parent's items so far must reach its shard before this one waits
                    // for them.
                    self.send(parent);
                    let done = self.dealt[parent];
                    self.push(
                        child,
                        Work::Wait {
                            shard: parent,
                            done,
                        },
                    );
                }
                self.push(child, Self::work(item, event));
            }
            (_, Some(pid)) => {
                let shard = shard_of(pid, n);
                if let Some(hit) = event.hit()
                    && let Some((n, strings)) = self.strings.remove(&hit.tid)
                {
                    self.push(shard, Self::work(n, strings));
                }
                self.push(shard, Self::work(item, event));
            }
            (_, None) => {}
        }
    }

    /// Stops the shards (after what was dealt) and adds their pipelines up; once.
    fn join(&mut self) -> &mut P {
        if self.merged.is_none() {
            for shard in 0..self.senders.len() {
                self.send(shard);
            }
            self.senders.clear();
            let mut merged: Option<P> = None;
            for worker in self.workers.drain(..) {
                let pipeline = match worker.join() {
                    Ok(p) => p,
                    Err(panic) => std::panic::resume_unwind(panic),
                };
                match &mut merged {
                    None => merged = Some(pipeline),
                    Some(m) => m.absorb(pipeline),
                }
            }
            self.merged = merged;
        }
        self.merged
            .as_mut()
            .expect("a run has at least one consumer")
    }
}

/// A run's consumer onto `out`: one pipeline when `n` is 1, else `n` shards on threads of
/// their own. `build(shard, writer)` makes shard `shard`'s pipeline around `writer` (the
/// text header is written once, before any shard's line).
pub fn consumer<W, S>(
    n: usize,
    out: W,
    format: Format,
    hook: Option<ItemHook>,
    build: impl Fn(Writer<ChunkOut<W>>) -> Pipeline<ChunkOut<W>, S>,
) -> io::Result<Box<dyn Consume>>
where
    W: Write + Send + 'static,
    S: SeqSource + Send + Sync + 'static,
{
    let out = Arc::new(Mutex::new(out));
    if n <= 1 {
        return Ok(Box::new(build(Writer::new(ChunkOut::new(out), format))));
    }
    let mut first = Writer::new(ChunkOut::new(out.clone()), format);
    first.header_now()?;
    let pipelines = (0..n)
        .map(|_| build(Writer::new(ChunkOut::new(out.clone()), format).header_written()))
        .collect();
    Ok(Box::new(Shards::start(pipelines, hook)?))
}

/// A shard's thread: handles what it is handed until the dispatcher hangs up; gives its
/// pipeline back.
fn work<P: Shard>(
    me: usize,
    mut pipeline: P,
    rx: &mpsc::Receiver<Vec<Work>>,
    shared: &Shared,
    hook: Option<&(dyn Fn(usize, u64) + Send + Sync)>,
) -> P {
    while let Ok(chunk) = rx.recv() {
        for work in chunk {
            match work {
                Work::Hit(n, hit) => {
                    if let Some(hook) = hook {
                        hook(me, n);
                    }
                    pipeline.handle_event(&Event::Hit(hit));
                    shared.done[me].0.fetch_add(1, Ordering::Release);
                }
                Work::Item(n, event) => {
                    if let Some(hook) = hook {
                        hook(me, n);
                    }
                    pipeline.handle_event(&event);
                    shared.done[me].0.fetch_add(1, Ordering::Release);
                }
                Work::Dropped(event) => {
                    pipeline.count_dropped(&event);
                    shared.done[me].0.fetch_add(1, Ordering::Release);
                }
                Work::Wait { shard, done } => wait_for(&shared.done[shard].0, done),
                Work::EndBatch(n) => {
                    if let Some(hook) = hook {
                        hook(me, n);
                    }
                    pipeline.end_batch();
                    if pipeline.flush().is_err() {
                        shared.closed.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        if pipeline.stopped().is_some() {
            shared.closed.store(true, Ordering::Relaxed);
        }
    }
    if pipeline.flush().is_err() {
        shared.closed.store(true, Ordering::Relaxed);
    }
    pipeline
}

/// Waits until `counter` reaches `target` (another shard handling a forking parent's
/// earlier items: microseconds).
fn wait_for(counter: &AtomicU64, target: u64) {
    let mut spins = 0u32;
    while counter.load(Ordering::Acquire) < target {
        if spins < 64 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            thread::yield_now();
        }
    }
}

impl<P: Shard> Consume for Shards<P> {
    fn handle_event(&mut self, event: &Event) -> bool {
        self.handle_owned(event.clone())
    }

    fn handle_owned(&mut self, event: Event) -> bool {
        self.deal(event);
        self.stopped().is_none()
    }

    fn count_dropped(&mut self, event: &Event) {
        if let Some(hit) = event.hit() {
            let shard = shard_of(hit.pid, self.senders.len());
            self.count_hit(event);
            self.push(shard, Work::Dropped(Box::new(event.clone())));
        }
    }

    fn hit_records(&self) -> u64 {
        self.hit_records
    }

    fn end_batch(&mut self) {
        for shard in 0..self.senders.len() {
            let n = self.items;
            self.pending[shard].push(Work::EndBatch(n));
            self.send(shard);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // The shards flush at each batch's end (`Work::EndBatch`).
        match self.stopped() {
            Some(_) => Err(io::Error::other("an output of a consumer thread failed")),
            None => Ok(()),
        }
    }

    fn stopped(&self) -> Option<Stop> {
        match &self.merged {
            Some(m) => m.stopped(),
            None => self
                .shared
                .closed
                .load(Ordering::Relaxed)
                .then_some(Stop::OutputClosed),
        }
    }

    fn unread_hits(&self, stats: Stats<'_>) -> Result<u64, AttachError> {
        let mut unread = 0;
        for &id in &self.probe_ids {
            let bpf = stats(id)?;
            let written = bpf.hits
                - bpf.lost
                - bpf.rate_limited
                - bpf.filtered
                - bpf.self_excluded
                - bpf.counted;
            unread += written.saturating_sub(self.read.get(&id).copied().unwrap_or(0));
        }
        Ok(unread)
    }

    fn write_aggregations(&mut self, last: bool, elapsed_s: f64) -> io::Result<()> {
        // Each shard holds a part until the end (`--interval` is refused with consumers).
        if !last {
            return Ok(());
        }
        self.join().write_aggregations(true, elapsed_s)
    }

    fn probe_ids(&mut self) -> Vec<u32> {
        self.probe_ids.clone()
    }

    fn summarize(&mut self, summary: &mut Summary, stats: Stats<'_>) -> Result<(), AttachError> {
        self.join().summarize(summary, stats)
    }

    fn aggregations(&mut self) -> &Aggregations {
        self.join().aggregations()
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        self.join().finish(summary)
    }
}

#[cfg(test)]
#[path = "shards_tests.rs"]
mod tests;
