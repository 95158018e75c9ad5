//! The ring buffers BPF writes to: one (`EVENTS`), or — with several consumer threads in
//! kseq mode — one per consumer, each read by its thread (ebpf ring.rs routes a process's
//! records to the ring it gave the process).
//!
//! Why only kseq mode: there every record a process's hits need comes from that process
//! (its captures; BPF's cache of them is per process too), so its ring holds all of it in
//! order. The replaying modes copy a forked child's picture from its parent's as of the
//! fork, an order between two processes that two rings would not keep: they keep one ring,
//! and a dealer hands its items to the threads (pipeline/shards.rs).

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use probed_common::{MAX_RINGS, RING_NAMES};

use super::{AttachError, Tracer};
use crate::track::TrackerMode;

/// Rings to use for `wanted` consumer threads under `mode`: `wanted` in kseq mode if BPF has
/// that many, else 1.
pub fn usable(mode: TrackerMode, wanted: usize) -> usize {
    if mode == TrackerMode::Kseq && (2..=MAX_RINGS as usize).contains(&wanted) {
        wanted
    } else {
        1
    }
}

/// The global that tells BPF how many rings are in use (set at load: a constant to the
/// verifier, see ebpf ring.rs).
pub const COUNT_GLOBAL: &str = "RING_COUNT";

impl Tracer {
    /// Takes ring 0, the only ring of a run with one (once).
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, AttachError> {
        take(&mut self.ebpf, RING_NAMES[0])
    }

    /// Takes every ring in use, ring 0 first (once).
    pub fn take_rings(&mut self) -> Result<Vec<RingBuf<MapData>>, AttachError> {
        RING_NAMES[..self.rings]
            .iter()
            .map(|name| take(&mut self.ebpf, name))
            .collect()
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<RingBuf<MapData>, AttachError> {
    let map = ebpf.take_map(name).ok_or(AttachError::Map(name))?;
    RingBuf::try_from(map).map_err(|_| AttachError::Map(name))
}
