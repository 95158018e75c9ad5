//! What symbolizing a file offset answers: the symbol and the offset into it, borrowed
//! ([`SymbolizedRef`]) or holding its file's table alive ([`Symbolized`]), or why there is
//! none ([`SymReason`], a value counted per probe).

use std::{path::Path, sync::Arc};

use crate::elf::{BuildId, ElfError, ElfImage, Symbol};

/// Why a file offset has no symbol. A value, not an error: counted per probe and reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SymReason {
    /// No symbol covers the address (between functions, or a function without a symbol).
    NoSymbol,
    /// The file has no symbol table at all (stripped without `.dynsym`).
    NoSymbols,
    /// The file offset is not in any `PT_LOAD` segment of the file.
    NoSegment,
    /// No route to the file opened (gone, no permission, process exited).
    FileUnavailable,
    /// The file reachable now is not the mapped one (replaced), or it changed while read.
    FileChanged,
    /// The file is not ELF (or not a regular file).
    NotElf,
    /// The file is ELF of a kind probed does not read (32-bit, foreign machine, …).
    UnsupportedElf,
    /// The file's ELF structures are inconsistent.
    MalformedElf,
}

impl SymReason {
    /// A stable short name for counters and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSymbol => "no_symbol",
            Self::NoSymbols => "no_symbols",
            Self::NoSegment => "no_segment",
            Self::FileUnavailable => "file_unavailable",
            Self::FileChanged => "file_changed",
            Self::NotElf => "not_elf",
            Self::UnsupportedElf => "unsupported_elf",
            Self::MalformedElf => "malformed_elf",
        }
    }

    /// True when a later attempt may succeed (see the module docs for the retry rule).
    pub fn is_transient(self) -> bool {
        matches!(self, Self::FileUnavailable | Self::FileChanged)
    }

    pub(super) fn of_load_error(err: &ElfError) -> Self {
        match err {
            ElfError::NotFound { .. }
            | ElfError::Open { .. }
            | ElfError::NoReadCapability { .. }
            | ElfError::Io { .. } => Self::FileUnavailable,
            ElfError::Changed { .. } => Self::FileChanged,
            ElfError::NotRegularFile { .. } | ElfError::NotElf { .. } => Self::NotElf,
            ElfError::Unsupported { .. } => Self::UnsupportedElf,
            ElfError::Malformed { .. } => Self::MalformedElf,
        }
    }
}

/// A symbolized address, borrowed from the cache; no allocation, no shared write.
#[derive(Clone, Copy, Debug)]
pub struct SymbolizedRef<'a> {
    /// The module's path (the [`FileSource::path`](crate::elf::FileSource::path) it was first
    /// loaded through).
    pub module: &'a Path,
    /// The symbol; raw name in `symbol.name`, demangled in `symbol.demangled()`.
    pub symbol: &'a Symbol,
    /// Bytes from the symbol's start to the address.
    pub offset: u64,
    /// The module's GNU build-id.
    pub build_id: Option<&'a BuildId>,
}

/// A symbolized address that keeps its module's symbol table alive.
#[derive(Clone, Debug)]
pub struct Symbolized {
    /// The loaded file.
    pub(super) image: Arc<ElfImage>,
    /// The symbol's index in the file's table.
    pub(super) index: usize,
    /// Bytes from the symbol's start to the address.
    pub(super) offset: u64,
}

impl Symbolized {
    /// The module's path (the [`FileSource::path`](crate::elf::FileSource::path) it was first
    /// loaded through).
    pub fn module(&self) -> &Path {
        self.image.path()
    }

    /// The symbol.
    pub fn symbol(&self) -> &Symbol {
        self.image
            .symbols()
            .get(self.index)
            .expect("index came from this table")
    }

    /// The raw (mangled) name.
    pub fn name(&self) -> &str {
        &self.symbol().name
    }

    /// The demangled name (the raw one for C).
    pub fn demangled(&self) -> &str {
        self.symbol().demangled()
    }

    /// Bytes from the symbol's start to the address.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The symbol's virtual address in the file's layout.
    pub fn symbol_vaddr(&self) -> u64 {
        self.symbol().addr
    }

    /// The borrowed view.
    pub fn as_ref(&self) -> SymbolizedRef<'_> {
        SymbolizedRef {
            module: self.image.path(),
            symbol: self.symbol(),
            offset: self.offset,
            build_id: self.image.build_id(),
        }
    }
}

/// The index of the symbol at `file_offset` in `image`, and the offset into it.
pub(super) fn locate(image: &ElfImage, file_offset: u64) -> Result<(usize, u64), SymReason> {
    let vaddr = image
        .file_offset_to_vaddr(file_offset)
        .ok_or(SymReason::NoSegment)?;
    let symbols = image.symbols();
    if symbols.is_empty() {
        return Err(SymReason::NoSymbols);
    }
    let index = symbols.symbolize_index(vaddr).ok_or(SymReason::NoSymbol)?;
    let start = symbols.get(index).map_or(vaddr, |s| s.addr);
    Ok((index, vaddr - start))
}

/// The borrowed answer for `file_offset` in `image`.
pub(super) fn view(image: &ElfImage, file_offset: u64) -> Result<SymbolizedRef<'_>, SymReason> {
    let (index, offset) = locate(image, file_offset)?;
    Ok(SymbolizedRef {
        module: image.path(),
        symbol: image.symbols().get(index).ok_or(SymReason::NoSymbol)?,
        offset,
        build_id: image.build_id(),
    })
}
