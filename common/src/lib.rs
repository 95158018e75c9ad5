//! Types shared by probed's BPF programs (`ebpf/`) and its daemon (`daemon/`).
//!
//! Every type here is `#[repr(C)]` with no implicit padding, so the byte layout the BPF side
//! writes is exactly what the daemon reads. Flags are `u32`, never `bool`. The `user` feature
//! implements `aya::Pod` so the daemon can read these out of BPF maps.
#![no_std]

mod args;
mod kernel;
mod stack_copy;
pub use args::*;
pub use kernel::*;
pub use stack_copy::*;

/// Most probes one run can attach; the size of the per-probe statistics array in BPF.
/// A probe id is the index into that array and the attach cookie of the uprobe.
pub const MAX_PROBES: u32 = 4096;

/// Length of a task's `comm` (TASK_COMM_LEN in the kernel).
pub const COMM_LEN: usize = 16;

/// Number of integer argument registers captured at a function entry (System V x86-64 ABI).
pub const ARG_REGS: usize = 6;

/// Capacity of the hit ring buffer in bytes (a power of two, a multiple of the page size).
pub const RING_BYTES: u32 = 1 << 22;

/// Most ring buffers BPF writes to (`EVENTS` … `EVENTS3`): with several consumer threads in
/// kseq mode each reads a ring of its own, and a process's records all go to the ring it
/// was given (ebpf ring.rs). Each ring more costs the verifier ~14,000 instructions per hit
/// program (measured: 158k with one, 183k with two, 266k with eight).
pub const MAX_RINGS: u32 = 4;

/// The names of the rings, index = ring.
pub const RING_NAMES: [&str; MAX_RINGS as usize] = ["EVENTS", "EVENTS1", "EVENTS2", "EVENTS3"];

/// `HitEvent::kind` of an entry probe (uprobe).
pub const KIND_ENTRY: u32 = 0;
/// `HitEvent::kind` of a return probe (uretprobe).
pub const KIND_RETURN: u32 = 1;

/// First field of every ring buffer item: a [`HitEvent`].
pub const EVENT_HIT: u32 = 1;
/// First field of every ring buffer item: a [`ProcEvent`].
pub const EVENT_PROC: u32 = 2;

/// First field of every ring buffer item: a [`ChangeEvent`].
pub const EVENT_CHANGE: u32 = 3;
/// First field of every ring buffer item: a [`StackHitEvent`] (a hit with its user stack).
pub const EVENT_STACK_HIT: u32 = 4;

/// First field of every ring buffer item: a [`CapturedHitEvent`] (lock mode: a hit with the
/// kernel's mapping of its address, taken at the hit).
pub const EVENT_CAPTURED_HIT: u32 = 5;
/// First field of every ring buffer item: a [`CapturedStackEvent`] (lock mode: a hit with its
/// user stack and the kernel's mapping of every frame, taken at the hit).
pub const EVENT_CAPTURED_STACK: u32 = 6;
/// First field of every ring buffer item: a [`FileNameEvent`] (lock mode: the path of a file
/// a capture names, written before the capture, once per file the daemon does not know).
pub const EVENT_FILE_NAME: u32 = 7;

/// First field of every ring buffer item: a [`LockChangeEvent`] (lock mode: a write section
/// of a tracked process's address space ended; the daemon rescans).
pub const EVENT_LOCK_CHANGE: u32 = 8;

/// [`CapturedHitEvent::status`] and [`CapturedStackEvent::status`] values.
/// The mapping could not be read (`bpf_find_vma` try-locks the address space: a writer held
/// it, or the helper failed).
pub const CAPTURE_FAILED: u8 = 0;
/// A mapping contains the address (`vma` is filled).
pub const CAPTURE_FOUND: u8 = 1;
/// No mapping contains the address.
pub const CAPTURE_UNMAPPED: u8 = 2;
/// Kseq mode: a mapping contains the address (`vma` is filled) and the address space's
/// kernel sequence (`mm->mm_lock_seq`) was the hit's (`hit.seq`) while it was read, so the
/// mapping is the one of the hit's sequence: the daemon keeps it to answer later hits of
/// that sequence that skip their capture ([`CAPTURE_CACHED`], plain hits).
pub const CAPTURE_FOUND_AT_SEQ: u8 = 3;
/// Kseq mode: not captured, because BPF's cache says an earlier capture of the same address
/// space at the same kernel sequence (`hit.seq`) holds this address: the daemon answers it
/// from that capture.
pub const CAPTURE_CACHED: u8 = 4;

/// Most user stack frames captured per hit (what `bpf_get_stack` can return).
pub const MAX_FRAMES: usize = 127;

/// `PROBE_FLAGS` bit: capture the user stack with each hit of this probe.
pub const PROBE_FLAG_STACK: u32 = 1;
/// `PROBE_FLAGS` bit: the probe has a rate limit (`ProbeLimit::interval_ns`, token state in
/// `PROBE_TAT`). A flag, so that probes without one pay no extra map lookup.
pub const PROBE_FLAG_RATE_LIMIT: u32 = 2;
/// `PROBE_FLAGS` bit: the probe only records hits from one pid namespace
/// (`ProbeLimit::pidns_dev`, `pidns_ino`).
pub const PROBE_FLAG_PIDNS: u32 = 4;
/// `PROBE_FLAGS` bit: the probe only records hits from one process (`ProbeLimit::tgid`):
/// probes attached with `--pid`. The kernel's own pid scope of the uprobe is not enough: on
/// Debian's 6.12 (measured) a pid-scoped uretprobe fires for every process that runs the
/// function while another consumer has a uprobe there.
pub const PROBE_FLAG_PID: u32 = 16;
/// `PROBE_FLAGS` bit: count the probe's admitted hits in BPF (`ProbeStats::counted`) and
/// write nothing to the ring buffer (`probed trace --count-in-bpf`, bpftrace's `count()`).
pub const PROBE_FLAG_COUNT_ONLY: u32 = 128;
/// The `PROBE_FLAGS` bits that say a `PROBE_LIMITS` entry must be read.
pub const PROBE_FLAGS_LIMITS: u32 = PROBE_FLAG_RATE_LIMIT | PROBE_FLAG_PIDNS | PROBE_FLAG_PID;

