//! A bounded stop, shared by `probed trace` and `probed daemon`: however fast hits arrive,
//! a stop ends within the drain deadline.
//!
//! 1. Probes stop admitting hits (a BPF flag: immediate, while closing the links takes the
//!    kernel tens of milliseconds each); firings from then on are not counted.
//! 2. The links are closed. That waits for the programs still running to finish, so after
//!    it no hit can still be on its way into the ring buffer.
//! 3. The ring is drained — every hit processed as usual — until it is empty, the deadline
//!    passes, or a second signal asks to exit at once.
//! 4. What is left is read and counted per probe as `dropped_at_stop`, without processing,
//!    so that `hits = printed + not_printed + lost + rate_limited + filtered +
//!    self_excluded + dropped_at_stop` stays exact.

use std::time::Duration;

use tokio::signal::unix::Signal;

use crate::{
    events::{EventStream, max_records},
    pipeline::Consume,
    ring_source::RingSource,
};

/// How long a stop processes what is left in the ring buffer by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Most events handled per turn of an event loop: after that many, the loop looks at its
/// signals and timers again (a batch is a few milliseconds of work).
pub const BATCH: usize = 4096;

/// How a stop's drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainEnd {
    /// Everything was processed.
    Emptied,
    /// The deadline passed with events left.
    Deadline,
    /// A second SIGINT or SIGTERM: exit at once.
    Interrupted,
}

impl DrainEnd {
    /// The summary's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Emptied => "emptied",
            Self::Deadline => "deadline",
            Self::Interrupted => "interrupted",
        }
    }
}

/// Steps 3 and 4 for `pipeline`: processes what is in the ring buffer, a batch at a time,
/// until `unread` more hit records were read (the pipeline counts them), the ring is empty,
/// `timeout` passes, or `sigint`/`sigterm` arrives again; then counts what is left as
/// dropped_at_stop (a warning says so). `ring_bytes` bounds that count's reading.
pub async fn finish(
    stream: &mut EventStream,
    pipeline: &mut dyn Consume,
    unread: u64,
    timeout: Duration,
    ring_bytes: u32,
    sigint: &mut Signal,
    sigterm: &mut Signal,
) -> DrainEnd {
    let again = async {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    };
    finish_until(stream, pipeline, unread, timeout, ring_bytes, again).await
}

/// [`finish`] for any ring source, ended early when `interrupted` completes (the daemon
/// core: its second stop signal).
pub async fn finish_until<R: RingSource>(
    stream: &mut EventStream<R>,
    pipeline: &mut dyn Consume,
    unread: u64,
    timeout: Duration,
    ring_bytes: u32,
    interrupted: impl Future<Output = ()>,
) -> DrainEnd {
    tokio::pin!(interrupted);
    let target = pipeline.hit_records().saturating_add(unread);
    let deadline = tokio::time::Instant::now() + timeout;
    let end = loop {
        if pipeline.hit_records() >= target {
            break DrainEnd::Emptied;
        }
        // Checked here too: a timer due now is only seen at the runtime's next timer turn.
        if tokio::time::Instant::now() >= deadline {
            break DrainEnd::Deadline;
        }
        tokio::select! {
            biased;
            () = &mut interrupted => break DrainEnd::Interrupted,
            () = tokio::time::sleep_until(deadline) => break DrainEnd::Deadline,
            drained = async {
                stream.drain_while(BATCH, |event| {
                    pipeline.handle_owned(event);
                    pipeline.hit_records() < target
                })
            } => {
                if drained.empty {
                    break DrainEnd::Emptied;
                }
            }
        }
        yield_to_drivers().await;
    };
    let left = stream
        .drain(max_records(ring_bytes), |event| {
            pipeline.count_dropped(&event)
        })
        .n;
    if end != DrainEnd::Emptied {
        tracing::warn!(
            ended = end.as_str(),
            events_left = left,
            "stopped before every hit in the ring buffer was processed (counted as dropped_at_stop)"
        );
    }
    end
}

/// Lets the runtime look at its drivers (signals, timers, sockets) after a batch.
///
/// Needed, not just polite: on a current-thread runtime the signal and timer drivers only
/// run when the task yields. A loop whose ring is always ready never yields by itself, so a
/// SIGINT or a deadline would not be seen until the ring ran dry — under a flood, never
/// (measured before this: a SIGINT was seen only when the traced processes stopped, 20 s
/// later). `yield_now` defers the task until the runtime has polled its drivers.
pub async fn yield_to_drivers() {
    tokio::task::yield_now().await;
}
