//! What the daemon asks of the kernel side — configure and attach a probe, close its link,
//! stop admitting hits, read its BPF counters, start tracking the processes that already map
//! a probed file — as one trait, so that the daemon core (`core.rs`) runs the same code over
//! BPF ([`BpfKernel`]) and, in tests without root, over a fake (`fake_kernel.rs`).

use std::{collections::HashSet, num::NonZeroU32, sync::Arc};

use probed_common::ProbeStats;

use crate::{
    attach::{AttachError, AttachRequest, ProbeLink, RateLimit, Tracer, TrackerErrors},
    file_id::FileId,
    pidns::PidNamespace,
    resolve::{Resolver, SeqSource},
    ring_source::{BpfRing, RingSource},
    track::{BpfSeq, Generations, Tracked},
};

/// Everything BPF needs to know to run one probe, applied in one step.
pub struct ProbeSetup<'a> {
    /// The probe's id (its attach cookie and its slot in the BPF maps).
    pub id: u32,
    /// Whether the id was used before: its BPF counters start again from zero.
    pub reused: bool,
    /// Per-probe flags (stack capture, copy size).
    pub flags: u32,
    /// Admission rate limit.
    pub limit: Option<RateLimit>,
    /// Only hits from this pid namespace.
    pub pidns: Option<PidNamespace>,
    /// Where to attach.
    pub request: &'a AttachRequest,
    /// Only this process (else every process mapping the file).
    pub pid: Option<NonZeroU32>,
    /// The file whose processes the change tracker must follow (probes of every process).
    pub watch: Option<FileId>,
}

/// The kernel side of the daemon.
pub trait Kernel {
    /// The sequence counters the resolver validates against.
    type Seq: SeqSource + 'static;
    /// An attached probe's link; dropping it detaches (off the loop: it takes ~0.1 s).
    type Link: Send + 'static;
    /// Where hit records come from.
    type Ring: RingSource;

    /// Configures and attaches one probe. On an error nothing of it stays attached.
    fn attach_probe(&mut self, setup: &ProbeSetup<'_>) -> Result<(), AttachError>;
    /// Takes probe `id`'s link out (None if it has none: never attached, or already taken).
    fn take_link(&mut self, id: u32) -> Option<Self::Link>;
    /// No probe admits hits from now on (the first step of a stop).
    fn stop_admitting(&mut self) -> Result<(), AttachError>;
    /// Closes every link still open.
    fn detach_all(&mut self);
    /// Probe `id`'s BPF counters.
    fn stats(&self, id: u32) -> Result<ProbeStats, AttachError>;
    /// The change tracker's error counters, by name.
    fn tracker_errors(&self) -> Result<TrackerErrors, AttachError>;
    /// Starts tracking the running processes that map one of `files` (only `pid`, if
    /// given), registering each with `resolver`. Returns how many.
    fn track_running(
        &self,
        files: &HashSet<FileId>,
        pid: Option<u32>,
        resolver: &Resolver<Self::Seq>,
    ) -> usize;
}

/// The kernel side over BPF: the loaded object, and the tracker's maps of generations and
/// tracked processes.
pub struct BpfKernel {
    /// The loaded BPF object and its links.
    tracer: Tracer,
    generations: Arc<Generations>,
    tracked: Tracked,
}

impl BpfKernel {
    /// Wraps a loaded tracer whose tracker maps were taken out.
    pub fn new(tracer: Tracer, generations: Arc<Generations>, tracked: Tracked) -> Self {
        Self {
            tracer,
            generations,
            tracked,
        }
    }
}

impl Kernel for BpfKernel {
    type Seq = BpfSeq;
    type Link = ProbeLink;
    type Ring = BpfRing;

    fn attach_probe(&mut self, setup: &ProbeSetup<'_>) -> Result<(), AttachError> {
        let id = setup.id;
        if setup.reused {
            self.tracer.reset_probe(id)?;
        }
        self.tracer.set_probe_flags(id, setup.flags)?;
        self.tracer.set_rate_limit(id, setup.limit)?;
        self.tracer.set_pidns_filter(id, setup.pidns)?;
        self.tracer.attach(setup.request, setup.pid)?;
        if let Some(file) = setup.watch
            && let Err(err) = self.tracer.watch_files([file])
        {
            // Attached but not followed: closed again, so that the id the daemon frees on
            // this error has no link left under it (its next user would find one).
            drop(self.tracer.take_link(id));
            return Err(err);
        }
        Ok(())
    }

    fn take_link(&mut self, id: u32) -> Option<ProbeLink> {
        self.tracer.take_link(id)
    }

    fn stop_admitting(&mut self) -> Result<(), AttachError> {
        self.tracer.stop_admitting()
    }

    fn detach_all(&mut self) {
        self.tracer.detach_all();
    }

    fn stats(&self, id: u32) -> Result<ProbeStats, AttachError> {
        self.tracer.stats(id)
    }

    fn tracker_errors(&self) -> Result<TrackerErrors, AttachError> {
        self.tracer.tracker_errors()
    }

    fn track_running(
        &self,
        files: &HashSet<FileId>,
        pid: Option<u32>,
        resolver: &Resolver<BpfSeq>,
    ) -> usize {
        crate::track::preexisting::track_mapping_processes(
            files,
            pid,
            &self.generations,
            &self.tracked,
            resolver,
            &|_| {},
        )
        .len()
    }
}
