//! Per-probe settings BPF reads at each hit (`PROBE_FLAGS`: stack capture, the filters and
//! the rate limit; `PROBE_LIMITS`, `PROBE_TAT`) and the per-probe counters it keeps.

use std::num::NonZeroU32;

use aya::maps::{Array, MapData, PerCpuArray};
use probed_common::{
    MAX_PROBES, PROBE_FLAG_ARG_STRINGS, PROBE_FLAG_ARGS, PROBE_FLAG_PID, PROBE_FLAG_PIDNS,
    PROBE_FLAG_RATE_LIMIT, PROBE_FLAGS_LIMITS, ProbeArgs, ProbeLimit, ProbeStats, gcra_params,
};

use super::{AttachError, AttachRequest, RateLimit, Tracer, map_mut, map_ref};
use crate::pidns::PidNamespace;

/// Name of the per-probe flags array.
const PROBE_FLAGS_MAP: &str = "PROBE_FLAGS";
/// Name of the per-probe rate limit and pid filters array.
const PROBE_LIMITS_MAP: &str = "PROBE_LIMITS";
/// Name of the per-probe GCRA state (theoretical arrival time) array.
const PROBE_TAT_MAP: &str = "PROBE_TAT";
/// Name of the per-probe argument specs array.
const PROBE_ARGS_MAP: &str = "PROBE_ARGS";
/// Name of the per-probe counters map.
const STATS_MAP: &str = "PROBE_STATS";

impl Tracer {
    /// Sets a probe's flags (`PROBE_FLAG_STACK`) before it is attached. The rate-limit and
    /// namespace-filter bits are kept: they belong to [`Self::set_rate_limit`] and
    /// [`Self::set_pidns_filter`].
    pub fn set_probe_flags(&mut self, id: u32, flags: u32) -> Result<(), AttachError> {
        let old = self.probe_flags(id)?;
        // The limits' and the arguments' bits belong to their own setters.
        let kept = PROBE_FLAGS_LIMITS | PROBE_FLAG_ARGS | PROBE_FLAG_ARG_STRINGS;
        self.write_probe_flags(id, (old & kept) | (flags & !kept))
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

    /// Writes what BPF checks per probe before its link exists: its pid filter and typed
    /// arguments (an id past the maps' size is refused).
    pub(super) fn set_probe_settings(
        &mut self,
        req: &AttachRequest,
        pid: Option<NonZeroU32>,
    ) -> Result<(), AttachError> {
        if req.id >= MAX_PROBES {
            return Err(AttachError::TooManyProbes(req.id));
        }
        self.set_pid_filter(req.id, pid)?;
        self.set_probe_args(req.id, req.args.as_ref())
    }

    /// Sets probe `id`'s typed arguments (None: the raw argument registers), before it is
    /// attached: specs first, flags last, so BPF never reads specs of another probe.
    pub(super) fn set_probe_args(
        &mut self,
        id: u32,
        args: Option<&ProbeArgs>,
    ) -> Result<(), AttachError> {
        let flags = self.probe_flags(id)? & !(PROBE_FLAG_ARGS | PROBE_FLAG_ARG_STRINGS);
        let Some(args) = args else {
            return self.write_probe_flags(id, flags);
        };
        let mut map: Array<&mut MapData, ProbeArgs> = map_mut(&mut self.ebpf, PROBE_ARGS_MAP)?;
        map.set(id, args, 0).map_err(|e| AttachError::ProbeConfig {
            id,
            source: Box::new(e),
        })?;
        let strings = args.specs.iter().any(|s| s.string != 0);
        let extra = PROBE_FLAG_ARGS | if strings { PROBE_FLAG_ARG_STRINGS } else { 0 };
        self.write_probe_flags(id, flags | extra)
    }

    /// Records only hits of probe `id` from process `pid` (None: from every process), before
    /// the probe is attached.
    pub(super) fn set_pid_filter(
        &mut self,
        id: u32,
        pid: Option<NonZeroU32>,
    ) -> Result<(), AttachError> {
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
        let mut array: PerCpuArray<&mut MapData, ProbeStats> = map_mut(&mut self.ebpf, STATS_MAP)?;
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
        let array: Array<&MapData, u32> = map_ref(&self.ebpf, PROBE_FLAGS_MAP)?;
        array.get(&id, 0).map_err(|e| AttachError::ProbeConfig {
            id,
            source: Box::new(e),
        })
    }

    fn write_probe_flags(&mut self, id: u32, flags: u32) -> Result<(), AttachError> {
        let mut array: Array<&mut MapData, u32> = map_mut(&mut self.ebpf, PROBE_FLAGS_MAP)?;
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
        let mut array: Array<&mut MapData, ProbeLimit> = map_mut(&mut self.ebpf, PROBE_LIMITS_MAP)?;
        let mut limit = array.get(&id, 0).map_err(config)?;
        change(&mut limit);
        array.set(id, limit, 0).map_err(config)
    }

    fn write_tat(&mut self, id: u32, tat: u64) -> Result<(), AttachError> {
        let mut array: Array<&mut MapData, u64> = map_mut(&mut self.ebpf, PROBE_TAT_MAP)?;
        array.set(id, tat, 0).map_err(|e| AttachError::ProbeConfig {
            id,
            source: Box::new(e),
        })
    }

    /// Per-probe counters summed over CPUs.
    pub fn stats(&self, id: u32) -> Result<ProbeStats, AttachError> {
        let array: PerCpuArray<&MapData, ProbeStats> = map_ref(&self.ebpf, STATS_MAP)?;
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
                counted: acc.counted + v.counted,
            }))
    }
}
