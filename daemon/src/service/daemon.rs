//! The daemon's state and every operation on it: attach and detach probes, reload, answer
//! control requests, detach runaways, drain the ring buffer. Owned by one task (run.rs).

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::Instant,
};

use probed_common::MAX_PROBES;
use tokio::sync::{mpsc, oneshot};

use crate::{
    attach::RateLimit,
    config::{Config, ProbeConfig, ProbeDef, Source},
    events::EventStream,
    output::sink::Sink,
    pidns::PidNamespace,
    pipeline::Pipeline,
    probes::Probe,
    resolve::ProbeId,
    service::{
        kernel::{BpfKernel, Kernel, ProbeSetup},
        op_error::{ApplyError, ProbeOpError},
        outputs::Outputs,
        prepare::{self, Done, Prepared},
        probe_set::{Entry, Origin, ProbeSet},
        reload::{self, ReloadState},
        reply::{Removed, Reply},
        runaway::RateMeter,
    },
};

/// A probe checked against its file and given an id, not attached yet.
pub struct Planned {
    /// What was asked for.
    pub def: ProbeDef,
    /// The checked probe.
    pub probe: Probe,
    /// Whether the id was used before (its BPF counters need zeroing).
    pub reused: bool,
    /// The pid namespace hits must come from (`container`).
    pub pidns: Option<PidNamespace>,
}

/// A probe's link finished closing (off the event loop).
#[derive(Debug)]
pub struct Closed {
    /// The probe.
    pub id: u32,
}

/// The daemon: over BPF in production, over a fake kernel in the core's tests.
pub struct Daemon<K: Kernel = BpfKernel> {
    pub(super) kernel: K,
    pub(super) pipeline: Pipeline<Sink, K::Seq>,
    pub(super) stream: EventStream<K::Ring>,
    pub(super) probes: ProbeSet,
    pub(super) outputs: Outputs,
    /// The config file (reloaded from this path).
    pub config_path: PathBuf,
    meter: RateMeter,
    /// When the daemon started.
    pub started: Instant,
    /// Successful reloads.
    pub reloads: u64,
    /// Rejected reloads.
    pub reload_failures: u64,
    /// Probes whose links are closing.
    closing: HashSet<u32>,
    /// Where closers report.
    closed_tx: mpsc::UnboundedSender<Closed>,
    /// `ctl remove` replies waiting for a close, by probe.
    pub(super) waiting: HashMap<u32, Vec<oneshot::Sender<Reply>>>,
    /// How long a stop processes what is left in the ring (the config's `drain_timeout`,
    /// as of the last applied config).
    pub drain_timeout: std::time::Duration,
    /// The hit ring buffer's size (bounds a drain; `run.rs` chooses it).
    pub ring_bytes: u32,
    /// Where threads preparing probes report (prepare.rs).
    pub(super) prepared_tx: mpsc::UnboundedSender<Done>,
    /// `ctl add` replies waiting for their probe to be prepared, by token.
    pub(super) adding: HashMap<u64, oneshot::Sender<Reply>>,
    /// The next `ctl add` token.
    pub(super) next_token: u64,
    /// A reload under way.
    pub(super) reload: ReloadState,
}

/// What reaches the loop from off it: closed links, prepared probes.
pub struct Inbox {
    /// For [`Daemon::on_closed`].
    pub closed: mpsc::UnboundedReceiver<Closed>,
    /// For [`Daemon::finish_add`] and [`Daemon::finish_reload`].
    pub prepared: mpsc::UnboundedReceiver<Done>,
}

impl<K: Kernel> Daemon<K> {
    /// The daemon around a loaded kernel side, with no probes yet, and the channels on which
    /// work done off the loop reports (the loop passes each report back to the daemon).
    pub fn new(
        kernel: K,
        pipeline: Pipeline<Sink, K::Seq>,
        stream: EventStream<K::Ring>,
        config_path: PathBuf,
    ) -> (Self, Inbox) {
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let (prepared_tx, prepared) = mpsc::unbounded_channel();
        let daemon = Self {
            kernel,
            pipeline,
            stream,
            probes: ProbeSet::new(MAX_PROBES),
            outputs: Outputs::new(),
            config_path,
            meter: RateMeter::default(),
            started: Instant::now(),
            reloads: 0,
            reload_failures: 0,
            closing: HashSet::new(),
            closed_tx,
            waiting: HashMap::new(),
            drain_timeout: crate::stop::DEFAULT_DRAIN_TIMEOUT,
            ring_bytes: super::run::DAEMON_RING_BYTES,
            prepared_tx,
            adding: HashMap::new(),
            next_token: 0,
            reload: ReloadState::default(),
        };
        (daemon, Inbox { closed, prepared })
    }

