//! Turning the tracker's reports (`ChangeEvent`, exec `ProcEvent`) into what the resolver
//! replays: [`Change`]s and exec-time base pictures.

use std::{path::Path, sync::Arc};

use probed_common::{
    CHANGE_VMA, CHANGE_VMA_FILE, ChangeEvent, FilePath, OP_BRK, OP_MMAP, OP_MPROTECT, OP_MREMAP,
    OP_MUNMAP, PAGE_SIZE, ProcEvent, VM_EXEC, VM_HUGETLB, VM_READ, VM_SHARED, VM_WRITE, VmaInfo,
    kernel_dev_major, kernel_dev_minor, page_align, stable_seq,
};

use crate::{
    file_id::FileId,
    resolve::{
        Excluded, Miss, Perms, Snapshot, Vma,
        replay::{Change, MappedFile, NewMapping},
    },
    track::paths,
};

/// `MAP_FIXED`: an mmap that fails may already have unmapped what was there.
const MAP_FIXED: u64 = 0x10;
/// `MREMAP_DONTUNMAP`: the old range stays mapped (not replayed).
const MREMAP_DONTUNMAP: u64 = 4;
/// `ENOMEM`, which mprotect returns after changing part of its range.
const ENOMEM: i64 = 12;
/// The identity given to a file mapping whose file BPF did not read.
const UNREAD_FILE: FileId = FileId {
    dev: 0,
    ino: u64::MAX,
};

/// Finds a file's path by identity (from earlier reports and scans, the probe table, or the
/// process's /proc/PID/map_files while it lives, checked by identity), and learns the paths
/// reports carry.
pub trait PathLookup {
    /// The path of `file`, mapped at `[start, end)` in `pid`.
    fn path_of(&self, file: FileId, pid: u32, start: u64, end: u64) -> Option<Arc<Path>>;

    /// Remembers that `file` is named `path` (a report's own path).
    fn learn(&self, _file: FileId, _path: &Arc<Path>) {}

    /// Remembers that overlay file `user` is backed by the real file `backing`.
    fn alias(&self, _backing: FileId, _user: FileId) {}
}

/// What one report means for the resolver.
#[derive(Debug)]
pub enum Replay {
    /// Nothing changed (a failed syscall that changes nothing).
    Nothing,
    /// This change happened.
    Change(Change),
    /// Something changed that cannot be replayed (the pictures wait for a rescan).
    Unknown,
}

/// The kernel's `s_dev` encoding (`major << 20 | minor`, [`probed_common::kernel_dev`]) as a
/// [`FileId`].
pub fn file_id(dev: u64, ino: u64) -> FileId {
    FileId::from_major_minor(kernel_dev_major(dev), kernel_dev_minor(dev), ino)
}

/// The user-visible permissions of `vm_flags`.
fn perms(vm_flags: u64) -> Perms {
    let mut p = Perms::empty();
    for (bit, flag) in [
        (VM_READ, Perms::READ),
        (VM_WRITE, Perms::WRITE),
        (VM_EXEC, Perms::EXEC),
        (VM_SHARED, Perms::SHARED),
    ] {
        if vm_flags & bit != 0 {
            p = p.union(flag);
        }
    }
    p
}

/// The mapping a report describes, with its file's identity and path: the path BPF walked
/// when the report was written if it has one, else one found through `paths` by identity.
pub(crate) fn mapping(
    vma: &VmaInfo,
    has_file: bool,
    name: &[u8],
    walked: &FilePath,
    pid: u32,
    paths: &dyn PathLookup,
) -> NewMapping {
    let file = has_file.then(|| {
        if vma.ino == 0 {
            // A non-executable file mapping: BPF does not read its file (the resolver keeps
            // only executable file mappings; it is excluded as not executable, and made
            // executable later it cannot be replayed: a rescan follows).
            return MappedFile {
                id: UNREAD_FILE,
                path: Arc::from(Path::new("/(file not read)")),
                deleted: false,
            };
        }
        let reported = paths::reported(file_id(vma.dev, vma.ino), walked, file_id);
        let id = reported.id;
        if let Some(backing) = reported.backing {
            paths.alias(backing, id);
        }
        let path = match reported.path {
            Some(path) => {
                paths.learn(id, &path);
                path
            }
            None => paths
                .path_of(id, pid, vma.start, vma.end)
                .unwrap_or_else(|| paths::unnamed(id, name)),
        };
        MappedFile {
            id,
            path,
            deleted: false,
        }
    });
    NewMapping {
        start: vma.start,
        end: vma.end,
        pgoff: vma.pgoff.wrapping_mul(PAGE_SIZE),
        perms: perms(vma.flags),
        hugetlb: vma.flags & VM_HUGETLB != 0,
        file,
    }
}

