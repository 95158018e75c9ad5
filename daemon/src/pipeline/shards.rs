//! Several consumer threads (`--consumers N`) over one ring — the replaying modes, and more
//! consumers than BPF has rings (kseq mode gives each consumer a ring of its own instead:
//! rings.rs): the ring's items dealt by process to N
//! pipelines — shard 0 on the thread that reads the ring, the others on threads of their
//! own — each with its own resolver [`Reader`] on the shared mirror, its own symbol lookups
//! into the shared ELF cache, its lines written whole into the one output.
//!
//! **Why by process.** The resolver's ordering rule is per process: every change report of a
//! process with ticket ≤ S/2 is applied before a hit of that process stamped S is resolved.
//! The ring holds a process's reports and hits in that order; a shard gets all of a
//! process's items, in ring order, through one FIFO channel, so the rule holds in each
//! shard as it does in one pipeline, and a thread's hits (a thread is in one process) are
//! written in hit order. Lines of different processes interleave by chunk. Processes are
//! given shards in turn as they first appear ([`Assigner`]): the first goes to shard 0, so a
//! run with one busy process handles it where it is read, with no hop between threads.
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
//! The dealing thread decodes, deals and counts hit records per probe (the stop's drain);
//! channels are bounded, so a consumer that falls behind slows the dealer and the ring
//! fills — counted as lost in BPF, as with one consumer. Aggregations and counters are per
//! shard and added up at the end (`join`).
//!
//! **What it costs** (`cargo xtask bench pipeline`, README "The consumer's capacity"): each
//! item dealt to another thread is copied once more and read by another core, and the
//! reading thread decodes everyone's items. A ring per shard (rings.rs) saves that where
//! nothing orders two processes' items: kseq mode. The replaying modes copy a forked
//! child's picture from its parent's as of the fork, which two rings would not order.

use std::{
    io::{self, Write},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
};

use rustc_hash::FxHashMap;