/// `ChangeEvent::op`: mmap; `args` = [addr, len, prot, flags].
pub const OP_MMAP: u32 = 1;
/// `ChangeEvent::op`: munmap; `args` = [addr, len, 0, 0].
pub const OP_MUNMAP: u32 = 2;
/// `ChangeEvent::op`: mprotect or pkey_mprotect; `args` = [addr, len, prot, 0].
pub const OP_MPROTECT: u32 = 3;
/// `ChangeEvent::op`: mremap; `args` = [old_addr, old_len, new_len, flags].
pub const OP_MREMAP: u32 = 4;
/// `ChangeEvent::op`: brk; `args` = [requested brk, brk before, start_brk, 0].
pub const OP_BRK: u32 = 5;
/// `ChangeEvent::op`: shmat, shmdt, remap_file_pages: the affected range is not known
/// from the arguments, so the daemon must rescan.
pub const OP_OTHER: u32 = 6;

/// `ChangeEvent::flags`: another change of the same slot was in flight at some point during
/// this one, so their effects may have been applied in another order than their tickets.
pub const CHANGE_OVERLAP: u32 = 1;
/// `ChangeEvent::flags`: the `vma_*` fields describe the mapping found at the result address.
pub const CHANGE_VMA: u32 = 2;
/// `ChangeEvent::flags`: that mapping is backed by a file (`dev`, `ino`, `name` are set).
pub const CHANGE_VMA_FILE: u32 = 4;
/// `ChangeEvent::flags`: the kernel's mapping could not be read (`bpf_find_vma` only
/// try-locks the address space and fails while another thread changes it), so the mapping
/// was rebuilt from the mmap arguments and the file behind its descriptor.
pub const CHANGE_VMA_FROM_ARGS: u32 = 8;

/// A file as BPF sees it: the superblock's `s_dev` in the kernel's encoding
/// (`major << 20 | minor`) and the inode number. Key of the `PROBED_FILES` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// Kernel-encoded device.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

/// Length of the file name carried by a [`ChangeEvent`] (the dentry's last component).
pub const NAME_LEN: usize = 64;

/// `ProcEvent::what`: the process called exec (a new address space and a new generation).
pub const PROC_EXEC: u32 = 1;
/// `ProcEvent::what`: the last thread of the process exited.
pub const PROC_EXIT: u32 = 2;
/// `ProcEvent::what`: a new process was forked (not a thread): it starts with a copy of its
/// parent's address space (`parent_*` say whose, as of which sequence).
pub const PROC_FORK: u32 = 3;

/// `TRACK_MODE` index 0: the tracker runs on syscall tracepoints (hits capture nothing).
pub const TRACK_MODE_SYSCALLS: u32 = 0;
/// `TRACK_MODE` index 0: the tracker runs on mmap_lock tracepoints (hits capture their
/// mappings when the daemon's picture is behind).
pub const TRACK_MODE_LOCK: u32 = 1;
/// `TRACK_MODE` index 0: no hook on address-space changes at all. A hit is stamped with the
/// kernel's own sequence of its address space (`mm->mm_lock_seq`, Linux 6.14+) and captures
/// its mappings unless an earlier capture at the same sequence holds them (`KSEQ_CACHE`).
pub const TRACK_MODE_KSEQ: u32 = 2;

/// `TRACK_ERRORS` index: a change could not be marked in flight (`INFLIGHT` full); its slot
/// is left odd on purpose, so the daemon rescans instead of trusting a picture.
pub const TRACK_ERR_INFLIGHT_FULL: u32 = 0;
/// `TRACK_ERRORS` index: a change or process report was lost to a full ring buffer.
pub const TRACK_ERR_REPORT_LOST: u32 = 1;
/// `TRACK_ERRORS` index: a process could not be marked tracked (`TRACKED` full).
pub const TRACK_ERR_TRACKED_FULL: u32 = 2;
/// `TRACK_ERRORS` index: lock mode's `LOCK_HELD` was full (the slot is left odd on purpose).
pub const TRACK_ERR_LOCK_HELD_FULL: u32 = 3;
/// `TRACK_ERRORS` index: kprobe mode, a change's kretprobe never ran (no free return
/// instance); closed as a lost report by the thread's next entry or its exit.
pub const TRACK_ERR_EXIT_MISSED: u32 = 4;
/// The `TRACK_ERRORS` counters by index, as the summary and metrics name them.
pub const TRACK_ERROR_NAMES: [&str; 5] = [
    "inflight_full",
    "reports_lost",
    "tracked_full",
    "lock_held_full",
    "exits_missed",
];

/// Number of change-sequence slots (a power of two). A process uses slot
/// [`seq_slot`]`(pid)`; processes whose pids share a slot share its sequence, which only
/// costs them extra fallbacks, never a wrong answer.
pub const SEQ_SLOTS: u32 = 1 << 16;

/// The sequence slot of a process (Fibonacci hashing of the pid). BPF and the daemon must
/// agree on it, which is why it lives here.
#[inline(always)]
pub const fn seq_slot(pid: u32) -> u32 {
    pid.wrapping_mul(0x9e37_79b9) >> (32 - SEQ_SLOTS.trailing_zeros())
}

