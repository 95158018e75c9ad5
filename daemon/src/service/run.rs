//! `probed daemon --config FILE`: start-up over BPF, then the core (`core.rs`) serves and
//! stops.
//!
//! Start-up order is chosen so that a bad config or a busy socket leaves nothing behind:
//! load and check the config (file:line:column errors), bind the control socket, load the BPF
//! object, check every probe against its file and open every output, and only then attach.
//! READY=1 goes to systemd once all of that is done.
//!
//! Stop (SIGTERM, SIGINT, turned into `core::Signal::Stop`; SIGHUP into `Reload`): detach
//! every probe, take the hits already in the ring buffer, flush the outputs, remove the
//! socket, exit 0 — bounded by the drain, which reads what is there and does not wait. SIGKILL leaves nothing attached either: links are file
//! descriptors and die with the process (tested in daemon/tests/service_daemon.rs).

use std::{path::PathBuf, sync::Arc};

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
        control::ControlSocket,
        core::{self, Core, Signal},
        daemon::Daemon,
        kernel::BpfKernel,
        notify::Notifier,
        outputs::Outputs,
    },
    symbolize::Symbolizer,
    track::{GenCheckedMaps, TrackerRequest},
    unwind::StackMode,
};

/// The daemon's hit ring buffer: 16 MiB, four times `probed trace`'s. Attaching a probe holds
/// the event loop while the kernel registers the uprobe (20 ms idle, ~0.1 s under load,
/// measured), and a long-lived service meets bursts a one-off trace does not; the ring is
/// what absorbs hits meanwhile (~110,000 hit records).
pub(super) const DAEMON_RING_BYTES: u32 = 16 << 20;

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
    let signals = forward_signals()?;
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
    let mut tracer = Tracer::load_with_rings(ring_bytes, 1, tracker)?;
    // Verified now, not at the first `ctl add` (on the loop).
    tracer.load_probe_programs()?;
    let (seq, generations, tracked) = tracer.take_tracker()?;
    let stream = EventStream::new(tracer.take_ring()?)?;
    let tracker_mode = tracer.tracker_mode().0;
    let generations = Arc::new(generations);
    let maps = GenCheckedMaps::new(generations.clone());
    let resolver_config = ResolverConfig {
        reported_changes: true,
        history: tracker_mode.history(),
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
    .with_tracker(tracker_mode);
    let kernel = BpfKernel::new(tracer, generations, tracked);
    let (mut daemon, inbox) = Daemon::new(kernel, pipeline, stream, args.config.clone());
    daemon.drain_timeout = config.drain_timeout();
    daemon.ring_bytes = ring_bytes;
    let core = Core {
        daemon,
        inbox,
        control,
        metrics: metrics_listener,
        notifier,
    };
    Ok(core::serve(core, &source, &config, signals).await?)
}

/// Takes over SIGTERM, SIGINT (stop) and SIGHUP (reload) and sends them to the loop as
/// [`Signal`]s.
fn forward_signals() -> std::io::Result<mpsc::UnboundedReceiver<Signal>> {
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                _ = sigterm.recv() => Signal::Stop,
                _ = sigint.recv() => Signal::Stop,
                _ = sighup.recv() => Signal::Reload,
            };
            if tx.send(signal).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
