//! The BPF maps shared with the daemon. Names here are the names the daemon looks up.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use probed_common::{
    FileKey, MAX_PROBES, ProbeLimit, ProbeStats, RING_BYTES, SEQ_SLOTS, SeqSlot, TrackConfig,
};

/// Hit and process events, consumed by the daemon in one ordered stream: ring 0, and the
/// only ring unless several consumer threads read rings of their own (`ring.rs`).
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Rings 1–3, each read by a consumer thread of its own when the daemon asks for them
/// (ring.rs `RING_COUNT`). One page
/// each unless the daemon sizes them at load (a ring unused costs 4 KiB).
#[map(name = "EVENTS1")]
pub static EVENTS1: RingBuf = RingBuf::with_byte_size(PAGE_BYTES, 0);
#[map(name = "EVENTS2")]
pub static EVENTS2: RingBuf = RingBuf::with_byte_size(PAGE_BYTES, 0);
#[map(name = "EVENTS3")]
pub static EVENTS3: RingBuf = RingBuf::with_byte_size(PAGE_BYTES, 0);

const PAGE_BYTES: u32 = probed_common::PAGE_SIZE as u32;

/// Per-probe hit and loss counters (index = probe id), per CPU so updates need no atomics.
#[map(name = "PROBE_STATS")]
pub static PROBE_STATS: PerCpuArray<ProbeStats> = PerCpuArray::with_max_entries(MAX_PROBES, 0);

/// Per-probe flags (index = probe id): `PROBE_FLAG_STACK`, `PROBE_FLAG_RATE_LIMIT`,
/// `PROBE_FLAG_PIDNS`.
#[map(name = "PROBE_FLAGS")]
pub static PROBE_FLAGS: Array<u32> = Array::with_max_entries(MAX_PROBES, 0);

/// Per-probe rate limit and pid-namespace filter (index = probe id), read only for probes
/// whose flags ask for them.
#[map(name = "PROBE_LIMITS")]
pub static PROBE_LIMITS: Array<ProbeLimit> = Array::with_max_entries(MAX_PROBES, 0);

/// Per-probe GCRA theoretical arrival time in ns (index = probe id). Shared by all CPUs (not
/// per CPU: one bucket per probe), updated with compare-and-swap (limit.rs).
#[map(name = "PROBE_TAT")]
pub static PROBE_TAT: Array<u64> = Array::with_max_entries(MAX_PROBES, 0);

/// Change sequences, one slot per hash of the pid; mapped read-only by the daemon so its
/// fast path reads a sequence with two loads, no syscall.
#[map(name = "SEQS")]
pub static SEQS: Array<SeqSlot> = Array::with_max_entries(SEQ_SLOTS, BPF_F_MMAPABLE);

/// A mapping-changing syscall between its entry and exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InFlight {
    /// The sequence slot bumped at entry.
    pub slot: u32,
    /// `OP_*`.
    pub op: u32,
    /// The `begins` value the entry took.
    pub ticket: u64,
    /// 1 if another change of the slot was in flight at entry.
    pub overlap: u32,
    /// Padding, zero.
    pub _reserved: u32,
    /// The arguments the exit reports (see `OP_*`).
    pub args: [u64; 4],
    /// mmap only: the `struct file` behind the descriptor (0 if anonymous), and the
    /// descriptor's offset argument, for rebuilding the mapping if `bpf_find_vma` fails.
    pub file: u64,
    /// mmap only: the offset argument, in bytes.
    pub offset: u64,
}

/// Threads inside a mapping-changing syscall → what their entry recorded. An exit closes a
/// change only if its entry is here, so a syscall already in flight when probed attached
/// (an exit without an entry) cannot unbalance a slot.
#[map(name = "INFLIGHT")]
pub static INFLIGHT: HashMap<u32, InFlight> = HashMap::with_max_entries(65536, 0);