/// One slot of the change-sequence array (a BPF_F_MMAPABLE array the daemon maps and reads;
/// it writes only `mirror` and `mirror_pid`).
///
/// BPF adds 1 to `begins` before a mapping change and 1 to `ends` after it, both atomically.
/// The slot is stable when `ends == begins`; its sequence is then `2 * begins` (even), and
/// `2 * begins - 1` (odd) while a change is in flight. Two counters instead of one so that
/// overlapping changes (two threads, or two processes sharing the slot) cannot make an
/// in-flight state look stable. Readers load `ends` before `begins`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqSlot {
    /// Changes begun.
    pub begins: u64,
    /// Changes ended.
    pub ends: u64,
    /// Lock mode: the (even) sequence of the newest picture the daemon holds of process
    /// `mirror_pid`, written by the daemon (the only writer of these two fields, which BPF
    /// only reads). A hit stamped with exactly this sequence needs no capture. `u64::MAX`:
    /// none.
    pub mirror: u64,
    /// The process `mirror` describes (slots are shared by hash).
    pub mirror_pid: u32,
    /// Lock mode, BPF only: the thread in an open write section of this slot's process (its
    /// mmap_lock held for writing), 0 if none; claimed with a compare-and-swap, so a second
    /// process sharing the slot falls back to the `LOCK_HELD` hash. The section's ticket
    /// (`begins` after its start) and address space follow.
    pub holder_tid: u32,
    /// Lock mode, BPF only: the open section's ticket (valid while `holder_tid` is set).
    pub holder_ticket: u64,
    /// Lock mode, BPF only: the open section's `mm_struct` (valid while `holder_tid` is set).
    pub holder_mm: u64,
}

/// The (even) sequence of a slot at rest after `begins` changes: `2 * begins`. Change number
/// `t` (its ticket, `begins` after its start) moves the sequence from `stable_seq(t - 1)` to
/// `stable_seq(t)`, so this is also the sequence of the address space that change `t` leaves.
#[inline(always)]
pub const fn stable_seq(begins: u64) -> u64 {
    begins.wrapping_mul(2)
}

/// The sequence a reader reports for a slot read as (`ends`, then `begins`).
#[inline(always)]
pub const fn seq_of(ends: u64, begins: u64) -> u64 {
    if ends == begins {
        stable_seq(begins)
    } else {
        stable_seq(begins).wrapping_sub(1)
    }
}

