//! `probed trace`: attach the probes, print every hit, stop, detach, summarize.
//!
//! Order matters for "nothing is lost silently" and "nothing stays attached": every SPEC is
//! checked against its ELF file before anything is attached; on stop the probes are detached
//! first, then the ring buffer is drained (hits that fired before the stop are still
//! printed), then the BPF counters are read for the summary.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    num::NonZeroU32,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    attach::{AttachRequest, Tracer},
    cli::TraceArgs,
    events::EventStream,
    output::{Summary, Writer},
    pipeline::{Pipeline, Stop},
    probes::{self, Probe},
    resolve::{Config, ProbeId, Resolver, SeqSource},
    symbolize::Symbolizer,
    track::{self, GenCheckedMaps},
};

/// How often the ring buffer is drained without a wake-up (BPF wakes the daemon only once
/// 32 KiB of events wait: see ebpf maps::wakeup). Bounds how late a hit is printed.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

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
    let probes = probes::prepare(&args.specs)?;
    if let Some(pid) = args.pid {
        check_alive(pid)?;
    }
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(io::stdout().lock()),
    };
    let writer = Writer::new(BufWriter::new(out), args.format);

    let mut tracer = Tracer::load()?;
    for probe in &probes {
        if args.stack {
            tracer.set_probe_flags(probe.id, probed_common::PROBE_FLAG_STACK)?;
        }
        tracer
            .attach(&attach_request(probe), args.pid)
            .with_context(|| probe.spec.text.clone())?;
    }
    if args.pid.is_none() {
        tracer.watch_files(probes.iter().map(|p| p.target.id))?;
    }
    let (seq, generations, tracked) = tracer.take_tracker()?;
    let mut stream = EventStream::new(tracer.take_ring()?)?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let generations = Arc::new(generations);
    let maps = GenCheckedMaps::new(generations.clone());
    // The tracker reports every mapping change in the same ring buffer as the hits.
    let config = Config {
        reported_changes: true,
        ..Config::default()
    };
    let resolver = Arc::new(Resolver::with_config(seq, maps, config));
    for probe in &probes {
        resolver
            .registry()
            .insert(probe.target.id, probe.file_offset, ProbeId(probe.id));
    }
    let files = probes.iter().map(|p| p.target.id).collect();
    let running = track::preexisting::track_mapping_processes(
        &files,
        args.pid.map(NonZeroU32::get),
        &generations,
        &tracked,
        &resolver,
    );
    tracing::debug!(
        running,
        "running processes that map a probed file are tracked"
    );
    let symbolizer = Arc::new(Symbolizer::new());
    let mut pipeline = Pipeline::new(probes, writer, args.count, &resolver, symbolizer)
        .with_pid_filter(args.pid.map(NonZeroU32::get));
    let started = Instant::now();
    eprintln!(
        "probed: tracing {} probe(s){}; Ctrl-C to stop",
        tracer.attached(),
        args.pid.map(|p| format!(" in pid {p}")).unwrap_or_default()
    );

    let deadline = async {
        match args.duration {
            Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    // Events do not wake the consumer one by one (see ebpf maps::wakeup): drain on a timer
    // too.
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended_by = if pipeline.stopped().is_some() {
        EndedBy::Count
    } else {
        loop {
            tokio::select! {
                batch = stream.next_batch(|event| pipeline.handle_event(&event)) => {
                    batch.context("reading the hit ring buffer")?;
                    if let Some(ended) = after_batch(&mut pipeline) {
                        break ended;
                    }
                }
                _ = tick.tick() => {
                    stream.drain(|event| {
                        pipeline.handle_event(&event);
                    });
                    if let Some(ended) = after_batch(&mut pipeline) {
                        break ended;
                    }
                }
                _ = sigint.recv() => break EndedBy::Signal,
                _ = sigterm.recv() => break EndedBy::Signal,
                () = &mut deadline => break EndedBy::Duration,
            }
        }
    };

    // Detach first so nothing new arrives, then take every hit that fired before the stop.
    tracer.detach_all();
    stream.drain(|event| {
        pipeline.handle_event(&event);
    });
    if stream.malformed > 0 {
        tracing::error!(
            count = stream.malformed,
            "malformed ring buffer items (ABI mismatch)"
        );
    }
    let mut summary = Summary {
        ended_by: ended_by.as_str(),
        duration_s: started.elapsed().as_secs_f64(),
        ..Default::default()
    };
    pipeline.summarize(&mut summary, |id| tracer.stats(id))?;
    pipeline.finish(&summary)?;
    drop(tracer);
    Ok(())
}

/// After a batch of events: flushes the hits (they are printed as they come, not when a
/// buffer fills: someone is watching, or a pipe reader is waiting) and says whether the run
/// is over.
fn after_batch<W: Write, S: SeqSource>(pipeline: &mut Pipeline<W, S>) -> Option<EndedBy> {
    if pipeline.flush().is_err() {
        return Some(EndedBy::OutputClosed);
    }
    match pipeline.stopped()? {
        Stop::Count => Some(EndedBy::Count),
        Stop::OutputClosed => Some(EndedBy::OutputClosed),
    }
}

fn attach_request(probe: &Probe) -> AttachRequest {
    AttachRequest {
        id: probe.id,
        kind: probe.spec.kind,
        path: probe.spec.path.clone(),
        file_offset: probe.file_offset,
    }
}

/// A `--pid` that names no live process is an error before anything is attached.
fn check_alive(pid: NonZeroU32) -> anyhow::Result<()> {
    let Ok(raw) = i32::try_from(pid.get()) else {
        anyhow::bail!("no process with pid {pid}");
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks that the pid exists.
    let alive = unsafe { libc::kill(raw, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !alive {
        anyhow::bail!("no process with pid {pid} (it may have exited)");
    }
    Ok(())
}
