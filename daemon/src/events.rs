//! The event ring buffer consumer: bytes out of BPF → typed [`Event`]s (hits and process
//! lifecycle events, in the one order the kernel reserved them).
//!
//! The ring buffer's file descriptor becomes readable when BPF submits; the consumer drains
//! every ready item, then waits again. Draining is also done once more after the probes are
//! detached, so hits that fired before the stop are never left behind.

use std::io;

use aya::maps::{MapData, RingBuf};
use probed_common::{
    ArgStringsEvent, CapturedHitEvent, CapturedStackEvent, ChangeEvent, EVENT_ARG_STRINGS,
    EVENT_CAPTURED_HIT, EVENT_CAPTURED_STACK, EVENT_CHANGE, EVENT_FILE_NAME, EVENT_HIT,
    EVENT_LOCK_CHANGE, EVENT_PROC, EVENT_STACK_COPY_HIT, EVENT_STACK_HIT, FileNameEvent, HitEvent,
    LockChangeEvent, OP_OTHER, ProcEvent, StackCopyHitEvent, StackHitEvent,
};

use crate::{
    event_pool::Pooled,
    ring_source::{BpfRing, RingSource},
};

/// One item of the event ring buffer.
// Reports carry file paths (process 880 bytes, change 480, file name 400): boxed, so that
// an Event is 208 bytes (a captured hit) — it is moved a few times per item (decoded,
// handed to a consumer thread), and hits, the common item, would otherwise pay for the
// reports' size on every move. A report costs an allocation instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A probe fired.
    Hit(HitEvent),
    /// A process exec'd or exited.
    Proc(Box<ProcEvent>),
    /// A mapping-changing syscall finished.
    Change(Box<ChangeEvent>),
    /// A probe that captures stacks fired (boxed, the boxes reused: a kilobyte of frames).
    Stack(Pooled<StackHitEvent>),
    /// Lock mode: a hit with the kernel's mapping of its address (capture.rs in ebpf/).
    CapturedHit(CapturedHitEvent),
    /// Lock mode: a stack hit with the kernel's mapping of every frame (boxed, the boxes
    /// reused: 7 KiB).
    CapturedStack(Pooled<CapturedStackEvent>),
    /// Lock mode: the path of a file a capture names.
    FileName(Box<FileNameEvent>),
    /// A probe that unwinds stacks in the daemon fired (boxed, the boxes and their copy's
    /// buffer reused: 4–64 KiB of stack copy).
    StackCopy(Pooled<StackCopy>),
    /// The string arguments of the hit that follows (boxed: 1.5 KiB).
    ArgStrings(Box<ArgStringsEvent>),
}

impl Event {
    /// The hit this event carries, with or without stack or captures; `None` for tracker reports.
    pub fn hit(&self) -> Option<&HitEvent> {
        match self {
            Event::Hit(h) => Some(h),
            Event::Stack(e) => Some(&e.hit),
            Event::CapturedHit(e) => Some(&e.hit),
            Event::CapturedStack(e) => Some(&e.stack.hit),
            Event::StackCopy(e) => Some(&e.head.hit),
            Event::Proc(_) | Event::Change(_) | Event::FileName(_) | Event::ArgStrings(_) => None,
        }
    }

    /// The tracker's lost-report count the event was stamped with; `None` for a file name
    /// report, which carries no stamp.
    pub fn lost_reports(&self) -> Option<u32> {
        match self {
            Event::Proc(e) => Some(e.lost_reports),
            Event::Change(e) => Some(e.lost_reports),
            hit => hit.hit().map(|h| h.lost_reports),
        }
    }
}

/// Decodes one ring buffer item by its leading type word. Unknown types and items shorter
/// than their type (an ABI mismatch) are refused rather than read past their end.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    let ty = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    match ty {
        EVENT_HIT => read::<HitEvent>(bytes).map(Event::Hit),
        EVENT_PROC => read::<ProcEvent>(bytes).map(|e| Event::Proc(Box::new(e))),
        EVENT_CHANGE => read::<ChangeEvent>(bytes).map(|e| Event::Change(Box::new(e))),
        EVENT_STACK_HIT => read_pooled::<StackHitEvent>(bytes).map(Event::Stack),
        EVENT_CAPTURED_HIT => read::<CapturedHitEvent>(bytes).map(Event::CapturedHit),
        EVENT_CAPTURED_STACK => read_pooled::<CapturedStackEvent>(bytes).map(Event::CapturedStack),
        EVENT_FILE_NAME => read::<FileNameEvent>(bytes).map(|e| Event::FileName(Box::new(e))),
        // Lock mode's small report is the change report the daemon already handles: a
        // change it cannot replay (OP_OTHER), so it rescans.
        EVENT_LOCK_CHANGE => read::<LockChangeEvent>(bytes).map(|e| {
            Event::Change(Box::new(ChangeEvent {
                event: EVENT_CHANGE,
                op: OP_OTHER,
                pid: e.pid,
                tid: e.tid,
                ticket: e.ticket,
                proc_gen: e.proc_gen,
                ts_ns: e.ts_ns,
                lost_reports: e.lost_reports,
                ret: 0,
                args: [0; 4],
                flags: 0,
                vma: probed_common::VmaInfo::default(),
                name: [0; probed_common::NAME_LEN],
                path: probed_common::FilePath::EMPTY,
            }))
        }),
        EVENT_STACK_COPY_HIT => StackCopy::read(bytes).map(Event::StackCopy),
        EVENT_ARG_STRINGS => read::<ArgStringsEvent>(bytes).map(|e| Event::ArgStrings(Box::new(e))),
        _ => None,
    }
}