    /// The probes `config` adds to what runs.
    pub fn config_adds(&self, config: &Config) -> Vec<ProbeDef> {
        let wanted: Vec<ProbeDef> = config.probes.iter().map(ProbeConfig::def).collect();
        reload::diff(&self.probes, &wanted).add
    }

    /// Checks every probe of `config` and opens its outputs, then attaches everything —
    /// nothing is attached unless all of it checks out. Used at start, before the loop runs
    /// (a reload prepares off the loop: [`Daemon::start_reload`]).
    pub fn apply_config(&mut self, source: &Source, config: &Config) -> Result<String, ApplyError> {
        let prepared = prepare::prepare_all(self.config_adds(config));
        self.apply_prepared(source, config, prepared)
    }

    /// [`Daemon::apply_config`] with the new probes already prepared (`prepared`: by
    /// definition; one missing is prepared here).
    pub fn apply_prepared(
        &mut self,
        source: &Source,
        config: &Config,
        mut prepared: Vec<(ProbeDef, prepare::Outcome)>,
    ) -> Result<String, ApplyError> {
        let wanted: Vec<ProbeDef> = config.probes.iter().map(ProbeConfig::def).collect();
        let diff = reload::diff(&self.probes, &wanted);
        let opened = self.outputs.open(config)?;
        let mut planned: Vec<Planned> = Vec::new();
        for def in &diff.add {
            let at = config
                .probes
                .iter()
                .find(|p| p.def() == *def)
                .map(|p| p.spec.span());
            // Prepared off the loop — unless the set changed meanwhile (a config probe
            // removed with `ctl remove` while the reload was prepared): rare, done here.
            let outcome = match prepared.iter().position(|(d, _)| d == def) {
                Some(i) => prepared.swap_remove(i).1,
                None => prepare::prepare(def),
            };
            match self.check(def).and(outcome).and_then(|p| self.number(p)) {
                Ok(p) => planned.push(p),
                Err(err) => {
                    for p in &planned {
                        self.probes.release(p.probe.id);
                    }
                    // A config probe is reported at its place in the file.
                    return Err(match at {
                        Some(span) => ApplyError::Probe(source.error_at(span, err.one_line())),
                        None => ApplyError::Unplaced(err),
                    });
                }
            }
        }
        // Checked: now change things. Outputs first (new probes may write to them), then
        // detach what goes, then attach what comes.
        let pipeline = &mut self.pipeline;
        let names = opened.names().to_vec();
        self.outputs.install(opened, |sink, writer| {
            drop(pipeline.set_writer(sink, writer))
        });
        for &id in &diff.remove {
            self.start_remove(id);
        }
        let mut failed = Vec::new();
        let added = planned.len();
        for p in planned {
            let spec = p.def.spec.clone();
            if let Err(err) = self.attach(p, Origin::Config) {
                failed.push((spec, err));
            }
            // Each attach holds the loop for a uprobe registration: take (a batch of) the hits
            // that arrived meanwhile before the next one, so a long reload does not fill the
            // ring — a batch, not everything: under a flood "everything" is unbounded work.
            self.drain_batch();
        }
        let in_use: Vec<String> = self
            .probes
            .iter()
            .filter(|(_, e)| !e.removing)
            .map(|(_, e)| e.def.output.clone())
            .collect();
        let pipeline = &mut self.pipeline;
        self.outputs
            .close_unused(&names, in_use.iter().map(String::as_str), |sink, writer| {
                drop(pipeline.set_writer(sink, writer))
            });
        if !failed.is_empty() {
            return Err(ApplyError::Attach(failed));
        }
        Ok(format!(
            "{added} probe(s) attached, {} detached, {} unchanged",
            diff.remove.len(),
            diff.unchanged
        ))
    }

    /// The checks of `def` that need the daemon's state and no file: a stack copy under the
    /// lock tracker, a dead pid. Quick, on the loop.
    pub fn check(&self, def: &ProbeDef) -> Result<(), ProbeOpError> {
        if let Some(mode) = def.stack
            && mode.copies_stack()
            && !self.pipeline.tracker().replays()
        {
            return Err(ProbeOpError::CopiedStacksUnderLock {
                mode: mode.as_str(),
            });
        }
        copy_pages(def)?;
        prepare::pid_alive(def.pid)
    }

