//! `probed trace`: attach the probes, print every hit, stop, detach, summarize.
//!
//! Order matters for "nothing is lost silently" and "nothing stays attached": every SPEC is
//! checked against its ELF file before anything is attached; on stop the probes are detached
//! first, then the ring buffer is drained (hits that fired before the stop are still
//! printed), then the BPF counters are read for the summary.
//!
//! This file holds the run itself (set-up, event loop, stop, summary) and the resolver it
//! (and its replay) reads through. Around it in `trace/`: what is said on stderr while the
//! probes attach (`report.rs`), the aggregations and the flame graph (`aggregate.rs`), and
//! a probe's options shared with the daemon (`probe_options.rs`: `--pid` alive, stack
//! flags).

mod aggregate;
mod probe_options;
mod report;
mod ring_feed;

use std::{
    fs::File,
    io::{self, Write},
    num::NonZeroU32,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use aggregate::{aggregations, draw_flamegraph};
use probe_options::check_alive;
pub(crate) use probe_options::is_alive;
pub use probe_options::stack_flags;
use report::{AttachProgress, report_expansion};

use crate::{
    attach::Tracer,
    cli::TraceArgs,
    container::ContainerRoot,
    events::EventStream,
    output::Summary,
    pidns::PidNamespace,
    pipeline::{Consume, Feeding, Pipeline, Stop, consumer},
    probes::{self, Probe},
    recording::{
        Header, RecordedProbe, Recorder,
        seams::{RecordingMaps, RecordingSeq},
    },
    resolve::{Config, MapsSource, ProbeId, Resolver, SeqSource},
    stop,
    symbolize::Symbolizer,
    track::{self, GenCheckedMaps, TrackerMode},
};

/// How often the ring buffer is drained without a wake-up (BPF wakes the daemon only once
/// 32 KiB of events wait: see ebpf ring.rs, `WAKE_AT`). Bounds how late a hit is printed.
pub(crate) const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Why a trace run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndedBy {
    Signal,
    Duration,
    Count,
    OutputClosed,
}

impl EndedBy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Signal => "signal",
            Self::Duration => "duration",
            Self::Count => "count",
            Self::OutputClosed => "output_closed",
        }
    }
}

