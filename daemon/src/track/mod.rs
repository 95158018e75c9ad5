//! The daemon's side of the BPF address-space change tracker (ebpf/src/track.rs).
//!
//! - [`BpfSeq`]: the resolver's [`SeqSource`](crate::resolve::SeqSource), reading the
//!   per-process sequence from the BPF `SEQS` array through a read-only memory mapping —
//!   two loads, no syscall.
//! - [`Generations`]: the BPF `PROC_GEN` map (pid → generation), read on slow paths only.
//! - [`GenCheckedMaps`]: a maps source that refuses to answer for a generation that no
//!   longer holds the pid, so pid reuse cannot alias two processes.
//! - [`tracepoints`]: which kernel tracepoints the tracker attaches to, and tracefs set-up.
//! - [`kprobes`]: kprobe mode's hooks on the syscall functions, and whether the kernel has them.
//! - [`mode`]: which hooks run (`--tracker auto|lock|kprobes|syscalls`).
//! - [`apply`]: the tracker's process and change events applied to the resolver.

pub mod apply;
pub mod captured;
pub mod changes;
mod generations;
pub mod kprobes;
mod maps_source;
pub mod mode;
pub mod offsets;
pub mod path_offsets;
pub mod paths;
pub mod preexisting;
mod seq;
pub mod tracepoints;

pub use generations::{Generations, Tracked};
pub use maps_source::GenCheckedMaps;
pub use mode::{TrackerChoice, TrackerMode, TrackerRequest, Unavailable};
pub use seq::{BpfSeq, MapSeqError};
