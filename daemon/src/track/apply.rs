//! The tracker's process and change events applied to the resolver: exec bases and scans,
//! exits, forks, and mapping changes replayed onto a process's pictures (or, for a process
//! BPF just started tracking, a partial base and a scan).
//!
//! The pipeline dispatches the events here in ring order, after its own filtering and lock
//! mode's bookkeeping (`pipeline/dispatch.rs`, `handle_proc`, `handle_change`).

use probed_common::{ChangeEvent, PROC_EXEC, PROC_EXIT, PROC_FORK, ProcEvent};

use crate::{
    resolve::{ProcKey, Resolver, SeqSource, Snapshot},
    track::{
        changes::{self, Replay},
        paths::PathIndex,
    },
};

/// A process exec'd or exited. At exec its new address space starts from the kernel's
/// report (program and loader text) and is also scanned now, so that even a process that
/// exits right after its first hit resolves; at exit its pictures are kept (bounded) for
/// the hits still queued.
pub fn proc_event<S: SeqSource>(
    resolver: &Resolver<S>,
    paths: &PathIndex,
    proc: ProcKey,
    event: &ProcEvent,
) {
    match event.what {
        PROC_EXEC => {
            if let Some(base) = changes::exec_base(event, paths) {
                resolver.add_base(proc, event.ticket, base);
            }
            if let Err(err) = resolver.track(proc) {
                tracing::debug!(%proc, error = %err, "eager snapshot after exec failed");
            }
        }
        PROC_EXIT => resolver.exited(proc),
        PROC_FORK => resolver.fork(
            ProcKey::new(event.parent_pid, event.parent_gen),
            event.parent_seq,
            proc,
            event.ticket,
        ),
        _ => {}
    }
}

/// A mapping change finished: replay it onto the process's pictures.
pub fn change_event<S: SeqSource>(
    resolver: &Resolver<S>,
    paths: &mut PathIndex,
    proc: ProcKey,
    event: &ChangeEvent,
) {
    if !resolver.is_tracked(proc) {
        // BPF reports only processes it tracks: this one just started being tracked (it
        // mapped a probed file). Start its pictures from what the report says (a partial
        // base: nothing else is known yet, and the process may exit before a scan), then
        // scan it for the rest.
        if let Replay::Change(change) = changes::replay(event, paths, None) {
            let empty = Snapshot::partial(
                probed_common::stable_seq(event.ticket.wrapping_sub(1)),
                Vec::new(),
            );
            resolver.add_base(proc, event.ticket.wrapping_sub(1), empty);
            resolver.change(proc, event.ticket, Some(change));
        }
        if let Err(err) = resolver.track(proc) {
            tracing::debug!(%proc, error = %err, "scan of a newly tracked process failed");
        }
        return;
    }
    paths.current = resolver.snapshot(proc);
    match changes::replay(event, paths, paths.current.as_deref()) {
        Replay::Nothing => {}
        Replay::Change(change) => resolver.change(proc, event.ticket, Some(change)),
        Replay::Unknown => {
            tracing::debug!(
                op = event.op,
                ret = event.ret,
                flags = event.flags,
                args = ?event.args,
                "change report cannot be replayed"
            );
            resolver.change(proc, event.ticket, None);
        }
    }
}