/// Byte offsets of the kernel structure members the tracker reads with
/// `bpf_probe_read_kernel`, computed by the daemon from the running kernel's BTF (aya-ebpf
/// has no CO-RE relocations). `valid == 0` means unknown: the tracker then reports changes
/// without mapping identities, and the daemon rescans instead of replaying.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// 1 when every offset below is known.
    pub valid: u32,
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// `task_struct.pid`.
    pub task_pid: u32,
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `task_struct.files`.
    pub task_files: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.fd`.
    pub fdt_fd: u32,
    /// `fdtable.max_fds`.
    pub fdt_max_fds: u32,
    /// `mm_struct.start_code`.
    pub mm_start_code: u32,
    /// `mm_struct.start_brk`.
    pub mm_start_brk: u32,
    /// `mm_struct.brk`.
    pub mm_brk: u32,
    /// `vm_area_struct.vm_start`.
    pub vma_start: u32,
    /// `vm_area_struct.vm_end`.
    pub vma_end: u32,
    /// `vm_area_struct.vm_pgoff`.
    pub vma_pgoff: u32,
    /// `vm_area_struct.vm_flags`.
    pub vma_flags: u32,
    /// `vm_area_struct.vm_file`.
    pub vma_file: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `file.f_path.dentry`.
    pub file_dentry: u32,
    /// `inode.i_ino`.
    pub inode_ino: u32,
    /// `inode.i_sb`.
    pub inode_sb: u32,
    /// `super_block.s_dev`.
    pub sb_dev: u32,
    /// `dentry.d_name.name`.
    pub dentry_name: u32,
}

/// Byte offsets for reading a task's pid and tid in its own pid namespace (for
/// [`HitEvent::ns_pid`]): `task->thread_pid` is the thread's `struct pid`, whose
/// `numbers[level].nr` is its number in the innermost namespace (`level` = that namespace's
/// depth); the process id is the same read from `task->group_leader`. Separate from
/// [`KernelOffsets`] so that a kernel lacking one of these members loses only the namespace
/// pids, not change tracking.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PidOffsets {
    /// 1 when every offset below is known.
    pub valid: u32,
    /// `task_struct.thread_pid` (a `struct pid *`).
    pub task_thread_pid: u32,
    /// `task_struct.group_leader` (a `struct task_struct *`).
    pub task_group_leader: u32,
    /// `pid.level` (unsigned int).
    pub pid_level: u32,
    /// `pid.numbers` (a flexible array of `struct upid`).
    pub pid_numbers: u32,
    /// Bytes per `struct upid` (its `nr`, an int, is at offset 0).
    pub upid_size: u32,
}

/// Settings the daemon writes into the `TRACK_CONFIG` array before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackConfig {
    /// Byte offset of `group_dead` in the sched_process_exit tracepoint record, or 0 when
    /// the kernel has no such field (then the thread-group leader's exit counts).
    pub exit_group_dead_offset: u32,
    /// `mm_struct.exe_file` (never 0 in a real kernel), or 0 when unknown: then probed
    /// processes are recognized by their pid only (`PROBED_PROCS`), not by their executable
    /// (`PROBED_EXES`). Read together with `offsets` (`file_inode`, `inode_sb`, …).
    pub mm_exe_file: u32,
    /// Kernel structure offsets.
    pub offsets: KernelOffsets,
    /// Offsets for the full path walk of mapped files.
    pub path_offsets: PathOffsets,
    /// Offsets for the namespace pids of hits.
    pub pid_offsets: PidOffsets,
    /// Offsets for a uretprobe hit's function address where `bpf_get_func_ip` cannot give it.
    pub ret_offsets: RetOffsets,
    /// `mm_struct.mm_lock_seq.sequence` (the address space's seqcount, Linux 6.14+: odd while
    /// the mmap_lock is held for writing), or 0 when the kernel has none (kseq mode is then
    /// unavailable).
    pub mm_lock_seq: u32,
    /// Padding, zero.
    pub _reserved: u32,
}

/// Byte offsets for reading, at a uretprobe hit, the address of the function returning:
/// `current->utask->return_instances->func`. Only needed where `bpf_get_func_ip` returns 0
/// for uprobe programs (Linux < 6.4), where the registers' ip at a uretprobe is the return
/// address in the caller. The kernel's uretprobe trampoline handler runs the return
/// consumers while the head of the task's `return_instances` stack is the instance being
/// returned from (for a chain of tail calls between probed functions, the chain's first:
/// see ARCHITECTURE.md, "Return-probe addresses"). Own `valid` flag: a kernel lacking these
/// members keeps the registers' ip.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetOffsets {
    /// 1 when every offset below is known.
    pub valid: u32,
    /// `task_struct.utask` (a `struct uprobe_task *`).
    pub task_utask: u32,
    /// `uprobe_task.return_instances` (a `struct return_instance *`).
    pub utask_return_instances: u32,
    /// `return_instance.func` (unsigned long: the probed function's address).
    pub ri_func: u32,
}

/// Byte offsets for naming a mapped file in BPF at the moment its mapping is reported: the
/// full path, walked from the file's dentry up `d_parent` and across mounts (`struct mount`,
/// found from its embedded `vfsmount` by `container_of`), and, for an overlayfs mapping,
/// the user-visible file behind the kernel's backing file. Separate from [`KernelOffsets`]
/// with its own `valid` flag so that a kernel lacking one of these members loses only the
/// names (the daemon then falls back to identity-checked /proc lookups).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathOffsets {
    /// 1 when every offset below is known.
    pub valid: u32,
    /// `file.f_mode` (a u32).
    pub file_mode: u32,
    /// `file.f_path.mnt`.
    pub file_mnt: u32,
    /// `file.f_path.dentry`.
    pub file_dentry: u32,
    /// The `f_mode` bit that says a file is embedded in a `struct backing_file`
    /// (`FMODE_BACKING`: a preprocessor constant, not in BTF; it moved between kernel
    /// versions), or 0 if the kernel has no backing files.
    pub fmode_backing: u32,
    /// `backing_file.user_path.mnt` (the overlayfs path the user opened).
    pub backing_user_mnt: u32,
    /// `backing_file.user_path.dentry`.
    pub backing_user_dentry: u32,
    /// `dentry.d_parent`.
    pub dentry_parent: u32,
    /// `dentry.d_name.len` (a u32).
    pub dentry_name_len: u32,
    /// `dentry.d_name.name`.
    pub dentry_name: u32,
    /// `dentry.d_inode`.
    pub dentry_inode: u32,
    /// `inode.i_ino`.
    pub inode_ino: u32,
    /// `inode.i_sb`.
    pub inode_sb: u32,
    /// `super_block.s_dev` (a u32).
    pub sb_dev: u32,
    /// `vfsmount.mnt_root`.
    pub vfsmount_root: u32,
    /// `mount.mnt` (the embedded `struct vfsmount`).
    pub mount_mnt: u32,
    /// `mount.mnt_parent`.
    pub mount_parent: u32,
    /// `mount.mnt_mountpoint`.
    pub mount_mountpoint: u32,
}

/// Bytes of a path carried by a report ([`FilePath::bytes`]).
pub const PATH_LEN: usize = 256;

/// `FilePath::flags`: the path was longer than [`PATH_LEN`] or deeper than the walk's
/// bound: `bytes` holds its last components only and must not be used as a path.
pub const PATH_TRUNCATED: u16 = 1;
/// `FilePath::flags`: the mapped file is an overlayfs backing file; `user_dev`/`user_ino`
/// are the overlay file's identity (what /proc/PID/maps and stat show), the report's
/// `VmaInfo` identity is the real (lower or upper layer) file's, which uprobes key on.
pub const PATH_BACKING: u16 = 2;
/// `FilePath::flags`: the walk reached the root of a mount with no parent that is not the
/// walk's start (a file of an internal or detached mount): the path is relative to it.
pub const PATH_DETACHED: u16 = 4;

/// A mapped file's name and user-visible identity, read in BPF when its mapping is
/// reported (so it names the file mapped then, not whatever is mapped there later).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilePath {
    /// Bytes used in `bytes` (0: no path was read).
    pub len: u16,
    /// `PATH_*` bits.
    pub flags: u16,
    /// Reserved, zero.
    pub _reserved: u32,
    /// The user-visible file's `s_dev` (kernel encoding); the same as the mapping's for a
    /// file that is not an overlayfs backing file.
    pub user_dev: u64,
    /// The user-visible file's inode number.
    pub user_ino: u64,
    /// The absolute path as the process's mount namespace names it, not NUL-terminated.
    pub bytes: [u8; PATH_LEN],
}

impl FilePath {
    /// No path.
    pub const EMPTY: FilePath = FilePath {
        len: 0,
        flags: 0,
        _reserved: 0,
        user_dev: 0,
        user_ino: 0,
        bytes: [0; PATH_LEN],
    };

    /// The path's bytes, if one was read whole.
    pub fn path(&self) -> Option<&[u8]> {
        let len = (self.len as usize).min(PATH_LEN);
        (len > 0 && self.flags & PATH_TRUNCATED == 0).then(|| &self.bytes[..len])
    }
}

/// A mapping the kernel had at some address, as the tracker read it from a `vm_area_struct`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmaInfo {
    /// `vm_start`.
    pub start: u64,
    /// `vm_end`.
    pub end: u64,
    /// `vm_pgoff` in pages.
    pub pgoff: u64,
    /// `vm_flags` (VM_READ 1, VM_WRITE 2, VM_EXEC 4, VM_SHARED 8, VM_HUGETLB 0x400000…).
    pub flags: u64,
    /// The file's `s_dev` in the kernel's encoding (`major << 20 | minor`); 0 if anonymous.
    pub dev: u64,
    /// The file's inode number; 0 if anonymous.
    pub ino: u64,
}

/// One finished address-space change, reported at syscall exit before the change's `ends`
/// increment, so that every hit stamped with a sequence that includes it comes after it in
/// the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeEvent {
    /// [`EVENT_CHANGE`].
    pub event: u32,
    /// `OP_*`.
    pub op: u32,
    /// Thread-group id.
    pub pid: u32,
    /// Thread that made the change.
    pub tid: u32,
    /// The slot's `begins` value this change took (its place in the slot's order).
    pub ticket: u64,
    /// The process's generation.
    pub proc_gen: u64,
    /// `bpf_ktime_get_ns()` at the exit.
    pub ts_ns: u64,
    /// The syscall's return value (an address, 0, or -errno).
    pub ret: i64,
    /// The syscall's arguments that matter for this op (see `OP_*`).
    pub args: [u64; 4],
    /// `CHANGE_*` bits.
    pub flags: u32,
    /// How many change or process reports the tracker could not deliver so far (ring buffer
    /// full), read after the event's sequence, truncated to 32 bits. Every event carries it,
    /// so the daemon sees a loss in-band, before any hit whose sequence includes the lost
    /// change, and stops trusting replayed pictures.
    pub lost_reports: u32,
    /// The mapping at the result address (mmap, mremap) or the heap (brk), if `CHANGE_VMA`.
    pub vma: VmaInfo,
    /// The mapped file's name (last path component), NUL-terminated, if `CHANGE_VMA_FILE`.
    pub name: [u8; NAME_LEN],
    /// The mapped file's full path and user-visible identity, if `CHANGE_VMA_FILE`.
    pub path: FilePath,
}

/// One probe hit, as the BPF program writes it into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HitEvent {
    /// [`EVENT_HIT`].
    pub event: u32,
    /// The probe that fired: the attach cookie, an index below [`MAX_PROBES`].
    pub probe_id: u32,
    /// [`KIND_ENTRY`] or [`KIND_RETURN`].
    pub kind: u32,
    /// Thread-group id (the process id) in the initial pid namespace.
    pub pid: u32,
    /// Thread id in the initial pid namespace.
    pub tid: u32,
    /// The tracker's lost-report count when the hit was stamped (see [`ChangeEvent::lost_reports`]).
    pub lost_reports: u32,
    /// `bpf_ktime_get_ns()` at the hit: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// The probed instruction's virtual address in the process (the function entry for
    /// return probes too, from `bpf_get_func_ip`).
    pub ip: u64,
    /// For return probes, the address the function returned to; 0 for entry probes.
    pub ret_addr: u64,
    /// The process's address-space change sequence at hit time (see [`SeqSlot`]).
    pub seq: u64,
    /// The process's generation: distinguishes successive processes holding one pid (and a
    /// process before and after exec).
    pub proc_gen: u64,
    /// The first six integer arguments (entry probes); zeros for return probes.
    pub args: [u64; ARG_REGS],
    /// The return value register (return probes); 0 for entry probes.
    pub retval: u64,
    /// The thread's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// The process id in the task's own (innermost) pid namespace — what `getpid()` returns
    /// inside its container; equal to `pid` for a process of the initial namespace. 0 when
    /// unknown (the kernel's BTF lacked a member [`PidOffsets`] names).
    pub ns_pid: u32,
    /// The thread id in the task's own pid namespace (`gettid()` there); 0 when unknown.
    pub ns_tid: u32,
}

/// A hit with the user stack at the hit, innermost frame first (frame-pointer walk).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackHitEvent {
    /// The hit; its `event` is [`EVENT_STACK_HIT`].
    pub hit: HitEvent,
    /// Valid entries of `frames`.
    pub nframes: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// Frame addresses: the probed instruction (entry probes) or the return address
    /// (return probes), then each caller's return address.
    pub frames: [u64; MAX_FRAMES],
}

/// Lock mode: a write section of a tracked process's `mmap_lock` ended (released, or
/// downgraded to a read lock). What changed is not known: the daemon takes it as an
/// unreplayable change (`OP_OTHER`) with this ticket and rescans. Small on purpose: a process
/// that maps and unmaps all the time sends one per change.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockChangeEvent {
    /// [`EVENT_LOCK_CHANGE`].
    pub event: u32,
    /// Thread-group id.
    pub pid: u32,
    /// The thread that held the lock.
    pub tid: u32,
    /// See [`ChangeEvent::lost_reports`].
    pub lost_reports: u32,
    /// The slot's `begins` value the section took.
    pub ticket: u64,
    /// The process's generation.
    pub proc_gen: u64,
    /// `bpf_ktime_get_ns()` at the end of the section.
    pub ts_ns: u64,
}

/// Lock mode: a hit whose process's sequence was not the daemon's picture, with the mapping
/// of its address as the kernel had it at the hit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapturedHitEvent {
    /// The hit; its `event` is [`EVENT_CAPTURED_HIT`].
    pub hit: HitEvent,
    /// `CAPTURE_*` for `ip`.
    pub status: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// The mapping containing `hit.ip`, if `status == CAPTURE_FOUND`.
    pub vma: VmaInfo,
}

/// Lock mode: a hit with its user stack, and the kernel's mapping of every frame at the hit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapturedStackEvent {
    /// The hit and its frames; `stack.hit.event` is [`EVENT_CAPTURED_STACK`].
    pub stack: StackHitEvent,
    /// `CAPTURE_*` per frame (index `MAX_FRAMES`: `stack.hit.ret_addr`), then padding.
    pub status: [u8; MAX_FRAMES + 1],
    /// The mapping of each frame (index `MAX_FRAMES`: of `stack.hit.ret_addr`), where
    /// `status` says `CAPTURE_FOUND`.
    pub vmas: [VmaInfo; MAX_FRAMES + 1],
}

/// Lock mode: the path of a mapped file, written before the first capture naming it (the
/// daemon's identity → path index did not know it: see `KNOWN_FILES`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileNameEvent {
    /// [`EVENT_FILE_NAME`].
    pub event: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// The mapping the file was seen in (its `dev`, `ino` are the file's kernel identity).
    pub vma: VmaInfo,
    /// The file's name (last component), NUL-terminated.
    pub name: [u8; NAME_LEN],
    /// The file's full path and user-visible identity.
    pub path: FilePath,
}

/// A process lifecycle event: exec or exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcEvent {
    /// [`EVENT_PROC`].
    pub event: u32,
    /// [`PROC_EXEC`] or [`PROC_EXIT`].
    pub what: u32,
    /// Thread-group id.
    pub pid: u32,
    /// The thread that exec'd or exited last.
    pub tid: u32,
    /// `bpf_ktime_get_ns()` at the event.
    pub ts_ns: u64,
    /// The generation that starts (exec) or ends (exit).
    pub proc_gen: u64,
    /// The process's change sequence after the event.
    pub seq: u64,
    /// The slot's `begins` value the event took (exec and exit are instant changes).
    pub ticket: u64,
    /// The process's `comm`.
    pub comm: [u8; COMM_LEN],
    /// Exec only, if `flags & CHANGE_VMA`: the new program's text mapping.
    pub exe: VmaInfo,
    /// Exec only: the mapping holding the first instruction to run (the dynamic loader's
    /// text for a dynamically linked program).
    pub entry: VmaInfo,
    /// `CHANGE_VMA` when `exe` and `entry` are filled.
    pub flags: u32,
    /// See [`ChangeEvent::lost_reports`].
    pub lost_reports: u32,
    /// Exec only: the program file's name, NUL-terminated.
    pub exe_name: [u8; NAME_LEN],
    /// Exec only: the entry mapping's file name, NUL-terminated.
    pub entry_name: [u8; NAME_LEN],
    /// Fork only: the parent process.
    pub parent_pid: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// Fork only: the parent's generation.
    pub parent_gen: u64,
    /// Fork only: the parent's sequence while its address space was copied.
    pub parent_seq: u64,
    /// Exec only: the program file's path and user-visible identity.
    pub exe_path: FilePath,
    /// Exec only: the entry mapping's file path and user-visible identity.
    pub entry_path: FilePath,
}

/// Per-probe counters, kept per CPU in BPF and summed by the daemon.
///
/// `hits` counts every firing, before the namespace filter and the rate limit, so for every
/// probe `hits = self_excluded + filtered + rate_limited + counted + (hits written to the
/// ring buffer) + lost`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Times the probe fired.
    pub hits: u64,
    /// Hits that could not be delivered because the ring buffer was full.
    pub lost: u64,
    /// Hits over the probe's rate limit, not written to the ring buffer.
    pub rate_limited: u64,
    /// Hits from processes outside the probe's pid namespace, not written.
    pub filtered: u64,
    /// Hits from a probed process itself (this tracer or any other process running a probed
    /// binary), not written: probed must never feed on its own work.
    pub self_excluded: u64,
    /// Admitted hits of a count-only probe (`PROBE_FLAG_COUNT_ONLY`): counted, not written.
    pub counted: u64,
}

