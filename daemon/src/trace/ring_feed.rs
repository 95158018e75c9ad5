//! A consumer thread's own BPF ring (`probed trace --consumers N` in kseq mode, see
//! pipeline/rings.rs): read as the run's loop reads ring 0 — a batch when BPF wakes it, a
//! drain on a short timer, the output flushed after each — until the run stops; then
//! drained until empty or the stop's deadline, the rest counted as dropped_at_stop.

use std::time::Instant;

use aya::maps::{MapData, RingBuf};

use super::DRAIN_EVERY;
use crate::{
    events::{EventStream, max_records},
    pipeline::{Consume, Control, Feed, Shard},
    stop,
};

/// The feed of a shard that reads `ring` (of `ring_bytes`).
pub fn feed<P: Shard>(ring: RingBuf<MapData>, ring_bytes: u32) -> Feed<P> {
    Box::new(move |me, mut pipeline: P, control: &Control| {
        // Its own reactor: the ring's readiness and the timer are this thread's.
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(err) => {
                tracing::error!(ring = me, error = %err, "cannot start a consumer thread's runtime");
                control.close();
                return pipeline;
            }
        };
        runtime.block_on(read(me, ring, ring_bytes, &mut pipeline, control));
        pipeline
    })
}

async fn read<P: Consume>(
    me: usize,
    ring: RingBuf<MapData>,
    ring_bytes: u32,
    pipeline: &mut P,
    control: &Control,
) {
    let mut stream = match EventStream::new(ring) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(ring = me, error = %err, "cannot read a ring buffer");
            control.close();
            return;
        }
    };
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = loop {
        // Looked at after every batch and tick (every 20 ms at the latest).
        if let Some(deadline) = control.stopping() {
            break Some(deadline);
        }
        tokio::select! {
            biased;
            batch = stream.next_batch(stop::BATCH, |event| pipeline.handle_owned(event)) => {
                if let Err(err) = batch {
                    tracing::error!(ring = me, error = %err, "reading a hit ring buffer");
                    control.close();
                    break None;
                }
            }
            _ = tick.tick() => {
                stream.drain(stop::BATCH, |event| {
                    pipeline.handle_owned(event);
                });
            }
        }
        pipeline.end_batch();
        control.count(me, pipeline.hit_records());
        if pipeline.flush().is_err() || pipeline.stopped().is_some() {
            control.close();
            break None;
        }
        stop::yield_to_drivers().await;
    };
    if let Some(deadline) = deadline {
        drain(me, &mut stream, pipeline, deadline, control);
    }
    // What is left (the deadline passed, or the run ended early) is counted, not handled.
    let left = stream
        .drain(max_records(ring_bytes), |event| {
            pipeline.count_dropped(&event)
        })
        .n;
    if left > 0 {
        tracing::warn!(
            ring = me,
            events_left = left,
            "stopped before every hit in a ring buffer was processed (counted as dropped_at_stop)"
        );
    }
    if stream.malformed > 0 {
        tracing::error!(
            ring = me,
            count = stream.malformed,
            "malformed ring buffer items (ABI mismatch)"
        );
    }
    tracing::debug!(
        ring = me,
        hit_records = pipeline.hit_records(),
        "ring read to its end"
    );
}

/// The stop's drain of one ring: the probes are detached, so a ring found empty holds no
/// hit any more (what still comes is process reports). The deadline is read again after
/// each batch: a second signal brings it to now.
fn drain<P: Consume>(
    me: usize,
    stream: &mut EventStream,
    pipeline: &mut P,
    deadline: Instant,
    control: &Control,
) {
    while Instant::now() < control.stopping().unwrap_or(deadline) {
        let drained = stream.drain(stop::BATCH, |event| {
            pipeline.handle_owned(event);
        });
        control.count(me, pipeline.hit_records());
        if drained.empty {
            return;
        }
    }
}