/// What a change report means. `current` is the process's newest picture, used when the
/// kernel's mapping could not be read for an mremap (`bpf_find_vma` only try-locks the
/// address space): the moved mapping is then the one the picture had at the old address.
pub fn replay(ev: &ChangeEvent, paths: &dyn PathLookup, current: Option<&Snapshot>) -> Replay {
    let ok = !(-4095..0).contains(&ev.ret);
    let [a0, a1, a2, a3] = ev.args;
    let has_vma = ev.flags & CHANGE_VMA != 0;
    let has_file = ev.flags & CHANGE_VMA_FILE != 0;
    match ev.op {
        OP_MMAP if ok && has_vma => {
            let start = ev.ret as u64;
            Replay::Change(Change::Map {
                start,
                end: start.saturating_add(page_align(a1)),
                mapping: mapping(&ev.vma, has_file, &ev.name, &ev.path, ev.pid, paths),
            })
        }
        // A failed MAP_FIXED may have unmapped the old range first.
        OP_MMAP if !ok && a3 & MAP_FIXED == 0 => Replay::Nothing,
        OP_MUNMAP if ev.ret == 0 => Replay::Change(Change::Unmap {
            start: a0,
            end: a0.saturating_add(page_align(a1)),
        }),
        OP_MUNMAP => Replay::Nothing,
        // Made executable, with the kernel's mapping at the start covering the whole range:
        // replayed as that mapping (with its file), since the picture may not know the file
        // of a mapping it had excluded as not executable.
        OP_MPROTECT
            if ev.ret == 0
                && has_vma
                && ev.vma.start <= a0
                && ev.vma.end >= a0.saturating_add(page_align(a1)) =>
        {
            Replay::Change(Change::Map {
                start: a0,
                end: a0.saturating_add(page_align(a1)),
                mapping: mapping(&ev.vma, has_file, &ev.name, &ev.path, ev.pid, paths),
            })
        }
        OP_MPROTECT if ev.ret == 0 => Replay::Change(Change::Protect {
            start: a0,
            end: a0.saturating_add(page_align(a1)),
            perms: perms(a2 & 7),
        }),
        // mprotect stops at a hole with ENOMEM after changing what came before it.
        OP_MPROTECT if ev.ret != -ENOMEM => Replay::Nothing,
        OP_MREMAP if ok && has_vma && a3 & MREMAP_DONTUNMAP == 0 => {
            let new_start = ev.ret as u64;
            Replay::Change(Change::Remap {
                old_start: a0,
                old_end: a0.saturating_add(page_align(a1)),
                new_start,
                new_end: new_start.saturating_add(page_align(a2)),
                mapping: mapping(&ev.vma, has_file, &ev.name, &ev.path, ev.pid, paths),
            })
        }
        OP_MREMAP if ok && !has_vma && a3 & MREMAP_DONTUNMAP == 0 => {
            let new_start = ev.ret as u64;
            let new_end = new_start.saturating_add(page_align(a2));
            match current.and_then(|snap| moved_mapping(snap, a0, new_start, new_end)) {
                Some(mapping) => Replay::Change(Change::Remap {
                    old_start: a0,
                    old_end: a0.saturating_add(page_align(a1)),
                    new_start,
                    new_end,
                    mapping,
                }),
                None => Replay::Unknown,
            }
        }
        OP_MREMAP if !ok => Replay::Nothing,
        // brk returns the new break (the old one on failure); start_brk 0 = offsets unknown.
        // The heap mapping ends at the page-aligned break.
        OP_BRK if a2 != 0 && ev.ret as u64 >= a2 => Replay::Change(Change::Brk {
            start_brk: a2,
            old_brk: page_align(a1),
            new_brk: page_align(ev.ret as u64),
        }),
        _ => Replay::Unknown,
    }
}

