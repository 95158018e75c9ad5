//! Loading an ELF file into owned data: segments, symbols, build-id, and the symbols of its
//! separate debug file (local paths, then debuginfod). The parse itself is `parse.rs`.

use std::{
    fs::{File, Metadata},
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use object::ReadCache;

use super::{
    BuildId, ElfError, Segments, Symbol, SymbolTable, debug_file, debuginfod,
    parse::{Parsed, parse},
    reader::{self, PosReader, ReadAt, Stamp},
};
use crate::file_id::FileId;

/// How addresses in the file relate to addresses in a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfType {
    /// `ET_EXEC`: a non-PIE executable, mapped at the vaddrs it states (load base 0).
    Executable,
    /// `ET_DYN`: a PIE executable or a shared library, mapped at a base chosen at load time.
    Dynamic,
}

/// How far a load may go for a separate debug file (debug_file.rs, debuginfod.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugFetch {
    /// Local files only: the build-id path, `.gnu_debuglink`, and the debuginfod cache. For
    /// symbolizing hits, which must never wait for the network (the symbolizer fetches in
    /// the background instead: symbolize/fetch.rs).
    Local,
    /// Also ask the debuginfod servers, waiting up to their timeouts: for attaching by name
    /// and `probed list`, where the names are the point and a wait is expected.
    Wait,
}

/// An ELF file parsed into owned data; holds no file descriptor and no mapping, so it stays
/// valid whatever happens to the file afterwards.
#[derive(Debug)]
pub struct ElfImage {
    /// The path the file was opened as (for messages).
    path: PathBuf,
    /// The (device, inode) of the file that was read.
    id: FileId,
    /// `ET_EXEC` or `ET_DYN`.
    elf_type: ElfType,
    /// The `PT_LOAD` segments.
    segments: Segments,
    /// `.symtab` and `.dynsym`, merged.
    symbols: SymbolTable,
    /// `NT_GNU_BUILD_ID`, if the file has one.
    build_id: Option<BuildId>,
    /// The separate debug file whose symbols were merged in (debug_file.rs), if any.
    debug_file: Option<PathBuf>,
    /// True when the file has only `.dynsym`, a build-id, and no debug file was found
    /// locally: debuginfod may still have one.
    wants_debug_file: bool,
}

impl ElfImage {
    /// Opens and parses the ELF file at `path`; a separate debug file may be fetched from
    /// debuginfod, waiting for it ([`DebugFetch::Wait`]).
    pub fn open(path: &Path) -> Result<Self, ElfError> {
        let (file, meta) = reader::open(path)?;
        Self::from_file(&file, &meta, path, DebugFetch::Wait)
    }

    /// Parses an already opened file; `meta` is its `fstat` from when it was opened and
    /// `path` names it in errors; `fetch` says whether debuginfod may be asked. Fails with
    /// [`ElfError::Changed`] if the file's size or times moved while it was read.
    pub fn from_file(
        file: &File,
        meta: &Metadata,
        path: &Path,
        fetch: DebugFetch,
    ) -> Result<Self, ElfError> {
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        Self::read(file, Stamp::of(meta), id, path, || file.metadata(), fetch)
    }

