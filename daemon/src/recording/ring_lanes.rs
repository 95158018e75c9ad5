//! A replay with a ring per consumer: a kseq-mode recording replayed with `--consumers N`
//! (N ≤ 4), as the live run with N consumers would have read it — BPF writing each process's
//! records to its ring (ebpf ring.rs), a thread per ring (pipeline/rings.rs).
//!
//! The recorded ring is split into those N rings before the replay is timed (BPF does the
//! split in the live run, at no cost to the daemon): every item to its process's lane —
//! processes given lanes in turn as they first appear, kept until their exit, as BPF gives
//! them rings (the recorded ring's order is the order BPF reserved its records in) — a
//! file name to every lane (BPF writes it to every ring), a strings record to the lane of
//! its thread's next hit (BPF writes both to the thread's process's ring, strings first),
//! every batch end to every lane. Lane 0 is replayed by the caller's thread, the others by
//! [`feed`]s, each starting when the timed part starts (`go`).

use std::sync::{Arc, Barrier};

use rustc_hash::FxHashMap;

use super::{Frame, seams::ItemClocks};
use crate::{
    events::{Event, decode},
    pipeline::{Assigner, Consume, Control, Feed, Shard},
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
    let mut assigner = Assigner::new(n);
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
                let Some(route) = assigner.route(&event) else {
                    // A file name: every ring has it.
                    for lane in &mut lanes {
                        lane.push(entry);
                    }
                    continue;
                };
                let lane = route.shard;
                lane_of.insert(route.proc, lane);
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
        pipeline
    })
}

#[cfg(test)]
mod tests {
    use probed_common::{ArgStringsEvent, EVENT_ARG_STRINGS, EVENT_FILE_NAME, FileNameEvent};

    use super::*;
    use crate::events::test_records;

    fn hit(pid: u32) -> Frame {
        Frame::Item(test_records::bytes(&test_records::hit(
            1, pid, 7, 0x1000, 2,
        )))
    }

    fn name() -> Frame {
        // SAFETY: a Pod record: all zeros is a valid value.
        let mut e: FileNameEvent = unsafe { std::mem::zeroed() };
        e.event = EVENT_FILE_NAME;
        Frame::Item(test_records::bytes(&e))
    }

    fn strings(tid: u32) -> Frame {
        // SAFETY: as above.
        let mut e: ArgStringsEvent = unsafe { std::mem::zeroed() };
        e.event = EVENT_ARG_STRINGS;
        e.tid = tid;
        Frame::Item(test_records::bytes(&e))
    }

    #[test]
    fn processes_take_rings_in_turn_strings_ride_with_their_hit_names_go_everywhere() {
        // Pids 10, 12, 14 (what a spawner with a thread per child gets): lanes 0, 1, 0 —
        // by first appearance, not by pid.
        let frames = vec![
            hit(10),     // 0: lane 0
            strings(12), // 1: waits for 12's hit
            name(),      // 2: both lanes
            hit(12),     // 3: lane 1, after its strings
            Frame::BatchEnd,
            hit(10), // 5: lane 0
            hit(14), // 6: lane 0
            hit(12), // 7: lane 1
        ];
        let split = split(&frames, 2);
        let frames_of =
            |lane: usize| -> Vec<usize> { split.lanes[lane].iter().map(|e| e.frame).collect() };
        assert_eq!(frames_of(0), vec![0, 2, 4, 5, 6]);
        assert_eq!(frames_of(1), vec![2, 1, 3, 4, 7]);
        assert_eq!(split.events, 7);
        // Each entry keeps its item's number in the recorded ring (the seams' clock), a
        // batch end the items before it.
        assert_eq!(split.lanes[1][1], Entry { frame: 1, n: 2 });
        assert_eq!(split.lanes[1][3], Entry { frame: 4, n: 4 });
        assert_eq!(split.lane_of[&ProcKey::new(12, 7)], 1);
        assert_eq!(split.lane_of[&ProcKey::new(14, 7)], 0);
    }
}
