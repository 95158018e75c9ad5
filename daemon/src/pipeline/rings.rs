//! Several consumer threads that each read a ring of their own (kseq mode, `--consumers
//! N`, N ≤ 4): BPF writes every record about a process to the ring it gave that process
//! (in turn, at first sight: ebpf ring.rs), so no thread deals items to another. Shard 0
//! runs on the caller's thread, fed by the caller (the run's loop over ring 0); shards 1..
//! each run a *feed* on a thread of their own — the live run's reads its BPF ring (trace/ring_feed.rs), a replay's its lane of the
//! recording — and give their pipeline back when it ends.
//!
//! **Orders kept.** A ring is FIFO: a process's records reach its one consumer in the order
//! BPF reserved them, which is the per-process order the resolver relies on and the hit
//! order of each of its threads. Kseq mode has no order between processes to keep: a hit
//! is answered by its own capture or by its process's earlier captures (pipeline/kseq.rs);
//! a fork's report goes to the child's ring and copies nothing a kseq answer reads; a
//! file's name is written to every ring before any capture that omits it.
//!
//! **Against the dealer** (shards.rs), which the replaying modes keep: no item is decoded
//! by one thread and handled by another, no thread reads everyone's items; each thread's
//! cost is its own processes' (`cargo xtask bench pipeline`'s `scaling_2t`).

use std::{
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Instant,
};

use super::{
    Stop,
    consume::{Consume, Stats},
    shards::{Padded, Shard, add_up},
};
use crate::{
    attach::AttachError,
    events::Event,
    output::{Aggregations, Summary},
};

/// What the caller and the feeds share.
#[derive(Debug)]
pub struct Control {
    /// The drain's deadline once the run stops (see [`Control::stopping`]).
    deadline: Mutex<Option<Instant>>,
    /// A feed's output failed, or its ring could not be read: the run ends.
    closed: AtomicBool,
    /// Hit records read per shard (shard 0's slot unused: its pipeline is at hand).
    read: Vec<Padded>,
}

impl Control {
    fn new(shards: usize) -> Self {
        Self {
            deadline: Mutex::new(None),
            closed: AtomicBool::new(false),
            read: (0..shards).map(|_| Padded::default()).collect(),
        }
    }

    /// `None` while the run goes on; once it stops (its probes detached: nothing more is
    /// written to a ring but process reports), the time by which a feed's drain must end.
    pub fn stopping(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shard `me` has read `hits` hit records so far.
    pub fn count(&self, me: usize, hits: u64) {
        self.read[me].0.store(hits, Ordering::Relaxed);
    }

    /// Ends the run (a feed's output or ring failed).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Whether a feed ended the run.
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// A shard's feed: runs on its own thread until its source ends (a replay's lane) or the
/// run stops and its ring is drained; returns the pipeline.
pub type Feed<P> = Box<dyn FnOnce(usize, P, &Control) -> P + Send>;

/// N consumers, each fed by a ring of its own: shard 0 by the caller, the others by their
/// feeds on threads of their own.
pub struct RingShards<P: Shard> {
    inline: Option<P>,
    workers: Vec<thread::JoinHandle<P>>,
    control: Arc<Control>,
    probe_ids: Vec<u32>,
    merged: Option<P>,
}

impl<P: Shard> RingShards<P> {
    /// Shard 0 of `shards` on this thread; shard i ≥ 1 on a thread running `feeds[i - 1]`.
    pub fn start(shards: Vec<P>, feeds: Vec<Feed<P>>) -> io::Result<Self> {
        assert_eq!(
            shards.len(),
            feeds.len() + 1,
            "a feed for every shard but 0"
        );
        let control = Arc::new(Control::new(shards.len()));
        let mut shards = shards.into_iter();
        let mut inline = shards.next().expect("a run has at least one consumer");
        let probe_ids = inline.probe_ids();
        let mut workers = Vec::with_capacity(feeds.len());
        for (i, (pipeline, feed)) in shards.zip(feeds).enumerate() {
            let me = i + 1;
            let control = control.clone();
            workers.push(
                thread::Builder::new()
                    .name(format!("probed-ring-{me}"))
                    .spawn(move || {
                        let mut pipeline = feed(me, pipeline, &control);
                        if pipeline.flush().is_err() {
                            control.close();
                        }
                        control.count(me, pipeline.hit_records());
                        pipeline
                    })?,
            );
        }
        Ok(Self {
            inline: Some(inline),
            workers,
            control,
            probe_ids,
            merged: None,
        })
    }

    fn inline(&mut self) -> Option<&mut P> {
        self.inline.as_mut()
    }

    /// Waits for the feeds (each ends with its source, or with its drain once the run
    /// stopped) and adds their pipelines up; once.
    fn join(&mut self) -> &mut P {
        if self.merged.is_none() {
            let (merged, flushed) =
                add_up(self.inline.take().expect("joined once"), &mut self.workers);
            if !flushed {
                self.control.close();
            }
            self.merged = Some(merged);
        }
        self.merged.as_mut().expect("just joined")
    }
}

impl<P: Shard> Consume for RingShards<P> {
    fn handle_event(&mut self, event: &Event) -> bool {
        match self.inline() {
            Some(p) => p.handle_event(event) && !self.control.closed(),
            None => false,
        }
    }

    fn handle_owned(&mut self, event: Event) -> bool {
        match self.inline() {
            Some(p) => p.handle_owned(event) && !self.control.closed(),
            None => false,
        }
    }

    fn count_dropped(&mut self, event: &Event) {
        if let Some(p) = self.inline() {
            p.count_dropped(event);
        }
    }

    fn hit_records(&self) -> u64 {
        if let Some(m) = &self.merged {
            return m.hit_records();
        }
        let others: u64 = self.control.read[1..]
            .iter()
            .map(|r| r.0.load(Ordering::Relaxed))
            .sum();
        self.inline.as_ref().map_or(0, Consume::hit_records) + others
    }

    fn end_batch(&mut self) {
        if let Some(p) = self.inline() {
            p.end_batch();
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(p) = self.inline() {
            p.flush()?;
        }
        match self.control.closed() {
            true => Err(io::Error::other("an output of a consumer thread failed")),
            false => Ok(()),
        }
    }

    fn stopped(&self) -> Option<Stop> {
        if let Some(m) = &self.merged {
            return m.stopped();
        }
        if self.control.closed() {
            return Some(Stop::OutputClosed);
        }
        self.inline.as_ref().and_then(Consume::stopped)
    }

    fn stopping(&mut self, deadline: Instant) {
        *self
            .control
            .deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(deadline);
    }

    fn unread_hits(&self, stats: Stats<'_>) -> Result<u64, AttachError> {
        let mut written = 0;
        for &id in &self.probe_ids {
            written += stats(id)?.written();
        }
        Ok(written.saturating_sub(self.hit_records()))
    }

    super::consume::after_the_run_the_sum!();
}
