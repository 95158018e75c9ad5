//! The daemon core: from a built [`Daemon`] to a clean exit. Applies the config (nothing
//! attached unless all of it checks out), tells systemd it is ready, runs the event loop —
//! stop and reload signals, control calls, scrapes, links closed and probes prepared off the
//! loop, runaways, the ring — and stops: detach, bounded drain, flush.
//!
//! Separate from `run.rs`, which loads the BPF object and turns Unix signals into
//! [`Signal`]s, so that a test drives this whole loop in-process, without root, over a fake
//! kernel side (`core_tests.rs`).

use std::{path::PathBuf, time::Duration};

use tokio::{net::TcpListener, sync::mpsc};

use crate::{
    config::{Config, Source},
    metrics,
    service::{
        control::{Call, ControlSocket},
        daemon::{Daemon, Inbox},
        kernel::Kernel,
        notify::{Notifier, NotifyError},
        op_error::ApplyError,
        prepare::Done,
    },
};

/// How often the ring buffer is drained without a wake-up (see trace.rs).
const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// How long a stop waits for links that were already closing (a removal in progress: the
/// kernel takes ~0.1 s per link; the probes no longer admit hits anyway).
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How often probes with `disable_above` are measured.
const RUNAWAY_EVERY: Duration = Duration::from_secs(1);

/// What the outside asks of the loop (run.rs: SIGTERM and SIGINT stop, SIGHUP reloads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Stop; a second one during the stop's drain ends it at once.
    Stop,
    /// Reload the config file.
    Reload,
}

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The config's probes could not all be attached at start.
    #[error("cannot start with {}", path.display())]
    Start {
        /// The config file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ApplyError,
    },
    /// The metrics listener has no address (it was bound: should not happen).
    #[error("the metrics listener has no local address")]
    MetricsAddress(#[source] std::io::Error),
    /// Reading the hit ring buffer failed.
    #[error("reading the hit ring buffer")]
    Ring(#[source] std::io::Error),
}

/// What the core runs over: the daemon, the channels work done off the loop reports on,
/// the endpoints already bound, and systemd's notifier.
pub struct Core<K: Kernel> {
    /// The daemon, no probe attached yet.
    pub daemon: Daemon<K>,
    /// Its reports from off the loop.
    pub inbox: Inbox,
    /// The bound control socket.
    pub control: ControlSocket,
    /// The bound metrics listener, if `[metrics]` is configured.
    pub metrics: Option<TcpListener>,
    /// systemd's notification socket (or none).
    pub notifier: Notifier,
}

/// Applies `config` (read from `source`) and runs the daemon until a [`Signal::Stop`].
pub async fn serve<K: Kernel>(
    core: Core<K>,
    source: &Source,
    config: &Config,
    mut signals: mpsc::UnboundedReceiver<Signal>,
) -> Result<(), CoreError> {
    let Core {
        mut daemon,
        mut inbox,
        control,
        metrics,
        notifier,
    } = core;
    let config_path = daemon.config_path.clone();
    // Nothing is attached unless every probe checks out; if the kernel refuses one, what
    // was attached is detached again (dropping the daemon) and the start fails.
    let applied = daemon
        .apply_config(source, config)
        .map_err(|source| CoreError::Start {
            path: config_path.clone(),
            source,
        })?;
    tracing::info!(config = %config_path.display(), socket = %control.path().display(), "{applied}");
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
    let metrics_task = match metrics {
        Some(listener) => {
            let at = listener.local_addr().map_err(CoreError::MetricsAddress)?;
            tracing::info!(listen = %at, "metrics endpoint at /metrics");
            Some(tokio::spawn(metrics::serve(listener, scrape_tx)))
        }
        None => {
            drop(scrape_tx);
            None
        }
    };
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
            Some(signal) = signals.recv() => match signal {
                Signal::Stop => break,
                // The new probes are prepared off the loop (prepare.rs); applied when ready.
                Signal::Reload => start_reload(&mut daemon, &notifier),
            },
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
                    reloaded(&mut daemon, result);
                    flush(&mut daemon);
                    if again {
                        start_reload(&mut daemon, &notifier);
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
            // Last: under a flood the ring is always ready, and everything above must still
            // get its turn.
            batch = daemon.stream.next_batch(
                crate::stop::BATCH,
                |event| daemon.pipeline.handle_event(&event),
            ) => {
                batch.map_err(CoreError::Ring)?;
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
    if let Some(task) = metrics_task {
        task.abort();
    }
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
    // A bounded drain (stop.rs): what is left at the deadline, or at a second stop signal,
    // is counted as dropped_at_stop.
    let timeout = daemon.drain_timeout;
    let ring_bytes = daemon.ring_bytes;
    let unread = daemon.unread_hits();
    let again = async {
        while let Some(signal) = signals.recv().await {
            if signal == Signal::Stop {
                return;
            }
        }
        std::future::pending::<()>().await;
    };
    let Daemon {
        stream, pipeline, ..
    } = &mut daemon;
    crate::stop::finish_until(stream, pipeline, unread, timeout, ring_bytes, again).await;
    if let Err(err) = daemon.pipeline.flush() {
        tracing::error!(error = %err, "flushing outputs at exit failed");
    }
    // The control socket's file is removed as `control` drops, on this and every error path.
    Ok(())
}

/// A reload: starts one, or queues it behind the one under way.
fn start_reload<K: Kernel>(daemon: &mut Daemon<K>, notifier: &Notifier) {
    if daemon.reload_in_flight() {
        daemon.queue_reload();
        return;
    }
    notify(notifier.reloading());
    if let Err(err) = daemon.start_reload() {
        notify(notifier.ready());
        reloaded(daemon, Err(err));
    }
}

/// Counts and logs a reload's outcome.
fn reloaded<K: Kernel>(daemon: &mut Daemon<K>, result: Result<String, ApplyError>) {
    let config = daemon.config_path.display().to_string();
    match result {
        Ok(applied) => {
            daemon.reloads += 1;
            tracing::info!(%config, "reloaded: {applied}");
        }
        Err(err) => {
            daemon.reload_failures += 1;
            tracing::error!(
                %config,
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
fn flush<K: Kernel>(daemon: &mut Daemon<K>) {
    // Lock mode: pictures of changed processes, once per batch.
    daemon.pipeline.end_batch();
    if let Err(err) = daemon.pipeline.flush() {
        tracing::debug!(error = %err, "flushing an output failed");
    }
}
