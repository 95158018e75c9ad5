//! [`Generations`]: which generation of a pid is alive, from the BPF `PROC_GEN` map.

use std::sync::Mutex;

use aya::maps::{HashMap, MapData};

/// Why the generation map could not be used.
#[derive(Debug, thiserror::Error)]
#[error("the BPF object has no usable PROC_GEN map")]
pub struct GenMapError;

/// `BPF_NOEXIST`: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// Lookups in the BPF pid → generation map. Each lookup is a syscall: slow paths only.
pub struct Generations {
    /// The map (an LRU hash in BPF). Behind a mutex because aya's insert takes `&mut`.
    map: Mutex<HashMap<MapData, u32, u64>>,
}

impl Generations {
    /// Wraps the `PROC_GEN` map.
    pub fn new(map: aya::maps::Map) -> Result<Self, GenMapError> {
        Ok(Self {
            map: Mutex::new(HashMap::try_from(map).map_err(|_| GenMapError)?),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<MapData, u32, u64>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation BPF has for `pid`, if any.
    pub fn get(&self, pid: u32) -> Option<u64> {
        self.map().get(&pid, 0).ok()
    }

    /// The generation of `pid`, assigning one now if BPF has not seen the process yet (a
    /// process that existed before probed started). Assigned the way BPF does it — the
    /// CLOCK_MONOTONIC time of first sight, the clock of `bpf_ktime_get_ns` — and only if
    /// still absent, so a generation BPF assigned concurrently wins.
    pub fn get_or_assign(&self, pid: u32) -> Option<u64> {
        if let Some(g) = self.get(pid) {
            return Some(g);
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into `ts`, a valid local.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
            return None;
        }
        let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let _ = self.map().insert(pid, now, BPF_NOEXIST);
        self.get(pid)
    }
}

/// The BPF set of tracked processes (`TRACKED`): only their address-space changes are
/// reported and sequenced.
pub struct Tracked {
    /// The map; behind a mutex because aya's insert takes `&mut`.
    map: Mutex<HashMap<MapData, u32, u32>>,
}

impl Tracked {
    /// Wraps the `TRACKED` map.
    pub fn new(map: aya::maps::Map) -> Result<Self, GenMapError> {
        Ok(Self {
            map: Mutex::new(HashMap::try_from(map).map_err(|_| GenMapError)?),
        })
    }

    /// Starts tracking `pid`'s changes; returns whether it is tracked now.
    pub fn insert(&self, pid: u32) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(pid, 1, 0).is_ok() || map.get(&pid, 0).is_ok()
    }
}
