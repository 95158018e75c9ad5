//! Lock mode: what a hit's capture says (ebpf/src/capture.rs) — the mapping the kernel had at
//! the hit's address — as a one-mapping picture the resolver's own lookup and classification
//! answer from, and file names learned from `FileNameEvent`s.

use probed_common::{CAPTURE_FOUND, CAPTURE_UNMAPPED, FileNameEvent, VmaInfo};

use crate::{
    resolve::{Snapshot, replay},
    track::{
        changes::{self, PathLookup},
        paths::PathIndex,
    },
};

/// What one capture answers for an address.
#[derive(Debug)]
pub enum Captured {
    /// The kernel's mapping there, as a picture holding exactly it (looked up by the
    /// resolver's rules: only executable file mappings are kept, the rest say why).
    Picture(Snapshot),
    /// Nothing was mapped there.
    Unmapped,
    /// The capture failed.
    Failed,
}

/// Turns a capture (`status`, `vma`) of process `pid` into what it answers.
pub fn picture(status: u8, vma: &VmaInfo, pid: u32, paths: &PathIndex) -> Captured {
    match status {
        CAPTURE_FOUND => {
            let mut mapping = changes::mapping(
                vma,
                vma.ino != 0,
                &[],
                &probed_common::FilePath::EMPTY,
                pid,
                paths,
            );
            // On overlayfs BPF sees the backing (real) file; pictures, probes and the
            // symbolizer use the overlay identity users see — this process's own (one image
            // layer backs each container's overlay file: `overlay_for`).
            if let Some(file) = &mut mapping.file
                && let Some((user, own_path)) = paths.overlay_for(file.id, pid, vma.start, vma.end)
            {
                file.id = user;
                if let Some(path) =
                    own_path.or_else(|| paths.path_of(user, pid, vma.start, vma.end))
                {
                    file.path = path;
                }
            }
            let change = replay::Change::Map {
                start: vma.start,
                end: vma.end,
                mapping,
            };
            // Not partial: the capture is the whole truth at its address (anything outside
            // the mapping is never asked).
            match replay::apply(&Snapshot::from_vmas(0, Vec::new()), &change, 0) {
                Ok(snap) => Captured::Picture(snap),
                Err(_) => Captured::Failed,
            }
        }
        CAPTURE_UNMAPPED => Captured::Unmapped,
        _ => Captured::Failed,
    }
}

/// Learns the path a `FileNameEvent` carries (and, on overlayfs, the alias between the
/// backing file and the file users see).
pub fn learn(ev: &FileNameEvent, paths: &dyn PathLookup) {
    // `mapping` learns a walked path as a side effect; the mapping itself is not needed.
    let _ = changes::mapping(&ev.vma, true, &ev.name, &ev.path, 0, paths);
}
