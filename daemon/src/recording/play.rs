//! `probed replay FILE`: a recorded run through the pipeline again — decode, resolve,
//! symbolize, unwind, aggregate, output — with no BPF, on one thread, optionally measured
//! (`--measure`: events per CPU second of that thread, for `cargo xtask bench pipeline`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{self, Write},
    sync::{Arc, Barrier},
    time::Instant,
};

use anyhow::{Context, bail};
use probed_common::ProbeStats;
use rustix::time::ClockId;

use super::{
    Frame, ring_lanes,
    seams::{ItemClocks, ReplayMaps, ReplaySeq},
};
use crate::{
    cli::{Aggregate, ReplayArgs},
    output::{Aggregations, Latency, StackCounts, Summary},
    pipeline::{Feeding, ItemHook, Pipeline, consumer, lanes},
    probes::{self, Probe},
    resolve::{ProcKey, Resolver, SeqSource},
    symbolize::Symbolizer,
};

/// What `--measure` prints (one JSON line on stderr).
#[derive(Debug, serde::Serialize)]
struct Measured {
    /// Ring items handed to the pipeline.
    events: u64,
    /// CPU time of the replaying thread (of the process with several consumers), from the
    /// first frame to the written summary.
    cpu_s: f64,
    /// Wall time of the same.
    wall_s: f64,
    /// `events / cpu_s`.
    events_per_cpu_s: f64,
    /// `events / wall_s` (what more consumer threads raise).
    events_per_wall_s: f64,
    /// Consumer threads; with more than one, `cpu_s` is the whole process's.
    consumers: usize,
    /// CPU time of the thread that reads the recording and deals its items (with one
    /// consumer, the consumer's own).
    main_cpu_s: f64,
    /// Sequence reads and maps reads that did not meet their recorded answer (0: the
    /// replay made no read the run did not make).
    seq_diverged: u64,
    maps_diverged: u64,
    /// Recorded reads the replay did not make (it did less work than the run: e.g. a
    /// repeated stack counted without resolving it).
    seq_skipped: u64,
    maps_skipped: u64,
}

