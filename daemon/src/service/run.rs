//! `probed daemon --config FILE`: start, serve, stop.
//!
//! Start-up order is chosen so that a bad config or a busy socket leaves nothing behind:
//! load and check the config (file:line:column errors), bind the control socket, load the BPF
//! object, check every probe against its file and open every output, and only then attach.
//! READY=1 goes to systemd once all of that is done.
//!
//! Stop (SIGTERM, SIGINT): detach every probe, take the hits already in the ring buffer,
//! flush the outputs, remove the socket, exit 0 — bounded by the drain, which reads what is
//! there and does not wait. SIGKILL leaves nothing attached either: links are file
//! descriptors and die with the process (tested in daemon/tests/service_daemon.rs).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    attach::Tracer,
    config,
    events::EventStream,
    metrics,
    pipeline::Pipeline,
    resolve::{Config as ResolverConfig, Resolver},
    service::{
        control::{Call, ControlSocket},
        daemon::Daemon,
        notify::{Notifier, NotifyError},
        op_error::ApplyError,
        outputs::Outputs,
        prepare::Done,
    },
    symbolize::Symbolizer,
    track::GenCheckedMaps,
    track::TrackerRequest,
    unwind::StackMode,
};

/// How often the ring buffer is drained without a wake-up (see trace.rs).
const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// The daemon's hit ring buffer: 16 MiB, four times `probed trace`'s. Attaching a probe holds
/// the event loop while the kernel registers the uprobe (20 ms idle, ~0.1 s under load,
/// measured), and a long-lived service meets bursts a one-off trace does not; the ring is
/// what absorbs hits meanwhile (~110,000 hit records).
pub(super) const DAEMON_RING_BYTES: u32 = 16 << 20;
/// How long a stop waits for links that were already closing (a removal in progress: the
/// kernel takes ~0.1 s per link; the probes no longer admit hits anyway).
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How often probes with `disable_above` are measured.
const RUNAWAY_EVERY: Duration = Duration::from_secs(1);

