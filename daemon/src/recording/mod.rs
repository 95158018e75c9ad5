//! Recorded runs: `probed trace --record FILE` writes what the pipeline consumed, `probed
//! replay FILE` (and `cargo xtask bench pipeline`) feeds it through the pipeline again with
//! no BPF, no uprobe and no live process.
//!
//! What the pipeline consumes from outside is small and sits at two seams: the ring buffer's
//! items (hits, stack copies, change and process reports, exactly as BPF wrote them) and the
//! syscall seam of the resolver (each process's sequence read from BPF, each
//! /proc/PID/maps text read). A recording holds those, in the order the run consumed them,
//! plus what rebuilds the probe table (the SPECs, the probe ids kept and the file each one
//! attached to) and the probes' final BPF counters for the summary. ELF files are not
//! copied: a replay reads them from the same paths, and refuses to start if a probed file is
//! no longer the one recorded (device and inode compared).
//!
//! Format: the magic line, then frames `kind: u8, len: u32 LE, payload[len]` (see [`Kind`]).
//! The header frame comes first; the rest in consumption order.

mod file;
pub mod play;
mod ring_lanes;
pub mod seams;

pub use file::{
    Frame, Header, Kind, MapsFailure, MapsResult, RecordedProbe, Recorder, Recording,
    RecordingError, VERSION, read,
};