/// Process generation by thread-group id. LRU so it can never fill up: an evicted live
/// process just gets a new generation at its next event, which the daemon treats as a new
/// identity (a rescan), never as someone else's.
#[map(name = "PROC_GEN")]
pub static PROC_GEN: LruHashMap<u32, u64> = LruHashMap::with_max_entries(65536, 0);

/// Settings written by the daemon before attaching (index 0).
#[map(name = "TRACK_CONFIG")]
pub static TRACK_CONFIG: Array<TrackConfig> = Array::with_max_entries(1, 0);

/// Tracker error counters, indexed by `probed_common::TRACK_ERR_*` (named by
/// `TRACK_ERROR_NAMES`; the daemon reports them in the summary and metrics).
#[map(name = "TRACK_ERRORS")]
pub static TRACK_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(8, 0);

/// Change and process reports that could not be delivered (ring buffer full), index 0. Global
/// (not per CPU) because every event carries its value: the daemon must see a loss in the
/// first event reserved after it, whichever CPU it comes from.
#[map(name = "LOST_REPORTS")]
pub static LOST_REPORTS: Array<u64> = Array::with_max_entries(1, 0);

/// Processes whose address-space changes are tracked (tgid → 1). Only these pay for change
/// tracking; every other process's mmap costs one lookup here. A process is tracked from its
/// first hit, from an exec of a probed file, from an executable mmap of a probed file, when
/// forked by a tracked parent, or when the daemon says so (processes running at start).
#[map(name = "TRACKED")]
pub static TRACKED: HashMap<u32, u32> = HashMap::with_max_entries(65536, 0);

/// The files probes are attached to, written by the daemon before attaching.
#[map(name = "PROBED_FILES")]
pub static PROBED_FILES: HashMap<FileKey, u32> = HashMap::with_max_entries(4096, 0);

/// Processes that are probed itself (tgid → 1): this tracer's own process, written by the
/// daemon before anything is attached. Their hits are counted as `self_excluded` and
/// nothing else is done for them; they are never tracked.
#[map(name = "PROBED_PROCS")]
pub static PROBED_PROCS: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

/// Executables of probed (kernel identity → 1): any process running one of these files (a
/// second `probed trace`, a `probed ctl`, the daemon) is treated like `PROBED_PROCS`, so no
/// probed's output can feed another probed's input.
#[map(name = "PROBED_EXES")]
pub static PROBED_EXES: HashMap<FileKey, u32> = HashMap::with_max_entries(16, 0);

/// What each process is, found once per process generation (tgid → [`ProcFacts`];
/// proc_facts.rs). Only processes that hit probes have an entry; an evicted one is found
/// again at the process's next hit.
#[map(name = "PROC_FACTS")]
pub static PROC_FACTS: LruHashMap<u32, ProcFacts> = LruHashMap::with_max_entries(16384, 0);

/// A process's facts (see [`PROC_FACTS`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcFacts {
    /// The process generation (`PROC_GEN`) they were found in.
    pub generation: u64,
    /// Its address space (`task->mm`; 0 if unknown): the same for every thread of the
    /// process, until an exec.
    pub mm: u64,
    /// 1 if the process is probed (self_filter.rs).
    pub probed: u32,
    /// The depth of its pid namespace (0: the initial one), [`NS_LEVEL_UNKNOWN`] if the
    /// offsets to read it are unknown.
    pub ns_level: u32,
}

/// [`ProcFacts::ns_level`] when it cannot be read.
pub const NS_LEVEL_UNKNOWN: u32 = u32::MAX;

/// Run state written by the daemon (index 0): [`probed_common::STOP_ADMITTING`] once the run
/// stops, so probes stop admitting hits at once, before their links are closed (which takes
/// the kernel tens of milliseconds per link).
#[map(name = "STOP")]
pub static STOP: Array<u32> = Array::with_max_entries(1, 0);