impl ProbeStats {
    /// Hit records BPF wrote into the ring: the hits neither refused (rate, filter, self),
    /// lost (ring full) nor counted in BPF.
    pub fn written(&self) -> u64 {
        self.hits
            - self.lost
            - self.rate_limited
            - self.filtered
            - self.self_excluded
            - self.counted
    }
}

/// `STOP` index 0 set to this: the run is stopping, probes no longer admit (or count) hits.
pub const STOP_ADMITTING: u32 = 1;

/// A probe's rate limit, pid-namespace filter and pid filter (the `PROBE_LIMITS` array), read by BPF only
/// for probes whose `PROBE_FLAGS` say so.
///
/// The rate limit is a GCRA (generic cell rate algorithm: the token bucket's equivalent with
/// one number of state, the "theoretical arrival time", kept in `PROBE_TAT`; see [`gcra`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeLimit {
    /// Nanoseconds between two hits at the sustained rate (1e9 / rate); 0 = unlimited.
    pub interval_ns: u64,
    /// How far ahead of now the theoretical arrival time may run: (burst - 1) × interval.
    pub tolerance_ns: u64,
    /// The pid namespace's nsfs device, kernel encoding (`major << 20 | minor`).
    pub pidns_dev: u64,
    /// The pid namespace's inode number (of `/proc/PID/ns/pid`).
    pub pidns_ino: u64,
    /// The one process (thread-group id, host pid namespace) the probe records hits of.
    pub tgid: u32,
    /// Zero; keeps the struct free of implicit padding.
    pub _reserved: u32,
}

