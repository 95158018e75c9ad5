//! The identity of a mapped file as the kernel sees it: (device, inode).
//!
//! Uprobes key on (inode, offset), /proc/PID/maps names files by (major:minor, inode), and
//! `stat` gives (st_dev, st_ino); this type is the common currency between them.

use std::{fmt, os::unix::fs::MetadataExt, path::Path};

/// A file's device and inode. `dev` is the kernel's encoding (`makedev(major, minor)`, what
/// `stat(2)` returns in `st_dev`), never the hex text of /proc/PID/maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// `st_dev` of the file system holding the file.
    pub dev: u64,
    /// `st_ino` of the file.
    pub ino: u64,
}

impl FileId {
    /// The identity of the file at `path` (following symlinks, as uprobe attach does).
    pub fn of_path(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Builds the identity from the major and minor numbers printed in /proc/PID/maps.
    pub fn from_major_minor(major: u32, minor: u32, ino: u64) -> Self {
        Self {
            dev: libc::makedev(major, minor),
            ino,
        }
    }

    /// The device in the kernel's internal encoding ([`probed_common::kernel_dev`]:
    /// `major << 20 | minor`, a superblock's `s_dev`), which is what BPF reads and what BPF
    /// helpers compare with; `st_dev` uses the userspace encoding, which differs once major or
    /// minor exceed 255 (kernel `new_encode_dev`).
    pub fn kernel_dev(&self) -> u64 {
        probed_common::kernel_dev(libc::major(self.dev), libc::minor(self.dev))
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:x}:{:x}/{}",
            libc::major(self.dev),
            libc::minor(self.dev),
            self.ino
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file's identity from stat agrees with the one built from maps-style major:minor.
    #[test]
    fn stat_and_major_minor_agree() {
        let exe = std::env::current_exe().unwrap();
        let id = FileId::of_path(&exe).unwrap();
        let rebuilt = FileId::from_major_minor(libc::major(id.dev), libc::minor(id.dev), id.ino);
        assert_eq!(id, rebuilt);
    }

    /// Userspace and kernel encodings agree for small numbers and differ above 255.
    #[test]
    fn kernel_dev_encoding() {
        let small = FileId::from_major_minor(0, 4, 1);
        assert_eq!(small.kernel_dev(), 4);
        let big = FileId::from_major_minor(259, 300, 1);
        assert_eq!(big.kernel_dev(), (259 << 20) | 300);
        assert_ne!(big.kernel_dev(), big.dev);
    }
}