/// The mapping that an mremap moved from `old` to `[new_start, new_end)`, from the picture
/// before the move: a kept mapping keeps its file, permissions and offset; anonymous memory
/// stays anonymous. `None` when the picture cannot say (a non-executable file mapping, whose
/// file it does not know, or an unsupported one).
fn moved_mapping(snap: &Snapshot, old: u64, new_start: u64, new_end: u64) -> Option<NewMapping> {
    if let Some(vma) = snap.lookup(old) {
        return Some(NewMapping {
            start: new_start,
            end: new_end,
            pgoff: vma.pgoff + (old - vma.start),
            perms: vma.perms,
            hugetlb: false,
            file: Some(MappedFile {
                id: vma.file,
                path: vma.path.clone(),
                deleted: vma.deleted,
            }),
        });
    }
    match snap.miss(old) {
        Miss::Excluded(Excluded::NotFileBacked) => Some(NewMapping {
            start: new_start,
            end: new_end,
            pgoff: 0,
            perms: Perms::READ.union(Perms::WRITE),
            hugetlb: false,
            file: None,
        }),
        _ => None,
    }
}

/// The base picture the kernel reported at exec: the program's text and the mapping of its
/// first instruction (the dynamic loader, or the program itself if static). Everything else
/// of a fresh address space is anonymous or pseudo-files (stack, vdso, vvar), which the
/// resolver does not keep; every later file mapping arrives as an mmap report. Partial: the
/// rest (stack, vdso, the program's data) is not described, so a miss there is `unseen`.
/// `None` if the report has no mappings (no BTF offsets).
pub fn exec_base(ev: &ProcEvent, paths: &dyn PathLookup) -> Option<Snapshot> {
    if ev.flags & CHANGE_VMA == 0 {
        return None;
    }
    let mut vmas: Vec<Vma> = Vec::with_capacity(2);
    for (info, name, walked) in [
        (&ev.exe, &ev.exe_name, &ev.exe_path),
        (&ev.entry, &ev.entry_name, &ev.entry_path),
    ] {
        if info.ino == 0 || vmas.iter().any(|v| v.start == info.start) {
            continue;
        }
        let m = mapping(info, true, name, walked, ev.pid, paths);
        let Some(file) = m.file else { continue };
        if !m.perms.contains(Perms::EXEC) {
            continue;
        }
        vmas.push(Vma {
            start: m.start,
            end: m.end,
            pgoff: m.pgoff,
            file: file.id,
            perms: m.perms,
            deleted: false,
            path: file.path,
        });
    }
    Some(Snapshot::partial(stable_seq(ev.ticket), vmas))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay_t(ev: &ChangeEvent, paths: &dyn PathLookup) -> Replay {
        replay(ev, paths, None)
    }

    struct NoPaths;
    impl PathLookup for NoPaths {
        fn path_of(&self, _: FileId, _: u32, _: u64, _: u64) -> Option<Arc<Path>> {
            None
        }
    }

    fn event(op: u32, ret: i64, args: [u64; 4]) -> ChangeEvent {
        ChangeEvent {
            event: probed_common::EVENT_CHANGE,
            op,
            pid: 1,
            tid: 1,
            ticket: 7,
            proc_gen: 1,
            ts_ns: 0,
            ret,
            args,
            flags: 0,
            lost_reports: 0,
            vma: VmaInfo::default(),
            name: [0; probed_common::NAME_LEN],
            path: FilePath::EMPTY,
        }
    }

    /// munmap and mprotect ranges are page-aligned; failures change nothing, except the
    /// ones that may have changed part of the range.
    #[test]
    fn ranges_and_failures() {
        match replay_t(&event(OP_MUNMAP, 0, [0x1000, 1, 0, 0]), &NoPaths) {
            Replay::Change(Change::Unmap { start, end }) => {
                assert_eq!((start, end), (0x1000, 0x2000))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            replay_t(&event(OP_MUNMAP, -22, [0, 0, 0, 0]), &NoPaths),
            Replay::Nothing
        ));
        assert!(matches!(
            replay_t(&event(OP_MPROTECT, -12, [0, 0, 0, 0]), &NoPaths),
            Replay::Unknown
        ));
        assert!(matches!(
            replay_t(&event(OP_MPROTECT, -13, [0, 0, 0, 0]), &NoPaths),
            Replay::Nothing
        ));
        assert!(matches!(
            replay_t(&event(OP_MMAP, -12, [0, 0, 0, MAP_FIXED]), &NoPaths),
            Replay::Unknown
        ));
        assert!(matches!(
            replay_t(&event(OP_MMAP, -12, [0, 0, 0, 0]), &NoPaths),
            Replay::Nothing
        ));
        assert!(matches!(
            replay_t(&event(probed_common::OP_OTHER, 0, [0; 4]), &NoPaths),
            Replay::Unknown
        ));
    }

    /// A successful mmap becomes a Map of the page-aligned range with the kernel's mapping;
    /// a file of unknown directory gets a path that says so.
    #[test]
    fn mmap_report() {
        let mut ev = event(OP_MMAP, 0x7000_0000, [0, 0x1800, 5, 2]);
        ev.flags = CHANGE_VMA | CHANGE_VMA_FILE;
        ev.vma = VmaInfo {
            start: 0x7000_0000,
            end: 0x7000_2000,
            pgoff: 3,
            flags: 5,
            dev: (8 << 20) | 1,
            ino: 42,
        };
        ev.name[..5].copy_from_slice(b"libx\0");
        let Replay::Change(Change::Map {
            start,
            end,
            mapping,
        }) = replay_t(&ev, &NoPaths)
        else {
            panic!("not a map");
        };
        assert_eq!((start, end), (0x7000_0000, 0x7000_2000));
        assert_eq!(mapping.pgoff, 3 * PAGE_SIZE);
        assert!(mapping.perms.contains(Perms::EXEC) && mapping.perms.contains(Perms::READ));
        let file = mapping.file.unwrap();
        assert_eq!(file.id, FileId::from_major_minor(8, 1, 42));
        assert_eq!(&*file.path, Path::new("/(unnamed)/8:1/42/libx"));
        assert!(paths::is_unnamed(&file.path));
    }

    /// The path BPF walked names the mapping, whatever the lookup would say; an overlayfs
    /// backing file is known by its overlay identity.
    #[test]
    fn mmap_report_with_path() {
        struct WrongPaths;
        impl PathLookup for WrongPaths {
            fn path_of(&self, _: FileId, _: u32, _: u64, _: u64) -> Option<Arc<Path>> {
                Some(Arc::from(Path::new("/wrong/liba.so")))
            }
        }
        let mut ev = event(OP_MMAP, 0x7000_0000, [0, 0x1000, 5, 2]);
        ev.flags = CHANGE_VMA | CHANGE_VMA_FILE;
        ev.vma = VmaInfo {
            start: 0x7000_0000,
            end: 0x7000_1000,
            pgoff: 0,
            flags: 5,
            dev: (8 << 20) | 1,
            ino: 42,
        };
        let text = b"/opt/x/libb.so";
        ev.path.bytes[..text.len()].copy_from_slice(text);
        ev.path.len = text.len() as u16;
        let file = |ev: &ChangeEvent| match replay_t(ev, &WrongPaths) {
            Replay::Change(Change::Map { mapping, .. }) => mapping.file.unwrap(),
            other => panic!("{other:?}"),
        };
        let f = file(&ev);
        assert_eq!(&*f.path, Path::new("/opt/x/libb.so"));
        assert_eq!(f.id, FileId::from_major_minor(8, 1, 42));
        ev.path.flags = probed_common::PATH_BACKING;
        (ev.path.user_dev, ev.path.user_ino) = (77, 42);
        let f = file(&ev);
        assert_eq!(f.id, FileId::from_major_minor(0, 77, 42));
        assert_eq!(&*f.path, Path::new("/opt/x/libb.so"));
    }
}
