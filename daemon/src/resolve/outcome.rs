//! What a resolution answers: the mapping and file offset of an address, or why there is none.

use std::{path::Path, sync::Arc};

use super::{registry::ProbeId, vma::Vma};
use crate::file_id::FileId;

/// Why an address could not be resolved. A value, not an error: every one is counted and
/// reported with its [`as_str`](Reason::as_str) name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Nothing was mapped at the address.
    Unmapped,
    /// Anonymous memory, heap, stack, `[vdso]`, JIT code…
    NotFileBacked,
    /// A file mapped without execute permission.
    NotExecutable,
    /// Executable and file-backed, but hugetlb or shared-writable.
    UnsupportedMapping,
    /// The process is not tracked by this resolver (and auto-tracking is off).
    NotTracked,
    /// The process exited, or its pid now belongs to another process.
    ProcessGone,
    /// The address space kept changing through every rescan attempt.
    SeqUnstable,
    /// The hit happened while a mapping change was in flight (odd sequence).
    HitDuringChange,
    /// No snapshot of the hit's sequence exists any more (or yet).
    NoSnapshotAtSeq,
    /// /proc/PID/maps could not be read or parsed (details are logged).
    ScanFailed,
    /// The process's tracking started late (at exec, or at its first mmap of a probed file)
    /// and it exited before a scan: only the mappings seen since are known, not this one.
    Unseen,
    /// Lock mode: the hit carried a capture of its mapping, but the kernel's mapping could
    /// not be read at the hit (`bpf_find_vma` only try-locks the address space, and another
    /// thread held it for writing).
    CaptureFailed,
}

impl From<super::snapshot::Miss> for Reason {
    /// The reason a snapshot's miss gives (the resolver's, and lock mode's captured
    /// pictures').
    fn from(miss: super::snapshot::Miss) -> Self {
        use super::{snapshot::Miss, vma::Excluded};
        match miss {
            Miss::Unmapped => Reason::Unmapped,
            Miss::Excluded(Excluded::NotFileBacked) => Reason::NotFileBacked,
            Miss::Excluded(Excluded::NotExecutable) => Reason::NotExecutable,
            Miss::Excluded(Excluded::Unsupported) => Reason::UnsupportedMapping,
            Miss::Unseen => Reason::Unseen,
        }
    }
}

impl Reason {
    /// Every reason, in counter order.
    pub const ALL: [Reason; 12] = [
        Reason::Unmapped,
        Reason::NotFileBacked,
        Reason::NotExecutable,
        Reason::UnsupportedMapping,
        Reason::NotTracked,
        Reason::ProcessGone,
        Reason::SeqUnstable,
        Reason::HitDuringChange,
        Reason::NoSnapshotAtSeq,
        Reason::ScanFailed,
        Reason::Unseen,
        Reason::CaptureFailed,
    ];

    /// A stable snake_case name for output and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Unmapped => "unmapped",
            Reason::NotFileBacked => "not_file_backed",
            Reason::NotExecutable => "not_executable",
            Reason::UnsupportedMapping => "unsupported_mapping",
            Reason::NotTracked => "not_tracked",
            Reason::ProcessGone => "process_gone",
            Reason::SeqUnstable => "seq_unstable",
            Reason::HitDuringChange => "hit_during_change",
            Reason::NoSnapshotAtSeq => "no_snapshot_at_seq",
            Reason::ScanFailed => "scan_failed",
            Reason::Unseen => "unseen",
            Reason::CaptureFailed => "capture_failed",
        }
    }

    /// Position in [`Reason::ALL`].
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which path produced an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// The reader's own snapshot, validated by the sequence: no lock, no allocation.
    Fast,
    /// A snapshot another thread had already published (no rescan, no process lock).
    Mirror,
    /// A scanned snapshot kept from before the latest change (the hit predates it).
    Retained,
    /// A picture derived by replaying the kernel's change reports onto a snapshot.
    Replayed,
    /// A fresh locked rescan of /proc/PID/maps.
    Rescan,
    /// Lock mode: the kernel's own mapping of the address, captured by BPF at the hit.
    Captured,
    /// Kseq mode: the mapping an earlier hit captured at the same value of the process's
    /// kernel counter (this hit skipped its capture).
    Kseq,
}

impl Via {
    /// A stable snake_case name for output and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Via::Fast => "fast",
            Via::Mirror => "mirror",
            Via::Retained => "retained",
            Via::Replayed => "replayed",
            Via::Rescan => "rescan",
            Via::Captured => "captured",
            Via::Kseq => "kseq",
        }
    }
}

/// The answer to one resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution<T> {
    /// The path that answered.
    pub via: Via,
    /// The sequence of the address-space picture that answered; `None` if none did (process
    /// gone, sequence unstable…).
    pub seq: Option<u64>,
    /// The mapping found, or why there is none.
    pub outcome: Result<T, Reason>,
}

impl<T> Resolution<T> {
    /// Converts the found value, keeping the path and sequence.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Resolution<U> {
        Resolution {
            via: self.via,
            seq: self.seq,
            outcome: self.outcome.map(f),
        }
    }
}

/// A resolved address, borrowed from the snapshot that answered (valid inside
/// [`Reader::resolve_with`](super::Reader::resolve_with)'s closure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit<'s> {
    /// The mapping containing the address.
    pub vma: &'s Vma,
    /// The address's offset in the mapped file.
    pub file_offset: u64,
    /// The probe registered at exactly that (file, offset), if any.
    pub probe: Option<ProbeId>,
}

impl Hit<'_> {
    /// The owned form (clones the path's `Arc`).
    pub fn to_normalized(&self) -> Normalized {
        Normalized {
            file: self.vma.file,
            file_offset: self.file_offset,
            vma_start: self.vma.start,
            vma_end: self.vma.end,
            path: self.vma.path.clone(),
            deleted: self.vma.deleted,
            probe: self.probe,
        }
    }
}

/// A resolved address: the file and offset it maps to, ready for symbolization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalized {
    /// The mapped file.
    pub file: FileId,
    /// Offset of the address in that file.
    pub file_offset: u64,
    /// Start of the containing mapping (with `vma_end`, names /proc/PID/map_files/START-END).
    pub vma_start: u64,
    /// End of the containing mapping.
    pub vma_end: u64,
    /// The file's path as the process saw it.
    pub path: Arc<Path>,
    /// The file had been unlinked.
    pub deleted: bool,
    /// The probe registered at exactly this (file, offset), if any.
    pub probe: Option<ProbeId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reason names are unique and `ALL` lists each variant at its own index.
    #[test]
    fn reason_names_stable_and_unique() {
        let names: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        assert_eq!(Reason::ProcessGone.to_string(), "process_gone");
    }
}
