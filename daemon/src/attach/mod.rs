//! Loading the BPF object and attaching uprobes/uretprobes, cookie = probe id.
//!
//! One entry program and one return program are loaded once; every probe is an extra
//! attachment of one of them, told apart in BPF by its attach cookie. Links are file
//! descriptors owned by this process: dropping [`Tracer`] (any exit path) detaches them, and
//! if probed is killed the kernel closes the descriptors and the probes go with them.

mod error;
mod probe_settings;
mod semaphore_link;
mod tracker_hooks;

use std::{collections::HashMap, num::NonZeroU32, os::fd::AsFd as _, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{
        UProbe,
        kprobe::KProbeLinkId,
        raw_trace_point::RawTracePointLinkId,
        trace_point::TracePointLinkId,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope},
    },
};
use probed_common::MAX_PROBES;

pub use self::{error::AttachError, semaphore_link::SemaphoreLink, tracker_hooks::TrackerErrors};
use crate::{
    bpf_object, privileges,
    spec::ProbeKind,
    track::{TrackerMode, TrackerRequest, Unavailable, kprobes, tracepoints},
};

/// Name of the entry program in the BPF object.
const ENTRY_PROGRAM: &str = "probed_entry";
/// Name of the return program in the BPF object.
const RETURN_PROGRAM: &str = "probed_return";
/// Name of the event ring buffer map (hits and process events).
const EVENTS_MAP: &str = "EVENTS";

/// A probe ready to attach: a file and a byte offset in it.
#[derive(Clone, Debug)]
pub struct AttachRequest {
    /// The probe id; becomes the attach cookie.
    pub id: u32,
    /// Entry or return probe.
    pub kind: ProbeKind,
    /// The file to attach to (the kernel keys the uprobe on its inode).
    pub path: PathBuf,
    /// Byte offset of the probed instruction in the file.
    pub file_offset: u64,
    /// Typed arguments BPF evaluates (`PROBE_ARGS`), if any.
    pub args: Option<probed_common::ProbeArgs>,
    /// A USDT semaphore's file offset, incremented by the kernel while attached.
    pub semaphore: Option<u64>,
}

/// An attached probe's link; dropping it detaches the probe.
#[derive(Debug)]
pub enum ProbeLink {
    /// A uprobe attached by aya.
    Aya(UProbeLink),
    /// A uprobe with a USDT semaphore (see `semaphore_link`).
    Semaphore(SemaphoreLink),
}

/// An attached probe, as the tracer keeps it.
#[derive(Debug)]
enum Attached {
    /// aya owns the link, in the program of this kind.
    Aya(ProbeKind, UProbeLinkId),
    /// The tracer owns it.
    Semaphore(SemaphoreLink),
}

/// A per-probe rate limit, enforced in BPF (GCRA, equivalent to a token bucket of `burst`
/// tokens refilled at `per_sec` tokens per second, shared by all CPUs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained hits per second (at least 1).
    pub per_sec: u64,
    /// Hits allowed at once after an idle period (at least 1).
    pub burst: u64,
}

/// The loaded BPF object and the probes attached through it.
pub struct Tracer {
    /// The loaded object; owns programs, maps and links (dropping it detaches everything).
    ebpf: Ebpf,
    /// Attached probes by id.
    links: HashMap<u32, Attached>,
    /// The change tracker's tracepoint links: (program, link).
    tracker_links: Vec<(&'static str, TracePointLinkId)>,
    /// The raw tracepoint links: fork, and in lock mode the mmap_lock ones: (program, link).
    raw_links: Vec<(&'static str, RawTracePointLinkId)>,
    /// Kprobe mode's links: (program, link).
    kprobe_links: Vec<(&'static str, KProbeLinkId)>,
    /// The change tracker's hooks, and why they were chosen.
    tracker_mode: (TrackerMode, String),
}

/// The program a probe of `kind` is an attachment of.
fn program_name(kind: ProbeKind) -> &'static str {
    match kind {
        ProbeKind::Entry => ENTRY_PROGRAM,
        ProbeKind::Return => RETURN_PROGRAM,
    }
}

/// Program `name` of `ebpf`, as the program type `T` it must be.
fn program<'e, T>(ebpf: &'e mut Ebpf, name: &'static str) -> Result<&'e mut T, AttachError>
where
    &'e mut T: TryFrom<&'e mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .ok_or(AttachError::Program(name))?
        .try_into()
        .map_err(|_| AttachError::Program(name))
}

/// The map `name` as the typed view `M` (`Array`, `PerCpuArray`, `HashMap` over
/// `&mut MapData`), to write.
fn map_mut<'e, M>(ebpf: &'e mut Ebpf, name: &'static str) -> Result<M, AttachError>
where
    M: TryFrom<&'e mut aya::maps::Map>,
{
    let map = ebpf.map_mut(name).ok_or(AttachError::Map(name))?;
    M::try_from(map).map_err(|_| AttachError::Map(name))
}

/// The map `name` as the typed view `M` over `&MapData`, to read.
fn map_ref<'e, M>(ebpf: &'e Ebpf, name: &'static str) -> Result<M, AttachError>
where
    M: TryFrom<&'e aya::maps::Map>,
{
    let map = ebpf.map(name).ok_or(AttachError::Map(name))?;
    M::try_from(map).map_err(|_| AttachError::Map(name))
}

impl Tracer {
    /// Checks privileges, loads the embedded BPF object and its two programs.
    pub fn load(tracker: impl Into<TrackerRequest>) -> Result<Self, AttachError> {
        Self::load_with_ring(probed_common::RING_BYTES, tracker)
    }

