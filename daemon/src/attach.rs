//! Loading the BPF object and attaching uprobes/uretprobes, cookie = probe id.
//!
//! One entry program and one return program are loaded once; every probe is an extra
//! attachment of one of them, told apart in BPF by its attach cookie. Links are file
//! descriptors owned by this process: dropping [`Tracer`] (any exit path) detaches them, and
//! if probed is killed the kernel closes the descriptors and the probes go with them.

use std::{collections::HashMap, io, num::NonZeroU32, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        KProbe, ProgramError, RawTracePoint, TracePoint,
        kprobe::KProbeLinkId,
        raw_trace_point::RawTracePointLinkId,
        trace_point::TracePointLinkId,
        uprobe::{
            UProbe, UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope,
        },
    },
};
use probed_common::{
    FileKey, MAX_PROBES, PROBE_FLAG_PID, PROBE_FLAG_PIDNS, PROBE_FLAG_RATE_LIMIT,
    PROBE_FLAGS_LIMITS, ProbeLimit, ProbeStats, TrackConfig, gcra_params,
};

use crate::{
    bpf_object,
    file_id::FileId,
    pidns::PidNamespace,
    privileges,
    spec::ProbeKind,
    track::{
        BpfSeq, Generations, Tracked, TrackerMode, TrackerRequest, Unavailable, kprobes,
        tracepoints,
    },
};

/// Name of the entry program in the BPF object.
const ENTRY_PROGRAM: &str = "probed_entry";
/// Name of the return program in the BPF object.
const RETURN_PROGRAM: &str = "probed_return";
/// Name of the event ring buffer map (hits and process events).
const EVENTS_MAP: &str = "EVENTS";
/// Name of the change-sequence array.
const SEQS_MAP: &str = "SEQS";
/// Name of the pid → generation map.
const PROC_GEN_MAP: &str = "PROC_GEN";
/// Name of the tracker mode array (one u32: `TRACK_MODE_*`).
const TRACK_MODE_MAP: &str = "TRACK_MODE";
/// Name of the tracker settings array.
const TRACK_CONFIG_MAP: &str = "TRACK_CONFIG";
/// Name of the set of tracked processes.
const TRACKED_MAP: &str = "TRACKED";
/// Name of the tracker's per-CPU error counters (`probed_common::TRACK_ERR_*`).
const TRACK_ERRORS_MAP: &str = "TRACK_ERRORS";
/// Name of the set of probed files.
const PROBED_FILES_MAP: &str = "PROBED_FILES";
/// Name of the per-probe flags array.
const PROBE_FLAGS_MAP: &str = "PROBE_FLAGS";
/// Name of the per-probe rate limit and pid-namespace filter array.
const PROBE_LIMITS_MAP: &str = "PROBE_LIMITS";
/// Name of the per-probe GCRA state (theoretical arrival time) array.
const PROBE_TAT_MAP: &str = "PROBE_TAT";
/// Tracker programs: (program, tracepoint category, tracepoint names).
const MM_EXIT_PROGRAM: &str = "probed_mm_exit";
const EXEC_PROGRAM: &str = "probed_exec";
const EXIT_PROGRAM: &str = "probed_exit";
const FORK_PROGRAM: &str = "probed_fork";
/// Lock mode's programs and the raw tracepoints they attach to.
const LOCK_PROGRAMS: [(&str, &str); 2] = [
    ("probed_lock_acquired", "mmap_lock_acquire_returned"),
    ("probed_lock_released", "mmap_lock_released"),
];
/// Name of the per-probe counters map.
const STATS_MAP: &str = "PROBE_STATS";

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