/// `probed daemon` arguments.
#[derive(Args, Clone, Debug)]
pub struct DaemonArgs {
    /// The configuration file.
    #[arg(
        long,
        short,
        value_name = "FILE",
        default_value = "/etc/probed/probed.toml"
    )]
    pub config: PathBuf,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(args: DaemonArgs, notifier: Notifier) -> anyhow::Result<()> {
    let (source, config) = config::load(&args.config)?;
    crate::logging::apply_config_level(config.log_level.as_ref().map(|l| l.get_ref().as_str()));
    // Signals are taken over before anything is attached: a SIGHUP during start-up must not
    // kill the daemon (its default action), and SIGTERM must still stop it cleanly.
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let control = ControlSocket::bind(&config.control_socket)?;
    // The metrics address is bound before anything is attached, like the control socket: a
    // busy or bad address is a start-up error, not a silently missing endpoint. It is read at
    // start only (a reload does not move it).
    let metrics_listener = match &config.metrics {
        Some(m) => Some(metrics::bind(m.listen).await?),
        None => None,
    };

    // Probes configured with stack copies (`stack = "auto"|"dwarf"`) need a replaying tracker
    // (auto then takes kprobes or syscalls, not lock) and room for their records: the ring
    // then has `probed trace`'s size for the largest copy configured. Such probes added later
    // by `ctl add` or a reload are refused while lock mode runs, and share the ring chosen
    // here (a larger copy than any at start fits fewer times).
    let copy_pages = config
        .probes
        .iter()
        .filter(|p| p.stack.is_some_and(StackMode::copies_stack))
        // A bad size is reported when the probe is checked (apply_config).
        .map(|p| {
            crate::service::daemon::copy_pages(&p.def())
                .unwrap_or(probed_common::STACK_COPY_DEFAULT_PAGES)
        })
        .max()
        .unwrap_or(0);
    let copied_stacks = copy_pages > 0;
    let ring_bytes = probed_common::ring_bytes(DAEMON_RING_BYTES, copy_pages);
    let tracker = TrackerRequest {
        choice: config.tracker,
        copied_stacks,
    };
    let mut tracer = Tracer::load_with_ring(ring_bytes, tracker)?;
    // Verified now, not at the first `ctl add` (on the loop).
    tracer.load_probe_programs()?;
    let (seq, generations, tracked) = tracer.take_tracker()?;
    let stream = EventStream::new(tracer.take_ring()?)?;
    let generations = Arc::new(generations);
    let maps = GenCheckedMaps::new(generations.clone());
    let resolver_config = ResolverConfig {
        reported_changes: true,
        history: tracer.tracker_mode().0.history(),
        ..ResolverConfig::default()
    };
    let resolver = Arc::new(Resolver::with_config(seq, maps, resolver_config));
    let pipeline = Pipeline::new(
        Vec::new(),
        Outputs::stdout_writer(),
        None,
        &resolver,
        Arc::new(Symbolizer::new().with_debuginfod(crate::elf::debuginfod::global())),
    )
    .keep_going_on_write_errors()
    .with_tracker(tracer.tracker_mode().0);
    let (mut daemon, mut inbox) = Daemon::new(
        tracer,
        pipeline,
        stream,
        generations,
        tracked,
        args.config.clone(),
    );
    // Nothing is attached unless every probe checks out; if the kernel refuses one, what
    // was attached is detached again (dropping the tracer) and the start fails.
    daemon.drain_timeout = config.drain_timeout();
    daemon.ring_bytes = ring_bytes;
    let applied = daemon
        .apply_config(&source, &config)
        .with_context(|| format!("cannot start with {}", args.config.display()))?;
    tracing::info!(config = %args.config.display(), socket = %control.path().display(), "{applied}");
    eprintln!(
        "probed: daemon running with {} probe(s); control socket {}",
        daemon.probes.attached(),
        control.path().display()
    );
    // Only now, with every probe attached: `systemctl start` returns, and units ordered
    // after probed start, once tracing really runs.
    notify(notifier.ready());
    notify(notifier.status(&format!("{} probe(s) attached", daemon.probes.attached())));
    let mut watchdog_tick = notifier.watchdog_interval().map(|every| {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });

    let (calls_tx, mut calls) = mpsc::channel::<Call>(16);
    // Scrapes come to the loop like control calls; without `[metrics]` the sender is dropped
    // at once and the loop's scrape branch never fires.
    let (scrape_tx, mut scrapes) = mpsc::channel::<metrics::ScrapeRequest>(16);
    if let Some(listener) = metrics_listener {
        tracing::info!(listen = %listener.local_addr()?, "metrics endpoint at /metrics");
        tokio::spawn(metrics::serve(listener, scrape_tx));
    } else {
        drop(scrape_tx);
    }
    let serve_control = control.serve(calls_tx);
    tokio::pin!(serve_control);
    let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut runaway_tick = tokio::time::interval(RUNAWAY_EVERY);
    runaway_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // Signals first, the ring last, and every batch bounded (stop::BATCH): however fast hits
    // come, the loop gets back to its signals, timers, control calls and watchdog.
    loop {
        tokio::select! {
            biased;
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = runaway_tick.tick() => {
                daemon.check_runaways(std::time::Instant::now());
            }
            Some(call) = calls.recv() => {
                daemon.answer(call);
                flush(&mut daemon);
            }
            Some(done) = inbox.closed.recv() => {
                daemon.on_closed(done);
                flush(&mut daemon);
            }
            Some(done) = inbox.prepared.recv() => match done {
                Done::Add { token, def, outcome } => {
                    daemon.finish_add(token, def, *outcome);
                    flush(&mut daemon);
                }
                Done::Reload { source, config, prepared } => {
                    let (result, again) = daemon.finish_reload(&source, &config, prepared);
                    // READY=1 ends the reload whether the new config was taken or rejected.
                    notify(notifier.ready());
                    reloaded(&mut daemon, &args.config, result);
                    flush(&mut daemon);
                    if again {
                        start_reload(&mut daemon, &notifier, &args.config);
                    }
                }
            },
            Some(reply) = scrapes.recv() => {
                let _ = reply.send(daemon.metrics_snapshot());
            }
            () = &mut serve_control => {}
            // Pinged from this loop, so a loop stuck in any branch stops the pings.
            _ = async {
                match &mut watchdog_tick {
                    Some(tick) => tick.tick().await,
                    None => std::future::pending().await,
                }
            } => notify(notifier.watchdog()),
            // The new probes are prepared off the loop (prepare.rs); applied when ready.
            _ = sighup.recv() => start_reload(&mut daemon, &notifier, &args.config),
            // Last: under a flood the ring is always ready, and everything above must still
            // get its turn.
            batch = daemon.stream.next_batch(
                crate::stop::BATCH,
                |event| daemon.pipeline.handle_event(&event),
            ) => {
                batch.context("reading the hit ring buffer")?;
                flush(&mut daemon);
            }
            _ = drain_tick.tick() => {
                daemon.drain_batch();
                flush(&mut daemon);
            }
        }
        crate::stop::yield_to_drivers().await;
    }

    notify(notifier.stopping());
    tracing::info!("stopping: detaching probes");
    daemon.stop_probes();
    // Links already closing (removals, runaways) finish on their own; wait for them, briefly,
    // so that their last hits are written too.
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    while daemon.closing() {
        match tokio::time::timeout_at(deadline, inbox.closed.recv()).await {
            Ok(Some(done)) => daemon.on_closed(done),
            _ => break,
        }
    }
    // A bounded drain (stop.rs): what is left at the deadline, or at a second signal, is
    // counted as dropped_at_stop.
    let timeout = daemon.drain_timeout;
    let unread = daemon.unread_hits();
    let Daemon {
        stream, pipeline, ..
    } = &mut daemon;
    crate::stop::finish(
        stream,
        pipeline,
        unread,
        timeout,
        DAEMON_RING_BYTES,
        &mut sigint,
        &mut sigterm,
    )
    .await;
    if let Err(err) = daemon.pipeline.flush() {
        tracing::error!(error = %err, "flushing outputs at exit failed");
    }
    // The control socket's file is removed as `control` drops, on this and every error path.
    Ok(())
}

