//! What a process is — its address space (`task->mm`, whose counter kseq mode reads), probed
//! itself or not (self_filter.rs), how deep its pid namespace is (kread.rs `ns_pids`) —
//! found once per process generation and kept in `PROC_FACTS`.
//!
//! Each is kernel reads a hit would otherwise pay each time (measured with
//! `kernel.bpf_stats_enabled`: the self filter's were ~390 ns of a counting probe's ~650 ns
//! per hit). None changes during a generation: a process runs another executable only
//! after an exec, which starts a new generation (track.rs `exec`), as does a pid reused
//! after an exit; all threads of a process share its address space (a new one only by
//! exec) and its pid namespace; and the maps the self filter reads are written before
//! anything is attached.

use crate::{
    kread,
    maps::{NS_LEVEL_UNKNOWN, PROC_FACTS, ProcFacts},
    self_filter,
};

/// The facts of process `tgid` in its generation `generation` (`track::generation`), asked
/// by a hit: in a task of that process, the one whose facts are read when they are not kept
/// (a fork's tracking, in the parent's task, asks the self filter itself).
#[inline(always)]
pub fn of(tgid: u32, generation: u64) -> ProcFacts {
    // SAFETY: a plain value copied out at once.
    if let Some(facts) = unsafe { PROC_FACTS.get(&tgid) }.copied()
        && facts.generation == generation
    {
        return facts;
    }
    let facts = ProcFacts {
        generation,
        mm: kread::current_mm(),
        probed: self_filter::is_probed(tgid) as u32,
        ns_level: kread::ns_level().unwrap_or(NS_LEVEL_UNKNOWN),
    };
    // A full map evicts another process's facts, found again at its next hit.
    let _ = PROC_FACTS.insert(&tgid, &facts, 0);
    facts
}
