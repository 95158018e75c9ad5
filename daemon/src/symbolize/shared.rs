//! One parsed image for one real file seen under several identities: the same image-layer
//! file in several containers.
//!
//! Under overlayfs, /proc shows a container's file with its overlay mount's device (one per
//! container) and the lower file's inode number, so the cache — keyed per (device, inode) —
//! would parse the same file once per container. Overlayfs encodes a file handle of the
//! *real* file (`name_to_handle_at(…, AT_HANDLE_FID)`: the lower layer's handle, inode and
//! generation), identical through every mount of it (measured with two podman containers of
//! one image). That handle, with the size and the modification and change times, keys
//! images here, held weakly: an image parsed through one container answers a miss through
//! another without a second parse. Other file systems need none of this: their (device,
//! inode) already names the real file.

use std::{
    collections::HashMap,
    fs::{File, Metadata},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    sync::{Arc, Mutex, Weak},
};

use crate::elf::ElfImage;

/// `MAX_HANDLE_SZ` in linux/exportfs.h.
const MAX_HANDLE_SZ: usize = 128;
/// `AT_HANDLE_FID` (Linux 6.5): a handle that identifies the file, not one to reopen it by.
const AT_HANDLE_FID: libc::c_int = 0x200;

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// What identifies the real file behind an overlay file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct RealFile {
    handle_type: i32,
    handle: Vec<u8>,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl RealFile {
    /// The real file behind `file` (open, `meta` its fstat), if `file` is on overlayfs and
    /// the kernel encodes a handle for it.
    pub(super) fn of(file: &File, meta: &Metadata) -> Option<Self> {
        if crate::elf::fs_magic(file) != Some(crate::elf::OVERLAYFS_SUPER_MAGIC) {
            return None;
        }
        let mut handle = FileHandle {
            handle_bytes: MAX_HANDLE_SZ as u32,
            handle_type: 0,
            f_handle: [0; MAX_HANDLE_SZ],
        };
        let mut mount_id: libc::c_int = 0;
        // SAFETY: the path is an empty NUL-terminated string (AT_EMPTY_PATH: the descriptor
        // itself is named); `handle` is a file_handle with `handle_bytes` bytes of room and
        // `mount_id` a valid int, both alive for the call, which writes only into them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_name_to_handle_at,
                file.as_raw_fd(),
                c"".as_ptr(),
                &raw mut handle,
                &raw mut mount_id,
                libc::AT_EMPTY_PATH | AT_HANDLE_FID,
            )
        };
        if rc != 0 {
            return None;
        }
        let len = (handle.handle_bytes as usize).min(MAX_HANDLE_SZ);
        Some(Self {
            handle_type: handle.handle_type,
            handle: handle.f_handle[..len].to_vec(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// Parsed images by real file, held weakly (the cache owns them).
#[derive(Debug, Default)]
pub(super) struct SharedImages {
    images: Mutex<HashMap<RealFile, Weak<ElfImage>>>,
}

impl SharedImages {
    /// The image already parsed for `real`, if one is still alive.
    pub(super) fn get(&self, real: &RealFile) -> Option<Arc<ElfImage>> {
        self.lock().get(real).and_then(Weak::upgrade)
    }

    /// Remembers `image` as the parse of `real`; forgets dead entries when the table has
    /// grown past `capacity` (the cache's), so it stays bounded by what the cache holds.
    pub(super) fn insert(&self, real: RealFile, image: &Arc<ElfImage>, capacity: usize) {
        let mut images = self.lock();
        if images.len() >= capacity {
            images.retain(|_, weak| weak.strong_count() > 0);
        }
        images.insert(real, Arc::downgrade(image));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RealFile, Weak<ElfImage>>> {
        // A panic while holding this lock leaves a consistent map (single inserts/removes).
        self.images
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that is not on overlayfs has no handle key: its (device, inode) is real.
    #[test]
    fn not_overlay_has_no_key() {
        let exe = std::env::current_exe().unwrap();
        let file = File::open(&exe).unwrap();
        let meta = file.metadata().unwrap();
        if crate::elf::fs_magic(&file) != Some(crate::elf::OVERLAYFS_SUPER_MAGIC) {
            assert_eq!(RealFile::of(&file, &meta), None);
        }
    }
}
