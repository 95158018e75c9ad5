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

use crate::events::{Event, EventStream, max_records};

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

/// Processes what is in the ring buffer, a batch at a time, until `unread` hit records were
/// read (`handle` says whether an event was one), the ring is empty, `timeout` passes, or
/// `sigint`/`sigterm` arrives again.
pub async fn drain(
    stream: &mut EventStream,
    timeout: Duration,
    sigint: &mut Signal,
    sigterm: &mut Signal,
    unread: u64,
    mut handle: impl FnMut(Event) -> bool,
) -> DrainEnd {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut read = 0u64;
    if unread == 0 {
        return DrainEnd::Emptied;
    }
    loop {
        // Checked here too: a timer due now is only seen at the runtime's next timer turn.
        if tokio::time::Instant::now() >= deadline {
            return DrainEnd::Deadline;
        }
        tokio::select! {
            biased;
            _ = sigint.recv() => return DrainEnd::Interrupted,
            _ = sigterm.recv() => return DrainEnd::Interrupted,
            () = tokio::time::sleep_until(deadline) => return DrainEnd::Deadline,
            drained = async {
                stream.drain_while(BATCH, |event| {
                    read += u64::from(handle(event));
                    read < unread
                })
            } => {
                if drained.empty || read >= unread {
                    return DrainEnd::Emptied;
                }
            }
        }
        yield_to_drivers().await;
    }
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

/// Reads what is left in the ring without processing it, handing each event to `count`;
/// returns how many events were read. Bounded by the ring's capacity: the probes no longer
/// admit hits, so what arrives now are change reports, which need no counting.
pub fn count_rest(stream: &mut EventStream, ring_bytes: u32, count: impl FnMut(Event)) -> usize {
    stream.drain(max_records(ring_bytes), count).n
}