/// A SIGHUP: starts a reload, or queues it behind the one under way.
fn start_reload(daemon: &mut Daemon, notifier: &Notifier, config: &Path) {
    if daemon.reload_in_flight() {
        daemon.queue_reload();
        return;
    }
    notify(notifier.reloading());
    if let Err(err) = daemon.start_reload() {
        notify(notifier.ready());
        reloaded(daemon, config, Err(err));
    }
}

/// Counts and logs a reload's outcome.
fn reloaded(daemon: &mut Daemon, config: &Path, result: Result<String, ApplyError>) {
    match result {
        Ok(applied) => {
            daemon.reloads += 1;
            tracing::info!(config = %config.display(), "reloaded: {applied}");
        }
        Err(err) => {
            daemon.reload_failures += 1;
            tracing::error!(
                config = %config.display(),
                "reload rejected, the running configuration stays: {}",
                crate::cli::one_line(&anyhow::Error::new(err))
            );
        }
    }
}

/// A failed notification is logged, never fatal: systemd may have gone away (its own stop),
/// and the daemon's work does not depend on it.
fn notify(result: Result<(), NotifyError>) {
    if let Err(err) = result {
        tracing::warn!("{}", crate::cli::one_line(&anyhow::Error::new(err)));
    }
}

/// Flushes the outputs after a batch: hits are written as they come, not when a buffer
/// fills. A failing output is counted per probe by the pipeline; the daemon goes on.
fn flush(daemon: &mut Daemon) {
    // Lock mode: pictures of changed processes, once per batch.
    daemon.pipeline.end_batch();
    if let Err(err) = daemon.pipeline.flush() {
        tracing::debug!(error = %err, "flushing an output failed");
    }
}