    /// Gives a prepared probe its id.
    pub fn number(&mut self, prepared: Prepared) -> Result<Planned, ProbeOpError> {
        let Prepared {
            def,
            mut probe,
            pidns,
        } = prepared;
        let (id, reused) = self
            .probes
            .reserve()
            .ok_or(ProbeOpError::TooMany { max: MAX_PROBES })?;
        probe.id = id;
        Ok(Planned {
            def,
            probe,
            reused,
            pidns,
        })
    }

    /// Attaches a planned probe and starts taking its hits.
    pub fn attach(&mut self, planned: Planned, origin: Origin) -> Result<u32, ProbeOpError> {
        let Planned {
            def,
            mut probe,
            reused,
            pidns,
        } = planned;
        let id = probe.id;
        let pages = copy_pages(&def).unwrap_or(probed_common::STACK_COPY_DEFAULT_PAGES);
        let request = probe.attach_request();
        let result = self.kernel.attach_probe(&ProbeSetup {
            id,
            reused,
            flags: def
                .stack
                .map_or(0, |mode| crate::trace::stack_flags(mode, pages)),
            limit: def.rate_limit.map(|rate| RateLimit {
                per_sec: rate.get(),
                burst: def.burst.unwrap_or(rate).get(),
            }),
            pidns,
            request: &request,
            pid: def.pid,
            watch: def.pid.is_none().then_some(probe.target.id),
        });
        // Attached (or not): a container's file need not stay open.
        probe.release_file();
        if let Err(err) = result {
            self.probes.release(id);
            return Err(err.into());
        }
        let resolver = self.pipeline.resolver().clone();
        resolver
            .registry()
            .insert(probe.target.id, probe.file_offset, ProbeId(id));
        let files: HashSet<_> = [probe.target.id].into_iter().collect();
        let running = self
            .kernel
            .track_running(&files, def.pid.map(NonZeroU32::get), &resolver);
        let sink = self.outputs.sink(&def.output).unwrap_or(0);
        let host_path = probe
            .in_container
            .as_ref()
            .map(|c| c.host_path.display().to_string());
        tracing::info!(probe = id, spec = %def.spec, output = %def.output, running, host_path, file = %probe.target.id, "probe attached");
        self.pipeline.add_probe(probe, sink);
        if let Some(mode) = def.stack {
            self.pipeline.set_probe_stack_mode(id, mode);
        }
        self.probes.insert(
            id,
            Entry {
                def,
                origin,
                disabled: None,
                removing: false,
            },
        );
        Ok(id)
    }

    /// Starts removing probe `id`: its link is closed off the event loop (closing waits for
    /// the kernel, ~0.1 s) and [`Daemon::on_closed`] finishes the removal. Returns false if
    /// there is no such probe; true if the removal is under way or done.
    pub fn start_remove(&mut self, id: u32) -> bool {
        let Some(entry) = self.probes.get_mut(id) else {
            return false;
        };
        if entry.removing {
            return true;
        }
        entry.removing = true;
        match self.kernel.take_link(id) {
            Some(link) => self.close_async(id, link),
            // Already detached (a runaway): done once its close, if any, is.
            None if !self.closing.contains(&id) => self.finish_remove(id),
            None => {}
        }
        true
    }

    /// Drops `link` on the blocking pool and reports [`Closed`] when done.
    fn close_async(&mut self, id: u32, link: K::Link) {
        self.closing.insert(id);
        let tx = self.closed_tx.clone();
        tokio::task::spawn_blocking(move || {
            drop(link);
            let _ = tx.send(Closed { id });
        });
    }

    /// A link finished closing: if its probe is being removed, finish that.
    pub fn on_closed(&mut self, closed: Closed) {
        self.closing.remove(&closed.id);
        if self.probes.get(closed.id).is_some_and(|e| e.removing) {
            self.finish_remove(closed.id);
        }
    }

    /// Whether links are still closing.
    pub fn closing(&self) -> bool {
        !self.closing.is_empty()
    }

