//! Loadable segments and the translation between virtual addresses and file offsets.
//!
//! Symbols carry virtual addresses (`st_value`); uprobes and /proc/PID/maps speak file offsets.
//! The only correct translation is through the `PT_LOAD` program header that contains the
//! address: `offset = vaddr - p_vaddr + p_offset`. Section headers are not used: `.data` and
//! `.text` live in different segments with different `p_vaddr - p_offset` deltas, and the
//! kernel maps segments, not sections. The math is the same for PIE, non-PIE (`ET_EXEC`, whose
//! vaddrs are absolute, i.e. load base 0) and shared libraries, because it never involves the
//! load base: that is the resolver's business (`off = addr - vm_start + pgoff`).

/// One `PT_LOAD` program header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// `p_vaddr`: where the segment's first byte lives in the file's own address layout.
    pub vaddr: u64,
    /// `p_memsz`: bytes in memory (larger than `filesz` when the segment holds `.bss`).
    pub memsz: u64,
    /// `p_offset`: where the segment's first byte lives in the file.
    pub offset: u64,
    /// `p_filesz`: bytes backed by the file.
    pub filesz: u64,
    /// `p_flags` (`PF_X` = 1, `PF_W` = 2, `PF_R` = 4).
    pub flags: u32,
}

impl LoadSegment {
    /// True when the segment is mapped executable (`PF_X`).
    pub fn is_executable(&self) -> bool {
        self.flags & object::elf::PF_X != 0
    }

    /// True when `vaddr` is in the file-backed part of the segment. Addresses in the
    /// `.bss` tail (between `filesz` and `memsz`) have no file offset.
    pub fn contains_vaddr(&self, vaddr: u64) -> bool {
        vaddr >= self.vaddr && vaddr - self.vaddr < self.filesz
    }

    /// True when `offset` is one of the file bytes the segment maps.
    pub fn contains_offset(&self, offset: u64) -> bool {
        offset >= self.offset && offset - self.offset < self.filesz
    }
}

/// The `PT_LOAD` segments of one ELF file, in program-header order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Segments {
    /// The segments; a handful per file, so lookups scan.
    loads: Vec<LoadSegment>,
}

impl Segments {
    /// Wraps the `PT_LOAD` headers of a file.
    pub fn new(loads: Vec<LoadSegment>) -> Self {
        Self { loads }
    }

    /// The segments, in program-header order.
    pub fn iter(&self) -> impl Iterator<Item = &LoadSegment> {
        self.loads.iter()
    }

    /// The segment whose file-backed part contains `vaddr`.
    pub fn by_vaddr(&self, vaddr: u64) -> Option<&LoadSegment> {
        self.loads.iter().find(|s| s.contains_vaddr(vaddr))
    }

    /// The segment that maps file byte `offset`. If several do (a linker may let segments
    /// share a page-aligned range), the executable one wins: the offsets probed translates
    /// come from executable mappings.
    pub fn by_offset(&self, offset: u64) -> Option<&LoadSegment> {
        let mut found = None;
        for seg in self.loads.iter().filter(|s| s.contains_offset(offset)) {
            if seg.is_executable() {
                return Some(seg);
            }
            found.get_or_insert(seg);
        }
        found
    }

    /// The file offset holding the byte at virtual address `vaddr`, through the `PT_LOAD`
    /// segment that contains it; `None` if no segment's file-backed part does.
    pub fn vaddr_to_file_offset(&self, vaddr: u64) -> Option<u64> {
        let seg = self.by_vaddr(vaddr)?;
        Some(vaddr - seg.vaddr + seg.offset)
    }

    /// The virtual address of file byte `offset`, through the `PT_LOAD` segment that maps it;
    /// `None` if no segment maps that byte.
    pub fn file_offset_to_vaddr(&self, offset: u64) -> Option<u64> {
        let seg = self.by_offset(offset)?;
        Some(offset - seg.offset + seg.vaddr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A typical PIE layout: text and data segments have different vaddr-offset deltas.
    fn pie_like() -> Segments {
        Segments::new(vec![
            LoadSegment {
                vaddr: 0,
                memsz: 0x600,
                offset: 0,
                filesz: 0x600,
                flags: 4,
            },
            LoadSegment {
                vaddr: 0x1000,
                memsz: 0x200,
                offset: 0x1000,
                filesz: 0x200,
                flags: 5,
            },
            LoadSegment {
                vaddr: 0x3df0,
                memsz: 0x300,
                offset: 0x2df0,
                filesz: 0x230,
                flags: 6,
            },
        ])
    }

    /// Each address translates through its own segment's delta, and back.
    #[test]
    fn translation_uses_the_containing_segment() {
        let segs = pie_like();
        assert_eq!(segs.vaddr_to_file_offset(0x1010), Some(0x1010));
        assert_eq!(segs.vaddr_to_file_offset(0x3e00), Some(0x2e00));
        assert_eq!(segs.file_offset_to_vaddr(0x2e00), Some(0x3e00));
        assert_eq!(segs.file_offset_to_vaddr(0x1010), Some(0x1010));
    }

    /// Gaps between segments and the `.bss` tail have no file offset.
    #[test]
    fn gaps_and_bss_do_not_translate() {
        let segs = pie_like();
        assert_eq!(segs.vaddr_to_file_offset(0x1200), None);
        assert_eq!(segs.vaddr_to_file_offset(0x3df0 + 0x230), None);
        assert_eq!(segs.file_offset_to_vaddr(0x1200), None);
        assert_eq!(segs.vaddr_to_file_offset(u64::MAX), None);
    }

    /// When two segments claim the same file byte, the executable one translates it.
    #[test]
    fn overlapping_offsets_prefer_the_executable_segment() {
        let segs = Segments::new(vec![
            LoadSegment {
                vaddr: 0x400000,
                memsz: 0x2000,
                offset: 0,
                filesz: 0x2000,
                flags: 4,
            },
            LoadSegment {
                vaddr: 0x501000,
                memsz: 0x1000,
                offset: 0x1000,
                filesz: 0x1000,
                flags: 5,
            },
        ]);
        assert_eq!(segs.file_offset_to_vaddr(0x1800), Some(0x501800));
        assert_eq!(segs.file_offset_to_vaddr(0x800), Some(0x400800));
    }
}
