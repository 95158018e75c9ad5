//! Why loading the BPF object, attaching a probe or configuring one failed.

use std::{io, path::PathBuf};

use aya::programs::ProgramError;
use probed_common::MAX_PROBES;

use crate::{bpf_object, privileges, track::tracepoints};

/// Why loading or attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// This binary has no BPF object.
    #[error(transparent)]
    Object(#[from] bpf_object::ObjectError),
    /// Not enough privileges.
    #[error(transparent)]
    Privileges(#[from] privileges::PrivilegeError),
    /// The kernel refused to load the BPF object.
    #[error("cannot load probed's BPF object")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program is missing from the object or has the wrong type (a build mismatch).
    #[error("the BPF object has no usable program `{0}`")]
    Program(&'static str),
    /// A map is missing from the object or has the wrong type (a build mismatch).
    #[error("the BPF object has no usable map `{0}`")]
    Map(&'static str),
    /// The kernel refused to load a program (verifier or permissions).
    #[error("the kernel refused to load BPF program `{name}`")]
    ProgramLoad {
        /// The program.
        name: &'static str,
        /// What the kernel said.
        #[source]
        source: Box<ProgramError>,
    },
    /// Too many probes for the statistics array.
    #[error("probe id {0} is out of range: at most {MAX_PROBES} probes")]
    TooManyProbes(u32),
    /// The kernel refused an attachment.
    #[error("cannot attach {kind} probe to {path} at file offset {file_offset:#x}")]
    Attach {
        /// The probe kind.
        kind: &'static str,
        /// The file.
        path: PathBuf,
        /// The offset.
        file_offset: u64,
        /// What the kernel said.
        #[source]
        source: Box<ProgramError>,
    },
    /// tracefs is needed for the change tracker's tracepoints.
    #[error(transparent)]
    Tracefs(#[from] tracepoints::TracefsError),
    /// A change-tracker tracepoint could not be attached.
    #[error("cannot attach the change tracker to tracepoint {category}:{name}")]
    Tracepoint {
        /// Tracepoint category.
        category: &'static str,
        /// Tracepoint name.
        name: String,
        /// What the kernel said.
        #[source]
        source: Box<ProgramError>,
    },
    /// The sequence array could not be mapped.
    #[error(transparent)]
    MapSeq(#[from] crate::track::MapSeqError),
    /// Writing the tracker settings failed.
    #[error("cannot configure the change tracker")]
    TrackConfig(#[source] Box<aya::maps::MapError>),
    /// The possible CPUs (for per-CPU values) cannot be read.
    #[error("cannot read the possible CPUs")]
    Cpus(#[source] io::Error),
    /// Reading the statistics map failed.
    #[error("cannot read per-probe counters")]
    Stats(#[source] Box<aya::maps::MapError>),
    /// A rate limit of 0 hits/s or with a burst of 0.
    #[error(
        "invalid rate limit for probe {id}: {per_sec} hits/s, burst {burst} (both must be at least 1)"
    )]
    InvalidRateLimit {
        /// The probe.
        id: u32,
        /// The rate asked for.
        per_sec: u64,
        /// The burst asked for.
        burst: u64,
    },
    /// Writing a probe's flags, limit, filter or counters failed.
    #[error("cannot configure probe {id}")]
    ProbeConfig {
        /// The probe.
        id: u32,
        /// What the kernel said.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// `reset_probe` on a probe that is still attached.
    #[error("probe {0} is still attached; detach it before resetting it")]
    StillAttached(u32),
    /// `--tracker lock|kprobes` where the kernel (or the run) cannot serve it.
    #[error("--tracker {choice} cannot be used: {why}")]
    TrackerUnavailable {
        /// The mode asked for.
        choice: &'static str,
        /// Why it cannot run.
        why: String,
    },
    /// A kprobe of kprobe mode could not be attached.
    #[error("cannot attach the change tracker's kprobe on {function}")]
    Kprobe {
        /// The kernel function.
        function: String,
        /// What the kernel said.
        #[source]
        source: Box<ProgramError>,
    },
    /// The self filter (probed never traces itself) could not be installed or set.
    #[error(transparent)]
    SelfFilter(#[from] crate::self_filter::SelfFilterError),
}
