//! Processes that already run when probed starts: the ones that map a probed file are
//! tracked at once, so their first hits resolve from a picture taken before them (and
//! replayed since) instead of from a rescan that may come too late to match.

use std::collections::HashSet;

use crate::{
    file_id::FileId,
    resolve::{ProcKey, Resolver, SeqSource, maps},
    track::{Generations, Tracked},
};

/// Tracks every live process whose maps show one of `files` — or, with `only`, that process
/// whatever it maps now (it may map a probed library later, and its changes must be
/// replayed from the start) — and returns those tracked. `before_track` is told each
/// process just before the resolver takes its first picture (`probed trace --record`).
pub fn track_mapping_processes<S: SeqSource>(
    files: &HashSet<FileId>,
    only: Option<u32>,
    generations: &Generations,
    tracked_set: &Tracked,
    resolver: &Resolver<S>,
    before_track: &dyn Fn(ProcKey),
) -> Vec<ProcKey> {
    let pids: Vec<u32> = match only {
        Some(pid) => vec![pid],
        None => std::fs::read_dir("/proc")
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default(),
    };
    // probed's own processes are never tracked (self_filter.rs): this one, and any other
    // running probed's executable.
    let self_pid = std::process::id();
    let own_exe = crate::self_filter::exe_of("self").ok();
    let mut tracked = Vec::new();
    for pid in pids.into_iter().filter(|&p| p != self_pid) {
        let Ok(text) = std::fs::read(format!("/proc/{pid}/maps")) else {
            continue;
        };
        let maps_probed_file = maps::lines(&text).flatten().any(|line| {
            files.contains(&FileId::from_major_minor(line.major, line.minor, line.ino))
        });
        if only.is_none() && !maps_probed_file {
            continue;
        }
        // Only now, for the few processes that would be tracked: a stat of their executable.
        if crate::self_filter::runs_probed(pid, own_exe) {
            continue;
        }
        let Some(generation) = generations.get_or_assign(pid) else {
            continue;
        };
        // Tracked in BPF first, so that every change from here on moves its sequence and the
        // scan below is validated against them.
        if !tracked_set.insert(pid) {
            tracing::warn!(pid, "cannot track a running process: the BPF set is full");
            continue;
        }
        let proc = ProcKey::new(pid, generation);
        before_track(proc);
        match resolver.track(proc) {
            Ok(_) => tracked.push(proc),
            Err(err) => tracing::debug!(pid, error = %err, "could not track a running process"),
        }
    }
    tracked
}
