//! The speculative resolver: address → VMA → (device, inode, file offset) → probe.
//!
//! The counterpart of the kernel's `find_active_uprobe_speculative()` (see
//! shared/design/BRIEF.md):
//!
//! - [`SeqSource`] is `mmap_lock_speculate_{try_begin,retry}`: a per-process 64-bit change
//!   sequence, odd while a mapping change is in flight. [`UserSeq`] drives it from userspace;
//!   the BPF change tracker (issue 4) will implement the same trait.
//! - [`Snapshot`] is an immutable, sorted picture of a process's executable file mappings at
//!   one sequence, built from /proc/PID/maps ([`maps`] parses it, [`MapsSource`] reads it).
//! - Each process's mirror publishes its newest snapshot atomically (arc-swap) and keeps a
//!   bounded history of older ones; old snapshots are freed when the last reader holding one
//!   lets go (`Arc`: the counterpart of RCU-delayed freeing).
//! - [`Registry`] maps (file, offset) → [`ProbeId`] without locks.
//! - [`Reader::resolve`] is the fast path: the answer comes from the reader's own snapshot
//!   only if the sequence read before the lookup is even, equals the snapshot's and the hit's,
//!   and is unchanged after it. Otherwise the slow path takes the process's lock, rereads the
//!   maps between two reads of the sequence until they agree (bounded), publishes, answers.
//!
//! ```no_run
//! use std::sync::Arc;
//! use probed::resolve::{ProcKey, ProcMaps, Reader, Resolver, UserSeq};
//!
//! let seq = Arc::new(UserSeq::with_capacity(1024));
//! let proc = ProcKey::of_pid(1234)?;
//! seq.register(proc)?;
//! let resolver = Arc::new(Resolver::new(seq.clone(), ProcMaps::new()));
//! resolver.track(proc)?;
//! let mut reader = Reader::new(&resolver);
//! let answer = reader.resolve(proc, 0x7f00_1234_5678, None);
//! println!("{:?} via {:?}", answer.outcome, answer.via);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod chain;
mod counters;
pub mod maps;
mod mirror;
mod outcome;
mod proc_key;
mod reader;
mod registry;
pub mod replay;
mod resolver;
mod seq;
mod snapshot;
mod source;
mod sync;
#[doc(hidden)]
pub mod testing;
mod vma;

#[cfg(all(test, probed_loom))]
mod loom_tests;

pub use counters::Counters;
pub use mirror::Config;
pub use outcome::{Hit, Normalized, Reason, Resolution, Via};
pub use proc_key::{ProcKey, ProcKeyError, parse_start_time};
pub use reader::Reader;
pub use registry::{ProbeId, Registry};
pub use replay::{Change, MappedFile, NewMapping, Unknowable};
pub use resolver::{Resolver, TrackError};
pub use seq::{ChangeGuard, SeqError, SeqSource, UserSeq};
pub use snapshot::{Miss, Snapshot};

/// A shared snapshot as the resolver hands it out (`std::sync::Arc`, or loom's under the
/// loom models).
pub type SharedSnapshot = sync::Arc<Snapshot>;
pub use source::{MapsSource, ProcMaps, ScanError};
pub use vma::{Excluded, Perms, Vma};
