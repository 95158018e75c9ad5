//! Typed arguments of a hit: BPF writes a probe's string arguments as one record just
//! before the hit's own (same program run, same CPU, so the ring keeps that order); the
//! pipeline keeps it by thread until that thread's hit arrives, and joins the two by
//! thread, timestamp and probe.

use std::collections::HashMap;

use probed_common::{ArgStringsEvent, HitEvent, KIND_RETURN};

use crate::typed_args::{ArgPlan, ArgValue};

/// Threads whose strings may wait for their hit at once: past it the waiting ones (whose
/// hits were lost to a full ring) are dropped.
const MAX_PENDING: usize = 65536;

/// String records waiting for their hit, by thread.
#[derive(Debug, Default)]
pub(super) struct PendingStrings {
    by_tid: HashMap<u32, Box<ArgStringsEvent>>,
}

impl PendingStrings {
    /// Keeps a strings record for its thread's next hit (replacing one whose hit was lost).
    pub(super) fn keep(&mut self, e: &ArgStringsEvent) {
        if self.by_tid.len() >= MAX_PENDING {
            self.by_tid.clear();
        }
        self.by_tid.insert(e.tid, Box::new(*e));
    }

    /// The typed values of `hit` by `plan`, with its strings if their record is the one
    /// waiting (a lost one shows the strings as missing).
    pub(super) fn values(&mut self, plan: &ArgPlan, hit: &HitEvent) -> Vec<ArgValue> {
        let strings = if plan.has_strings() {
            self.by_tid
                .remove(&hit.tid)
                .filter(|e| e.ts_ns == hit.ts_ns && e.probe_id == hit.probe_id)
        } else {
            None
        };
        let raw = if hit.kind == KIND_RETURN {
            [hit.retval, 0, 0, 0, 0, 0]
        } else {
            hit.args
        };
        plan.values(&raw, strings.as_deref())
    }
}