/// Why loading or attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// This binary has no BPF object.
    #[error(transparent)]
    Object(#[from] bpf_object::ObjectError),
    /// Not enough privileges.
    #[error(transparent)]
    Privileges(#[from] privileges::PrivilegeError),
    /// The kernel refused to load the BPF object.
    #[error("cannot load probed's BPF object")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program is missing from the object or has the wrong type (a build mismatch).
    #[error("the BPF object has no usable program `{0}`")]
    Program(&'static str),
    /// A map is missing from the object or has the wrong type (a build mismatch).
    #[error("the BPF object has no usable map `{0}`")]
    Map(&'static str),
    /// The kernel refused to load a program (verifier or permissions).
    #[error("the kernel refused to load BPF program `{name}`")]
    ProgramLoad {
        /// The program.
        name: &'static str,
        /// What the kernel said.
        #[source]
        source: Box<ProgramError>,
    },
    /// Too many probes for the statistics array.
    #[error("probe id {0} is out of range: at most {MAX_PROBES} probes")]
    TooManyProbes(u32),
    /// The kernel refused an attachment.
    #[error("cannot attach {kind} probe to {path} at file offset {file_offset:#x}")]
    Attach {
        /// The probe kind.
        kind: &'static str,
        /// The file.
        path: PathBuf,
        /// The offset.
        file_offset: u64,
        /// What the kernel said.
        #[source]
        source: Box<ProgramError>,
    },
    /// tracefs is needed for the change tracker's tracepoints.
    #[error(transparent)]
    Tracefs(#[from] tracepoints::TracefsError),
    /// A change-tracker tracepoint could not be attached.
    #[error("cannot attach the change tracker to tracepoint {category}:{name}")]
    Tracepoint {
        /// Tracepoint category.
        category: &'static str,
        /// Tracepoint name.
        name: String,
        /// What the kernel said.
        #[source]
        source: Box<ProgramError>,
    },
    /// The sequence array could not be mapped.
    #[error(transparent)]
    MapSeq(#[from] crate::track::MapSeqError),
    /// Writing the tracker settings failed.
    #[error("cannot configure the change tracker")]
    TrackConfig(#[source] Box<aya::maps::MapError>),
    /// The possible CPUs (for per-CPU values) cannot be read.
    #[error("cannot read the possible CPUs")]
    Cpus(#[source] io::Error),
    /// Reading the statistics map failed.
    #[error("cannot read per-probe counters")]
    Stats(#[source] Box<aya::maps::MapError>),
    /// A rate limit of 0 hits/s or with a burst of 0.
    #[error(
        "invalid rate limit for probe {id}: {per_sec} hits/s, burst {burst} (both must be at least 1)"
    )]
    InvalidRateLimit {
        /// The probe.
        id: u32,
        /// The rate asked for.
        per_sec: u64,
        /// The burst asked for.
        burst: u64,
    },
    /// Writing a probe's flags, limit, filter or counters failed.
    #[error("cannot configure probe {id}")]
    ProbeConfig {
        /// The probe.
        id: u32,
        /// What the kernel said.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// `reset_probe` on a probe that is still attached.
    #[error("probe {0} is still attached; detach it before resetting it")]
    StillAttached(u32),
    /// `--tracker lock|kprobes` where the kernel (or the run) cannot serve it.
    #[error("--tracker {choice} cannot be used: {why}")]
    TrackerUnavailable {
        /// The mode asked for.
        choice: &'static str,
        /// Why it cannot run.
        why: String,
    },
    /// A kprobe of kprobe mode could not be attached.
    #[error("cannot attach the change tracker's kprobe on {function}")]
    Kprobe {
        /// The kernel function.
        function: String,
        /// What the kernel said.
        #[source]
        source: Box<ProgramError>,
    },
    /// The self filter (probed never traces itself) could not be installed or set.
    #[error(transparent)]
    SelfFilter(#[from] crate::self_filter::SelfFilterError),
}

/// The change tracker's error counters by name (`probed_common::TRACK_ERROR_NAMES`).
pub type TrackerErrors = std::collections::BTreeMap<&'static str, u64>;

/// The loaded BPF object and the probes attached through it.
pub struct Tracer {
    /// The loaded object; owns programs, maps and links (dropping it detaches everything).
    ebpf: Ebpf,
    /// Attached probes: id → (kind, link).
    links: HashMap<u32, (ProbeKind, UProbeLinkId)>,
    /// The change tracker's tracepoint links: (program, link).
    tracker_links: Vec<(&'static str, TracePointLinkId)>,
    /// The raw tracepoint links: fork, and in lock mode the mmap_lock ones: (program, link).
    raw_links: Vec<(&'static str, RawTracePointLinkId)>,
    /// Kprobe mode's links: (kernel function, link).
    kprobe_links: Vec<(String, KProbeLinkId)>,
    /// The change tracker's hooks, and why they were chosen.
    tracker_mode: (TrackerMode, String),
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
        let kprobes = kprobes::kprobe_mode_unavailable();
        let kernel = Unavailable {
            lock: lock.as_deref(),
            kprobes: kprobes.as_deref(),
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
        tracer.start_change_tracker()?;
        Ok(tracer)
    }

    /// The change tracker's hooks, and why they were chosen.
    pub fn tracker_mode(&self) -> (TrackerMode, &str) {
        (self.tracker_mode.0, &self.tracker_mode.1)
    }

    /// Loads and attaches the address-space change tracker (ebpf/src/track.rs). It runs for
    /// every process: uprobes may fire in any of them, and a process must be tracked from
    /// before its first hit for that hit's sequence to mean anything.
    fn start_change_tracker(&mut self) -> Result<(), AttachError> {
        let config = crate::track::offsets::track_config(tracepoints::exit_group_dead_offset());
        let map = self
            .ebpf
            .map_mut(TRACK_CONFIG_MAP)
            .ok_or(AttachError::Map(TRACK_CONFIG_MAP))?;
        let mut array: Array<&mut MapData, TrackConfig> =
            Array::try_from(map).map_err(|_| AttachError::Map(TRACK_CONFIG_MAP))?;
        array
            .set(0, config, 0)
            .map_err(|e| AttachError::TrackConfig(Box::new(e)))?;

        // Exec, exit (tracepoints) and fork (raw tracepoint) in every mode: none of them puts
        // anyone's syscalls on the slow path.
        let points: Vec<(&'static str, &'static str, String)> = vec![
            (EXEC_PROGRAM, "sched", "sched_process_exec".into()),
            (EXIT_PROGRAM, "sched", "sched_process_exit".into()),
        ];
        for name in [EXEC_PROGRAM, EXIT_PROGRAM] {
            self.load_tracepoint(name)?;
        }
        self.attach_raw(FORK_PROGRAM, "sched_process_fork")?;
        self.attach_tracepoints(points)?;
        match self.tracker_mode.0 {
            TrackerMode::Syscalls => self.attach_syscalls()?,
            TrackerMode::Kprobes => self.attach_kprobes()?,
            TrackerMode::Lock => self.attach_lock()?,
        }
        self.write_tracker_mode()?;
        Ok(())
    }

    /// Tells BPF which mode runs (`TRACK_MODE`): the hit programs capture mappings only in
    /// lock mode.
    fn write_tracker_mode(&mut self) -> Result<(), AttachError> {
        let map = self
            .ebpf
            .map_mut(TRACK_MODE_MAP)
            .ok_or(AttachError::Map(TRACK_MODE_MAP))?;
        let mut array: Array<&mut MapData, u32> =
            Array::try_from(map).map_err(|_| AttachError::Map(TRACK_MODE_MAP))?;
        array
            .set(0, self.tracker_mode.0.bpf_value(), 0)
            .map_err(|e| AttachError::TrackConfig(Box::new(e)))
    }

    /// Syscall mode: the mapping syscalls' enter and exit tracepoints.
    fn attach_syscalls(&mut self) -> Result<(), AttachError> {
        let mut points: Vec<(&'static str, &'static str, String)> = Vec::new();
        for (syscall, enter) in tracepoints::SYSCALLS {
            for (program, prefix) in [(enter, "sys_enter_"), (MM_EXIT_PROGRAM, "sys_exit_")] {
                let name = format!("{prefix}{syscall}");
                if tracepoints::exists("syscalls", &name) {
                    points.push((program, "syscalls", name));
                } else {
                    tracing::debug!(tracepoint = %name, "not in this kernel; skipped");
                }
            }
        }
        for name in tracepoints::ENTER_PROGRAMS
            .into_iter()
            .chain([MM_EXIT_PROGRAM])
        {
            self.load_tracepoint(name)?;
        }
        self.attach_tracepoints(points)
    }

    /// Kprobe mode: a kprobe (the entry) and a kretprobe (the exit) on each mapping syscall's
    /// function; those configured out of this kernel are skipped.
    fn attach_kprobes(&mut self) -> Result<(), AttachError> {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let present = kprobes::present(&kallsyms);
        for name in kprobes::ENTER_PROGRAMS
            .into_iter()
            .chain([kprobes::EXIT_PROGRAM])
        {
            let program: &mut KProbe = program(&mut self.ebpf, name)?;
            program.load().map_err(|source| AttachError::ProgramLoad {
                name,
                source: Box::new(source),
            })?;
        }
        for (syscall, enter, _) in kprobes::FUNCTIONS {
            if !present.contains(&syscall) {
                tracing::debug!(syscall, "no kernel function for it; skipped");
                continue;
            }
            let function = kprobes::function(syscall);
            // The exit first: an entry whose exit is not attached yet would leave a change
            // open until the thread's next entry.
            for name in [kprobes::EXIT_PROGRAM, enter] {
                let program: &mut KProbe = program(&mut self.ebpf, name)?;
                let link = program
                    .attach(&function, 0)
                    .map_err(|source| AttachError::Kprobe {
                        function: function.clone(),
                        source: Box::new(source),
                    })?;
                self.kprobe_links.push((function.clone(), link));
            }
        }
        Ok(())
    }

    /// Lock mode: the mmap_lock raw tracepoints.
    fn attach_lock(&mut self) -> Result<(), AttachError> {
        for (program, point) in LOCK_PROGRAMS {
            self.attach_raw(program, point)?;
        }
        Ok(())
    }

    fn load_tracepoint(&mut self, name: &'static str) -> Result<(), AttachError> {
        self.tracepoint(name)?
            .load()
            .map_err(|source| AttachError::ProgramLoad {
                name,
                source: Box::new(source),
            })
    }

    fn attach_tracepoints(
        &mut self,
        points: Vec<(&'static str, &'static str, String)>,
    ) -> Result<(), AttachError> {
        for (program, category, name) in points {
            let link = self
                .tracepoint(program)?
                .attach(category, &name)
                .map_err(|source| AttachError::Tracepoint {
                    category,
                    name: name.clone(),
                    source: Box::new(source),
                })?;
            self.tracker_links.push((program, link));
        }
        Ok(())
    }

    /// Loads `program` (a raw tracepoint program) and attaches it to `point`.
    fn attach_raw(
        &mut self,
        program: &'static str,
        point: &'static str,
    ) -> Result<(), AttachError> {
        let raw: &mut RawTracePoint = self::program(&mut self.ebpf, program)?;
        raw.load().map_err(|source| AttachError::ProgramLoad {
            name: program,
            source: Box::new(source),
        })?;
        let link = raw
            .attach(point)
            .map_err(|source| AttachError::Tracepoint {
                category: "raw",
                name: point.into(),
                source: Box::new(source),
            })?;
        self.raw_links.push((program, link));
        Ok(())
    }

    fn tracepoint(&mut self, name: &'static str) -> Result<&mut TracePoint, AttachError> {
        program(&mut self.ebpf, name)
    }

    /// Tells the change tracker which files are probed: a process that execs one, or maps
    /// one executable, is tracked from then on.
    pub fn watch_files(
        &mut self,
        files: impl IntoIterator<Item = FileId>,
    ) -> Result<(), AttachError> {
        let map = self
            .ebpf
            .map_mut(PROBED_FILES_MAP)
            .ok_or(AttachError::Map(PROBED_FILES_MAP))?;
        let mut set: aya::maps::HashMap<&mut MapData, FileKey, u32> =
            aya::maps::HashMap::try_from(map).map_err(|_| AttachError::Map(PROBED_FILES_MAP))?;
        for file in files {
            // The kernel's dev_t encoding (major << 20 | minor), as BPF reads it from s_dev.
            let key = FileKey {
                dev: file.kernel_dev(),
                ino: file.ino,
            };
            set.insert(key, 1, 0)
                .map_err(|e| AttachError::TrackConfig(Box::new(e)))?;
        }
        Ok(())
    }

    /// Takes the change tracker's sequence array (mapped into memory), generation map and
    /// set of tracked processes.
    pub fn take_tracker(&mut self) -> Result<(BpfSeq, Generations, Tracked), AttachError> {
        let seqs = match self.ebpf.take_map(SEQS_MAP) {
            Some(aya::maps::Map::Array(data)) => data,
            _ => return Err(AttachError::Map(SEQS_MAP)),
        };
        let gens = self
            .ebpf
            .take_map(PROC_GEN_MAP)
            .ok_or(AttachError::Map(PROC_GEN_MAP))?;
        let tracked = self
            .ebpf
            .take_map(TRACKED_MAP)
            .ok_or(AttachError::Map(TRACKED_MAP))?;
        Ok((
            BpfSeq::new(seqs)?,
            Generations::new(gens).map_err(|_| AttachError::Map(PROC_GEN_MAP))?,
            Tracked::new(tracked).map_err(|_| AttachError::Map(TRACKED_MAP))?,
        ))
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
        let name = match req.kind {
            ProbeKind::Entry => ENTRY_PROGRAM,
            ProbeKind::Return => RETURN_PROGRAM,
        };
        let program: &mut UProbe = program(&mut self.ebpf, name)?;
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(req.file_offset),
            cookie: Some(u64::from(req.id)),
        };
        let scope = pid.map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        let link =
            program
                .attach(point, &req.path, scope)
                .map_err(|source| AttachError::Attach {
                    kind: req.kind.as_str(),
                    path: req.path.clone(),
                    file_offset: req.file_offset,
                    source: Box::new(source),
                })?;
        self.links.insert(req.id, (req.kind, link));
        Ok(())
    }

    /// Sets a probe's flags (`PROBE_FLAG_STACK`) before it is attached. The rate-limit and
    /// namespace-filter bits are kept: they belong to [`Self::set_rate_limit`] and
    /// [`Self::set_pidns_filter`].
    pub fn set_probe_flags(&mut self, id: u32, flags: u32) -> Result<(), AttachError> {
        let old = self.probe_flags(id)?;
        self.write_probe_flags(
            id,
            (old & PROBE_FLAGS_LIMITS) | (flags & !PROBE_FLAGS_LIMITS),
        )
    }

    /// Limits probe `id` to `limit` recorded hits (None: unlimited). Hits over the limit are
    /// dropped in BPF and counted in [`ProbeStats::rate_limited`]. Setting a limit starts
    /// from a full bucket. May be called while the probe is attached.
    pub fn set_rate_limit(&mut self, id: u32, limit: Option<RateLimit>) -> Result<(), AttachError> {
        let flags = self.probe_flags(id)?;
        let Some(limit) = limit else {
            // Flag first: BPF stops reading the limit before it is cleared.
            self.write_probe_flags(id, flags & !PROBE_FLAG_RATE_LIMIT)?;
            return self.update_limit(id, |l| {
                l.interval_ns = 0;
                l.tolerance_ns = 0;
            });
        };
        if limit.per_sec == 0 || limit.burst == 0 {
            return Err(AttachError::InvalidRateLimit {
                id,
                per_sec: limit.per_sec,
                burst: limit.burst,
            });
        }
        let (interval, tolerance) = gcra_params(limit.per_sec, limit.burst);
        // Limit and a fresh state first, flag last: BPF never sees the flag without them.
        self.update_limit(id, |l| {
            l.interval_ns = interval;
            l.tolerance_ns = tolerance;
        })?;
        self.write_tat(id, 0)?;
        self.write_probe_flags(id, flags | PROBE_FLAG_RATE_LIMIT)
    }

    /// Records only hits of probe `id` from process `pid` (None: from every process), before
    /// the probe is attached.
    fn set_pid_filter(&mut self, id: u32, pid: Option<NonZeroU32>) -> Result<(), AttachError> {
        let flags = self.probe_flags(id)?;
        let Some(pid) = pid else {
            self.write_probe_flags(id, flags & !PROBE_FLAG_PID)?;
            return self.update_limit(id, |l| l.tgid = 0);
        };
        self.update_limit(id, |l| l.tgid = pid.get())?;
        self.write_probe_flags(id, flags | PROBE_FLAG_PID)
    }

    /// Records only hits of probe `id` from processes in pid namespace `ns` (None: from
    /// every process). Other hits are dropped in BPF and counted in
    /// [`ProbeStats::filtered`]. May be called while the probe is attached.
    pub fn set_pidns_filter(
        &mut self,
        id: u32,
        ns: Option<PidNamespace>,
    ) -> Result<(), AttachError> {
        let flags = self.probe_flags(id)?;
        let Some(ns) = ns else {
            self.write_probe_flags(id, flags & !PROBE_FLAG_PIDNS)?;
            return self.update_limit(id, |l| {
                l.pidns_dev = 0;
                l.pidns_ino = 0;
            });
        };
        // bpf_get_ns_current_pid_tgid compares with the nsfs superblock's s_dev, in the
        // kernel's encoding; stat gave the userspace one.
        let dev = ns.kernel_dev();
        self.update_limit(id, |l| {
            l.pidns_dev = dev;
            l.pidns_ino = ns.ino;
        })?;
        self.write_probe_flags(id, flags | PROBE_FLAG_PIDNS)
    }

    /// Makes probe id `id` as new: zeroes its counters on every CPU, its flags, rate limit,
    /// limiter state and namespace filter, so the id can be reused after a detach. Refused
    /// while the probe is attached (its hits would race with the zeroing).
    pub fn reset_probe(&mut self, id: u32) -> Result<(), AttachError> {
        if id >= MAX_PROBES {
            return Err(AttachError::TooManyProbes(id));
        }
        if self.links.contains_key(&id) {
            return Err(AttachError::StillAttached(id));
        }
        let config = |e| AttachError::ProbeConfig {
            id,
            source: Box::new(e),
        };
        self.write_probe_flags(id, 0)?;
        self.update_limit(id, |l| *l = ProbeLimit::default())?;
        self.write_tat(id, 0)?;
        let map = self
            .ebpf
            .map_mut(STATS_MAP)
            .ok_or(AttachError::Map(STATS_MAP))?;
        let mut array: PerCpuArray<&mut MapData, ProbeStats> =
            PerCpuArray::try_from(map).map_err(|_| AttachError::Map(STATS_MAP))?;
        // As many values as the map has CPUs (possible CPUs), whatever is online now.
        let cpus = array.get(&id, 0).map_err(config)?.len();
        let zeros = aya::maps::PerCpuValues::try_from(vec![ProbeStats::default(); cpus])
            .map_err(AttachError::Cpus)?;
        array.set(id, zeros, 0).map_err(config)
    }

    fn probe_flags(&self, id: u32) -> Result<u32, AttachError> {
        if id >= MAX_PROBES {
            return Err(AttachError::TooManyProbes(id));
        }
        let map = self
            .ebpf
            .map(PROBE_FLAGS_MAP)
            .ok_or(AttachError::Map(PROBE_FLAGS_MAP))?;
        let array: Array<&MapData, u32> =
            Array::try_from(map).map_err(|_| AttachError::Map(PROBE_FLAGS_MAP))?;
        array.get(&id, 0).map_err(|e| AttachError::ProbeConfig {
            id,
            source: Box::new(e),
        })
    }

    fn write_probe_flags(&mut self, id: u32, flags: u32) -> Result<(), AttachError> {
        let map = self
            .ebpf
            .map_mut(PROBE_FLAGS_MAP)
            .ok_or(AttachError::Map(PROBE_FLAGS_MAP))?;
        let mut array: Array<&mut MapData, u32> =
            Array::try_from(map).map_err(|_| AttachError::Map(PROBE_FLAGS_MAP))?;
        array
            .set(id, flags, 0)
            .map_err(|e| AttachError::ProbeConfig {
                id,
                source: Box::new(e),
            })
    }

    /// Read-modify-write of a probe's `PROBE_LIMITS` entry (only the daemon writes it).
    fn update_limit(
        &mut self,
        id: u32,
        change: impl FnOnce(&mut ProbeLimit),
    ) -> Result<(), AttachError> {
        let config = |e| AttachError::ProbeConfig {
            id,
            source: Box::new(e),
        };
        let map = self
            .ebpf
            .map_mut(PROBE_LIMITS_MAP)
            .ok_or(AttachError::Map(PROBE_LIMITS_MAP))?;
        let mut array: Array<&mut MapData, ProbeLimit> =
            Array::try_from(map).map_err(|_| AttachError::Map(PROBE_LIMITS_MAP))?;
        let mut limit = array.get(&id, 0).map_err(config)?;
        change(&mut limit);
        array.set(id, limit, 0).map_err(config)
    }

    fn write_tat(&mut self, id: u32, tat: u64) -> Result<(), AttachError> {
        let map = self
            .ebpf
            .map_mut(PROBE_TAT_MAP)
            .ok_or(AttachError::Map(PROBE_TAT_MAP))?;
        let mut array: Array<&mut MapData, u64> =
            Array::try_from(map).map_err(|_| AttachError::Map(PROBE_TAT_MAP))?;
        array.set(id, tat, 0).map_err(|e| AttachError::ProbeConfig {
            id,
            source: Box::new(e),
        })
    }

    /// Detaches one probe; returns whether it was attached.
    pub fn detach(&mut self, id: u32) -> bool {
        let Some((kind, link)) = self.links.remove(&id) else {
            return false;
        };
        let name = match kind {
            ProbeKind::Entry => ENTRY_PROGRAM,
            ProbeKind::Return => RETURN_PROGRAM,
        };
        if let Some(Ok(program)) = self.ebpf.program_mut(name).map(<&mut UProbe>::try_from)
            && let Err(err) = program.detach(link)
        {
            tracing::warn!(probe = id, error = %err, "detaching probe failed");
        }
        true
    }

    /// Takes probe `id`'s link out of the tracer: dropping it detaches the probe. Closing a
    /// uprobe link waits for the kernel to retire the breakpoint (~0.1 s here, measured with
    /// strace: an RCU grace period), so the daemon drops it off its event loop.
    pub fn take_link(&mut self, id: u32) -> Option<UProbeLink> {
        let (kind, link) = self.links.remove(&id)?;
        let name = match kind {
            ProbeKind::Entry => ENTRY_PROGRAM,
            ProbeKind::Return => RETURN_PROGRAM,
        };
        let program: &mut UProbe = self.ebpf.program_mut(name)?.try_into().ok()?;
        match program.take_link(link) {
            Ok(link) => Some(link),
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
        let links: Vec<UProbeLink> = ids
            .into_iter()
            .filter_map(|id| self.take_link(id))
            .collect();
        close_links(links);
    }

    /// Starts closing the change tracker's links (~20 tracepoints and the fork raw
    /// tracepoint) on another thread and returns it; join it before exiting. A stop does this
    /// while it drains: each close waits for the kernel (RCU grace periods: ~1 s in all under
    /// load, measured), and the reports the queued hits need are already in the ring.
    pub fn close_tracker_in_background(&mut self) -> std::thread::JoinHandle<()> {
        let links = self.take_tracker_links();
        std::thread::spawn(move || close_links(links))
    }

    /// Takes the change tracker's links (tracepoints and the fork raw tracepoint) out of
    /// the tracer: dropping them detaches the tracker.
    fn take_tracker_links(&mut self) -> Vec<Box<dyn Send>> {
        let mut links: Vec<Box<dyn Send>> = Vec::new();
        for (program, link) in std::mem::take(&mut self.tracker_links) {
            if let Ok(tp) = self.tracepoint(program)
                && let Ok(link) = tp.take_link(link)
            {
                links.push(Box::new(link));
            }
        }
        for (program, link) in std::mem::take(&mut self.raw_links) {
            if let Some(Ok(raw)) = self
                .ebpf
                .program_mut(program)
                .map(<&mut RawTracePoint>::try_from)
                && let Ok(link) = raw.take_link(link)
            {
                links.push(Box::new(link));
            }
        }
        links
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

    /// Per-probe counters summed over CPUs.
    pub fn stats(&self, id: u32) -> Result<ProbeStats, AttachError> {
        let map = self
            .ebpf
            .map(STATS_MAP)
            .ok_or(AttachError::Map(STATS_MAP))?;
        let array: PerCpuArray<&MapData, ProbeStats> =
            PerCpuArray::try_from(map).map_err(|_| AttachError::Map(STATS_MAP))?;
        let values = array
            .get(&id, 0)
            .map_err(|e| AttachError::Stats(Box::new(e)))?;
        Ok(values
            .iter()
            .fold(ProbeStats::default(), |acc, v| ProbeStats {
                hits: acc.hits + v.hits,
                lost: acc.lost + v.lost,
                rate_limited: acc.rate_limited + v.rate_limited,
                filtered: acc.filtered + v.filtered,
                self_excluded: acc.self_excluded + v.self_excluded,
            }))
    }

    /// The change tracker's error counters (`probed_common::TRACK_ERROR_NAMES`), summed over
    /// CPUs: each is a case where the tracker fell back to rescans instead of replaying.
    pub fn tracker_errors(&self) -> Result<TrackerErrors, AttachError> {
        let map = self
            .ebpf
            .map(TRACK_ERRORS_MAP)
            .ok_or(AttachError::Map(TRACK_ERRORS_MAP))?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|_| AttachError::Map(TRACK_ERRORS_MAP))?;
        let mut out = TrackerErrors::new();
        for (index, name) in (0u32..).zip(probed_common::TRACK_ERROR_NAMES) {
            let values = array
                .get(&index, 0)
                .map_err(|e| AttachError::Stats(Box::new(e)))?;
            out.insert(name, values.iter().sum());
        }
        Ok(out)
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
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::PermissionDenied
        {
            return true;
        }
        cur = e.source();
    }
    false
}