use super::{
    Pipeline, Stop,
    assign::Assigner,
    chunk_out::ChunkOut,
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
/// Strings records waiting for their hit at once (as `arg_strings::MAX_PENDING`).
const MAX_PENDING_STRINGS: usize = 65536;

/// Called by a shard before it handles item `n` of the ring (numbered from 1 in ring order)
/// and before a batch's end (with the number of items dealt by then): a replay's seams
/// give back the answers the recorded run read at that point.
pub type ItemHook = Arc<dyn Fn(usize, u64) + Send + Sync>;

/// What a shard is handed.
enum Work {
    /// Item `n` of the ring.
    Item(u64, Event),
    /// A hit left in the ring at the stop's deadline: counted, not handled.
    Dropped(Event),
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

/// N consumers (pipelines), fed by process: shard 0 on the dispatching thread, the others
/// on threads of their own.
pub struct Shards<P: Shard> {
    /// Shard 0 (`None` once joined).
    inline: Option<P>,
    /// Shards 1.. (index 0 unused).
    senders: Vec<Option<mpsc::SyncSender<Vec<Work>>>>,
    pending: Vec<Vec<Work>>,
    /// Items dealt per shard (what `Work::Wait` waits for).
    dealt: Vec<u64>,
    workers: Vec<thread::JoinHandle<P>>,
    shared: Arc<Shared>,
    hook: Option<ItemHook>,
    assigner: Assigner,
    /// Strings records by thread, with their item numbers, until their hit.
    strings: FxHashMap<u32, (u64, Event)>,
    /// Ring items seen.
    items: u64,
    hit_records: u64,
    /// The run's probes, and hit records read per probe (the stop's `unread_hits`).
    probe_ids: Vec<u32>,
    read: Vec<u64>,
    /// The shards added up, once joined.
    merged: Option<P>,
}

impl<P: Shard> Shards<P> {
    /// Shard 0 of `shards` on this thread, one thread for each other (processes dealt by
    /// [`Assigner`]), `hook` called as [`ItemHook`] says.
    pub fn start(shards: Vec<P>, hook: Option<ItemHook>) -> io::Result<Self> {
        let n = shards.len();
        let shared = Arc::new(Shared {
            done: (0..n).map(|_| Padded::default()).collect(),
            closed: AtomicBool::new(false),
        });
        let mut shards = shards.into_iter();
        let mut inline = shards.next().expect("a run has at least one consumer");
        let probe_ids = inline.probe_ids();
        let mut senders = vec![None];
        let mut workers = Vec::with_capacity(n);
        for (me, pipeline) in shards.enumerate() {
            let me = me + 1;
            let (tx, rx) = mpsc::sync_channel(QUEUE);
            let shared = shared.clone();
            let hook = hook.clone();
            let worker = thread::Builder::new()
                .name(format!("probed-consumer-{me}"))
                .spawn(move || work(me, pipeline, &rx, &shared, hook.as_deref()))?;
            senders.push(Some(tx));
            workers.push(worker);
        }
        Ok(Self {
            inline: Some(inline),
            senders,
            pending: (0..n).map(|_| Vec::with_capacity(CHUNK)).collect(),
            dealt: vec![0; n],
            workers,
            shared,
            hook,
            assigner: Assigner::new(n),
            strings: FxHashMap::default(),
            items: 0,
            hit_records: 0,
            probe_ids,
            read: Vec::new(),
            merged: None,
        })
    }

    fn push(&mut self, shard: usize, work: Work) {
        if shard == 0 {
            self.run_inline(work);
            return;
        }
        if matches!(work, Work::Item(..) | Work::Dropped(_)) {
            self.dealt[shard] += 1;
        }
        self.pending[shard].push(work);
        if self.pending[shard].len() >= CHUNK {
            self.send(shard);
        }
    }

    /// Shard 0's work, done now.
    fn run_inline(&mut self, work: Work) {
        if let Work::Wait { shard, done } = work {
            self.send(shard);
            wait_for(&self.shared.done[shard].0, done);
            return;
        }
        let Some(inline) = self.inline.as_mut() else {
            return;
        };
        if !handle(0, inline, work, self.hook.as_deref()) {
            self.shared.closed.store(true, Ordering::Relaxed);
        }
    }

    fn send(&mut self, shard: usize) {
        if self.pending[shard].is_empty() {
            return;
        }
        let chunk = std::mem::replace(&mut self.pending[shard], Vec::with_capacity(CHUNK));
        if let Some(Some(tx)) = self.senders.get(shard)
            && tx.send(chunk).is_err()
        {
            // The shard's thread is gone (it panicked): `join` says so.
            self.shared.closed.store(true, Ordering::Relaxed);
        }
    }

    fn count_hit(&mut self, event: &Event) {
        if let Some(hit) = event.hit() {
            self.hit_records += 1;
            let id = hit.probe_id as usize;
            if id >= self.read.len() {
                self.read.resize(id + 1, 0);
            }
            self.read[id] += 1;
        }
    }

    /// Deals one item to its shard(s).
    fn deal(&mut self, event: Event) {
        self.items += 1;
        self.count_hit(&event);
        let item = self.items;
        if let Event::ArgStrings(s) = &event {
            if self.strings.len() >= MAX_PENDING_STRINGS {
                self.strings.clear();
            }
            self.strings.insert(s.tid, (item, event));
            return;
        }
        if let Event::FileName(_) = &event {
            for shard in 0..self.senders.len() {
                self.push(shard, Work::Item(item, event.clone()));
            }
            return;
        }
        let Some(route) = self.assigner.route(&event) else {
            return;
        };
        // A fork's child is copied from its parent as of the fork: the child's shard waits
        // until the parent's has handled what it was dealt so far (shard 0 has: it runs
        // here).
        if let Some(parent) = route.parent
            && parent != route.shard
            && parent != 0
        {
            self.send(parent);
            let done = self.dealt[parent];
            self.push(
                route.shard,
                Work::Wait {
                    shard: parent,
                    done,
                },
            );
        }
        if !self.strings.is_empty()
            && let Some(hit) = event.hit()
            && let Some((n, strings)) = self.strings.remove(&hit.tid)
        {
            self.push(route.shard, Work::Item(n, strings));
        }
        self.push(route.shard, Work::Item(item, event));
    }

    /// Stops the shards (after what was dealt) and adds their pipelines up; once.
    fn join(&mut self) -> &mut P {
        if self.merged.is_none() {
            for shard in 1..self.senders.len() {
                self.send(shard);
            }
            self.senders.clear();
            let (merged, flushed) =
                add_up(self.inline.take().expect("joined once"), &mut self.workers);
            if !flushed {
                self.shared.closed.store(true, Ordering::Relaxed);
            }
            self.merged = Some(merged);
        }
        self.merged.as_mut().expect("just joined")
    }
}

/// How a run's items reach its consumers.
pub enum Feeding<P> {
    /// One ring, its items dealt to `n` consumers (one: no dealer), `hook` called as
    /// [`ItemHook`] says.
    Dealt { n: usize, hook: Option<ItemHook> },
    /// A ring (a source) per consumer: shard 0 fed by the caller, the others by these
    /// feeds (rings.rs).
    Rings(Vec<super::Feed<P>>),
}

/// A run's consumer onto `out`: one pipeline, shards dealt from one ring, or shards reading
/// rings of their own, as `feeding` says. `build(writer)` makes one shard's pipeline around
/// `writer`; `out` needs no buffer of its own (each `ChunkOut` keeps its lines until a
/// flush). With shards, the text header is written once, before any shard's line.
pub fn consumer<W, S>(
    out: W,
    format: Format,
    feeding: Feeding<Pipeline<ChunkOut<W>, S>>,
    build: impl Fn(Writer<ChunkOut<W>>) -> Pipeline<ChunkOut<W>, S>,
) -> io::Result<Box<dyn Consume>>
where
    W: Write + Send + 'static,
    S: SeqSource + Send + Sync + 'static,
{
    let out = Arc::new(Mutex::new(out));
    let n = match &feeding {
        Feeding::Dealt { n, .. } => *n,
        Feeding::Rings(feeds) => feeds.len() + 1,
    };
    if n <= 1 {
        return Ok(Box::new(build(Writer::new(ChunkOut::new(out), format))));
    }
    let mut first = Writer::new(ChunkOut::new(out.clone()), format);
    first.header_now()?;
    let pipelines = (0..n)
        .map(|_| build(Writer::new(ChunkOut::new(out.clone()), format).header_written()))
        .collect();
    Ok(match feeding {
        Feeding::Dealt { hook, .. } => Box::new(Shards::start(pipelines, hook)?),
        Feeding::Rings(feeds) => Box::new(super::RingShards::start(pipelines, feeds)?),
    })
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
            let item = matches!(work, Work::Item(..) | Work::Dropped(_));
            if let Work::Wait { shard, done } = work {
                wait_for(&shared.done[shard].0, done);
            } else if !handle(me, &mut pipeline, work, hook) {
                shared.closed.store(true, Ordering::Relaxed);
            }
            if item {
                shared.done[me].0.fetch_add(1, Ordering::Release);
            }
            if pipeline.stopped().is_some() {
                shared.closed.store(true, Ordering::Relaxed);
            }
        }
    }
    if pipeline.flush().is_err() {
        shared.closed.store(true, Ordering::Relaxed);
    }
    pipeline
}

