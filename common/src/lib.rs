//! Types shared by probed's BPF programs (`ebpf/`) and its daemon (`daemon/`).
//!
//! Every type here is `#[repr(C)]` with no implicit padding, so the byte layout the BPF side
//! writes is exactly what the daemon reads. Flags are `u32`, never `bool`. The `user` feature
//! implements `aya::Pod` so the daemon can read these out of BPF maps.
#![no_std]

/// Most probes one run can attach; the size of the per-probe statistics array in BPF.
/// A probe id is the index into that array and the attach cookie of the uprobe.
pub const MAX_PROBES: u32 = 4096;

/// Length of a task's `comm` (TASK_COMM_LEN in the kernel).
pub const COMM_LEN: usize = 16;

/// Number of integer argument registers captured at a function entry (System V x86-64 ABI).
pub const ARG_REGS: usize = 6;

/// Capacity of the hit ring buffer in bytes (a power of two, a multiple of the page size).
pub const RING_BYTES: u32 = 1 << 22;

/// `HitEvent::kind` of an entry probe (uprobe).
pub const KIND_ENTRY: u32 = 0;
/// `HitEvent::kind` of a return probe (uretprobe).
pub const KIND_RETURN: u32 = 1;

/// One probe hit, as the BPF program writes it into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HitEvent {
    /// The probe that fired: the attach cookie, an index below [`MAX_PROBES`].
    pub probe_id: u32,
    /// [`KIND_ENTRY`] or [`KIND_RETURN`].
    pub kind: u32,
    /// Thread-group id (the process id) in the initial pid namespace.
    pub pid: u32,
    /// Thread id in the initial pid namespace.
    pub tid: u32,
    /// `bpf_ktime_get_ns()` at the hit: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// The probed instruction's virtual address in the process (the function entry for
    /// return probes too, from `bpf_get_func_ip`).
    pub ip: u64,
    /// For return probes, the address the function returned to; 0 for entry probes.
    pub ret_addr: u64,
    /// The process's address-space change sequence at hit time (even = stable).
    /// 0 when no change tracker runs.
    pub seq: u64,
    /// Identity of the process beyond its pid (a generation that changes on pid reuse and
    /// exec); 0 when no change tracker runs.
    pub proc_gen: u64,
    /// The first six integer arguments (entry probes); zeros for return probes.
    pub args: [u64; ARG_REGS],
    /// The return value register (return probes); 0 for entry probes.
    pub retval: u64,
    /// The thread's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// Per-probe counters, kept per CPU in BPF and summed by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Times the probe fired.
    pub hits: u64,
    /// Hits that could not be delivered because the ring buffer was full.
    pub lost: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: HitEvent is #[repr(C)], made only of integers and integer arrays, and has no
    // padding (checked by the size assertion below), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::HitEvent {}
    // SAFETY: ProbeStats is #[repr(C)] with two u64 fields and no padding.
    unsafe impl aya::Pod for super::ProbeStats {}
}

// The layouts are part of the BPF ABI: a field added without updating these sizes is a bug.
const _: () = assert!(core::mem::size_of::<HitEvent>() == 128);
const _: () = assert!(core::mem::size_of::<ProbeStats>() == 16);
