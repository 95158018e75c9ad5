//! Where the event stream's items come from: the BPF ring buffer, registered with tokio's
//! reactor ([`BpfRing`]), or — in tests of the daemon core that run without BPF — a
//! channel of byte records ([`ChannelRing`]).
//!
//! The seam is at the bytes: everything above it (decoding, recording, the malformed
//! count, batching) is the same code for both, so a test that feeds records here runs the
//! daemon's real path from the item on.

use std::{collections::VecDeque, future::Future, io, os::fd::AsRawFd};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};

/// A source of ring-buffer items (each one record as BPF submitted it).
pub trait RingSource {
    /// Waits until items are ready, then hands each to `f` until the source is empty, `f`
    /// returns false, or `max` items were handed over. Returns how many were handed over.
    fn next_items(
        &mut self,
        max: usize,
        f: impl FnMut(&[u8]) -> bool,
    ) -> impl Future<Output = io::Result<usize>>;

    /// Hands at most `max` items already there to `f` (while it returns true) without
    /// waiting. Returns how many, and whether the source was found empty.
    fn take_items(&mut self, max: usize, f: impl FnMut(&[u8]) -> bool) -> (usize, bool);
}

/// The BPF ring buffer, readable through the tokio reactor.
pub struct BpfRing(AsyncFd<RingBuf<MapData>>);

impl BpfRing {
    /// Registers the ring buffer with the current tokio runtime.
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        tracing::debug!(fd = ring.as_raw_fd(), "registering event ring buffer");
        // SAFETY: the ring buffer owns its fd for as long as the AsyncFd (which owns the ring)
        // lives, so the registration never outlives the descriptor.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?;
        Ok(Self(ring))
    }
}

impl RingSource for BpfRing {
    async fn next_items(&mut self, max: usize, f: impl FnMut(&[u8]) -> bool) -> io::Result<usize> {
        let mut guard = self.0.readable_mut().await?;
        let (n, emptied) = take(guard.get_inner_mut(), max, f);
        if emptied {
            // Only an empty ring may clear readiness, or a wake-up could be lost.
            guard.clear_ready();
        }
        Ok(n)
    }

    fn take_items(&mut self, max: usize, f: impl FnMut(&[u8]) -> bool) -> (usize, bool) {
        take(self.0.get_mut(), max, f)
    }
}

/// Hands at most `max` items of `ring` to `f` while it returns true: how many, and whether
/// the ring was found empty.
fn take(
    ring: &mut RingBuf<MapData>,
    max: usize,
    mut f: impl FnMut(&[u8]) -> bool,
) -> (usize, bool) {
    let mut n = 0;
    while n < max {
        let Some(item) = ring.next() else {
            return (n, true);
        };
        n += 1;
        if !f(&item) {
            break;
        }
    }
    (n, false)
}

/// Records sent over a channel, in order: the ring of a daemon core run without BPF.
/// When every sender is gone and the records are taken, it never becomes ready again
/// (like a ring no probe writes to).
pub struct ChannelRing {
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    ready: VecDeque<Vec<u8>>,
}

impl ChannelRing {
    /// A ring and the sender its records come from.
    pub fn new() -> (mpsc::UnboundedSender<Vec<u8>>, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        let ring = Self {
            rx,
            ready: VecDeque::new(),
        };
        (tx, ring)
    }

    /// Moves what was sent meanwhile behind what is ready.
    fn collect(&mut self) {
        while let Ok(record) = self.rx.try_recv() {
            self.ready.push_back(record);
        }
    }
}

impl RingSource for ChannelRing {
    async fn next_items(&mut self, max: usize, f: impl FnMut(&[u8]) -> bool) -> io::Result<usize> {
        self.collect();
        if self.ready.is_empty() {
            match self.rx.recv().await {
                Some(record) => self.ready.push_back(record),
                None => std::future::pending::<()>().await,
            }
        }
        Ok(self.take_items(max, f).0)
    }

    fn take_items(&mut self, max: usize, mut f: impl FnMut(&[u8]) -> bool) -> (usize, bool) {
        self.collect();
        let mut n = 0;
        while n < max {
            let Some(record) = self.ready.pop_front() else {
                return (n, true);
            };
            n += 1;
            if !f(&record) {
                break;
            }
        }
        (n, false)
    }
}
