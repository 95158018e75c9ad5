//! The daemon's answers to control calls (`ctl list`, `stats`, `add`, `remove`), as typed
//! replies (reply.rs).

use tokio::sync::oneshot;

use super::{
    control::{AddRequest, Call, Request},
    daemon::Daemon,
    kernel::Kernel,
    prepare::{self, Done},
    probe_set::{Entry, Origin},
    reply::{Added, ListReply, ProbeRow, ProbeStatsRow, Removed, Reply, StatsReply},
};
use crate::config::{ProbeDef, STDOUT_OUTPUT};

impl<K: Kernel> Daemon<K> {
    /// Answers a control call: at once, or — for `remove` — once the probe is detached, or —
    /// for `add` — once its probe is prepared off the loop ([`Daemon::finish_add`]).
    pub fn answer(&mut self, call: Call) {
        let Call { request, reply } = call;
        match request {
            Request::Add(add) => self.start_add(def_of(add), reply),
            Request::Remove { id } => self.start_remove_call(id, reply),
            request => {
                let answer = self.reply(request);
                let _ = reply.send(answer);
            }
        }
    }

    /// Starts a `ctl remove`: answered once the probe is detached.
    fn start_remove_call(&mut self, id: u32, reply: oneshot::Sender<Reply>) {
        if !self.start_remove(id) {
            let _ = reply.send(Reply::error(format!("no probe with id {id}")));
        } else if self.probes.get(id).is_some() {
            self.waiting.entry(id).or_default().push(reply);
        } else {
            // Finished at once (it was already detached).
            let _ = reply.send(Reply::Removed(Removed { id, spec: None }));
        }
    }

    /// The reply to a request answered at once.
    fn reply(&mut self, request: Request) -> Reply {
        match request {
            Request::List => Reply::List(ListReply {
                probes: self.list(),
            }),
            Request::Stats => Reply::Stats(Box::new(self.stats())),
            Request::Add(_) => Reply::error("adding is asynchronous".to_owned()),
            Request::Remove { id } => Reply::error(format!("probe {id}: removal is asynchronous")),
        }
    }

    /// Starts a `ctl add`: refused at once if it cannot be added, else prepared off the loop
    /// while `reply` waits.
    fn start_add(&mut self, def: ProbeDef, reply: oneshot::Sender<Reply>) {
        if let Err(refusal) = self.add_refusal(&def) {
            let _ = reply.send(Reply::error(refusal));
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        let started = prepare::off_loop(&self.prepared_tx, move || {
            let outcome = Box::new(prepare::prepare(&def));
            Done::Add {
                token,
                def,
                outcome,
            }
        });
        match started {
            Ok(()) => {
                self.adding.insert(token, reply);
            }
            Err(err) => {
                let _ = reply.send(Reply::error(err.one_line()));
            }
        }
    }

    /// Finishes a `ctl add` whose probe was prepared: checked again against what changed
    /// meanwhile (the same probe added by another call, outputs changed by a reload), given
    /// an id, attached, answered.
    pub fn finish_add(&mut self, token: u64, def: ProbeDef, outcome: prepare::Outcome) {
        let Some(reply) = self.adding.remove(&token) else {
            return;
        };
        let answer = match self.add_refusal(&def) {
            Err(refusal) => Reply::error(refusal),
            Ok(()) => match outcome
                .and_then(|p| self.number(p))
                .and_then(|p| self.attach(p, Origin::Ctl))
            {
                Ok(id) => Reply::Added(Added { id }),
                Err(err) => Reply::error(err.one_line()),
            },
        };
        let _ = reply.send(answer);
    }

    /// Why `def` cannot be added now, if it cannot: the same probe already added, an unknown
    /// output, a stack copy under the lock tracker, a dead pid.
    fn add_refusal(&self, def: &ProbeDef) -> Result<(), String> {
        if self
            .probes
            .iter()
            .any(|(_, e)| e.def == *def && e.origin == Origin::Ctl && !e.removing)
        {
            return Err(format!("the same probe is already attached: {}", def.spec));
        }
        if self.outputs.sink(&def.output).is_none() {
            return Err(format!(
                "no output named `{}` (expected one of: {})",
                def.output,
                self.outputs.names().join(", ")
            ));
        }
        self.check(def).map_err(|e| e.one_line())
    }

    /// Every probe, for `ctl list`.
    fn list(&self) -> Vec<ProbeRow> {
        self.probes
            .iter()
            .map(|(id, e)| ProbeRow {
                id,
                spec: e.def.spec.clone(),
                file: self
                    .pipeline
                    .probe(id)
                    .map(|(p, _)| p.module_path().display().to_string()),
                origin: e.origin,
                state: state(e).to_owned(),
                disabled_reason: e.disabled.clone(),
                output: e.def.output.clone(),
                pid: e.def.pid.map(|p| p.get()),
                container: e.def.container.map(|p| p.get()),
                rate_limit: e.def.rate_limit.map(|r| r.get()),
                burst: e.def.burst.map(|b| b.get()),
                disable_above: e.def.disable_above.map(|d| d.get()),
                stack: e.def.stack,
                stack_copy_kib: e.def.stack_copy_kib,
            })
            .collect()
    }

    /// Counters, for `ctl stats`.
    fn stats(&self) -> StatsReply {
        let probes = self
            .probes
            .iter()
            .map(|(id, entry)| ProbeStatsRow {
                state: state(entry).to_owned(),
                counters: self.probe_metrics(id, entry),
            })
            .collect();
        let resolver = self
            .pipeline
            .resolver_counters()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        // Live processes, as the metrics count them; pictures of exited ones kept for queued
        // hits apart.
        let (mirrors, exited) = self.pipeline.resolver().population();
        StatsReply {
            uptime_s: self.started.elapsed().as_secs_f64(),
            probes,
            attached: self.probes.attached(),
            processes_tracked: mirrors - exited,
            exited_retained: exited,
            resolver,
            tracker: self.pipeline.tracker().as_str().to_owned(),
            tracker_errors: self
                .kernel
                .tracker_errors()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            reloads: self.reloads,
            reload_failures: self.reload_failures,
            malformed_events: self.stream.malformed,
        }
    }
}

/// A probe's state as listed.
fn state(entry: &Entry) -> &'static str {
    if entry.removing {
        "detaching"
    } else if entry.disabled.is_some() {
        "disabled"
    } else {
        "attached"
    }
}

/// A `ctl add` request as a probe definition.
fn def_of(add: AddRequest) -> ProbeDef {
    ProbeDef {
        spec: add.spec,
        output: add.output.unwrap_or_else(|| STDOUT_OUTPUT.to_owned()),
        pid: add.pid,
        container: add.container,
        rate_limit: add.rate_limit,
        burst: add.burst,
        disable_above: add.disable_above,
        stack: add.stack,
        stack_copy_kib: add.stack_copy_kib,
    }
}
