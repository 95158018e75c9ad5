//! A stress test of the order several consumer threads keep: random streams of hits,
//! change reports, forks (many crossing shards), strings records and file names, dealt to
//! 2–4 stand-in consumers (shard 0 on the dealing thread) that stall at random, each
//! checking as it goes that
//! - a process's items come in ring order (the resolver's per-process ordering rule),
//! - a fork is handled only after every earlier item of its parent (its picture is copied
//!   from the parent's as of the fork),
//! - a strings record comes right before its hit, on the hit's shard,
//! - every shard gets every file name and every batch's end, and everything else exactly
//!   once.

use std::{
    collections::HashMap,
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use probed_common::{
    ArgStringsEvent, ChangeEvent, EVENT_ARG_STRINGS, EVENT_CHANGE, EVENT_FILE_NAME, EVENT_HIT,
    EVENT_PROC, FileNameEvent, HitEvent, PROC_FORK, ProcEvent,
};

use super::{Shard, Shards};
use crate::{
    attach::AttachError,
    events::Event,
    output::{Aggregations, Summary},
    pipeline::{Consume, Stats, Stop},
};

/// The stream's facts each stand-in checks against.
struct Truth {
    /// Item index → the process it belongs to (`None`: a file name).
    owner: Vec<Option<u32>>,
    /// Fork item index → the parent's earlier item indexes.
    parent_items: HashMap<u64, Vec<u64>>,
    /// Hit index → its strings record's index.
    strings_of: HashMap<u64, u64>,
    /// Items handled, by index.
    handled: Vec<AtomicBool>,
    /// Broken rules, said.
    broken: Mutex<Vec<String>>,
}

/// A consumer that checks the rules instead of resolving.
struct Checker {
    truth: Arc<Truth>,
    rng: u64,
    last_of: HashMap<u32, u64>,
    /// The strings record handled last, if the item before was one.
    strings: Option<u64>,
    items: u64,
    file_names: u64,
    batches: u64,
    aggregations: Aggregations,
}

fn zeroed<T>() -> T {
    // SAFETY: only called for the `#[repr(C)]` ring records of probed_common, made of
    // integers and byte arrays, for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

fn index(event: &Event) -> u64 {
    match event {
        Event::Hit(h) => h.ts_ns,
        Event::Proc(p) => p.ts_ns,
        Event::Change(c) => c.ts_ns,
        Event::ArgStrings(s) => s.ts_ns,
        Event::FileName(f) => f.vma.start,
        other => panic!("not in these streams: {other:?}"),
    }
}

impl Checker {
    fn broken(&self, what: String) {
        self.truth.broken.lock().unwrap().push(what);
    }

    /// Stalls now and then: another shard's thread gets ahead.
    fn stall(&mut self) {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        match self.rng % 64 {
            0 => std::thread::sleep(std::time::Duration::from_micros(200)),
            1..=4 => std::thread::yield_now(),
            _ => {}
        }
    }
}

impl Consume for Checker {
    fn handle_event(&mut self, event: &Event) -> bool {
        self.stall();
        let i = index(event);
        let strings_before = self.strings.take();
        match event {
            Event::FileName(_) => {
                self.file_names += 1;
                return true;
            }
            Event::ArgStrings(_) => self.strings = Some(i),
            Event::Hit(_) => {
                let want = self.truth.strings_of.get(&i).copied();
                if want != strings_before {
                    self.broken(format!(
                        "hit {i}: strings record {want:?} expected just before, got {strings_before:?}"
                    ));
                }
            }
            Event::Proc(p) if p.what == PROC_FORK => {
                for &earlier in &self.truth.parent_items[&i] {
                    if !self.truth.handled[earlier as usize].load(Ordering::Acquire) {
                        self.broken(format!(
                            "fork {i} of {} handled before its parent's item {earlier}",
                            p.pid
                        ));
                    }
                }
            }
            _ => {}
        }
        let owner = self.truth.owner[i as usize].expect("an owned item");
        if let Some(&last) = self.last_of.get(&owner)
            && last >= i
        {
            self.broken(format!("process {owner}: item {i} after item {last}"));
        }
        self.last_of.insert(owner, i);
        if self.truth.handled[i as usize].swap(true, Ordering::AcqRel) {
            self.broken(format!("item {i} handled twice"));
        }
        self.items += 1;
        true
    }

    fn count_dropped(&mut self, _: &Event) {}

    fn hit_records(&self) -> u64 {
        0
    }

    fn end_batch(&mut self) {
        self.batches += 1;
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn stopped(&self) -> Option<Stop> {
        None
    }

    fn unread_hits(&self, _: Stats<'_>) -> Result<u64, AttachError> {
        Ok(0)
    }

    fn write_aggregations(&mut self, _: bool, _: f64) -> io::Result<()> {
        Ok(())
    }

    fn probe_ids(&mut self) -> Vec<u32> {
        vec![0]
    }

    fn summarize(&mut self, _: &mut Summary, _: Stats<'_>) -> Result<(), AttachError> {
        Ok(())
    }

    fn aggregations(&mut self) -> &Aggregations {
        &self.aggregations
    }

    fn finish(&mut self, _: &Summary) -> io::Result<()> {
        Ok(())
    }
}

impl Shard for Checker {
    fn absorb(&mut self, other: Self) {
        self.items += other.items;
        self.file_names += other.file_names;
        self.batches += other.batches;
    }
}

/// A random stream of `len` items over processes that fork as it goes; and its truth.
fn stream(seed: u64, len: usize) -> (Vec<Event>, Truth) {
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut procs: Vec<u32> = vec![100, 101, 102];
    let mut next_pid = 103;
    let mut items_of: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut events = Vec::new();
    let mut owner = Vec::new();
    let mut parent_items = HashMap::new();
    let mut strings_of = HashMap::new();
    while events.len() < len {
        let i = events.len() as u64;
        let pid = procs[(next() % procs.len() as u64) as usize];
        let event = match next() % 100 {
            0..=59 => {
                let mut h: HitEvent = zeroed();
                (h.event, h.pid, h.tid, h.ts_ns) = (EVENT_HIT, pid, pid, i);
                Event::Hit(h)
            }
            60..=74 => {
                let mut c: ChangeEvent = zeroed();
                (c.event, c.pid, c.tid, c.ts_ns) = (EVENT_CHANGE, pid, pid, i);
                Event::Change(Box::new(c))
            }
            75..=84 => {
                // A fork: the child's pid is new (the next one: most land on another shard).
                let child = next_pid;
                next_pid += 1;
                procs.push(child);
                let mut p: ProcEvent = zeroed();
                (p.event, p.what, p.pid, p.tid, p.ts_ns) = (EVENT_PROC, PROC_FORK, child, child, i);
                p.parent_pid = pid;
                parent_items.insert(i, items_of.get(&pid).cloned().unwrap_or_default());
                items_of.entry(child).or_default().push(i);
                owner.push(Some(child));
                events.push(Event::Proc(Box::new(p)));
                continue;
            }
            85..=94 => {
                // A strings record, then its hit (the same thread).
                let mut s: ArgStringsEvent = zeroed();
                (s.event, s.tid, s.ts_ns) = (EVENT_ARG_STRINGS, pid, i);
                owner.push(Some(pid));
                items_of.entry(pid).or_default().push(i);
                events.push(Event::ArgStrings(Box::new(s)));
                let mut h: HitEvent = zeroed();
                (h.event, h.pid, h.tid, h.ts_ns) = (EVENT_HIT, pid, pid, i + 1);
                strings_of.insert(i + 1, i);
                Event::Hit(h)
            }
            _ => {
                let mut f: FileNameEvent = zeroed();
                f.event = EVENT_FILE_NAME;
                f.vma.start = i;
                owner.push(None);
                events.push(Event::FileName(Box::new(f)));
                continue;
            }
        };
        let i = events.len() as u64;
        owner.push(Some(pid));
        items_of.entry(pid).or_default().push(i);
        events.push(event);
    }
    let truth = Truth {
        handled: (0..events.len()).map(|_| AtomicBool::new(false)).collect(),
        owner,
        parent_items,
        strings_of,
        broken: Mutex::default(),
    };
    (events, truth)
}

#[test]
fn shards_keep_every_order_the_resolver_needs() {
    for (seed, shards) in [(7, 2), (11, 3), (13, 4), (17, 2), (19, 3)] {
        let (events, truth) = stream(seed, 20_000);
        let truth = Arc::new(truth);
        let checkers = (0..shards)
            .map(|s| Checker {
                truth: truth.clone(),
                rng: seed * 31 + s as u64 + 1,
                last_of: HashMap::new(),
                strings: None,
                items: 0,
                file_names: 0,
                batches: 0,
                aggregations: Aggregations::default(),
            })
            .collect();
        let mut dealt = Shards::start(checkers, None).unwrap();
        let hits = events.iter().filter(|e| e.hit().is_some()).count() as u64;
        let names = events
            .iter()
            .filter(|e| matches!(e, Event::FileName(_)))
            .count() as u64;
        let mut batches = 0;
        for (n, event) in events.iter().enumerate() {
            assert!(dealt.handle_owned(event.clone()));
            if n % 97 == 0 {
                dealt.end_batch();
                batches += 1;
            }
        }
        assert_eq!(dealt.hit_records(), hits);
        let all = dealt.join();
        let broken = truth.broken.lock().unwrap();
        assert!(
            broken.is_empty(),
            "seed {seed}, {shards} shards: {} broken rules, first: {:?}",
            broken.len(),
            &broken[..broken.len().min(5)]
        );
        assert_eq!(
            all.file_names,
            names * shards as u64,
            "every shard gets every name"
        );
        assert_eq!(
            all.items,
            events.len() as u64 - names,
            "the rest exactly once"
        );
        assert_eq!(
            all.batches,
            batches * shards as u64,
            "every shard ends every batch"
        );
        assert!(
            truth
                .handled
                .iter()
                .enumerate()
                .all(|(i, h)| { h.load(Ordering::Relaxed) || truth.owner[i].is_none() })
        );
        // The forks crossed shards (what the waits are for).
        let mut assigner = crate::pipeline::assign::Assigner::new(shards);
        let crossing = events
            .iter()
            .filter_map(|e| assigner.route(e))
            .filter(|r| r.parent.is_some_and(|p| p != r.shard))
            .count();
        assert!(crossing > 100, "{crossing} forks across shards");
    }
}
