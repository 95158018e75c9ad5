//! probed never traces itself: hits (and address-space tracking) of probed's own processes
//! are refused before anything else is done for them.
//!
//! Why in BPF: every record a probed process causes would be processed by probed, which
//! allocates, writes and maps memory — and so fires the probes again (a uretprobe on malloc
//! fed on its own output without end). Two checks, cheapest first: the tgid of this tracer
//! (`PROBED_PROCS`, exact for all its threads), then the current task's executable
//! (`mm->exe_file` → (dev, inode) in `PROBED_EXES`), which covers every other process
//! running probed's binary — a second `probed trace`, a `probed ctl`, the daemon.
//!
//! A hit's answer is kept per process generation (proc_facts.rs): the executable check is
//! four kernel reads and two map lookups, measured at ~390 ns of a hit program's ~650 ns
//! (`kernel.bpf_stats_enabled`, a counting probe); a kept answer is one lookup.

use aya_ebpf::helpers::generated::bpf_get_current_task;
use probed_common::{FileKey, STOP_ADMITTING};

use crate::{
    kread,
    maps::{PROBED_EXES, PROBED_PROCS, STOP, TRACK_CONFIG},
};

/// Whether the current task, of process `tgid`, belongs to a probed process: this tracer's
/// tgid, then the current task's executable. Asked afresh each time (by the tracker, for a
/// process not tracked yet: for a fork, in the parent's task); a hit asks its process's
/// facts (proc_facts.rs), which keep the answer.
#[inline(always)]
pub fn is_probed(tgid: u32) -> bool {
    // SAFETY: only the presence of the key is used.
    if unsafe { PROBED_PROCS.get(&tgid) }.is_some() {
        return true;
    }
    let Some(config) = TRACK_CONFIG.get(0) else {
        return false;
    };
    if config.mm_exe_file == 0 || config.offsets.valid != 1 {
        return false;
    }
    // SAFETY: bpf_get_current_task has no preconditions; the value is only an address read
    // through bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let mm = kread::read_u64(task, config.offsets.task_mm);
    if mm == 0 {
        return false;
    }
    let exe = kread::read_u64(mm, config.mm_exe_file);
    if exe == 0 {
        return false;
    }
    let (dev, ino) = kread::file_identity(&config.offsets, exe);
    // SAFETY: only the presence of the key is used.
    unsafe { PROBED_EXES.get(&FileKey { dev, ino }) }.is_some()
}

/// Whether the run is stopping (probes admit no more hits).
#[inline(always)]
pub fn stopping() -> bool {
    STOP.get(0).is_some_and(|s| *s == STOP_ADMITTING)
}