/// One GCRA decision: a hit at `now` (ns) against the theoretical arrival time `tat`;
/// `Some(new tat)` if the hit conforms, `None` if it is over the limit.
///
/// A hit conforms when `max(tat, now) - now <= tolerance`; it then moves the TAT one
/// interval further. From an idle start this admits `burst` hits at once, then one per
/// interval; over any window of length T at most `burst + T / interval` hits conform. Idle
/// time refills the bucket up to `burst` only (`max(tat, now)` forgets older credit).
#[inline(always)]
pub const fn gcra(tat: u64, now: u64, interval_ns: u64, tolerance_ns: u64) -> Option<u64> {
    let start = if tat > now { tat } else { now };
    if start - now > tolerance_ns {
        None
    } else {
        Some(start.saturating_add(interval_ns))
    }
}

/// The [`ProbeLimit`] interval and tolerance of `per_sec` hits per second with bursts of
/// `burst` (at least 1); `per_sec` = 0 means unlimited (interval 0). Rates above 1e9/s get
/// the smallest interval, 1 ns.
pub const fn gcra_params(per_sec: u64, burst: u64) -> (u64, u64) {
    if per_sec == 0 {
        return (0, 0);
    }
    // Rounded up, so the enforced rate never exceeds `per_sec` (1e9 / 3 would otherwise
    // allow 3.000000003/s); at least 1 ns, since 0 means "off".
    let interval = 1_000_000_000_u64.div_ceil(per_sec);
    let burst = if burst == 0 { 1 } else { burst };
    (interval, (burst - 1).saturating_mul(interval))
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: HitEvent is #[repr(C)], made only of integers and integer arrays, and has no
    // padding (checked by the size assertion below), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::HitEvent {}
    // SAFETY: ProbeStats is #[repr(C)] with four u64 fields and no padding.
    unsafe impl aya::Pod for super::ProbeStats {}
    // SAFETY: ProbeLimit is #[repr(C)] with four u64 and two u32 fields and no padding.
    unsafe impl aya::Pod for super::ProbeLimit {}
    // SAFETY: as above, for SeqSlot.
    unsafe impl aya::Pod for super::SeqSlot {}
    // SAFETY: ProcEvent is #[repr(C)], integers only, no padding (size asserted below).
    unsafe impl aya::Pod for super::ProcEvent {}
    // SAFETY: TrackConfig is #[repr(C)], u32 fields only, no padding.
    unsafe impl aya::Pod for super::TrackConfig {}
    // SAFETY: ChangeEvent is #[repr(C)], integers only, no padding (size asserted below).
    unsafe impl aya::Pod for super::ChangeEvent {}
    // SAFETY: FileKey is #[repr(C)] with two u64 fields.
    unsafe impl aya::Pod for super::FileKey {}
    // SAFETY: StackHitEvent is #[repr(C)], integers only, no padding (size asserted below).
    unsafe impl aya::Pod for super::StackHitEvent {}
    // SAFETY: as above, for CapturedHitEvent.
    unsafe impl aya::Pod for super::CapturedHitEvent {}
    // SAFETY: as above, for CapturedStackEvent.
    unsafe impl aya::Pod for super::CapturedStackEvent {}
    // SAFETY: as above, for FileNameEvent.
    unsafe impl aya::Pod for super::FileNameEvent {}
    // SAFETY: as above, for LockChangeEvent.
    unsafe impl aya::Pod for super::LockChangeEvent {}
}

