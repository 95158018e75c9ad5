//! The BPF maps shared with the daemon. Names here are the names the daemon looks up.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use probed_common::{MAX_PROBES, ProbeStats, RING_BYTES};

/// Hit events, consumed by the daemon.
#[map(name = "HITS")]
pub static HITS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Per-probe hit and loss counters (index = probe id), per CPU so updates need no atomics.
#[map(name = "PROBE_STATS")]
pub static PROBE_STATS: PerCpuArray<ProbeStats> = PerCpuArray::with_max_entries(MAX_PROBES, 0);
