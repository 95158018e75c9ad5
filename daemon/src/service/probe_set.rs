//! The daemon's probe table: ids, where each probe came from, and whether it is attached.
//!
//! Ids are the attach cookies and the index of the BPF per-probe arrays, so they are bounded
//! (`MAX_PROBES`) and reused: the lowest free id is taken. An id is freed only after its probe
//! was detached and the ring buffer drained, so no hit of the old probe is read as the new
//! one's; the BPF counters of a reused id are zeroed before it is attached again.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::ProbeDef;

/// Where a probe came from: a reload only adds and removes the config's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The config file.
    Config,
    /// `probed ctl add`.
    Ctl,
}

/// One probe of the table.
#[derive(Clone, Debug)]
pub struct Entry {
    /// What it is.
    pub def: ProbeDef,
    /// Where it came from.
    pub origin: Origin,
    /// Set when the probe was detached for firing too fast (the reason); it stays listed.
    pub disabled: Option<String>,
    /// Set while the probe is being removed (its link closing).
    pub removing: bool,
}

/// The table.
#[derive(Debug, Default)]
pub struct ProbeSet {
    entries: BTreeMap<u32, Entry>,
    /// Ids used before and free now (their BPF counters need zeroing).
    free: BTreeSet<u32>,
    /// The lowest id never used.
    next: u32,
    /// Ids ever used, up to `next`: whether an id's BPF slots may hold old values.
    max: u32,
}

impl ProbeSet {
    /// An empty table for at most `max` probes.
    pub fn new(max: u32) -> Self {
        Self {
            max,
            ..Self::default()
        }
    }

    /// Reserves an id; `(id, reused)`. `None` when the table is full.
    pub fn reserve(&mut self) -> Option<(u32, bool)> {
        if let Some(id) = self.free.pop_first() {
            return Some((id, true));
        }
        if self.next < self.max {
            self.next += 1;
            return Some((self.next - 1, false));
        }
        None
    }

    /// Gives back an id reserved but never inserted.
    pub fn release(&mut self, id: u32) {
        if !self.entries.contains_key(&id) {
            self.free.insert(id);
        }
    }

    /// Records probe `id`.
    pub fn insert(&mut self, id: u32, entry: Entry) {
        self.free.remove(&id);
        self.entries.insert(id, entry);
    }

    /// Forgets probe `id` and frees the id.
    pub fn remove(&mut self, id: u32) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        self.free.insert(id);
        Some(entry)
    }

    /// Probe `id`.
    pub fn get(&self, id: u32) -> Option<&Entry> {
        self.entries.get(&id)
    }

    /// Probe `id`, to change.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut Entry> {
        self.entries.get_mut(&id)
    }

    /// Every probe, by id.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.entries.iter().map(|(&id, e)| (id, e))
    }

    /// Number of probes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of probes attached (not disabled).
    pub fn attached(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.disabled.is_none())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            def: ProbeDef {
                spec: "uprobe:/bin/x:f".into(),
                output: "stdout".into(),
                pid: None,
                container: None,
                rate_limit: None,
                burst: None,
                disable_above: None,
                stack: None,
                stack_copy_kib: None,
            },
            origin: Origin::Ctl,
            disabled: None,
            removing: false,
        }
    }

    /// Ids are handed out lowest first, reused after removal (flagged as reused so their
    /// counters get zeroed), and run out at the bound.
    #[test]
    fn ids() {
        let mut set = ProbeSet::new(3);
        assert_eq!(set.reserve(), Some((0, false)));
        set.insert(0, entry());
        assert_eq!(set.reserve(), Some((1, false)));
        set.insert(1, entry());
        let (two, _) = set.reserve().unwrap();
        set.release(two);
        assert_eq!(set.reserve(), Some((2, true)));
        set.insert(2, entry());
        assert_eq!(set.reserve(), None);
        assert!(set.remove(1).is_some());
        assert!(set.remove(1).is_none());
        assert_eq!(set.reserve(), Some((1, true)));
        assert_eq!(set.len(), 2);
    }
}