/// A stack-copy record: the hit and registers, and the bytes of the copy that were read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackCopy {
    /// The hit and the registers.
    pub head: StackCopyHitEvent,
    /// The user stack from `head.stack_base` up (`head.stack_len` bytes, or what the record
    /// holds if that is less).
    pub stack: Vec<u8>,
}

impl StackCopy {
    /// The record in `bytes` (of any of the copy sizes: the ring item's length says which),
    /// in a spare box whose copy buffer is reused (`event_pool.rs`).
    pub fn read(bytes: &[u8]) -> Option<Pooled<Self>> {
        let head = read::<StackCopyHitEvent>(bytes)?;
        let rest = &bytes[std::mem::size_of::<StackCopyHitEvent>()..];
        let stack = &rest[..(head.stack_len as usize).min(rest.len())];
        Some(Pooled::reuse(
            || Self {
                head,
                stack: Vec::new(),
            },
            |copy| {
                copy.head = head;
                copy.stack.clear();
                copy.stack.extend_from_slice(stack);
            },
        ))
    }
}

/// Reads a large plain-integer event type out of `bytes`, if it is long enough, straight
/// into a spare box of this thread (`event_pool.rs`): a stack record (1 KiB, 7.5 KiB
/// captured) is copied once, not onto the stack and then into the box.
fn read_pooled<T: aya::Pod + crate::event_pool::Poolable>(bytes: &[u8]) -> Option<Pooled<T>> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    Some(Pooled::reuse(
        || read::<T>(bytes).expect("the length was checked"),
        |slot| {
            // SAFETY: the length was checked above; T is Pod (plain integers, any bit
            // pattern is valid), `slot` is a live, exclusively borrowed T, and the ring's
            // memory and the box do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    std::ptr::from_mut(slot).cast::<u8>(),
                    size_of::<T>(),
                );
            }
        },
    ))
}

/// Reads a plain-integer event type out of `bytes` if it is long enough.
fn read<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length was checked above; T is Pod (plain integers, any bit pattern is
    // valid) and read_unaligned makes no alignment assumption about the ring's memory.
    Some(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// An async stream of events from the BPF ring buffer (or, in tests of the daemon core, from
/// a channel of records: `ring_source.rs`).
pub struct EventStream<R: RingSource = BpfRing> {
    /// Where the items come from.
    ring: R,
    /// Items that did not decode (should stay 0: both sides share `probed-common`).
    pub malformed: u64,
    /// `probed trace --record`: every item, as read, before it is decoded.
    recorder: Option<std::sync::Arc<crate::recording::Recorder>>,
}

impl EventStream {
    /// Registers the ring buffer with the current tokio runtime.
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        Ok(Self::from_source(BpfRing::new(ring)?))
    }
}

impl<R: RingSource> EventStream<R> {
    /// The events of `ring`'s items.
    pub fn from_source(ring: R) -> Self {
        Self {
            ring,
            malformed: 0,
            recorder: None,
        }
    }

    /// Records every item read from here on (`probed trace --record`).
    pub fn record_to(&mut self, recorder: std::sync::Arc<crate::recording::Recorder>) {
        self.recorder = Some(recorder);
    }

    /// Waits until events are ready, then hands each to `f` until the ring is empty, `f`
    /// returns false, or `max` events were handed over — so that however fast events come,
    /// the caller's loop gets back to its timers and signals after a bounded batch. Returns
    /// how many events were handed over.
    pub async fn next_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(Event) -> bool,
    ) -> io::Result<usize> {
        let (recorder, malformed) = (&self.recorder, &mut self.malformed);
        let mut n = 0;
        self.ring
            .next_items(max, |item| {
                let Some(event) = take(recorder, malformed, item) else {
                    return true;
                };
                n += 1;
                f(event)
            })
            .await?;
        Ok(n)
    }

    /// Hands at most `max` events still in the ring to `f` without waiting. Returns how
    /// many, and whether the ring was left empty.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(Event)) -> Drained {
        self.drain_while(max, |event| {
            f(event);
            true
        })
    }

    /// Hands at most `max` events to `f` while it returns true. Returns how many, and whether
    /// the ring was left empty.
    pub fn drain_while(&mut self, max: usize, mut f: impl FnMut(Event) -> bool) -> Drained {
        let (recorder, malformed) = (&self.recorder, &mut self.malformed);
        let mut n = 0;
        let (_, empty) = self.ring.take_items(max, |item| {
            let Some(event) = take(recorder, malformed, item) else {
                return true;
            };
            n += 1;
            f(event)
        });
        Drained { n, empty }
    }

    /// Hands over every event submitted before this call (and possibly some after): at most
    /// as many as the ring can hold at once, so it ends even while producers keep the ring
    /// busy. Used where completeness matters (a probe id is reused only after every hit of
    /// its previous probe was read), bounded by the ring's capacity in records.
    pub fn drain_submitted(&mut self, ring_bytes: u32, f: impl FnMut(Event)) -> Drained {
        self.drain(max_records(ring_bytes), f)
    }
}

