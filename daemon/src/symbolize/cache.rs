//! A concurrent map from [`FileId`] to once-filled slots, read without locks.
//!
//! The map is published through [`ArcSwap`] and replaced whole by writers (copy on write):
//! readers load it with no lock and no shared write, and writers — inserting a slot on a
//! miss, evicting, invalidating — serialise on one mutex. Files number in the hundreds to
//! thousands and a miss costs a file load anyway, so copying the map on write is cheap next
//! to it. A slot removed from the map lives on while anyone still holds its `Arc`.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use arc_swap::{ArcSwap, Guard};
use rustc_hash::FxBuildHasher;

use crate::file_id::FileId;

/// One entry: a value filled once by whoever missed first, and a CLOCK "used" bit.
#[derive(Debug)]
pub(super) struct Slot<V> {
    /// The value; concurrent first readers wait for one fill.
    pub(super) state: OnceLock<V>,
    /// Set by lookups, cleared by the eviction sweep (second chance).
    used: AtomicBool,
}

impl<V> Slot<V> {
    fn new() -> Self {
        Self {
            state: OnceLock::new(),
            used: AtomicBool::new(false),
        }
    }

    /// Marks the slot recently used.
    pub(super) fn touch(&self) {
        // Load first: once set, hits only read the line, so it stays shared between cores.
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }
}

/// The published map.
///
/// Keyed with FxHash: keys come from the kernel, not from an adversary choosing collisions,
/// and SipHash was a third of the cost of a cached lookup.
pub(super) type Map<V> = HashMap<FileId, Arc<Slot<V>>, FxBuildHasher>;

/// The cache: a lock-free read side, a mutex-serialised write side, CLOCK eviction.
#[derive(Debug)]
pub(super) struct SlotCache<V> {
    /// The published map.
    map: ArcSwap<Map<V>>,
    /// Serialises writers; holds the CLOCK ring of keys, oldest first.
    writer: Mutex<VecDeque<FileId>>,
    /// Maximum number of entries (at least one).
    capacity: usize,
    /// Entries evicted to stay within capacity.
    evictions: AtomicU64,
}

impl<V> SlotCache<V> {
    /// An empty cache of at most `capacity` entries (at least one).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            map: ArcSwap::from_pointee(Map::default()),
            writer: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            evictions: AtomicU64::new(0),
        }
    }

    /// The current map, for a lookup with no lock and no shared write.
    pub(super) fn read(&self) -> Guard<Arc<Map<V>>> {
        self.map.load()
    }

    /// The slot for `id`, inserting an empty one (and evicting past capacity) on a miss.
    pub(super) fn slot(&self, id: FileId) -> Arc<Slot<V>> {
        if let Some(slot) = self.map.load().get(&id) {
            return slot.clone();
        }
        let mut ring = self.lock();
        let current = self.map.load_full();
        if let Some(slot) = current.get(&id) {
            return slot.clone();
        }
        let mut map = Map::clone(&current);
        let slot = Arc::new(Slot::new());
        map.insert(id, slot.clone());
        ring.push_back(id);
        // CLOCK: the oldest entry not used since the last sweep goes; used ones get a
        // second chance, and the newcomer is spared. Two passes always find a victim.
        let mut budget = 2 * ring.len();
        while map.len() > self.capacity && budget > 0 {
            budget -= 1;
            let Some(victim) = ring.pop_front() else {
                break;
            };
            let spare = victim == id
                || map
                    .get(&victim)
                    .is_some_and(|s| s.used.swap(false, Ordering::Relaxed));
            if spare {
                ring.push_back(victim);
            } else if map.remove(&victim).is_some() {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.map.store(Arc::new(map));
        slot
    }

    /// Removes `id` if its slot still is `slot` (another thread may have replaced it), or
    /// whatever slot it has when `slot` is `None`.
    pub(super) fn remove(&self, id: FileId, slot: Option<&Arc<Slot<V>>>) {
        let mut ring = self.lock();
        let current = self.map.load_full();
        let matches = current
            .get(&id)
            .is_some_and(|s| slot.is_none_or(|want| Arc::ptr_eq(s, want)));
        if matches {
            let mut map = Map::clone(&current);
            map.remove(&id);
            ring.retain(|k| *k != id);
            self.map.store(Arc::new(map));
        }
    }

    /// Puts a new slot holding `make()` in place of every slot whose value `matches`
    /// (e.g. the image a fetched debug file completes); returns how many. Readers holding
    /// an old slot keep it until they drop it.
    pub(super) fn replace(&self, matches: impl Fn(&V) -> bool, make: impl Fn() -> V) -> u64 {
        let _ring = self.lock();
        let current = self.map.load_full();
        let ids: Vec<FileId> = current
            .iter()
            .filter(|(_, slot)| slot.state.get().is_some_and(&matches))
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return 0;
        }
        let mut map = Map::clone(&current);
        for id in &ids {
            let slot = Slot::new();
            let _ = slot.state.set(make());
            slot.touch();
            map.insert(*id, Arc::new(slot));
        }
        self.map.store(Arc::new(map));
        ids.len() as u64
    }

    /// The number of entries.
    pub(super) fn len(&self) -> usize {
        self.map.load().len()
    }

    /// Entries evicted so far.
    pub(super) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<FileId>> {
        // The ring stays consistent across a panic elsewhere: every write is one call.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64) -> FileId {
        FileId { dev: 1, ino }
    }

    /// A miss inserts once; a second miss on the same key gets the same slot.
    #[test]
    fn one_slot_per_key() {
        let cache = SlotCache::<u32>::new(8);
        let a = cache.slot(id(1));
        a.state.set(7).unwrap();
        assert!(Arc::ptr_eq(&a, &cache.slot(id(1))));
        assert_eq!(
            cache.read().get(&id(1)).and_then(|s| s.state.get()),
            Some(&7)
        );
        assert_eq!(cache.len(), 1);
    }

    /// Past capacity, an entry used since the last sweep survives and an unused one goes.
    #[test]
    fn clock_eviction_spares_recently_used() {
        let cache = SlotCache::<u32>::new(2);
        cache.slot(id(1));
        cache.slot(id(2)).touch();
        cache.slot(id(3));
        let map = cache.read();
        assert!(!map.contains_key(&id(1)), "oldest unused entry evicted");
        assert!(map.contains_key(&id(2)) && map.contains_key(&id(3)));
        assert_eq!(cache.evictions(), 1);
    }

    /// Removal only takes the expected slot; a held slot outlives its removal.
    #[test]
    fn remove_checks_identity_and_keeps_holders_alive() {
        let cache = SlotCache::<u32>::new(4);
        let old = cache.slot(id(1));
        old.state.set(1).unwrap();
        cache.remove(id(1), None);
        let new = cache.slot(id(1));
        cache.remove(id(1), Some(&old));
        assert!(
            cache.read().contains_key(&id(1)),
            "a stale remove leaves the new slot"
        );
        cache.remove(id(1), Some(&new));
        assert_eq!(cache.len(), 0);
        assert_eq!(old.state.get(), Some(&1));
    }

    /// Distinct ids hash apart (the hasher mixes both fields).
    #[test]
    fn hasher_mixes_both_fields() {
        use std::hash::BuildHasher;
        let b = FxBuildHasher;
        let h = |dev, ino| b.hash_one(FileId { dev, ino });
        assert_ne!(h(1, 2), h(2, 1));
        assert_ne!(h(1, 2), h(1, 3));
    }
}
