//! Loading an ELF file into owned data: segments, symbols, build-id.

use std::{
    fs::{File, Metadata},
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use object::{
    LittleEndian, ReadCache, ReadCacheOps, ReadRef,
    elf::{self, FileHeader64, Sym64},
    read::elf::{FileHeader, ProgramHeader, SectionHeader, Sym},
};

use super::{
    BuildId, ElfError, LoadSegment, Segments, Symbol, SymbolBinding, SymbolKind, SymbolTable,
    build_id, debug_file, debuginfod,
    reader::{self, PosReader, ReadAt, Stamp},
};
use crate::file_id::FileId;

/// The ELF machine this host runs, and its name for messages: probed attaches to and
/// symbolizes only code that can run here.
#[cfg(target_arch = "x86_64")]
const HOST_MACHINE: (u16, &str) = (elf::EM_X86_64, "x86-64");
#[cfg(target_arch = "aarch64")]
const HOST_MACHINE: (u16, &str) = (elf::EM_AARCH64, "aarch64");
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("probed's ELF reader knows the ELF machine of x86_64 and aarch64 hosts only");

/// Positions in `e_ident` (the ELF spec's names; `object` exposes them only as a struct).
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const EI_NIDENT: u64 = 16;

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

/// Why parsing failed, before the path is attached.
enum ParseError {
    NotElf,
    Unsupported(String),
    Malformed(object::read::Error),
}

impl ParseError {
    fn into_error(self, path: &Path) -> ElfError {
        let path = path.to_owned();
        match self {
            Self::NotElf => ElfError::NotElf { path },
            Self::Unsupported(what) => ElfError::Unsupported { path, what },
            Self::Malformed(source) => ElfError::Malformed { path, source },
        }
    }
}

impl From<object::read::Error> for ParseError {
    fn from(e: object::read::Error) -> Self {
        Self::Malformed(e)
    }
}

/// What one parse of an ELF file gives.
struct Parsed {
    elf_type: ElfType,
    segments: Segments,
    /// `.symtab` and `.dynsym`, not merged yet.
    symbols: Vec<Symbol>,
    build_id: Option<BuildId>,
    /// Whether the file has a `.symtab` (else only `.dynsym`: look for a debug file).
    has_symtab: bool,
    /// `.gnu_debuglink`, if present.
    debuglink: Option<debug_file::DebugLink>,
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

fn parse<R: ReadCacheOps>(cache: &ReadCache<R>) -> Result<Parsed, ParseError> {
    let data = cache;
    match data.read_bytes_at(0, 4) {
        Ok(magic) if magic == elf::ELFMAG => {}
        _ => return Err(ParseError::NotElf),
    }
    if let Ok(ident) = data.read_bytes_at(0, EI_NIDENT) {
        match ident[EI_CLASS] {
            elf::ELFCLASS64 => {}
            elf::ELFCLASS32 => return Err(ParseError::Unsupported("32-bit".into())),
            other => return Err(ParseError::Unsupported(format!("ELF class {other}"))),
        }
        if ident[EI_DATA] != elf::ELFDATA2LSB {
            return Err(ParseError::Unsupported("big-endian".into()));
        }
    }
    let endian = LittleEndian;
    let header = FileHeader64::<LittleEndian>::parse(data)?;
    let machine = header.e_machine(endian);
    if machine != HOST_MACHINE.0 {
        return Err(ParseError::Unsupported(format!(
            "machine {machine}, expected {}",
            HOST_MACHINE.1
        )));
    }
    let elf_type = match header.e_type(endian) {
        elf::ET_EXEC => ElfType::Executable,
        elf::ET_DYN => ElfType::Dynamic,
        other => {
            return Err(ParseError::Unsupported(format!(
                "type {other}, not an executable or shared library"
            )));
        }
    };

    let phdrs = header.program_headers(endian, data)?;
    let loads = phdrs
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
        .map(|ph| LoadSegment {
            vaddr: ph.p_vaddr(endian),
            memsz: ph.p_memsz(endian),
            offset: ph.p_offset(endian),
            filesz: ph.p_filesz(endian),
            flags: ph.p_flags(endian),
        })
        .collect();
    let build_id = build_id::find(phdrs, data);

    let sections = header.sections(endian, data)?;
    let mut symbols = Vec::new();
    let mut has_symtab = false;
    let mut debuglink = None;
    for section in sections.iter() {
        let sh_type = section.sh_type(endian);
        if sh_type == elf::SHT_PROGBITS
            && sections.section_name(endian, section).ok() == Some(b".gnu_debuglink".as_slice())
        {
            debuglink = section
                .data(endian, data)
                .ok()
                .and_then(debug_file::DebugLink::parse);
        }
        has_symtab |= sh_type == elf::SHT_SYMTAB;
        if sh_type != elf::SHT_SYMTAB && sh_type != elf::SHT_DYNSYM {
            continue;
        }
        let table: &[Sym64<LittleEndian>] = section.data_as_array(endian, data)?;
        let strtab = sections.section(object::SectionIndex(section.sh_link(endian) as usize))?;
        // One read for the whole string table: per-name reads would be a syscall per symbol.
        let strings = strtab.data(endian, data)?;
        symbols.extend(table.iter().filter_map(|sym| convert(sym, strings)));
    }
    Ok(Parsed {
        elf_type,
        segments: Segments::new(loads),
        symbols,
        build_id,
        has_symtab,
        debuglink,
    })
}

/// The symbol `sym` if it is a defined, addressed function or data object with a name.
fn convert(sym: &Sym64<LittleEndian>, strings: &[u8]) -> Option<Symbol> {
    let endian = LittleEndian;
    let kind = match sym.st_type() {
        elf::STT_FUNC => SymbolKind::Function,
        elf::STT_GNU_IFUNC => SymbolKind::IndirectFunction,
        elf::STT_OBJECT => SymbolKind::Object,
        _ => return None,
    };
    let binding = match sym.st_bind() {
        elf::STB_LOCAL => SymbolBinding::Local,
        elf::STB_WEAK => SymbolBinding::Weak,
        _ => SymbolBinding::Global,
    };
    // Undefined symbols are imports; absolute ones do not move with the load base, so
    // they name no mapped byte.
    let shndx = sym.st_shndx(endian);
    let addr = sym.st_value(endian);
    if shndx == elf::SHN_UNDEF || shndx == elf::SHN_ABS || addr == 0 {
        return None;
    }
    let rest = strings.get(sym.st_name(endian) as usize..)?;
    let name = &rest[..rest.iter().position(|&b| b == 0)?];
    if name.is_empty() {
        return None;
    }
    Some(Symbol::new(
        String::from_utf8_lossy(name),
        addr,
        sym.st_size(endian),
        kind,
        binding,
    ))
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, fs, os::unix::fs::FileExt as _, sync::Arc};

    use super::*;
    use crate::elf::test_support::{
        ALPHA_MARK, Fixture, code_has_mark, readelf_build_id, readelf_symbols, scratch_dir,
    };

    /// Every kind of fixture loads with the right ELF type, and the merged table holds exactly
    /// the defined function/data symbols `readelf` lists, with the same values and sizes.
    #[test]
    fn symbols_match_readelf_for_every_kind() {
        for (fixture, want_type) in [
            (Fixture::Pie, ElfType::Dynamic),
            (Fixture::NoPie, ElfType::Executable),
            (Fixture::SharedLib, ElfType::Dynamic),
            (Fixture::Stripped, ElfType::Dynamic),
        ] {
            let path = fixture.path();
            let image = ElfImage::open(&path).unwrap();
            assert_eq!(image.elf_type(), want_type, "{fixture:?}");
            let ours: BTreeSet<(String, u64, u64)> = image
                .symbols()
                .iter()
                .map(|s| (s.bare_name().to_owned(), s.addr, s.size))
                .collect();
            let theirs: BTreeSet<(String, u64, u64)> = readelf_symbols(&path)
                .into_iter()
                .filter(|s| matches!(&*s.kind, "FUNC" | "OBJECT" | "IFUNC"))
                .filter(|s| s.section != "UND" && s.section != "ABS" && s.value != 0)
                .map(|s| (s.name, s.value, s.size))
                .collect();
            assert_eq!(ours, theirs, "{fixture:?}");
            assert!(
                ours.iter()
                    .any(|s| s.0 == "elf_fn_alpha" || s.0 == "elf_lib_fn")
            );
        }
    }

    /// A stripped binary keeps its exported functions (from .dynsym) but not its statics.
    #[test]
    fn stripped_binary_uses_dynsym() {
        let image = ElfImage::open(&Fixture::Stripped.path()).unwrap();
        assert!(image.symbols().find("elf_fn_local").is_none());
        let alpha = image
            .symbols()
            .find("elf_fn_alpha")
            .expect("exported via -rdynamic");
        assert!(alpha.size > 0);
        assert!(
            ElfImage::open(&Fixture::Pie.path())
                .unwrap()
                .symbols()
                .find("elf_fn_local")
                .is_some()
        );
    }

    /// The build-id is the one `readelf -n` prints.
    #[test]
    fn build_id_matches_readelf() {
        let path = Fixture::SharedLib.path();
        let image = ElfImage::open(&path).unwrap();
        let want = readelf_build_id(&path).expect("gcc on Debian links with a build-id");
        assert_eq!(image.build_id().map(ToString::to_string), Some(want));
    }

    /// A script, an empty file and a missing path give "not an ELF file" / "no such file".
    #[test]
    fn non_elf_and_missing_files() {
        let dir = scratch_dir("non-elf");
        let script = dir.join("script.sh");
        fs::write(&script, "#!/bin/sh\necho hello\n").unwrap();
        let err = ElfImage::open(&script).unwrap_err();
        assert!(matches!(err, ElfError::NotElf { .. }), "{err:?}");
        assert!(!err.is_transient(), "content does not fix itself");
        assert!(
            err.to_string().ends_with("script.sh: not an ELF file"),
            "{err}"
        );
        let empty = dir.join("empty");
        fs::write(&empty, "").unwrap();
        assert!(matches!(
            ElfImage::open(&empty),
            Err(ElfError::NotElf { .. })
        ));
        let err = ElfImage::open(&dir.join("missing")).unwrap_err();
        assert!(matches!(err, ElfError::NotFound { .. }), "{err:?}");
        assert!(err.to_string().ends_with("missing: no such file"), "{err}");
        assert!(err.is_transient(), "a missing file may appear later");
        fs::remove_dir_all(dir).ok();
    }

    /// 32-bit, big-endian and foreign-machine files are refused as unsupported, by name.
    #[test]
    fn unsupported_elf_files() {
        let dir = scratch_dir("unsupported");
        let original = fs::read(Fixture::Pie.path()).unwrap();
        for (at, value, what) in [
            (4, 1u8, "32-bit"),
            (5, 2, "big-endian"),
            (18, 183, "machine 183"),
        ] {
            let mut bytes = original.clone();
            bytes[at] = value;
            let path = dir.join(format!("patched-{at}"));
            fs::write(&path, bytes).unwrap();
            let err = ElfImage::open(&path).unwrap_err();
            assert!(matches!(err, ElfError::Unsupported { .. }), "{err:?}");
            assert!(err.to_string().contains(what), "{err}");
        }
        fs::remove_dir_all(dir).ok();
    }

    /// Files cut short give clean errors: empty is not ELF, a cut header or cut tables are
    /// malformed.
    #[test]
    fn truncated_files_are_errors() {
        let dir = scratch_dir("truncated");
        let original = fs::read(Fixture::Pie.path()).unwrap();
        for (len, empty) in [
            (0, true),
            (40, false),
            (100, false),
            (original.len() / 2, false),
        ] {
            let path = dir.join(format!("cut-{len}"));
            fs::write(&path, &original[..len]).unwrap();
            let err = ElfImage::open(&path).unwrap_err();
            if empty {
                assert!(matches!(err, ElfError::NotElf { .. }), "{len}: {err:?}");
            } else {
                assert!(matches!(err, ElfError::Malformed { .. }), "{len}: {err:?}");
            }
        }
        fs::remove_dir_all(dir).ok();
    }

    /// A reader that truncates its file after the first few reads, like a binary being
    /// rewritten while probed loads it.
    struct TruncatingReader {
        file: File,
        reads: std::cell::Cell<u32>,
    }

    impl ReadAt for TruncatingReader {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.reads.set(self.reads.get() + 1);
            if self.reads.get() == 3 {
                self.file.set_len(0)?;
            }
            std::os::unix::fs::FileExt::read_at(&self.file, buf, offset)
        }
    }

    /// A file truncated in the middle of loading is reported as changed, not parsed into
    /// garbage and not a crash.
    #[test]
    fn truncation_during_load_is_detected() {
        let dir = scratch_dir("truncate-mid-load");
        let path = dir.join("victim");
        fs::copy(Fixture::Pie.path(), &path).unwrap();
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let meta = file.metadata().unwrap();
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let reader = TruncatingReader {
            file: file.try_clone().unwrap(),
            reads: Default::default(),
        };
        let err = ElfImage::read(
            reader,
            Stamp::of(&meta),
            id,
            &path,
            || file.metadata(),
            DebugFetch::Local,
        )
        .unwrap_err();
        assert!(matches!(err, ElfError::Changed { .. }), "{err:?}");
        fs::remove_dir_all(dir).ok();
    }

    /// While one thread truncates, rewrites and replaces a binary in a loop, loading it from
    /// another never crashes: each load is either the whole binary or a clean error.
    #[test]
    fn concurrent_truncate_and_replace_never_crash() {
        let dir = scratch_dir("truncate-race");
        let path = Arc::new(dir.join("victim"));
        let original = fs::read(Fixture::Pie.path()).unwrap();
        fs::write(&*path, &original).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let loader = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match ElfImage::open(&path) {
                        Ok(image) => {
                            let alpha = image.symbols().find("elf_fn_alpha").expect("whole file");
                            assert!(alpha.size > 0);
                            ok += 1;
                        }
                        Err(
                            ElfError::NotElf { .. }
                            | ElfError::Malformed { .. }
                            | ElfError::Changed { .. }
                            | ElfError::NotFound { .. },
                        ) => failed += 1,
                        Err(other) => panic!("unexpected error {other:?}"),
                    }
                }
                (ok, failed)
            })
        };
        let replacement = dir.join("replacement");
        for round in 0..300 {
            let f = fs::OpenOptions::new().write(true).open(&*path).unwrap();
            f.set_len(0).unwrap();
            f.write_all_at(&original[..original.len() / (round % 4 + 1)], 0)
                .unwrap();
            f.write_all_at(&original, 0).unwrap();
            fs::write(&replacement, &original).unwrap();
            fs::rename(&replacement, &*path).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (ok, failed) = loader.join().expect("loader thread did not panic");
        assert!(ok + failed > 0);
        // The marker check proves the file still is the original after the race.
        let image = ElfImage::open(&path).unwrap();
        let alpha = image.symbols().find("elf_fn_alpha").unwrap();
        let off = image.vaddr_to_file_offset(alpha.addr).unwrap();
        assert!(code_has_mark(&path, off, alpha.size, ALPHA_MARK));
        fs::remove_dir_all(dir).ok();
    }

    fn objcopy(args: &[&str]) {
        let out = std::process::Command::new("objcopy")
            .args(args)
            .output()
            .expect("run objcopy (binutils)");
        assert!(out.status.success(), "objcopy {args:?}: {out:?}");
    }

    /// A binary stripped of `.symtab` whose debug file (objcopy --only-keep-debug) is named
    /// by `.gnu_debuglink` in `.debug/` gets its static function back, and says where from;
    /// a debug file whose CRC does not match is refused; found by build-id under a debug
    /// root, the build-id is checked.
    #[test]
    fn symbols_from_separate_debug_files() {
        let dir = scratch_dir("debuglink");
        let full = dir.join("prog.full");
        fs::copy(Fixture::Pie.path(), &full).unwrap();
        fs::create_dir_all(dir.join(".debug")).unwrap();
        let debug = dir.join(".debug/prog.debug");
        objcopy(&[
            "--only-keep-debug",
            full.to_str().unwrap(),
            debug.to_str().unwrap(),
        ]);
        let prog = dir.join("prog");
        let link = format!("--add-gnu-debuglink={}", debug.display());
        objcopy(&[
            "--strip-all",
            &link,
            full.to_str().unwrap(),
            prog.to_str().unwrap(),
        ]);

        let has_local = |image: &ElfImage| image.symbols().find("elf_fn_local").is_some();
        let image = ElfImage::open(&prog).unwrap();
        assert!(
            has_local(&image),
            "elf_fn_local not found through .gnu_debuglink"
        );
        assert_eq!(image.debug_file(), Some(debug.as_path()));
        // Its address is the full binary's.
        let want = ElfImage::open(&full).unwrap();
        assert_eq!(
            image.symbols().find("elf_fn_local").map(|s| s.addr),
            want.symbols().find("elf_fn_local").map(|s| s.addr)
        );

        // Another build's debug file under the same name: the CRC no longer matches.
        let mut bytes = fs::read(&debug).unwrap();
        bytes.push(0);
        fs::write(&debug, &bytes).unwrap();
        let image = ElfImage::open(&prog).unwrap();
        assert!(!has_local(&image) && image.debug_file().is_none());

        // By build-id under a debug root (no debuglink match needed), build-id checked.
        let id = image
            .build_id()
            .expect("the fixture has a build-id")
            .to_string();
        let root = dir.join("root");
        let by_id = root
            .join(".build-id")
            .join(&id[..2])
            .join(format!("{}.debug", &id[2..]));
        fs::create_dir_all(by_id.parent().unwrap()).unwrap();
        objcopy(&[
            "--only-keep-debug",
            full.to_str().unwrap(),
            by_id.to_str().unwrap(),
        ]);
        let found = debug_symbols(&prog, image.build_id(), None, &root).expect("found by build-id");
        assert_eq!(found.0, by_id);
        assert!(found.1.iter().any(|s| &*s.name == "elf_fn_local"));
        let other = BuildId::new(&[1, 2, 3, 4]);
        let other_hex = other.to_string();
        let wrong = root
            .join(".build-id")
            .join(&other_hex[..2])
            .join(format!("{}.debug", &other_hex[2..]));
        fs::create_dir_all(wrong.parent().unwrap()).unwrap();
        fs::copy(&by_id, &wrong).unwrap();
        assert!(
            debug_symbols(&prog, Some(&other), None, &root).is_none(),
            "a debug file of another build-id was used"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
