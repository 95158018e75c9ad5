//! One parse of an ELF file into owned data: the header checks (64-bit little-endian, the
//! host's machine, an executable or shared library), the `PT_LOAD` segments, `.symtab` and
//! `.dynsym`, the build-id and `.gnu_debuglink`. `image.rs` builds an [`ElfImage`] from it.
//!
//! [`ElfImage`]: super::ElfImage

use std::path::Path;

use object::{
    LittleEndian, ReadCache, ReadCacheOps, ReadRef,
    elf::{self, FileHeader64, Sym64},
    read::elf::{FileHeader, ProgramHeader, SectionHeader, Sym},
};

use super::{
    BuildId, ElfError, ElfType, LoadSegment, Segments, Symbol, SymbolBinding, SymbolKind, build_id,
    debug_file,
};

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

/// Why parsing failed, before the path is attached.
pub(super) enum ParseError {
    NotElf,
    Unsupported(String),
    Malformed(object::read::Error),
}

impl ParseError {
    pub(super) fn into_error(self, path: &Path) -> ElfError {
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
pub(super) struct Parsed {
    pub(super) elf_type: ElfType,
    pub(super) segments: Segments,
    /// `.symtab` and `.dynsym`, not merged yet.
    pub(super) symbols: Vec<Symbol>,
    pub(super) build_id: Option<BuildId>,
    /// Whether the file has a `.symtab` (else only `.dynsym`: look for a debug file).
    pub(super) has_symtab: bool,
    /// `.gnu_debuglink`, if present.
    pub(super) debuglink: Option<debug_file::DebugLink>,
}

pub(super) fn parse<R: ReadCacheOps>(cache: &ReadCache<R>) -> Result<Parsed, ParseError> {
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
