//! Repeated warnings, folded: one line per reason per interval, carrying how many times it
//! happened, never a line per event.
//!
//! A warning raised per event (a lost change report, a failed rescan) repeats at the event
//! rate under load: a runaway run once logged ~1,300 identical lines per second. A [`Fold`]
//! lets the first occurrence through at once, then at most one line per interval with the
//! count since the previous line. Lock-free, so it can be a `static` shared by threads.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How often a folded warning may be written.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// `last_ms` before the first line.
const NEVER: u64 = u64::MAX;

/// One reason's fold state.
#[derive(Debug)]
pub struct Fold {
    /// Milliseconds (since [`epoch`]) of the last written line, or [`NEVER`].
    last_ms: AtomicU64,
    /// Occurrences not yet written.
    pending: AtomicU64,
    /// Minimum time between two lines, in milliseconds.
    interval_ms: u64,
}

impl Fold {
    /// A fold writing at most one line per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self {
            last_ms: AtomicU64::new(NEVER),
            pending: AtomicU64::new(0),
            interval_ms: interval.as_millis() as u64,
        }
    }

    /// Records `n` occurrences now; returns the count to write if a line is due (the first
    /// occurrence ever, or the first after `interval` since the last line).
    pub fn note(&self, n: u64) -> Option<u64> {
        self.note_at(n, now_ms())
    }

    /// [`Fold::note`] at a given time (tests).
    pub fn note_at(&self, n: u64, now_ms: u64) -> Option<u64> {
        self.pending.fetch_add(n, Ordering::Relaxed);
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == NEVER || now_ms.saturating_sub(last) >= self.interval_ms;
        // One thread wins the line; the others' counts go into it or the next one.
        if due
            && self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.pending.swap(0, Ordering::Relaxed));
        }
        None
    }

    /// Occurrences not written yet (for a last line at exit); resets them.
    pub fn take_pending(&self) -> u64 {
        self.pending.swap(0, Ordering::Relaxed)
    }
}

/// Milliseconds since the first call (a monotonic clock).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first occurrence is written at once; the next ones are folded into one line per
    /// interval carrying their count; nothing is lost.
    #[test]
    fn folds_repeats_into_one_line_per_interval() {
        let fold = Fold::new(Duration::from_secs(10));
        assert_eq!(fold.note_at(1, 0), Some(1));
        let mut written = 1;
        for t in 1..10_000 {
            if let Some(n) = fold.note_at(1, t) {
                written += n;
            }
        }
        // At 0 ms and at 10,000 ms only: none in between.
        assert_eq!(written, 1);
        assert_eq!(fold.note_at(1, 10_000), Some(10_000));
        assert_eq!(fold.note_at(5, 10_001), None);
        assert_eq!(fold.take_pending(), 5);
        assert_eq!(fold.take_pending(), 0);
    }

    /// Threads noting at once write each occurrence exactly once in all.
    #[test]
    fn concurrent_notes_are_counted_once() {
        let fold = std::sync::Arc::new(Fold::new(Duration::from_millis(0)));
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let fold = fold.clone();
                    s.spawn(move || {
                        (0..10_000)
                            .map(|t| fold.note_at(1, t).unwrap_or(0))
                            .sum::<u64>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(total + fold.take_pending(), 40_000);
    }
}
