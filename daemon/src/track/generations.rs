//! [`Generations`]: which generation of a pid is alive, from the BPF `PROC_GEN` map.

use aya::maps::{HashMap, MapData};

/// Why the generation map could not be used.
#[derive(Debug, thiserror::Error)]
#[error("the BPF object has no usable PROC_GEN map")]
pub struct GenMapError;

/// Lookups in the BPF pid → generation map. Each lookup is a syscall: slow paths only.
pub struct Generations {
    /// The map (an LRU hash in BPF).
    map: HashMap<MapData, u32, u64>,
}

impl Generations {
    /// Wraps the `PROC_GEN` map.
    pub fn new(map: aya::maps::Map) -> Result<Self, GenMapError> {
        Ok(Self {
            map: HashMap::try_from(map).map_err(|_| GenMapError)?,
        })
    }

    /// The generation BPF has for `pid`, if any.
    pub fn get(&self, pid: u32) -> Option<u64> {
        self.map.get(&pid, 0).ok()
    }
}
