//! Unwind tables per file: a module's `.eh_frame` / `.eh_frame_hdr` (or `.debug_frame`) read
//! once per (device, inode) and held as a framehop unwinder of that one module.
//!
//! The module is registered at its own stated addresses (base 0): a frame is looked up by
//! the file's virtual address of its file offset (which the resolver gives for the hit's own
//! picture of the address space), so one table serves every process and every load address
//! of the file, and framehop's rule cache stays valid across hits.

use std::{collections::HashMap, ops::Range, sync::Arc};

use framehop::{ExplicitModuleSectionInfo, Module, x86_64::UnwinderX86_64};
use object::{Object, ObjectSection, ObjectSegment, ReadCache};

use crate::{
    elf::{FileSource, LocateError, open_source},
    file_id::FileId,
};

/// Files kept at most; the cache is dropped whole when it would grow past this (a run
/// tracing that many distinct modules reloads what it still uses).
const CAPACITY: usize = 4096;

/// Section data as framehop holds it.
type Bytes = Vec<u8>;

/// Why a file has no unwind table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// No route to the mapped file opened (gone, no permission, replaced).
    #[error("the file is unavailable")]
    FileUnavailable,
    /// The file is not an ELF file probed can read.
    #[error("the file is not readable ELF")]
    NotElf,
    /// The file has neither `.eh_frame` nor `.debug_frame`.
    #[error("the file has no call frame information")]
    NoCfi,
}

impl TableError {
    /// Short name for stop reasons and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FileUnavailable => "file_unavailable",
            Self::NotElf => "not_elf",
            Self::NoCfi => "no_cfi",
        }
    }
}

/// One file's call frame information and the map from file offsets to its addresses.
pub struct Table {
    /// A framehop unwinder holding this one module, at base 0.
    pub(super) unwinder: UnwinderX86_64<Bytes>,
    /// `PT_LOAD` segments: (file offsets, the vaddr of the first byte).
    segments: Vec<(Range<u64>, u64)>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("segments", &self.segments)
            .finish_non_exhaustive()
    }
}

impl Table {
    /// The file's virtual address of `file_offset`, if a `PT_LOAD` segment holds it.
    pub fn vaddr(&self, file_offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(r, _)| r.contains(&file_offset))
            .map(|(r, vaddr)| vaddr + (file_offset - r.start))
    }

    /// Parses the unwind sections of an ELF file.
    pub fn parse(file: &std::fs::File, name: &str) -> Result<Self, TableError> {
        let cache = ReadCache::new(file);
        let elf = object::File::parse(&cache).map_err(|_| TableError::NotElf)?;
        let section = |name: &str| elf.section_by_name(name);
        let range = |name: &str| section(name).map(|s| s.address()..s.address() + s.size());
        let data = |name: &str| {
            section(name)
                .and_then(|s| s.uncompressed_data().ok())
                .map(|d| d.into_owned())
                .filter(|d| !d.is_empty())
        };
        let eh_frame = data(".eh_frame");
        let debug_frame = data(".debug_frame");
        if eh_frame.is_none() && debug_frame.is_none() {
            return Err(TableError::NoCfi);
        }
        let segments: Vec<(Range<u64>, u64)> = elf
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (off..off + size, s.address())
            })
            .filter(|(r, _)| !r.is_empty())
            .collect();
        let end = elf
            .segments()
            .map(|s| s.address() + s.size())
            .max()
            .unwrap_or(0);
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: range(".text"),
            got_svma: range(".got"),
            eh_frame_svma: range(".eh_frame"),
            eh_frame,
            eh_frame_hdr_svma: range(".eh_frame_hdr"),
            eh_frame_hdr: data(".eh_frame_hdr"),
            debug_frame,
            ..Default::default()
        };
        let mut unwinder = UnwinderX86_64::new();
        use framehop::Unwinder as _;
        unwinder.add_module(Module::new(name.to_owned(), 0..end, 0, info));
        Ok(Self { unwinder, segments })
    }
}

/// Unwind tables by file identity, and failures too (a file without CFI is not reopened at
/// every frame).
#[derive(Debug, Default)]
pub struct Tables {
    files: HashMap<FileId, Result<Arc<Table>, TableError>>,
    /// Files opened and parsed.
    pub loads: u64,
}

impl Tables {
    /// The table of the file `source` names, loading it on a miss.
    pub fn get(&mut self, source: &FileSource<'_>) -> Result<Arc<Table>, TableError> {
        if let Some(found) = self.files.get(&source.id) {
            return found.clone();
        }
        if self.files.len() >= CAPACITY {
            self.files.clear();
        }
        self.loads += 1;
        let loaded = match open_source(source) {
            Ok((file, _meta, _route)) => {
                Table::parse(&file, &source.path.to_string_lossy()).map(Arc::new)
            }
            Err(LocateError::Replaced { .. } | LocateError::Unavailable(_)) => {
                Err(TableError::FileUnavailable)
            }
        };
        if let Err(err) = &loaded {
            tracing::debug!(file = %source.id, path = %source.path.display(), error = %err, "no unwind table");
        }
        // Transient failures are cached too: a file that cannot be opened now is most
        // likely gone for good (an exited process's deleted library), and retrying it at
        // every frame would cost an open per frame.
        self.files.insert(source.id, loaded.clone());
        loaded
    }
}