    /// As [`Tracer::load`], with a hit ring buffer of `ring_bytes` (a power of two, a
    /// multiple of the page size). The daemon uses a larger one: attaching a probe holds its
    /// event loop for a kernel uprobe registration, and the ring absorbs the hits meanwhile.
    pub fn load_with_ring(
        ring_bytes: u32,
        tracker: impl Into<TrackerRequest>,
    ) -> Result<Self, AttachError> {
        let object = bpf_object::bytes()?;
        privileges::check()?;
        // The tracker's hooks are settled before anything is loaded: a refused
        // `--tracker lock` leaves nothing behind (its reason reads the tracepoints' formats).
        tracepoints::ensure_tracefs()?;
        let request: TrackerRequest = tracker.into();
        let lock = tracepoints::lock_mode_unavailable();
        let kprobes = kprobes::available();
        let kernel = Unavailable {
            lock: lock.as_deref(),
            kprobes: kprobes.as_ref().err().map(String::as_str),
        };
        let tracker_mode = request
            .choice
            .decide(kernel, request.copied_stacks)
            .map_err(|why| AttachError::TrackerUnavailable {
                choice: request.choice.as_str(),
                why,
            })?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(EVENTS_MAP, ring_bytes)
            .load(object)
            .map_err(|e| AttachError::Load(Box::new(e)))?;
        for name in [ENTRY_PROGRAM, RETURN_PROGRAM] {
            let program: &mut UProbe = program(&mut ebpf, name)?;
            program.load().map_err(|source| AttachError::ProgramLoad {
                name,
                source: Box::new(source),
            })?;
        }
        // Before the tracker starts and before any probe: probed must never see its own work.
        crate::self_filter::install(&mut ebpf)?;
        let mut tracer = Self {
            ebpf,
            links: HashMap::new(),
            tracker_links: Vec::new(),
            raw_links: Vec::new(),
            kprobe_links: Vec::new(),
            tracker_mode,
        };
        tracer.start_change_tracker(&kprobes.unwrap_or_default())?;
        Ok(tracer)
    }

    /// Attaches one probe, to all processes or to one pid. A pid-scoped probe also filters
    /// by pid in BPF (`PROBE_FLAG_PID`; other processes' hits counted as `filtered`): the
    /// kernel's scope alone let other processes' uretprobe hits through on Debian's 6.12.
    pub fn attach(
        &mut self,
        req: &AttachRequest,
        pid: Option<NonZeroU32>,
    ) -> Result<(), AttachError> {
        if req.id >= MAX_PROBES {
            return Err(AttachError::TooManyProbes(req.id));
        }
        self.set_pid_filter(req.id, pid)?;
        self.set_probe_args(req.id, req.args.as_ref())?;
        let name = program_name(req.kind);
        let program: &mut UProbe = program(&mut self.ebpf, name)?;
        let attach_error = |source| AttachError::Attach {
            kind: req.kind.as_str(),
            path: req.path.clone(),
            file_offset: req.file_offset,
            source,
        };
        if let Some(semaphore) = req.semaphore {
            let fd = program.fd().map_err(|e| attach_error(Box::new(e)))?.as_fd();
            let probe = semaphore_link::SemaphoreProbe {
                path: &req.path,
                offset: req.file_offset,
                semaphore,
                ret: req.kind == ProbeKind::Return,
                pid: pid.map(NonZeroU32::get),
                cookie: u64::from(req.id),
            };
            let link =
                semaphore_link::attach(fd, &probe).map_err(|e| attach_error(Box::new(e.into())))?;
            self.links.insert(req.id, Attached::Semaphore(link));
            return Ok(());
        }
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(req.file_offset),
            cookie: Some(u64::from(req.id)),
        };
        let scope = pid.map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        let link = program
            .attach(point, &req.path, scope)
            .map_err(|e| attach_error(Box::new(e)))?;
        self.links.insert(req.id, Attached::Aya(req.kind, link));
        Ok(())
    }

