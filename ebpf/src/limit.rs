//! Per-probe admission before a hit is recorded: the pid filter, the pid-namespace filter,
//! then the rate limit. Only probes whose `PROBE_FLAGS` carry `PROBE_FLAGS_LIMITS` bits come here, so a
//! probe without either pays nothing beyond the flags lookup it always had.
//!
//! The rate limit is GCRA (`probed_common::gcra`): one u64 "theoretical arrival time" (TAT)
//! per probe in `PROBE_TAT`, shared by all CPUs and updated with compare-and-swap, so hits
//! on several CPUs draw from one bucket without a lock.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::{bindings::bpf_pidns_info, helpers::generated::bpf_get_ns_current_pid_tgid};
use probed_common::{
    PROBE_FLAG_PID, PROBE_FLAG_PIDNS, PROBE_FLAG_RATE_LIMIT, ProbeLimit, ProbeStats, gcra,
};

use crate::maps::{PROBE_LIMITS, PROBE_TAT};

/// Compare-and-swap attempts on a probe's TAT before the hit is dropped. A CAS fails only
/// when another CPU's CAS on the same TAT succeeded in between (rejections write nothing),
/// so every failure means another hit of this probe was just admitted: giving up after a
/// few means the bucket is being drained by that many CPUs at once, and dropping the hit
/// (counted as rate-limited) keeps the limit exact instead of exceeding it. The bound also
/// keeps the loop finite for the verifier.
const CAS_TRIES: u32 = 8;

/// Whether a hit of `probe_id` at `now` (ns, `bpf_ktime_get_ns`) in process `tgid` is
/// recorded; a hit that is not is counted in `stats` (filtered or rate-limited).
#[inline(always)]
pub fn admit(probe_id: u32, flags: u32, tgid: u32, now: u64, stats: *mut ProbeStats) -> bool {
    let Some(limit) = PROBE_LIMITS.get(probe_id) else {
        return true;
    };
    let other_process = flags & PROBE_FLAG_PID != 0 && tgid != limit.tgid;
    if other_process || (flags & PROBE_FLAG_PIDNS != 0 && !in_pidns(limit)) {
        // SAFETY: `stats` is this CPU's slot of a per-CPU array (see hit.rs).
        unsafe { (*stats).filtered += 1 };
        return false;
    }
    if flags & PROBE_FLAG_RATE_LIMIT != 0
        && limit.interval_ns != 0
        && !take_token(probe_id, limit, now)
    {
        // SAFETY: as above.
        unsafe { (*stats).rate_limited += 1 };
        return false;
    }
    true
}

/// Whether the current task lives in the probe's pid namespace: the helper fails (-EINVAL)
/// when the task's active pid namespace is not the nsfs inode (dev, ino).
#[inline(always)]
fn in_pidns(limit: &ProbeLimit) -> bool {
    let mut info = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `info` is a valid, writable local of the size passed.
    let rc = unsafe {
        bpf_get_ns_current_pid_tgid(
            limit.pidns_dev,
            limit.pidns_ino,
            &mut info,
            core::mem::size_of::<bpf_pidns_info>() as u32,
        )
    };
    rc == 0
}

/// One GCRA step on the probe's shared TAT; true if the hit conforms.
#[inline(always)]
fn take_token(probe_id: u32, limit: &ProbeLimit, now: u64) -> bool {
    let Some(tat) = PROBE_TAT.get_ptr_mut(probe_id) else {
        return true;
    };
    // SAFETY: `tat` points into a live array value; an aligned u64 load is single-copy
    // atomic, and a stale value only makes the CAS below fail and retry.
    let mut seen = unsafe { tat.read_volatile() };
    for _ in 0..CAS_TRIES {
        let Some(next) = gcra(seen, now, limit.interval_ns, limit.tolerance_ns) else {
            return false;
        };
        // core's AtomicU64 has no compare_exchange on BPF (rustc does not claim CAS there),
        // so the intrinsic is used; it compiles to BPF_CMPXCHG (cpu v3).
        // SAFETY: `tat` points into a live array value the kernel keeps mapped while the
        // program runs; every writer (BPF here, the daemon's reset) writes it whole.
        let (prev, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                tat, seen, next,
            )
        };
        if swapped {
            return true;
        }
        seen = prev;
    }
    false
}