/// Runs `probed trace` until a signal, `--duration` or `--count`.
pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    // Before anything is attached: a dead or unreadable --container pid is one clear error;
    // with one, SPEC paths name files inside that container's root.
    let root = args
        .container
        .map(ContainerRoot::of_pid)
        .transpose()
        .context("--container")?;
    let container = args
        .container
        .map(PidNamespace::of_pid)
        .transpose()
        .context("--container")?;
    if let Some(pid) = args.pid {
        check_alive(pid)?;
    }
    let consumers = args.consumers().map_err(anyhow::Error::msg)?;
    let scope = probes::Scope {
        container: root.as_ref(),
        pid: args.pid,
    };
    let mut probes = probes::prepare(&args.specs, scope)?;
    drop(root);
    report_expansion(&probes);
    let out: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(io::stdout()),
    };
    // Created now, so that a bad path fails before anything is attached; drawn at the end.
    let flamegraph = match &args.flamegraph {
        Some(path) => Some((
            path,
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => None,
    };

    // Stack copies are 4–64 KiB a hit: their runs get a ring that holds a burst of them.
    let copy_pages = args.copy_pages();
    let copies = copy_pages > 0;
    let ring_bytes = probed_common::ring_bytes(probed_common::RING_BYTES, copy_pages);
    let tracker = crate::track::TrackerRequest {
        choice: args.tracker,
        copied_stacks: copies,
    };
    let mut tracer = Tracer::load_with_rings(ring_bytes, consumers, tracker)?;
    for probe in &probes {
        if args.captures_stacks() {
            tracer.set_probe_flags(probe.id, stack_flags(args.stack_mode(), copy_pages))?;
        }
        if let Some(limit) = args.rate_limit() {
            tracer.set_rate_limit(probe.id, Some(limit))?;
        }
        if let Some(ns) = container {
            tracer.set_pidns_filter(probe.id, Some(ns))?;
        }
        if args.count_in_bpf {
            tracer.set_probe_flags(probe.id, probed_common::PROBE_FLAG_COUNT_ONLY)?;
        }
    }
    let requests: Vec<_> = probes.iter().map(Probe::attach_request).collect();
    let started = std::time::Instant::now();
    let progress = AttachProgress::new(requests.len());
    // A file's probes share uprobe_multi links where the kernel has them (6.6+): attached
    // and, above all, detached in batches (see attach/grouped.rs).
    let refused = tracer.attach_grouped(&requests, args.pid, &|n| progress.show(n))?;
    progress.finish();
    // A SPEC's own probe must attach; a wildcard's match the kernel refuses (an address it
    // cannot probe, ENOTSUPP) is skipped with a warning, as bpftrace does: `uprobe:libc:*`
    // names thousands of functions, a few of which may not take a breakpoint.
    let mut skipped = std::collections::BTreeSet::new();
    for (i, err) in refused {
        let probe = &probes[i];
        match &probe.pattern {
            Some(pattern) => {
                eprintln!(
                    "probed: skipped {} (from {pattern}): {err}",
                    probe.spec.text
                );
                skipped.insert(probe.id);
            }
            None => return Err(anyhow::Error::from(err).context(probe.spec.text.clone())),
        }
    }
    if !skipped.is_empty() {
        probes.retain(|p| !skipped.contains(&p.id));
        eprintln!(
            "probed: {} wildcard match(es) skipped: the kernel refused them",
            skipped.len()
        );
    }
    tracing::debug!(probes = requests.len(), took = ?started.elapsed(), "probes attached");
    for probe in &mut probes {
        if let Some(c) = &probe.in_container {
            eprintln!(
                "probed: {} is {} (file {})",
                probe.spec.text,
                c.host_path.display(),
                probe.target.id
            );
        }
        // Attached: the container's file need not stay open.
        probe.release_file();
    }
    // Counted in BPF: no hit is resolved, so no process needs tracking for one.
    if args.pid.is_none() && !args.count_in_bpf {
        tracer.watch_files(probes.iter().map(|p| p.target.id))?;
    }
    let recorder = match &args.record {
        Some(path) => Some(Arc::new(Recorder::create(
            path,
            &recording_header(&args, &probes, tracer.tracker_mode().0),
        )?)),
        None => None,
    };
    let (seq, generations, tracked) = tracer.take_tracker()?;
    let seq = RecordingSeq::new(seq, recorder.clone());
    // Several consumers in kseq mode: a ring each (ring 0 read here, the others by their
    // threads); otherwise one ring, dealt to the consumers if there are several.
    let mut rings = tracer.take_rings()?.into_iter();
    let mut stream = EventStream::new(rings.next().expect("ring 0"))?;
    let feeds: Vec<_> = rings.map(|r| ring_feed::feed(r, ring_bytes)).collect();
    let ring_count = feeds.len() + 1;
    let feeding = match feeds.is_empty() {
        true => Feeding::Dealt {
            n: consumers,
            hook: None,
        },
        false => Feeding::Rings(feeds),
    };
    if let Some(recorder) = &recorder {
        stream.record_to(recorder.clone());
    }
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let generations = Arc::new(generations);
    let maps = RecordingMaps::new(GenCheckedMaps::new(generations.clone()), recorder.clone());
    let resolver = trace_resolver(seq, maps, tracer.tracker_mode().0, &probes);
    let files = probes.iter().map(|p| p.target.id).collect();
    // Counted in BPF: no hit is resolved, so no process needs tracking for one.
    let running = if args.count_in_bpf {
        0
    } else {
        track::preexisting::track_mapping_processes(
            &files,
            args.pid.map(NonZeroU32::get),
            &generations,
            &tracked,
            &resolver,
            &|proc| {
                if let Some(r) = &recorder {
                    r.track(proc);
                }
            },
        )
        .len()
    };
    tracing::debug!(
        running,
        "running processes that map a probed file are tracked"
    );
    let symbolizer = Arc::new(Symbolizer::new().with_debuginfod(crate::elf::debuginfod::global()));
    let mut pipeline = consumer(out, args.format, feeding, |writer| {
        Pipeline::new(
            probes.clone(),
            writer,
            args.count,
            &resolver,
            symbolizer.clone(),
        )
        .with_pid_filter(args.pid.map(NonZeroU32::get))
        .with_aggregations(aggregations(&args), args.prints_hits())
        .with_tracker(tracer.tracker_mode().0)
        .with_stack_mode(args.stack_mode())
    })?;
    drop(probes);
    let started = Instant::now();
    eprintln!(
        "probed: tracing {} probe(s){}{}; Ctrl-C to stop",
        tracer.attached(),
        args.pid.map(|p| format!(" in pid {p}")).unwrap_or_default(),
        args.container
            .map(|p| format!(" in the pid namespace of pid {p}"))
            .unwrap_or_default()
    );

    let deadline = async {
        match args.duration {
            Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    // Events do not wake the consumer one by one (see ebpf ring.rs, `WAKE_AT`): drain on a
    // timer too.
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = args.interval.map(|secs| {
        let every = Duration::from_secs_f64(secs);
        tokio::time::interval_at(tokio::time::Instant::now() + every, every)
    });
    // Signals and the deadline first: however fast events come, a batch is bounded
    // (stop::BATCH) and the loop looks at them again after each.
    let ended_by = if pipeline.stopped().is_some() {
        EndedBy::Count
    } else {
        loop {
            tokio::select! {
                biased;
                _ = sigint.recv() => break EndedBy::Signal,
                _ = sigterm.recv() => break EndedBy::Signal,
                () = &mut deadline => break EndedBy::Duration,
                () = next_report(&mut report) => {
                    let elapsed = started.elapsed().as_secs_f64();
                    if pipeline.write_aggregations(false, elapsed).is_err() {
                        break EndedBy::OutputClosed;
                    }
                }
                batch = stream.next_batch(stop::BATCH, |event| pipeline.handle_owned(event)) => {
                    batch.context("reading the hit ring buffer")?;
                    if let Some(ended) = after_batch(pipeline.as_mut(), recorder.as_deref()) {
                        break ended;
                    }
                }
                _ = tick.tick() => {
                    stream.drain(stop::BATCH, |event| {
                        pipeline.handle_owned(event);
                    });
                    if let Some(ended) = after_batch(pipeline.as_mut(), recorder.as_deref()) {
                        break ended;
                    }
                }
            }
            stop::yield_to_drivers().await;
        }
    };

    // A bounded stop (stop.rs): no more hits admitted, links closed (after which no hit is
    // on its way), the ring processed until empty or the deadline or a second signal, the
    // rest counted as dropped_at_stop.
    if let Err(err) = tracer.stop_admitting() {
        tracing::warn!(error = %err, "cannot stop admitting hits in BPF; detaching instead");
    }
    let stopping = Instant::now();
    let tracker_closing = tracer.close_tracker_in_background();
    // The kernel retires each link's uprobes after a grace period (~0.1 s here; 3,683
    // one-probe links took 393 s), one link at a time however many threads close them: say
    // so when it will be long.
    if tracer.links_held() >= AttachProgress::FROM {
        eprintln!(
            "probed: detaching {} probes ({} kernel links to retire, a grace period each)",
            tracer.attached(),
            tracer.links_held()
        );
    }
    tracer.detach_all();
    tracing::debug!(took = ?stopping.elapsed(), "links closed");
    pipeline.stopping(Instant::now() + args.drain_timeout());
    // Counters read now are final: no program runs any more.
    let unread = pipeline
        .unread_hits(&|id| tracer.stats(id))
        .unwrap_or(u64::MAX);
    let drain_end = stop::finish(
        &mut stream,
        pipeline.as_mut(),
        unread,
        args.drain_timeout(),
        ring_bytes,
        &mut sigint,
        &mut sigterm,
    )
    .await;
    if drain_end == stop::DrainEnd::Interrupted {
        // The other rings' threads too: what they hold is counted, not handled.
        pipeline.stopping(Instant::now());
    }
    tracing::debug!(took = ?stopping.elapsed(), ended = drain_end.as_str(), "ring drained");
    if stream.malformed > 0 {
        tracing::error!(
            count = stream.malformed,
            "malformed ring buffer items (ABI mismatch)"
        );
    }
    let mut summary = Summary {
        ended_by: ended_by.as_str(),
        tracker: tracer.tracker_mode().0.as_str(),
        tracker_errors: tracer.tracker_errors().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the change tracker's error counters");
            Default::default()
        }),
        duration_s: started.elapsed().as_secs_f64(),
        consumers: if consumers > 1 { consumers as u64 } else { 0 },
        rings: if ring_count > 1 { ring_count as u64 } else { 0 },
        ..Default::default()
    };
    // A recording that could not be written is said after the summary, which the run's
    // output still gets.
    let recorded = match &recorder {
        Some(r) => {
            for probe in pipeline.probe_ids() {
                if let Ok(stats) = tracer.stats(probe) {
                    r.stats(probe, &stats);
                }
            }
            r.finish()
        }
        None => Ok(()),
    };
    pipeline.summarize(&mut summary, &|id| tracer.stats(id))?;
    // Aggregations before the summary, which stays the last line.
    pipeline.write_aggregations(true, summary.duration_s)?;
    if let Some((path, file)) = flamegraph {
        draw_flamegraph(pipeline.aggregations(), &args.specs, path, file)?;
    }
    pipeline.finish(&summary)?;
    tracing::debug!(took = ?stopping.elapsed(), "summary written");
    let _ = tracker_closing.join();
    drop(tracer);
    tracing::debug!(took = ?stopping.elapsed(), "tracer closed");
    recorded.context("--record")?;
    Ok(())
}

/// After a batch of events: flushes the hits (they are printed as they come, not when a
/// buffer fills: someone is watching, or a pipe reader is waiting) and says whether the run
/// is over.
fn after_batch(pipeline: &mut dyn Consume, recorder: Option<&Recorder>) -> Option<EndedBy> {
    if let Some(r) = recorder {
        r.batch_end();
    }
    pipeline.end_batch();
    if pipeline.flush().is_err() {
        return Some(EndedBy::OutputClosed);
    }
    match pipeline.stopped()? {
        Stop::Count => Some(EndedBy::Count),
        Stop::OutputClosed => Some(EndedBy::OutputClosed),
    }
}

/// The resolver of a `probed trace` run (or of its replay) over `seq` and `maps`, with
/// `probes` in its registry.
pub(crate) fn trace_resolver<S: SeqSource>(
    seq: S,
    maps: impl MapsSource + 'static,
    tracker: TrackerMode,
    probes: &[Probe],
) -> Arc<Resolver<S>> {
    // The tracker reports every mapping change in the same ring buffer as the hits.
    let config = Config {
        reported_changes: true,
        history: tracker.history(),
        ..Config::default()
    };
    let resolver = Arc::new(Resolver::with_config(seq, maps, config));
    for probe in probes {
        resolver
            .registry()
            .insert(probe.target.id, probe.file_offset, ProbeId(probe.id));
    }
    resolver
}

/// What `--record` writes first: the run's SPECs and settings, and each attached probe's
/// file.
fn recording_header(args: &TraceArgs, probes: &[Probe], tracker: TrackerMode) -> Header {
    Header {
        version: crate::recording::VERSION,
        specs: args.specs.clone(),
        pid: args.pid.map(NonZeroU32::get),
        stack_mode: args.captures_stacks().then(|| args.stack_mode()),
        tracker,
        probes: probes
            .iter()
            .map(|p| RecordedProbe {
                id: p.id,
                spec: p.spec.text.clone(),
                dev: p.target.id.dev,
                ino: p.target.id.ino,
            })
            .collect(),
    }
}

/// Completes at the next `--interval` report, never without one.
async fn next_report(report: &mut Option<tokio::time::Interval>) {
    match report {
        Some(every) => {
            every.tick().await;
        }
        None => std::future::pending().await,
    }
}
