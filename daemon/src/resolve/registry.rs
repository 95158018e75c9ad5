//! (file, file offset) → probe: which probe an address belongs to, the "inode → uprobe" step.
//!
//! Readers never lock: the table is an immutable map published whole (copy on write; probes
//! change rarely, lookups happen per hit), and each [`Reader`](super::Reader) keeps its own
//! reference, refreshed only when a version counter says the table changed.

use std::collections::hash_map::Entry;

use rustc_hash::FxHashMap;

use super::sync::{Arc, AtomicU64, Mutex, Ordering, Published, lock};
use crate::file_id::FileId;

/// A probe's id: the index probed gave it, also the BPF attach cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeId(pub u32);

/// An immutable version of the table.
pub(crate) type ProbeMap = FxHashMap<(FileId, u64), ProbeId>;

/// The probe table shared by all readers of one resolver.
pub struct Registry {
    /// The current table.
    map: Published<ProbeMap>,
    /// Bumped after each new table is published, so readers can tell with one load whether
    /// their copy is current.
    version: AtomicU64,
    /// Serializes writers (copy, modify, publish).
    write: Mutex<()>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            map: Published::new(Some(Arc::new(ProbeMap::default()))),
            version: AtomicU64::new(0),
            write: Mutex::new(()),
        }
    }
}

impl Registry {
    /// Records that `probe` is attached at `offset` in `file`; returns the probe it replaced.
    pub fn insert(&self, file: FileId, offset: u64, probe: ProbeId) -> Option<ProbeId> {
        self.update(|map| map.insert((file, offset), probe))
    }

    /// Forgets the probe at `offset` in `file`; returns it.
    pub fn remove(&self, file: FileId, offset: u64) -> Option<ProbeId> {
        self.update(|map| match map.entry((file, offset)) {
            Entry::Occupied(e) => Some(e.remove()),
            Entry::Vacant(_) => None,
        })
    }

    /// The probe at `offset` in `file` (loads the table; readers use their cached copy).
    pub fn get(&self, file: FileId, offset: u64) -> Option<ProbeId> {
        self.current().get(&(file, offset)).copied()
    }

    /// Number of registered probe locations.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// Whether no probe is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn update<R>(&self, change: impl FnOnce(&mut ProbeMap) -> R) -> R {
        let _writer = lock(&self.write);
        let mut map = (*self.current()).clone();
        let result = change(&mut map);
        self.map.store(Some(Arc::new(map)));
        // Release: a reader that sees the new version then loads at least this table.
        self.version.fetch_add(1, Ordering::Release);
        result
    }

    fn current(&self) -> Arc<ProbeMap> {
        self.map
            .load_full()
            .expect("the registry always holds a table")
    }

    /// A reader-private view of the table.
    pub(crate) fn cache(&self) -> RegistryCache {
        let version = self.version.load(Ordering::Acquire);
        RegistryCache {
            version,
            map: self.current(),
        }
    }
}

/// One reader's reference to the table, and the version it is.
pub(crate) struct RegistryCache {
    version: u64,
    map: Arc<ProbeMap>,
}

impl RegistryCache {
    /// The probe at (file, offset), refreshing the copy first if the table changed.
    #[inline]
    pub(crate) fn get(
        &mut self,
        registry: &Registry,
        file: FileId,
        offset: u64,
    ) -> Option<ProbeId> {
        let version = registry.version.load(Ordering::Acquire);
        if version != self.version {
            self.version = version;
            self.map = registry.current();
        }
        if self.map.is_empty() {
            return None;
        }
        self.map.get(&(file, offset)).copied()
    }
}

#[cfg(all(test, not(probed_loom)))]
mod tests {
    use super::*;

    const F: FileId = FileId { dev: 3, ino: 9 };

    /// Inserted probes are found at their exact offset only, and removal forgets them.
    #[test]
    fn insert_get_remove() {
        let reg = Registry::default();
        assert!(reg.is_empty());
        assert_eq!(reg.insert(F, 0x1130, ProbeId(1)), None);
        assert_eq!(reg.get(F, 0x1130), Some(ProbeId(1)));
        assert_eq!(reg.get(F, 0x1131), None);
        assert_eq!(reg.get(FileId { dev: 3, ino: 10 }, 0x1130), None);
        assert_eq!(reg.insert(F, 0x1130, ProbeId(2)), Some(ProbeId(1)));
        assert_eq!(reg.remove(F, 0x1130), Some(ProbeId(2)));
        assert_eq!(reg.remove(F, 0x1130), None);
        assert_eq!(reg.len(), 0);
    }

    /// A reader's cached copy follows later changes to the table.
    #[test]
    fn cache_sees_updates() {
        let reg = Registry::default();
        let mut cache = reg.cache();
        assert_eq!(cache.get(&reg, F, 1), None);
        reg.insert(F, 1, ProbeId(5));
        assert_eq!(cache.get(&reg, F, 1), Some(ProbeId(5)));
        reg.remove(F, 1);
        assert_eq!(cache.get(&reg, F, 1), None);
    }
}