    /// Parses through `reader`, then checks with `restat` that the file is still what
    /// `before` described.
    pub(crate) fn read<R: ReadAt>(
        reader: R,
        before: Stamp,
        id: FileId,
        path: &Path,
        restat: impl FnOnce() -> io::Result<Metadata>,
        fetch: DebugFetch,
    ) -> Result<Self, ElfError> {
        let cache = ReadCache::new(PosReader::new(reader, before.size));
        let parsed = parse(&cache);
        let io_error = cache.into_inner().into_error();
        let after = restat().map_err(|source| ElfError::Io {
            path: path.to_owned(),
            source,
        })?;
        let changed = || ElfError::Changed {
            path: path.to_owned(),
        };
        if Stamp::of(&after) != before {
            return Err(changed());
        }
        let parsed = match (parsed, io_error) {
            (Ok(parsed), _) => parsed,
            // A short read with an unchanged stamp: the file shrank and was restored, or the
            // file system lies; either way what was read cannot be trusted.
            (Err(_), Some(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(changed());
            }
            (Err(_), Some(source)) => {
                return Err(ElfError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
            (Err(e), None) => return Err(e.into_error(path)),
        };
        let Parsed {
            elf_type,
            segments,
            mut symbols,
            build_id,
            has_symtab,
            debuglink,
        } = parsed;
        // Only .dynsym (a distribution binary): the full table may be in a debug file.
        let mut debug_file = None;
        if !has_symtab
            && let Some((found, extra)) = debug_symbols(
                path,
                build_id.as_ref(),
                debuglink.as_ref(),
                Path::new(debug_file::DEBUG_ROOT),
            )
        {
            symbols.extend(extra);
            debug_file = Some(found);
        }
        // Third, debuginfod: its cache always, its servers only when the caller may wait.
        if !has_symtab
            && debug_file.is_none()
            && let Some(id) = &build_id
            && let Some(client) = debuginfod::global()
        {
            let file = match fetch {
                DebugFetch::Local => client.cached(id),
                DebugFetch::Wait => client
                    .fetch(id)
                    .inspect_err(|e| match e {
                        // Answers: the servers do not have it (or said so recently).
                        debuginfod::DebuginfodError::NotFound { .. }
                        | debuginfod::DebuginfodError::RecentlyMissing { .. } => {
                            tracing::debug!(file = %path.display(), error = %e, "no debug file from debuginfod");
                        }
                        // Failures (timeout, TLS, cache): said, since names will be missing.
                        _ => tracing::warn!(
                            file = %path.display(),
                            error = %debuginfod::error_chain(e),
                            "debuginfod request failed"
                        ),
                    })
                    .ok(),
            };
            if let Some(file) = file
                && let Some(extra) = debug_file_symbols(&file, Some(id), debug_file::Check::BuildId)
            {
                symbols.extend(extra);
                debug_file = Some(file);
            }
        }
        let wants_debug_file = !has_symtab && debug_file.is_none() && build_id.is_some();
        Ok(Self {
            path: path.to_owned(),
            id,
            elf_type,
            segments,
            symbols: SymbolTable::new(symbols),
            build_id,
            debug_file,
            wants_debug_file,
        })
    }

    /// The build-id to ask debuginfod for, when the file has only `.dynsym` and no local
    /// debug file was found.
    pub fn missing_debug_file(&self) -> Option<&BuildId> {
        self.build_id.as_ref().filter(|_| self.wants_debug_file)
    }

    /// This image with the symbols of the debug file at `path` merged in, if that file's
    /// build-id is this image's: the symbols of a file that arrived after the image was
    /// loaded (debuginfod), without reopening the binary (which may be gone by then).
    pub fn with_debug_file(&self, path: &Path) -> Option<Self> {
        let build_id = self.build_id.as_ref()?;
        let extra = debug_file_symbols(path, Some(build_id), debug_file::Check::BuildId)?;
        let mut symbols: Vec<Symbol> = self.symbols.iter().cloned().collect();
        symbols.extend(extra);
        Some(Self {
            path: self.path.clone(),
            id: self.id,
            elf_type: self.elf_type,
            segments: self.segments.clone(),
            symbols: SymbolTable::new(symbols),
            build_id: self.build_id.clone(),
            debug_file: Some(path.to_owned()),
            wants_debug_file: false,
        })
    }

    /// The separate debug file whose symbols were merged in, if one was found.
    pub fn debug_file(&self) -> Option<&Path> {
        self.debug_file.as_deref()
    }

    /// The path the file was opened as.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The (device, inode) of the file that was read.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// Non-PIE executable or position-independent (PIE, shared library).
    pub fn elf_type(&self) -> ElfType {
        self.elf_type
    }

    /// The `PT_LOAD` segments.
    pub fn segments(&self) -> &Segments {
        &self.segments
    }

    /// The merged symbol table.
    pub fn symbols(&self) -> &SymbolTable {
        &self.symbols
    }

    /// The GNU build-id, if the file has one.
    pub fn build_id(&self) -> Option<&BuildId> {
        self.build_id.as_ref()
    }

    /// See [`Segments::vaddr_to_file_offset`].
    pub fn vaddr_to_file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments.vaddr_to_file_offset(vaddr)
    }

    /// See [`Segments::file_offset_to_vaddr`].
    pub fn file_offset_to_vaddr(&self, offset: u64) -> Option<u64> {
        self.segments.file_offset_to_vaddr(offset)
    }

    /// See [`SymbolTable::symbolize`].
    pub fn symbolize(&self, vaddr: u64) -> Option<(&Symbol, u64)> {
        self.symbols.symbolize(vaddr)
    }
}

/// The symbols of the first debug file of `path` found that passes its check (see
/// debug_file.rs), with its path. A candidate that fails to open, parse or check is passed
/// over (logged at debug level): a missing debug file only means fewer names.
fn debug_symbols(
    path: &Path,
    build_id: Option<&BuildId>,
    link: Option<&debug_file::DebugLink>,
    root: &Path,
) -> Option<(PathBuf, Vec<Symbol>)> {
    debug_file::candidates(path, build_id, link, root)
        .into_iter()
        .find_map(|(candidate, check)| {
            let symbols = debug_file_symbols(&candidate, build_id, check)?;
            Some((candidate, symbols))
        })
}

/// The symbols of the debug file `candidate` if it passes `check` against the binary's
/// `build_id`; `None` (logged at debug level) if it is missing, does not parse or fails.
fn debug_file_symbols(
    candidate: &Path,
    build_id: Option<&BuildId>,
    check: debug_file::Check,
) -> Option<Vec<Symbol>> {
    let (file, meta) = reader::open(candidate).ok()?;
    let cache = ReadCache::new(PosReader::new(&file, meta.len()));
    let Ok(parsed) = parse(&cache) else {
        tracing::debug!(file = %candidate.display(), "debug file does not parse");
        return None;
    };
    let ids_agree = match (build_id, parsed.build_id.as_ref()) {
        (Some(a), Some(b)) => a == b,
        (None, _) | (_, None) => check != debug_file::Check::BuildId,
    };
    let crc_ok = match check {
        debug_file::Check::BuildId => true,
        debug_file::Check::Crc(crc) => debug_file::file_crc(candidate).ok() == Some(crc),
    };
    if !(ids_agree && crc_ok) {
        tracing::debug!(file = %candidate.display(), "debug file belongs to another build");
        return None;
    }
    Some(parsed.symbols)
}

#[cfg(test)]
#[path = "image_tests.rs"]
mod tests;
