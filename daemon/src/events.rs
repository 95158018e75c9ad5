//! The hit ring buffer consumer: bytes out of BPF → typed [`HitEvent`]s.
//!
//! The ring buffer's file descriptor becomes readable when BPF submits; the consumer drains
//! every ready item, then waits again. Draining is also done once more after the probes are
//! detached, so hits that fired before the stop are never left behind.

use std::{io, os::fd::AsRawFd};

use aya::maps::{MapData, RingBuf};
use probed_common::HitEvent;
use tokio::io::{Interest, unix::AsyncFd};

/// Decodes one ring buffer item. Items shorter than a [`HitEvent`] (an ABI mismatch) are
/// refused rather than read past their end.
pub fn decode(bytes: &[u8]) -> Option<HitEvent> {
    if bytes.len() < size_of::<HitEvent>() {
        return None;
    }
    // SAFETY: the length was checked above; HitEvent is plain integers (any bit pattern is
    // valid) and read_unaligned makes no alignment assumption about the ring's memory.
    Some(unsafe { bytes.as_ptr().cast::<HitEvent>().read_unaligned() })
}

/// An async stream of hits from the BPF ring buffer.
pub struct HitStream {
    /// The ring buffer, registered with the tokio reactor.
    ring: AsyncFd<RingBuf<MapData>>,
    /// Items that did not decode (should stay 0: both sides share `probed-common`).
    pub malformed: u64,
}

impl HitStream {
    /// Registers the ring buffer with the current tokio runtime.
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        tracing::debug!(fd = ring.as_raw_fd(), "registering hit ring buffer");
        // SAFETY: the ring buffer owns its fd for as long as the AsyncFd (which owns the ring)
        // lives, so the registration never outlives the descriptor.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?;
        Ok(Self { ring, malformed: 0 })
    }

    /// Waits until hits are ready, then hands each to `f` until the ring is empty or `f`
    /// returns false. Returns how many hits were handed over.
    pub async fn next_batch(&mut self, mut f: impl FnMut(HitEvent) -> bool) -> io::Result<usize> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut n = 0;
        let mut malformed = 0;
        let mut stopped = false;
        while let Some(item) = ring.next() {
            match decode(&item) {
                Some(hit) => {
                    n += 1;
                    if !f(hit) {
                        stopped = true;
                        break;
                    }
                }
                None => malformed += 1,
            }
        }
        if !stopped {
            // Only an empty ring may clear readiness, or a wake-up could be lost.
            guard.clear_ready();
        }
        self.malformed += malformed;
        Ok(n)
    }

    /// Hands every hit still in the ring to `f` without waiting.
    pub fn drain(&mut self, mut f: impl FnMut(HitEvent)) -> usize {
        let ring = self.ring.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            match decode(&item) {
                Some(hit) => {
                    n += 1;
                    f(hit);
                }
                None => self.malformed += 1,
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hit round-trips through its byte form; a short item is refused.
    #[test]
    fn decode_round_trip_and_short_item() {
        let hit = HitEvent {
            probe_id: 3,
            kind: 1,
            pid: 10,
            tid: 11,
            ts_ns: 12,
            ip: 0x5555_0000_1139,
            ret_addr: 14,
            seq: 16,
            proc_gen: 17,
            args: [1, 2, 3, 4, 5, 6],
            retval: 42,
            comm: *b"loop\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        // SAFETY: HitEvent is plain integers without padding; viewing it as bytes is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const hit).cast::<u8>(), size_of::<HitEvent>())
        };
        let mut unaligned = vec![0u8; bytes.len() + 1];
        unaligned[1..].copy_from_slice(bytes);
        assert_eq!(decode(&unaligned[1..]), Some(hit));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
    }
}