/// Runs `probed replay`.
pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let mut recording = super::read(&args.file)?;
    let frames = Arc::new(std::mem::take(&mut recording.frames));
    let header = &recording.header;
    let probes = rebuild_probes(header)?;

    let out: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(io::stdout()),
    };
    let consumers = usize::from(args.consumers);
    // As the live run with as many consumers: a ring each in kseq mode (split now, as BPF
    // splits it), else one ring dealt to them.
    let ring_lanes = (crate::attach::usable_rings(header.tracker, consumers) > 1)
        .then(|| ring_lanes::split(&frames, consumers));
    let clocks = Arc::new(match &ring_lanes {
        Some(split) => ItemClocks::new(consumers, split.lane_of.clone()),
        None if consumers > 1 => {
            let items = frames.iter().filter_map(|f| match f {
                Frame::Item(bytes) => crate::events::decode(bytes),
                _ => None,
            });
            ItemClocks::new(consumers, lanes(consumers, items))
        }
        None => ItemClocks::one(),
    });
    let seq = ReplaySeq::new(&frames, clocks.clone());
    let maps = ReplayMaps::new(&frames, clocks.clone());
    let maps_counts = maps.counts();
    let resolver = crate::trace::trace_resolver(seq, maps, header.tracker, &probes);
    let symbolizer = Arc::new(Symbolizer::new().with_debuginfod(crate::elf::debuginfod::global()));
    let stacks = args.aggregate == Some(Aggregate::Stack);
    let print_hits = args.print_hits || (!stacks && !args.latency && !args.summary_only);
    // Several consumers: each sets its own lane's clock before an item (shards.rs).
    let hook: Option<ItemHook> = (consumers > 1).then(|| {
        let clocks = clocks.clone();
        Arc::new(move |lane: usize, n: u64| clocks.set(lane, n)) as ItemHook
    });
    // Ring lanes start with the timed part (`go`).
    let go = Arc::new(Barrier::new(consumers));
    let ring_mode = ring_lanes.is_some();
    let (feeding, lane0) = match ring_lanes {
        Some(split) => {
            let mut lanes = split.lanes.into_iter();
            let lane0 = lanes.next().expect("lane 0");
            let feeds = lanes
                .map(|entries| {
                    ring_lanes::feed(entries, frames.clone(), clocks.clone(), go.clone())
                })
                .collect();
            (Feeding::Rings(feeds), Some((lane0, split.events)))
        }
        None => (Feeding::Dealt { n: consumers, hook }, None),
    };
    let mut pipeline = consumer(out, args.format, feeding, |writer| {
        let aggregations = Aggregations {
            stacks: stacks.then(StackCounts::new),
            print_stacks: stacks,
            latency: args.latency.then(Latency::new),
        };
        Pipeline::new(probes.clone(), writer, None, &resolver, symbolizer.clone())
            .with_pid_filter(header.pid)
            .with_aggregations(aggregations, print_hits)
            .with_tracker(header.tracker)
            .with_stack_mode(header.stack_mode.unwrap_or_default())
    })?;

    let mut stats: BTreeMap<u32, ProbeStats> = BTreeMap::new();
    let mut events = 0u64;
    let mut items = 0u64;
    if lane0.is_some() {
        // The lanes hold only items and batch ends: the rest is read first (a run's tracked
        // processes are recorded before its first item).
        for frame in frames.iter() {
            match frame {
                Frame::Track(proc) => track(&resolver, *proc),
                Frame::Stats(id, s) => {
                    stats.insert(*id, *s);
                }
                _ => {}
            }
        }
    }
    let wall = Instant::now();
    // The consumers' threads too, when there are several.
    let cpu_clock = if consumers > 1 {
        ClockId::ProcessCPUTime
    } else {
        ClockId::ThreadCPUTime
    };
    let cpu = cpu_s(cpu_clock);
    let main_cpu = cpu_s(ClockId::ThreadCPUTime);
    if let Some((lane0, n)) = lane0 {
        go.wait();
        events = n;
        ring_lanes::replay(0, &lane0, &frames, &clocks, pipeline.as_mut());
    } else {
        for frame in frames.iter() {
            match frame {
                Frame::Item(bytes) => {
                    items += 1;
                    if consumers == 1 {
                        clocks.set(0, items);
                    }
                    // (A consumer thread numbers the items it is dealt; an undecodable item,
                    // which a recording of this build does not hold, would shift the
                    // numbers: the seams would count the reads after it as diverged.)
                    if let Some(event) = crate::events::decode(bytes) {
                        events += 1;
                        pipeline.handle_owned(event);
                    }
                }
                Frame::BatchEnd => {
                    pipeline.end_batch();
                    if pipeline.flush().is_err() {
                        break;
                    }
                }
                Frame::Track(proc) => track(&resolver, *proc),
                Frame::Stats(id, s) => {
                    stats.insert(*id, *s);
                }
                // Given back by the seams when the pipeline asks.
                Frame::Maps(..) | Frame::SeqBegin(..) | Frame::SeqRetry(..) | Frame::Header(_) => {}
            }
        }
    }
    // No end_batch here: a live run's stop drains the ring without one (stop.rs).
    let mut summary = Summary {
        ended_by: "replay",
        tracker: header.tracker.as_str(),
        duration_s: wall.elapsed().as_secs_f64(),
        consumers: if consumers > 1 { consumers as u64 } else { 0 },
        rings: if ring_mode { consumers as u64 } else { 0 },
        ..Default::default()
    };
    pipeline.summarize(&mut summary, &|id| {
        Ok(stats.get(&id).copied().unwrap_or_default())
    })?;
    pipeline.write_aggregations(true, summary.duration_s)?;
    pipeline.finish(&summary)?;
    let main_cpu_s = cpu_s(ClockId::ThreadCPUTime) - main_cpu;
    let cpu_s = cpu_s(cpu_clock) - cpu;
    let wall_s = wall.elapsed().as_secs_f64();
    if args.measure {
        let seq = resolver.seq.counts();
        let m = Measured {
            events,
            cpu_s,
            wall_s,
            events_per_cpu_s: if cpu_s > 0.0 {
                events as f64 / cpu_s
            } else {
                0.0
            },
            events_per_wall_s: events as f64 / wall_s.max(f64::MIN_POSITIVE),
            consumers,
            main_cpu_s,
            seq_diverged: seq.diverged,
            maps_diverged: maps_counts().diverged,
            seq_skipped: seq.skipped,
            maps_skipped: maps_counts().skipped,
        };
        eprintln!("{}", serde_json::to_string(&m)?);
    }
    Ok(())
}

/// The recorded run's probe table, from its SPECs: the same ids, each on the same file
/// (device and inode), or an error saying which file changed.
fn rebuild_probes(header: &super::Header) -> anyhow::Result<Vec<Probe>> {
    let scope = probes::Scope {
        container: None,
        pid: None,
    };
    let mut probes = probes::prepare(&header.specs, scope)
        .context("the recording's SPECs no longer name what they named")?;
    let kept: BTreeSet<u32> = header.probes.iter().map(|p| p.id).collect();
    probes.retain(|p| kept.contains(&p.id));
    for recorded in &header.probes {
        let Some(probe) = probes.iter().find(|p| p.id == recorded.id) else {
            bail!(
                "probe {} ({}) of the recording is not named by its SPECs any more",
                recorded.id,
                recorded.spec
            );
        };
        if (probe.target.id.dev, probe.target.id.ino) != (recorded.dev, recorded.ino)
            || probe.spec.text != recorded.spec
        {
            bail!(
                "{} changed since the recording ({} is now {}, file {}; recorded: {}, file \
                 {}:{}): a replay reads the files the run read",
                probe.path.display(),
                recorded.spec,
                probe.spec.text,
                probe.target.id,
                recorded.spec,
                recorded.dev,
                recorded.ino
            );
        }
    }
    Ok(probes)
}

/// Tracks a process the recorded run tracked at its start.
fn track<S: SeqSource>(resolver: &Resolver<S>, proc: ProcKey) {
    if let Err(err) = resolver.track(proc) {
        tracing::debug!(%proc, error = %err, "recorded process not tracked");
    }
}

/// CPU seconds this thread (or this process) has used.
fn cpu_s(clock: ClockId) -> f64 {
    let t = rustix::time::clock_gettime(clock);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}