    /// Detaches one probe; returns whether it was attached.
    pub fn detach(&mut self, id: u32) -> bool {
        let Some(attached) = self.links.remove(&id) else {
            return false;
        };
        let Attached::Aya(kind, link) = attached else {
            return true;
        };
        if let Some(Ok(program)) = self
            .ebpf
            .program_mut(program_name(kind))
            .map(<&mut UProbe>::try_from)
            && let Err(err) = program.detach(link)
        {
            tracing::warn!(probe = id, error = %err, "detaching probe failed");
        }
        true
    }

    /// Takes probe `id`'s link out of the tracer: dropping it detaches the probe. Closing a
    /// uprobe link waits for the kernel to retire the breakpoint (~0.1 s here, measured with
    /// strace: an RCU grace period), so the daemon drops it off its event loop.
    pub fn take_link(&mut self, id: u32) -> Option<ProbeLink> {
        let (kind, link) = match self.links.remove(&id)? {
            Attached::Aya(kind, link) => (kind, link),
            Attached::Semaphore(link) => return Some(ProbeLink::Semaphore(link)),
        };
        let program: &mut UProbe = self.ebpf.program_mut(program_name(kind))?.try_into().ok()?;
        match program.take_link(link) {
            Ok(link) => Some(ProbeLink::Aya(link)),
            Err(err) => {
                tracing::warn!(probe = id, error = %err, "taking a probe's link failed");
                None
            }
        }
    }

    /// Detaches every probe. Events already in the ring buffer stay readable. The links are
    /// closed in parallel: each close waits for a grace period, and concurrent waits share
    /// one.
    pub fn detach_all(&mut self) {
        let ids: Vec<u32> = self.links.keys().copied().collect();
        let links: Vec<ProbeLink> = ids
            .into_iter()
            .filter_map(|id| self.take_link(id))
            .collect();
        close_links(links);
    }

    /// Number of attached probes.
    pub fn attached(&self) -> usize {
        self.links.len()
    }

    /// Takes the event ring buffer (once).
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, AttachError> {
        let map = self
            .ebpf
            .take_map(EVENTS_MAP)
            .ok_or(AttachError::Map(EVENTS_MAP))?;
        RingBuf::try_from(map).map_err(|_| AttachError::Map(EVENTS_MAP))
    }

    /// Makes every probe stop admitting hits at once, before the links are closed (closing
    /// waits for the kernel). Firings from then on are not counted as hits.
    pub fn stop_admitting(&mut self) -> Result<(), AttachError> {
        Ok(crate::self_filter::stop_admitting(&mut self.ebpf)?)
    }
}

impl Drop for Tracer {
    /// Closes every link — probes and the change tracker's ~20 tracepoints — in parallel
    /// before the object goes: each close of a perf-event link waits for the kernel (an RCU
    /// grace period: 30–75 ms each here, measured with strace), and one after the other they
    /// made every exit take about a second, several under load.
    fn drop(&mut self) {
        let mut links: Vec<Box<dyn Send>> = Vec::new();
        let ids: Vec<u32> = self.links.keys().copied().collect();
        for id in ids {
            if let Some(link) = self.take_link(id) {
                links.push(Box::new(link));
            }
        }
        links.extend(self.take_tracker_links());
        close_links(links);
    }
}

/// Closes `links` (detaching what they attach), many at a time, and returns once all are
/// closed.
pub fn close_links<L: Send>(links: Vec<L>) {
    /// Closes waiting at once; each thread closes its share in turn.
    const THREADS: usize = 32;
    if links.len() <= 1 {
        drop(links);
        return;
    }
    let per_thread = links.len().div_ceil(THREADS);
    let mut links = links;
    std::thread::scope(|scope| {
        while !links.is_empty() {
            let share: Vec<L> = links.split_off(links.len().saturating_sub(per_thread));
            scope.spawn(move || drop(share));
        }
    });
}

/// Whether an error chain bottoms out in EPERM/EACCES (for a privileges hint).
pub fn is_permission_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::PermissionDenied
        {
            return true;
        }
        cur = e.source();
    }
    false
}