/// Shard `me` handles `work` (a wait is its caller's); false when its output failed.
fn handle<P: Consume>(
    me: usize,
    pipeline: &mut P,
    work: Work,
    hook: Option<&(dyn Fn(usize, u64) + Send + Sync)>,
) -> bool {
    match work {
        Work::Item(n, event) => {
            if let Some(hook) = hook {
                hook(me, n);
            }
            pipeline.handle_event(&event);
            true
        }
        Work::Dropped(event) => {
            pipeline.count_dropped(&event);
            true
        }
        Work::EndBatch(n) => {
            if let Some(hook) = hook {
                hook(me, n);
            }
            pipeline.end_batch();
            pipeline.flush().is_ok()
        }
        Work::Wait { .. } => true,
    }
}

/// Shard 0 flushed (false: its output failed), then every worker's shard once its thread
/// ends, added to it: a run's shards as one.
pub(super) fn add_up<P: Shard>(
    mut first: P,
    workers: &mut Vec<thread::JoinHandle<P>>,
) -> (P, bool) {
    let flushed = first.flush().is_ok();
    for worker in workers.drain(..) {
        match worker.join() {
            Ok(p) => first.absorb(p),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    (first, flushed)
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
        if event.hit().is_some()
            && let Some(route) = self.assigner.route(event)
        {
            self.count_hit(event);
            self.push(route.shard, Work::Dropped(event.clone()));
        }
    }

    fn hit_records(&self) -> u64 {
        self.hit_records
    }

    fn end_batch(&mut self) {
        let n = self.items;
        for shard in 0..self.senders.len() {
            self.push(shard, Work::EndBatch(n));
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
        if let Some(m) = &self.merged {
            return m.stopped();
        }
        if self.shared.closed.load(Ordering::Relaxed) {
            return Some(Stop::OutputClosed);
        }
        self.inline.as_ref().and_then(Consume::stopped)
    }

    fn unread_hits(&self, stats: Stats<'_>) -> Result<u64, AttachError> {
        let mut unread = 0;
        for &id in &self.probe_ids {
            let written = stats(id)?.written();
            unread += written.saturating_sub(self.read.get(id as usize).copied().unwrap_or(0));
        }
        Ok(unread)
    }

    super::consume::after_the_run_the_sum!();
}

#[cfg(test)]
#[path = "shards_tests.rs"]
mod tests;
