//! Facts of the Linux kernel (x86-64) that BPF and the daemon both rely on, defined once so
//! the two sides cannot drift apart: the page size, `vm_flags` bits, and the kernel's
//! internal device-number encoding.

/// log2 of the page size: the kernel's `PAGE_SHIFT` on x86-64. A mapping's file offset in
/// pages (`vm_pgoff`) is its byte offset shifted right by this.
pub const PAGE_SHIFT: u32 = 12;

/// Bytes of a page (`PAGE_SIZE` on x86-64): the granularity of mappings.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

const _: () = assert!(PAGE_SIZE == 4096);

/// `len` rounded up to a whole number of pages (the kernel's `PAGE_ALIGN`), saturating
/// instead of wrapping near `u64::MAX`.
#[inline(always)]
pub const fn page_align(len: u64) -> u64 {
    len.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// `VM_READ` in a mapping's `vm_flags` (also `PROT_READ`).
pub const VM_READ: u64 = 0x01;
/// `VM_WRITE` in a mapping's `vm_flags` (also `PROT_WRITE`).
pub const VM_WRITE: u64 = 0x02;
/// `VM_EXEC` in a mapping's `vm_flags` (also `PROT_EXEC`).
pub const VM_EXEC: u64 = 0x04;
/// `VM_SHARED` in a mapping's `vm_flags`.
pub const VM_SHARED: u64 = 0x08;
/// `VM_HUGETLB` in a mapping's `vm_flags`: a hugetlbfs mapping (`MAP_HUGETLB`).
pub const VM_HUGETLB: u64 = 0x0040_0000;

/// Bits of the minor number in the kernel's internal device encoding (`MINORBITS`): a
/// superblock's `s_dev`, which BPF reads and BPF helpers compare with, is
/// `major << MINORBITS | minor`. `stat(2)`'s `st_dev` uses another encoding
/// (`new_encode_dev`), which differs once major or minor exceed 255.
pub const MINORBITS: u32 = 20;

/// The mask of the minor number in the kernel's internal device encoding (`MINORMASK`).
pub const MINORMASK: u64 = (1 << MINORBITS) - 1;

/// The kernel's internal encoding of a device number (`MKDEV(major, minor)`), as in `s_dev`.
#[inline(always)]
pub const fn kernel_dev(major: u32, minor: u32) -> u64 {
    ((major as u64) << MINORBITS) | minor as u64
}

/// The major number of a device in the kernel's internal encoding (`MAJOR(dev)`).
#[inline(always)]
pub const fn kernel_dev_major(dev: u64) -> u32 {
    (dev >> MINORBITS) as u32
}

/// The minor number of a device in the kernel's internal encoding (`MINOR(dev)`).
#[inline(always)]
pub const fn kernel_dev_minor(dev: u64) -> u32 {
    (dev & MINORMASK) as u32
}

const _: () = assert!(MINORMASK == 0xf_ffff);
const _: () = assert!(kernel_dev(259, 300) == (259 << 20) | 300);
const _: () = assert!(kernel_dev_major(kernel_dev(259, 300)) == 259);
const _: () = assert!(kernel_dev_minor(kernel_dev(259, 300)) == 300);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_align_rounds_up_and_saturates() {
        assert_eq!(page_align(0), 0);
        assert_eq!(page_align(1), PAGE_SIZE);
        assert_eq!(page_align(PAGE_SIZE), PAGE_SIZE);
        assert_eq!(page_align(PAGE_SIZE + 1), 2 * PAGE_SIZE);
        assert_eq!(page_align(u64::MAX), !(PAGE_SIZE - 1));
    }

    #[test]
    fn device_encoding_round_trips() {
        for (major, minor) in [(0, 0), (8, 1), (259, 300), (0xfff, 0xf_ffff)] {
            let dev = kernel_dev(major, minor);
            assert_eq!(
                (kernel_dev_major(dev), kernel_dev_minor(dev)),
                (major, minor)
            );
        }
    }
}