// The layouts are part of the BPF ABI: a field added without updating these sizes is a bug.
const _: () = assert!(core::mem::size_of::<HitEvent>() == 144);
const _: () = assert!(core::mem::size_of::<FilePath>() == 24 + PATH_LEN);
const _: () = assert!(
    core::mem::size_of::<ProcEvent>() == 64 + 2 * 48 + 8 + 2 * NAME_LEN + 24 + 2 * (24 + PATH_LEN)
);
const _: () =
    assert!(core::mem::size_of::<ChangeEvent>() == 48 + 32 + 8 + 48 + NAME_LEN + 24 + PATH_LEN);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 88);
const _: () = assert!(core::mem::size_of::<SeqSlot>() == 48);
// The daemon reads and writes a slot's fields in the mapped SEQS array at these offsets
// (daemon/src/track/seq.rs); BPF's atomic adds need `begins` and `ends` 8-byte aligned.
const _: () = assert!(core::mem::offset_of!(SeqSlot, begins) == 0);
const _: () = assert!(core::mem::offset_of!(SeqSlot, ends) == 8);
const _: () = assert!(core::mem::offset_of!(SeqSlot, mirror) == 16);
const _: () = assert!(core::mem::offset_of!(SeqSlot, mirror_pid) == 24);
const _: () = assert!(core::mem::offset_of!(SeqSlot, holder_tid) == 28);
const _: () = assert!(core::mem::offset_of!(SeqSlot, holder_ticket) == 32);
const _: () = assert!(core::mem::offset_of!(SeqSlot, holder_mm) == 40);
const _: () = assert!(core::mem::align_of::<SeqSlot>() == 8);
const _: () = assert!(stable_seq(3) == 6 && seq_of(2, 3) == 5 && seq_of(3, 3) == 6);
const _: () = assert!(core::mem::size_of::<LockChangeEvent>() == 40);
const _: () = assert!(core::mem::size_of::<CapturedHitEvent>() == 144 + 8 + 48);
const _: () = assert!(
    core::mem::size_of::<CapturedStackEvent>()
        == core::mem::size_of::<StackHitEvent>() + (MAX_FRAMES + 1) + (MAX_FRAMES + 1) * 48
);
const _: () = assert!(core::mem::size_of::<FileNameEvent>() == 8 + 48 + NAME_LEN + 24 + PATH_LEN);
const _: () = assert!(core::mem::size_of::<StackHitEvent>() == 144 + 8 + 8 * MAX_FRAMES);
const _: () = assert!(core::mem::size_of::<PidOffsets>() == 24);
const _: () = assert!(core::mem::size_of::<PathOffsets>() == 72);
const _: () = assert!(core::mem::size_of::<RetOffsets>() == 16);
const _: () = assert!(core::mem::size_of::<TrackConfig>() == 96 + 72 + 24 + 16 + 8);
const _: () = assert!(seq_slot(u32::MAX) < SEQ_SLOTS);
// BPF ring buffers must be a power of two and a multiple of the page size.
const _: () =
    assert!(RING_BYTES.is_power_of_two() && (RING_BYTES as u64).is_multiple_of(PAGE_SIZE));
