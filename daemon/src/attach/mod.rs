//! Loading the BPF object and attaching uprobes/uretprobes, cookie = probe id.
//!
//! One entry program and one return program are loaded once; every probe is an extra
//! attachment of one of them, told apart in BPF by its attach cookie. Links are file
//! descriptors owned by this process: dropping [`Tracer`] (any exit path) detaches them, and
//! if probed is killed the kernel closes the descriptors and the probes go with them.

mod error;
mod grouped;
mod multi_link;
mod perf_link;
mod probe_settings;
mod rings;
mod tracker_hooks;

use std::{
    collections::HashMap,
    num::NonZeroU32,
    os::fd::{AsFd as _, OwnedFd},
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        UProbe, kprobe::KProbeLinkId, raw_trace_point::RawTracePointLinkId,
        trace_point::TracePointLinkId,
    },
};

use self::perf_link::PerfLink;
pub use self::{
    error::AttachError, perf_link::PerfLink as ProbeLink, rings::usable as usable_rings,
    tracker_hooks::TrackerErrors,
};
use crate::{
    bpf_object, privileges,
    spec::ProbeKind,
    track::{TrackerMode, TrackerRequest, Unavailable, kprobes, tracepoints},
};

/// Name of the entry program in the BPF object.
const ENTRY_PROGRAM: &str = "probed_entry";
/// Name of the return program in the BPF object.
const RETURN_PROGRAM: &str = "probed_return";
/// Name of the entry program of probes with typed arguments (loaded on first use).
const ENTRY_TYPED_PROGRAM: &str = "probed_entry_typed";
/// Name of the return program of probes with a typed return value.
const RETURN_TYPED_PROGRAM: &str = "probed_return_typed";

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
    links: HashMap<u32, PerfLink>,
    /// Probes attached through uprobe_multi links (`probed trace`): (how many, link).
    multi_links: Vec<(usize, multi_link::MultiLink)>,
    /// The multi-link programs (loaded on first use).
    multi: grouped::MultiState,
    /// Every map of the object (name, a descriptor of our own): the multi-link programs
    /// are relocated against them (the ring buffer map is taken out of `ebpf` later).
    map_fds: HashMap<String, OwnedFd>,
    /// The uprobe PMU's facts, read at the first attach.
    pmu: Option<perf_link::UprobePmu>,
    /// The change tracker's tracepoint links: (program, link).
    tracker_links: Vec<(&'static str, TracePointLinkId)>,
    /// The raw tracepoint links: fork, and in lock mode the mmap_lock ones: (program, link).
    raw_links: Vec<(&'static str, RawTracePointLinkId)>,
    /// Kprobe mode's links: (program, link).
    kprobe_links: Vec<(&'static str, KProbeLinkId)>,
    /// The change tracker's hooks, and why they were chosen.
    tracker_mode: (TrackerMode, String),
    /// Ring buffers BPF writes to (see rings.rs).
    rings: usize,
}

/// Threads that attach probes at once at most (see `Tracer::attach_many`).
const ATTACH_THREADS: usize = 8;

/// Why `req` could not be attached.
fn attach_error(req: &AttachRequest, source: Box<aya::programs::ProgramError>) -> AttachError {
    AttachError::Attach {
        kind: req.kind.as_str(),
        path: req.path.clone(),
        file_offset: req.file_offset,
        source,
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
        Self::load_with_rings(probed_common::RING_BYTES, 1, tracker)
    }

    /// As [`Tracer::load`], with hit ring buffers of `ring_bytes` (a power of two, a
    /// multiple of the page size) — one, or `rings` where kseq mode lets each consumer
    /// thread read a ring of its own (rings.rs). The daemon uses a larger one: attaching a
    /// probe holds its event loop for a kernel uprobe registration, and the ring absorbs the
    /// hits meanwhile.
    pub fn load_with_rings(
        ring_bytes: u32,
        rings: usize,
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
        let kseq = crate::track::offsets::kseq_mode_unavailable();
        let kernel = Unavailable {
            lock: lock.as_deref(),
            kprobes: kprobes.as_ref().err().map(String::as_str),
            kseq: kseq.as_deref(),
        };
        let tracker_mode = request
            .choice
            .decide(kernel, request.copied_stacks)
            .map_err(|why| AttachError::TrackerUnavailable {
                choice: request.choice.as_str(),
                why,
            })?;
        let rings = rings::usable(tracker_mode.0, rings);
        let ring_count = rings as u32;
        let mut loader = EbpfLoader::new();
        for name in &probed_common::RING_NAMES[..rings] {
            loader.map_max_entries(name, ring_bytes);
        }
        // A constant of the loaded programs: a process's records never change rings.
        loader.override_global(rings::COUNT_GLOBAL, &ring_count, true);
        let mut ebpf = loader
            .load(object)
            .map_err(|e| AttachError::Load(Box::new(e)))?;
        // The per-probe uprobe programs are loaded when first needed
        // (`load_probe_programs`): a `probed trace` whose probes all go through uprobe_multi
        // links loads copies of its own (grouped.rs) and would verify these for nothing.
        let map_fds = map_fds(&ebpf);
        // Before the tracker starts and before any probe: probed must never see its own work.
        crate::self_filter::install(&mut ebpf)?;
        let mut tracer = Self {
            ebpf,
            links: HashMap::new(),
            multi_links: Vec::new(),
            multi: grouped::MultiState::default(),
            map_fds,
            pmu: None,
            tracker_links: Vec::new(),
            raw_links: Vec::new(),
            kprobe_links: Vec::new(),
            tracker_mode,
            rings,
        };
        tracer.start_change_tracker(&kprobes.unwrap_or_default())?;
        Ok(tracer)
    }

    /// Loads the per-probe uprobe programs (entry and return) unless they are: the
    /// verifier's work, 0.1–0.2 s each on this machine kind. `probed trace` leaves it to the
    /// first probe attached one by one; the daemon and `self-check` call it at start, so
    /// that a refusal is said before anything runs.
    pub fn load_probe_programs(&mut self) -> Result<(), AttachError> {
        self.load_programs(&[ENTRY_PROGRAM, RETURN_PROGRAM])
    }

    /// Loads each of `names` that is not loaded yet.
    fn load_programs(&mut self, names: &[&'static str]) -> Result<(), AttachError> {
        for &name in names {
            let program: &mut UProbe = program(&mut self.ebpf, name)?;
            if program.fd().is_err() {
                program.load().map_err(|source| AttachError::ProgramLoad {
                    name,
                    source: Box::new(source),
                })?;
            }
        }
        Ok(())
    }

    /// Attaches one probe, to all processes or to one pid (see [`Self::attach_many`]).
    pub fn attach(
        &mut self,
        req: &AttachRequest,
        pid: Option<NonZeroU32>,
    ) -> Result<(), AttachError> {
        match self
            .attach_many(std::slice::from_ref(req), pid, &|_| {})?
            .pop()
        {
            Some((_, err)) => Err(err),
            None => Ok(()),
        }
    }

    /// Attaches probes, to all processes or to one pid, many at once: the kernel's uprobe
    /// registration (a breakpoint written into every process that maps the file) is done by
    /// several threads, each with the loaded program's descriptor (`perf_link`);
    /// `progress(n)` is told each time another one is attached. A pid-scoped probe also
    /// filters by pid in BPF (`PROBE_FLAG_PID`; other processes' hits counted as
    /// `filtered`): the kernel's scope alone let other processes' uretprobe hits through on
    /// Debian's 6.12. Returns the requests the kernel refused (index in `reqs`, why), in
    /// order; the others are attached (dropping the tracer detaches them). An error is one
    /// that concerns every request (the programs, the uprobe PMU, the settings maps).
    pub fn attach_many(
        &mut self,
        reqs: &[AttachRequest],
        pid: Option<NonZeroU32>,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<(usize, AttachError)>, AttachError> {
        for req in reqs {
            self.set_probe_settings(req, pid)?;
        }
        let Some(first) = reqs.first() else {
            return Ok(Vec::new());
        };
        let pmu = match self.pmu {
            Some(pmu) => pmu,
            None => {
                let pmu = perf_link::UprobePmu::read()
                    .map_err(|e| attach_error(first, Box::new(e.into())))?;
                *self.pmu.insert(pmu)
            }
        };
        self.load_probe_programs()?;
        // Typed probes run their own programs, loaded on first use: older verifiers refuse
        // them (Debian's 6.1: too complex), which must only refuse typed probes.
        let typed = reqs.iter().any(|r| r.args.is_some());
        if typed {
            self.load_programs(&[ENTRY_TYPED_PROGRAM, RETURN_TYPED_PROGRAM])?;
        }
        let fd = |name: &'static str| -> Result<_, AttachError> {
            let program: &UProbe = self
                .ebpf
                .program(name)
                .ok_or(AttachError::Program(name))?
                .try_into()
                .map_err(|_| AttachError::Program(name))?;
            program
                .fd()
                .map(|fd| fd.as_fd())
                .map_err(|e| attach_error(first, Box::new(e)))
        };
        let (entry, ret) = (fd(ENTRY_PROGRAM)?, fd(RETURN_PROGRAM)?);
        let (entry_typed, ret_typed) = if typed {
            (
                Some(fd(ENTRY_TYPED_PROGRAM)?),
                Some(fd(RETURN_TYPED_PROGRAM)?),
            )
        } else {
            (None, None)
        };
        let done = AtomicUsize::new(0);
        let one = |req: &AttachRequest| {
            let probe = perf_link::PerfUprobe {
                path: &req.path,
                offset: req.file_offset,
                semaphore: req.semaphore,
                ret: req.kind == ProbeKind::Return,
                pid: pid.map(NonZeroU32::get),
                cookie: u64::from(req.id),
            };
            let program = match (probe.ret, req.args.is_some()) {
                (false, false) => entry,
                (true, false) => ret,
                (false, true) => entry_typed.expect("loaded for typed probes"),
                (true, true) => ret_typed.expect("loaded for typed probes"),
            };
            let link = perf_link::attach(program, pmu, &probe);
            progress(done.fetch_add(1, Ordering::Relaxed) + 1);
            link
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, ATTACH_THREADS)
            .min(reqs.len());
        // Share t takes requests t, t + threads, …: neighbours (one file's functions) spread
        // over the threads. One share (a single probe: the daemon's) runs here.
        let share = |t: usize| -> Vec<(usize, _)> {
            (t..reqs.len())
                .step_by(threads)
                .map(|i| (i, one(&reqs[i])))
                .collect()
        };
        let mut links: Vec<(usize, Result<PerfLink, aya::sys::SyscallError>)> = if threads == 1 {
            share(0)
        } else {
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|t| scope.spawn(move || share(t)))
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().expect("an attach thread panicked"))
                    .collect()
            })
        };
        links.sort_unstable_by_key(|&(i, _)| i);
        let mut failed = Vec::new();
        for (i, link) in links {
            match link {
                Ok(link) => {
                    self.links.insert(reqs[i].id, link);
                }
                Err(e) => failed.push((i, attach_error(&reqs[i], Box::new(e.into())))),
            }
        }
        Ok(failed)
    }

    /// Detaches one probe; returns whether it was attached.
    pub fn detach(&mut self, id: u32) -> bool {
        self.links.remove(&id).is_some()
    }

    /// Takes probe `id`'s link out of the tracer: dropping it detaches the probe. Closing a
    /// uprobe link waits for the kernel to retire the breakpoint (~0.1 s here, measured with
    /// strace: an RCU grace period), so the daemon drops it off its event loop.
    pub fn take_link(&mut self, id: u32) -> Option<ProbeLink> {
        self.links.remove(&id)
    }

    /// Detaches every probe. Events already in the ring buffer stay readable. The links are
    /// closed in parallel: each close waits for a grace period, and concurrent waits share
    /// one.
    pub fn detach_all(&mut self) {
        close_links(self.take_probe_links());
    }

    /// Every probe's link, per-probe and multi, taken out of the tracer (dropping them
    /// detaches the probes).
    fn take_probe_links(&mut self) -> Vec<Box<dyn Send>> {
        let per_probe = self
            .links
            .drain()
            .map(|(_, link)| Box::new(link) as Box<dyn Send>);
        let multi = self
            .multi_links
            .drain(..)
            .map(|(_, link)| Box::new(link) as Box<dyn Send>);
        per_probe.chain(multi).collect()
    }

    /// Number of attached probes.
    pub fn attached(&self) -> usize {
        self.links.len() + self.multi_links.iter().map(|(n, _)| n).sum::<usize>()
    }

    /// Number of kernel links the attached probes hold (what detaching waits for, one
    /// grace period each).
    pub fn links_held(&self) -> usize {
        self.links.len() + self.multi_links.len()
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
        let mut links = self.take_probe_links();
        links.extend(self.take_tracker_links());
        close_links(links);
    }
}

/// A descriptor of our own for every map of `ebpf`, by name.
fn map_fds(ebpf: &Ebpf) -> HashMap<String, OwnedFd> {
    use aya::maps::Map;
    ebpf.maps()
        .filter_map(|(name, map)| {
            let data = match map {
                Map::Array(d)
                | Map::HashMap(d)
                | Map::LruHashMap(d)
                | Map::PerCpuArray(d)
                | Map::PerCpuHashMap(d)
                | Map::PerCpuLruHashMap(d)
                | Map::RingBuf(d)
                | Map::PerfEventArray(d)
                | Map::ProgramArray(d)
                | Map::Queue(d)
                | Map::Stack(d)
                | Map::StackTraceMap(d)
                | Map::LpmTrie(d)
                | Map::BloomFilter(d)
                | Map::Unsupported(d) => d,
                _ => return None,
            };
            let fd = data.fd().as_fd().try_clone_to_owned().ok()?;
            Some((name.to_owned(), fd))
        })
        .collect()
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