/// Which hooks the tracker runs on (index 0: `TRACK_MODE_SYSCALLS`, `TRACK_MODE_LOCK` or
/// `TRACK_MODE_KSEQ`), written by the daemon before any probe is attached. Hits capture their
/// mappings only in lock and kseq modes.
#[map(name = "TRACK_MODE")]
pub static TRACK_MODE: Array<u32> = Array::with_max_entries(1, 0);

/// Lock mode: a write section of a tracked process's mmap_lock, open in this thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LockHeld {
    /// The `mm_struct` write-locked.
    pub mm: u64,
    /// The `begins` value the section took.
    pub ticket: u64,
    /// The sequence slot bumped.
    pub slot: u32,
    /// Padding, zero.
    pub _reserved: u32,
}

/// Lock mode: threads holding a tracked process's mmap_lock for writing (tid → section).
#[map(name = "LOCK_HELD")]
pub static LOCK_HELD: HashMap<u32, LockHeld> = HashMap::with_max_entries(16384, 0);

/// Lock mode: how many `LOCK_HELD` sections are open (index 0). A read acquire — the most
/// common mmap_lock event on the host — looks for a downgrade only when this is not 0.
#[map(name = "OPEN_WRITES")]
pub static OPEN_WRITES: Array<u64> = Array::with_max_entries(1, 0);

/// Lock and kseq modes: file identities (kernel encoding) whose path the daemon knows, or
/// that a `FileNameEvent` already named. A capture of any other file names it first.
#[map(name = "KNOWN_FILES")]
pub static KNOWN_FILES: LruHashMap<FileKey, u32> = LruHashMap::with_max_entries(16384, 0);

/// Lock and kseq modes: per-CPU room for a stack capture before it is copied into its ring
/// record (file names must be written into the ring before the capture that needs them).
#[repr(C)]
pub struct CaptureScratch {
    /// The hit waiting for its capture (hit.rs writes it, capture.rs records it).
    pub hit: probed_common::HitEvent,
    /// Kseq mode: the hit's `mm_struct` (its counter value is `hit.seq`); 0 in lock mode.
    pub mm: u64,
    /// Kseq mode: addresses of the stack being recorded that were captured, not cached.
    pub uncached: u64,
    /// The frames (`bpf_get_stack`).
    pub frames: [u64; probed_common::MAX_FRAMES],
    /// `CAPTURE_*` per frame, index `MAX_FRAMES` for the return address read at entry.
    pub status: [u8; probed_common::MAX_FRAMES + 1],
    /// The mapping per frame.
    pub vmas: [probed_common::VmaInfo; probed_common::MAX_FRAMES + 1],
}

/// The ring each process was given (tgid → index; ring.rs), while several are in use. LRU:
/// an entry is removed at its process's exit, and one evicted before is a process quiet
/// for as long as 32,768 others took rings.
#[map(name = "RING_OF")]
pub static RING_OF: LruHashMap<u32, u32> = LruHashMap::with_max_entries(32768, 0);

/// The next ring to give (index 0; mod the rings in use).
#[map(name = "RING_NEXT")]
pub static RING_NEXT: Array<u64> = Array::with_max_entries(1, 0);

/// A file's name record, built once and copied into every ring (capture.rs `name_file`).
#[map(name = "NAME_SCRATCH")]
pub static NAME_SCRATCH: PerCpuArray<probed_common::FileNameEvent> =
    PerCpuArray::with_max_entries(1, 0);

/// Lock mode: see [`CaptureScratch`].
#[map(name = "CAPTURE_SCRATCH")]
pub static CAPTURE_SCRATCH: PerCpuArray<CaptureScratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-probe argument specs (index = probe id), read only for probes with `PROBE_FLAG_ARGS`
/// (args.rs).
#[map(name = "PROBE_ARGS")]
pub static PROBE_ARGS: Array<probed_common::ProbeArgs> = Array::with_max_entries(MAX_PROBES, 0);