const _: () = assert!(
    STACK_COPY_RING_BYTES.is_power_of_two()
        && (STACK_COPY_RING_BYTES as u64).is_multiple_of(PAGE_SIZE)
);
const _: () = assert!(core::mem::size_of::<ProbeStats>() == 48);
const _: () = assert!(core::mem::size_of::<ProbeLimit>() == 40);

#[cfg(test)]
mod tests {
    use super::*;

    /// Stable slots give even sequences, in-flight ones odd, and the sequence only grows.
    #[test]
    fn seq_parity_and_order() {
        assert_eq!(seq_of(0, 0), 0);
        assert_eq!(seq_of(0, 1), 1);
        assert_eq!(seq_of(1, 1), 2);
        assert!(seq_of(1, 3) % 2 == 1);
        assert!(seq_of(3, 3) > seq_of(1, 3));
    }

    /// Slots stay in range and spread consecutive pids.
    #[test]
    fn slots_spread() {
        let a = seq_slot(1000);
        let b = seq_slot(1001);
        assert!(a < SEQ_SLOTS && b < SEQ_SLOTS);
        assert_ne!(a, b);
    }

    /// Runs `gcra` over arrival times; returns the conforming ones.
    fn admitted(arrivals: &[u64], interval: u64, tolerance: u64) -> ([u64; 512], usize) {
        let (mut out, mut n, mut tat) = ([0; 512], 0, 0);
        for &t in arrivals {
            if let Some(next) = gcra(tat, t, interval, tolerance) {
                tat = next;
                out[n] = t;
                n += 1;
            }
        }
        (out, n)
    }

    /// From idle, exactly `burst` simultaneous hits conform; then one per interval.
    #[test]
    fn gcra_burst_then_rate() {
        let (interval, tolerance) = gcra_params(1000, 5);
        assert_eq!((interval, tolerance), (1_000_000, 4_000_000));
        let now = 10_000_000_000;
        let (_, n) = admitted(&[now; 20], interval, tolerance);
        assert_eq!(n, 5);
        // Dense arrivals every 10 µs for 100 ms: 5 + 100 conform (one per ms after the burst).
        let dense: [u64; 10_001] = core::array::from_fn(|i| now + i as u64 * 10_000);
        let mut tat = 0;
        let mut count = 0;
        for t in dense {
            if let Some(next) = gcra(tat, t, interval, tolerance) {
                tat = next;
                count += 1;
            }
        }
        assert_eq!(count, 5 + 100);
    }

    /// Idle time refills the bucket to `burst` hits, never more.
    #[test]
    fn gcra_idle_refills_up_to_burst() {
        let (interval, tolerance) = gcra_params(10, 3);
        let mut arrivals = [0u64; 40];
        for (i, a) in arrivals.iter_mut().enumerate() {
            // 20 hits at t = 1 s, then 20 hits 100 s later.
            *a = if i < 20 {
                1_000_000_000
            } else {
                101_000_000_000
            };
        }
        let (_, n) = admitted(&arrivals, interval, tolerance);
        assert_eq!(n, 3 + 3);
    }

    /// Over any window of length T, at most burst + T/interval hits conform, whatever the
    /// arrival pattern (pseudo-random gaps, bursts and pauses).
    #[test]
    fn gcra_window_bound() {
        let (interval, tolerance) = gcra_params(1000, 4);
        let burst = 4;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut arrivals = [0u64; 512];
        let mut t = 5_000_000_000;
        for a in arrivals.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            t += match state % 4 {
                0 => 0,
                1 => state % 100_000,
                2 => state % 2_000_000,
                _ => state % 20_000_000,
            };
            *a = t;
        }
        let (got, n) = admitted(&arrivals, interval, tolerance);
        assert!(n > burst && n < arrivals.len(), "{n}");
        for i in 0..n {
            for j in i..n {
                let window = got[j] - got[i];
                assert!((j - i + 1) as u64 <= burst as u64 + window / interval);
            }
        }
    }

    /// Rate 0 is unlimited; a burst of 0 means 1; absurd rates keep a non-zero interval.
    #[test]
    fn gcra_params_edges() {
        assert_eq!(gcra_params(0, 10), (0, 0));
        assert_eq!(gcra_params(1, 0), (1_000_000_000, 0));
        assert_eq!(gcra_params(u64::MAX, u64::MAX).0, 1);
        // Never faster than asked: 3/s is one hit per 333,333,334 ns.
        assert_eq!(gcra_params(3, 1).0, 333_333_334);
    }
}