    /// Completes a removal once the probe can no longer fire: takes the hits it left in the
    /// ring buffer, then frees its id (so a reused id never gets the old probe's hits) and
    /// answers the `ctl remove` calls waiting for it.
    fn finish_remove(&mut self, id: u32) {
        self.drain();
        let Some(entry) = self.probes.remove(id) else {
            return;
        };
        self.meter.forget(id);
        if let Some((probe, _)) = self.pipeline.remove_probe(id) {
            let registry = self.pipeline.resolver().registry();
            if registry.get(probe.target.id, probe.file_offset) == Some(ProbeId(id)) {
                registry.remove(probe.target.id, probe.file_offset);
                // Another probe at the same place (e.g. with another pid filter) takes over.
                if let Some((other, _)) = self.pipeline.probes().find(|(p, _)| {
                    p.target.id == probe.target.id && p.file_offset == probe.file_offset
                }) {
                    registry.insert(other.target.id, other.file_offset, ProbeId(other.id));
                }
            }
        }
        tracing::info!(probe = id, spec = %entry.def.spec, "probe removed");
        for reply in self.waiting.remove(&id).unwrap_or_default() {
            let _ = reply.send(Reply::Removed(Removed {
                id,
                spec: Some(entry.def.spec.clone()),
            }));
        }
    }

    /// Shutdown, first half: no probe admits hits any more, and every link is closed (after
    /// which no hit is on its way into the ring buffer). The caller then drains with a
    /// deadline (stop.rs).
    pub fn stop_probes(&mut self) {
        if let Err(err) = self.kernel.stop_admitting() {
            tracing::warn!(error = %err, "cannot stop admitting hits in BPF; detaching instead");
        }
        self.kernel.detach_all();
    }

    /// Hit records BPF wrote that the pipeline has not read (exact once no link is open);
    /// `u64::MAX` if a counter cannot be read (then a stop drains until the ring is empty).
    pub fn unread_hits(&self) -> u64 {
        self.pipeline
            .unread_hits(|id| self.kernel.stats(id))
            .unwrap_or(u64::MAX)
    }

    /// Takes every event submitted to the ring buffer before this call — bounded by the
    /// ring's capacity in records, so it ends even while hits keep coming (a removed probe's
    /// id is freed only after this).
    pub fn drain(&mut self) {
        let pipeline = &mut self.pipeline;
        self.stream.drain_submitted(self.ring_bytes, |event| {
            pipeline.handle_event(&event);
        });
    }

    /// Takes at most one batch of events (the loop's periodic drain).
    pub fn drain_batch(&mut self) {
        let pipeline = &mut self.pipeline;
        self.stream.drain(crate::stop::BATCH, |event| {
            pipeline.handle_event(&event);
        });
    }

    /// Detaches probes firing faster than their `disable_above`; returns how many.
    pub fn check_runaways(&mut self, now: Instant) -> usize {
        let mut runaway = Vec::new();
        for (id, entry) in self.probes.iter() {
            let Some(limit) = entry.def.disable_above else {
                continue;
            };
            if entry.disabled.is_some() {
                continue;
            }
            let Ok(stats) = self.kernel.stats(id) else {
                continue;
            };
            if let Some(rate) = self.meter.rate(id, stats.hits, now)
                && rate > limit.get() as f64
            {
                runaway.push((id, rate, limit));
            }
        }
        for (id, rate, limit) in &runaway {
            if let Some(link) = self.kernel.take_link(*id) {
                self.close_async(*id, link);
            }
            let reason = format!("fired {rate:.0} times/s, above disable_above = {limit}");
            if let Some(entry) = self.probes.get_mut(*id) {
                tracing::warn!(probe = id, spec = %entry.def.spec, %reason, "runaway probe disabled");
                entry.disabled = Some(reason);
            }
        }
        runaway.len()
    }

    /// The control socket path of the running config.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
}

/// The pages of `def`'s stack copies (`stack_copy_kib`, else the default), or why its
/// `stack_copy_kib` is not a size BPF has a path for.
pub fn copy_pages(def: &ProbeDef) -> Result<usize, ProbeOpError> {
    let Some(kib) = def.stack_copy_kib else {
        return Ok(probed_common::STACK_COPY_DEFAULT_PAGES);
    };
    if !def
        .stack
        .is_some_and(crate::unwind::StackMode::copies_stack)
    {
        return Err(ProbeOpError::StackCopySize(
            "stack_copy_kib needs stack = \"auto\" or \"dwarf\" (a copied stack)".to_owned(),
        ));
    }
    crate::cli::copy_kib_pages(kib as usize)
        .map_err(|why| ProbeOpError::StackCopySize(format!("stack_copy_kib: {why}")))
}
