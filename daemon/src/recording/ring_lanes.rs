//! A replay with a ring per consumer: a kseq-mode recording replayed with `--consumers N`
//! (N ≤ 8), as the live run with N consumers would have read it — BPF writing each process's
//! records to ring `tgid % N` (ebpf ring.rs), a thread per ring (pipeline/rings.rs).
//!
//! The recorded ring is split into those N rings before the replay is timed (BPF does the
//! split in the live run, at no cost to the daemon): every item to its process's lane, a
//! file name to every lane (BPF writes it to every ring), a strings record to the lane of
//! its thread's next hit (BPF writes both to the thread's process's ring, strings first),
//! every batch end to every lane. Lane 0 is replayed by the caller's thread, the others by
//! [`feed`]s, each starting when the timed part starts (`go`).

use std::sync::{Arc, Barrier};

use probed_common::ring_of;
use rustc_hash::FxHashMap;

use super::{Frame, seams::ItemClocks};
use crate::{
    events::{Event, decode},
    pipeline::{Consume, Control, Feed, Shard, owner},
    resolve::ProcKey,
};

/// One entry of a lane: a frame to replay and the ring's item count at it (the seams'
/// clock: the item's number, or at a batch end the items before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Index into the recording's frames (an item or a batch end).
    pub frame: usize,
    /// Item number in the recorded ring (from 1), or items so far at a batch end.
    pub n: u64,
}

/// The recorded ring split into lanes.
#[derive(Debug)]
pub struct RingLanes {
    /// Each lane's entries, in ring order.
    pub lanes: Vec<Vec<Entry>>,
    /// Each process's lane (what the seams give answers by).
    pub lane_of: FxHashMap<ProcKey, usize>,
    /// Items that decode (the replay's events).
    pub events: u64,
}

/// Splits `frames`' items into `n` lanes as BPF splits them into `n` rings.
pub fn split(frames: &[Frame], n: usize) -> RingLanes {
    let mut lanes: Vec<Vec<Entry>> = vec![Vec::new(); n];
    let mut lane_of = FxHashMap::default();
    // Strings records by thread, until their hit.
    let mut strings: FxHashMap<u32, Entry> = FxHashMap::default();
    let (mut items, mut events) = (0u64, 0u64);
    for (frame, f) in frames.iter().enumerate() {
        match f {
            Frame::Item(bytes) => {
                items += 1;
                let entry = Entry { frame, n: items };
                let Some(event) = decode(bytes) else {
                    continue;
                };
                events += 1;
                if let Event::ArgStrings(s) = &event {
                    strings.insert(s.tid, entry);
                    continue;
                }
                let Some(proc) = owner(&event) else {
                    // A file name: every ring has it.
                    for lane in &mut lanes {
                        lane.push(entry);
                    }
                    continue;
                };
                let lane = ring_of(proc.pid, n as u32) as usize;
                lane_of.insert(proc, lane);
                if let Some(hit) = event.hit()
                    && let Some(s) = strings.remove(&hit.tid)
                {
                    lanes[lane].push(s);
                }
                lanes[lane].push(entry);
            }
            Frame::BatchEnd => {
                for lane in &mut lanes {
                    lane.push(Entry { frame, n: items });
                }
            }
            _ => {}
        }
    }
    RingLanes {
        lanes,
        lane_of,
        events,
    }
}

/// Replays `entries` of `frames` through `pipeline` as lane `lane`: the seams' clock set
/// before each, a batch end flushing. False once the output failed.
pub fn replay<P: Consume + ?Sized>(
    lane: usize,
    entries: &[Entry],
    frames: &[Frame],
    clocks: &ItemClocks,
    pipeline: &mut P,
) -> bool {
    for e in entries {
        clocks.set(lane, e.n);
        match &frames[e.frame] {
            Frame::Item(bytes) => {
                if let Some(event) = decode(bytes) {
                    pipeline.handle_owned(event);
                }
            }
            Frame::BatchEnd => {
                pipeline.end_batch();
                if pipeline.flush().is_err() {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

/// The feed of lane `entries` (a shard's thread): waits for `go`, then replays its lane.
pub fn feed<P: Shard>(
    entries: Vec<Entry>,
    frames: Arc<Vec<Frame>>,
    clocks: Arc<ItemClocks>,
    go: Arc<Barrier>,
) -> Feed<P> {
    Box::new(move |me, mut pipeline: P, control: &Control| {
        go.wait();
        if !replay(me, &entries, &frames, &clocks, &mut pipeline) {
            control.close();
        }
        control.count(me, pipeline.hit_records());
        pipeline
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::test_records;

    #[test]
    fn items_go_to_their_process_ring_strings_before_their_hit_names_everywhere() {
        let hit = |pid: u32| {
            Frame::Item(test_records::bytes(&test_records::hit(
                1, pid, 7, 0x1000, 2,
            )))
        };
        let frames = vec![hit(10), hit(11), Frame::BatchEnd, hit(12), hit(13)];
        let split = split(&frames, 2);
        let frames_of =
            |lane: usize| -> Vec<usize> { split.lanes[lane].iter().map(|e| e.frame).collect() };
        assert_eq!(frames_of(0), vec![0, 2, 3]);
        assert_eq!(frames_of(1), vec![1, 2, 4]);
        assert_eq!(split.events, 4);
        assert_eq!(split.lanes[1][1], Entry { frame: 2, n: 2 });
        assert_eq!(split.lane_of[&ProcKey::new(13, 7)], 1);
    }
}
