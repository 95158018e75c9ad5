//! Preparing probes off the event loop. Checking a probe against its file — reading the ELF,
//! finding the symbol — may ask debuginfod for a separate debug file and wait for it, up to
//! its timeouts (30 s a server, elf/debuginfod.rs). On the loop that wait would stop control
//! calls, scrapes, signals and the watchdog pings (`WatchdogSec=30` in dist/probed.service:
//! systemd would kill the daemon in the middle of a `ctl add`). So a `ctl add` and a reload
//! prepare their new probes on a thread of their own; the loop numbers and attaches what
//! comes back ([`Done`]), and answers everything else meanwhile.

use std::{num::NonZeroU32, thread};

use tokio::sync::mpsc;

use crate::{
    config::{Config, ProbeDef, Source},
    container::ContainerRoot,
    pidns::PidNamespace,
    probes::{self, Probe},
    service::op_error::ProbeOpError,
    spec::ProbeSpec,
};

/// A probe checked against its file, not numbered yet (its `probe.id` is 0).
pub struct Prepared {
    /// What was asked for.
    pub def: ProbeDef,
    /// The checked probe.
    pub probe: Probe,
    /// The pid namespace hits must come from (`container`).
    pub pidns: Option<PidNamespace>,
}

/// The outcome of preparing `def`.
pub type Outcome = Result<Prepared, ProbeOpError>;

/// What a preparing thread sends back to the loop.
pub enum Done {
    /// A `ctl add`, with the reply it owes.
    Add {
        /// The call's number (its reply waits in the daemon under it).
        token: u64,
        /// The probe asked for.
        def: ProbeDef,
        /// Prepared, or why not.
        outcome: Box<Outcome>,
    },
    /// A reload: its config and the probes it adds.
    Reload {
        /// The config file's text (for errors placed in it).
        source: Source,
        /// The config.
        config: Box<Config>,
        /// Each probe the config adds, prepared or not.
        prepared: Vec<(ProbeDef, Outcome)>,
    },
}

/// Checks `def` against its file (the SPEC, the container, the file, the symbol). Blocks
/// while debuginfod is asked for a debug file: call it off the loop (or before the loop
/// runs, at start).
pub fn prepare(def: &ProbeDef) -> Outcome {
    let spec: ProbeSpec = def.spec.parse()?;
    let root = def.container.map(ContainerRoot::of_pid).transpose()?;
    let pidns = def.container.map(PidNamespace::of_pid).transpose()?;
    let scope = probes::Scope {
        container: root.as_ref(),
        pid: def.pid,
    };
    let probe = probes::prepare_one(0, spec, scope)?;
    Ok(Prepared {
        def: def.clone(),
        probe,
        pidns,
    })
}

/// Prepares each of `defs`, in order.
pub fn prepare_all(defs: Vec<ProbeDef>) -> Vec<(ProbeDef, Outcome)> {
    defs.into_iter()
        .map(|def| {
            let outcome = prepare(&def);
            (def, outcome)
        })
        .collect()
}

/// Runs `work` on a thread of its own and sends what it returns to the loop. A plain thread,
/// not tokio's blocking pool: the runtime's drop waits for its blocking tasks, and a stop
/// must not wait for a debuginfod server. If the loop has ended, the result is dropped.
pub fn off_loop(
    tx: &mpsc::UnboundedSender<Done>,
    work: impl FnOnce() -> Done + Send + 'static,
) -> Result<(), ProbeOpError> {
    let tx = tx.clone();
    thread::Builder::new()
        .name("probed-prepare".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map(drop)
        .map_err(ProbeOpError::PrepareThread)
}

/// Whether `pid` still runs (checked before preparing: a dead pid is refused at once).
pub fn pid_alive(pid: Option<NonZeroU32>) -> Result<(), ProbeOpError> {
    match pid {
        Some(pid) if !crate::trace::is_alive(pid) => Err(ProbeOpError::NoProcess(pid)),
        _ => Ok(()),
    }
}