/// One item read: recorded if a recording runs, decoded, or counted as malformed.
fn take(
    recorder: &Option<std::sync::Arc<crate::recording::Recorder>>,
    malformed: &mut u64,
    item: &[u8],
) -> Option<Event> {
    if let Some(recorder) = recorder {
        recorder.item(item);
    }
    let event = decode(item);
    if event.is_none() {
        *malformed += 1;
    }
    event
}

/// What one [`EventStream::drain`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    /// Events handed over.
    pub n: usize,
    /// Whether the ring was found empty.
    pub empty: bool,
}

/// The most records a ring of `ring_bytes` can hold at once: every record is at least the
/// smallest event plus the ring's 8-byte record header.
pub fn max_records(ring_bytes: u32) -> usize {
    let smallest = size_of::<HitEvent>()
        .min(size_of::<ProcEvent>())
        .min(size_of::<ChangeEvent>());
    ring_bytes as usize / (smallest + 8) + 1
}

/// Hit records as BPF writes them, for tests that feed the pipeline or a ring.
#[cfg(test)]
pub(crate) mod test_records {
    use probed_common::{ARG_REGS, COMM_LEN, EVENT_HIT, HitEvent, KIND_ENTRY};

    /// An entry hit of probe `probe_id` at `ip` in process `pid` (generation `proc_gen`),
    /// stamped with `seq`.
    pub fn hit(probe_id: u32, pid: u32, proc_gen: u64, ip: u64, seq: u64) -> HitEvent {
        HitEvent {
            event: EVENT_HIT,
            probe_id,
            kind: KIND_ENTRY,
            pid,
            tid: pid,
            lost_reports: 0,
            ts_ns: 1,
            ip,
            ret_addr: 0,
            seq,
            proc_gen,
            args: [0; ARG_REGS],
            retval: 0,
            comm: [0; COMM_LEN],
            ns_pid: 0,
            ns_tid: 0,
        }
    }

    /// A record's bytes, as the ring holds them.
    pub fn bytes<T: aya::Pod>(record: &T) -> Vec<u8> {
        // SAFETY: a Pod type is #[repr(C)] plain integers without padding (the ABI types'
        // sizes are asserted in probed-common): viewing it as bytes is sound.
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(record).cast::<u8>(), size_of::<T>())
        }
        .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring of N bytes holds at most N / (smallest event + header) records: the bound
    /// `drain_submitted` relies on to end while producers keep writing.
    #[test]
    fn ring_capacity_in_records() {
        let smallest = size_of::<HitEvent>()
            .min(size_of::<ProcEvent>())
            .min(size_of::<ChangeEvent>());
        assert_eq!(smallest, size_of::<HitEvent>());
        assert_eq!(max_records(1 << 22), (1 << 22) / (smallest + 8) + 1);
        assert!(max_records(1 << 22) * (smallest + 8) > 1 << 22);
    }

    /// A hit round-trips through its byte form; short items and unknown types are refused.
    #[test]
    fn decode_round_trip_and_short_item() {
        let hit = HitEvent {
            event: EVENT_HIT,
            probe_id: 3,
            kind: 1,
            pid: 10,
            tid: 11,
            lost_reports: 0,
            ts_ns: 12,
            ip: 0x5555_0000_1139,
            ret_addr: 14,
            seq: 16,
            proc_gen: 17,
            args: [1, 2, 3, 4, 5, 6],
            retval: 42,
            comm: *b"loop\0\0\0\0\0\0\0\0\0\0\0\0",
            ns_pid: 1,
            ns_tid: 2,
        };
        let bytes = test_records::bytes(&hit);
        let mut unaligned = vec![0u8; bytes.len() + 1];
        unaligned[1..].copy_from_slice(&bytes);
        assert_eq!(decode(&unaligned[1..]), Some(Event::Hit(hit)));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        let mut unknown = bytes.to_vec();
        unknown[..4].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(decode(&unknown), None);
    }
}
