//! Where a uprobe goes: a symbol (plus an optional byte offset) or a raw offset → the file
//! offset the kernel wants, checked against the file's symbols and segments.

use std::path::{Path, PathBuf};

use super::{BuildId, ElfError, ElfImage, Symbol, SymbolKind};
use crate::file_id::FileId;

/// How many names a "symbol not found" error suggests.
const SUGGESTIONS: usize = 5;

/// A checked uprobe attach point.
#[derive(Clone, Debug)]
pub struct AttachTarget {
    /// The file as given.
    pub path: PathBuf,
    /// The (device, inode) of the file that was read: the kernel keys uprobes on the inode.
    pub id: FileId,
    /// The offset in the file of the instruction to probe (what `perf_event_open` and aya's
    /// `UProbe::attach` take as the offset).
    pub file_offset: u64,
    /// The symbol the probe lands in, if any (a raw offset may land outside every symbol).
    pub symbol: Option<Symbol>,
    /// Bytes from the start of `symbol` to the probe.
    pub offset_in_symbol: u64,
    /// The file's GNU build-id, for logs.
    pub build_id: Option<BuildId>,
}

/// Why an attach point could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The file could not be loaded.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// No symbol has this name.
    #[error("{path}: symbol `{name}` not found{}", did_you_mean(.suggestions))]
    SymbolNotFound {
        /// The file searched.
        path: PathBuf,
        /// The name asked for.
        name: String,
        /// Similar function names in the file, best first.
        suggestions: Vec<String>,
    },
    /// The name is a data symbol.
    #[error("{path}: `{name}` is a data symbol, not a function")]
    NotAFunction {
        /// The file searched.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// `symbol+plus` points past the symbol's end.
    #[error("{path}: offset {plus} is outside `{name}` ({size} bytes)")]
    OutsideSymbol {
        /// The file searched.
        path: PathBuf,
        /// The symbol's name.
        name: String,
        /// The offset asked for.
        plus: u64,
        /// The symbol's size.
        size: u64,
    },
    /// The address is not in the file-backed part of an executable `PT_LOAD` segment, so no
    /// instruction there can be probed.
    #[error("{path}: address {vaddr:#x} is not in an executable segment")]
    NotExecutable {
        /// The file searched.
        path: PathBuf,
        /// The virtual address of the attach point.
        vaddr: u64,
    },
    /// A raw file offset is not in an executable segment.
    #[error("{path}: file offset {offset:#x} is not in an executable segment")]
    OffsetNotExecutable {
        /// The file searched.
        path: PathBuf,
        /// The offset asked for.
        offset: u64,
    },
}

fn did_you_mean(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", suggestions.join(", "))
    }
}

/// Loads `path` and resolves `symbol+plus` to a file offset (`uprobe:/path:symbol+16`).
pub fn resolve_attach(path: &Path, symbol: &str, plus: u64) -> Result<AttachTarget, AttachError> {
    ElfImage::open(path)?.attach_symbol(symbol, plus)
}

/// Loads `path` and checks a raw file offset (`uprobe:/path:0x1a2b`), naming the symbol it
/// lands in if there is one.
pub fn resolve_attach_offset(path: &Path, file_offset: u64) -> Result<AttachTarget, AttachError> {
    ElfImage::open(path)?.attach_offset(file_offset)
}

impl ElfImage {
    /// Resolves `symbol+plus` in this file. See [`SymbolTable::find`](super::SymbolTable::find)
    /// for how names match. `plus` must stay inside the symbol when its size is known.
    /// An indirect function (`STT_GNU_IFUNC`) resolves to its resolver, as in bpftrace.
    pub fn attach_symbol(&self, symbol: &str, plus: u64) -> Result<AttachTarget, AttachError> {
        let path = self.path().to_owned();
        let Some(sym) = self.symbols().find(symbol) else {
            return Err(AttachError::SymbolNotFound {
                suggestions: self.symbols().closest_names(symbol, SUGGESTIONS),
                path,
                name: symbol.to_owned(),
            });
        };
        if sym.kind == SymbolKind::Object {
            return Err(AttachError::NotAFunction {
                path,
                name: symbol.to_owned(),
            });
        }
        self.attach_found(sym, plus)
    }

    /// The attach point `plus` bytes into `sym`, a function symbol of this file (found by
    /// name, or by a wildcard: [`SymbolTable::matching`](super::SymbolTable::matching)).
    pub fn attach_found(&self, sym: &Symbol, plus: u64) -> Result<AttachTarget, AttachError> {
        let path = self.path().to_owned();
        if sym.size != 0 && plus >= sym.size {
            return Err(AttachError::OutsideSymbol {
                path,
                name: sym.name.to_string(),
                plus,
                size: sym.size,
            });
        }
        let vaddr = sym.addr.saturating_add(plus);
        let file_offset = self
            .segments()
            .by_vaddr(vaddr)
            .filter(|seg| seg.is_executable())
            .map(|seg| vaddr - seg.vaddr + seg.offset)
            .ok_or(AttachError::NotExecutable {
                path: path.clone(),
                vaddr,
            })?;
        Ok(AttachTarget {
            path,
            id: self.id(),
            file_offset,
            symbol: Some(sym.clone()),
            offset_in_symbol: plus,
            build_id: self.build_id().cloned(),
        })
    }

    /// Checks that `file_offset` is code in this file and names the symbol it is in.
    pub fn attach_offset(&self, file_offset: u64) -> Result<AttachTarget, AttachError> {
        let vaddr = self
            .segments()
            .by_offset(file_offset)
            .filter(|seg| seg.is_executable())
            .map(|seg| file_offset - seg.offset + seg.vaddr)
            .ok_or_else(|| AttachError::OffsetNotExecutable {
                path: self.path().to_owned(),
                offset: file_offset,
            })?;
        let found = self.symbolize(vaddr);
        Ok(AttachTarget {
            path: self.path().to_owned(),
            id: self.id(),
            file_offset,
            symbol: found.map(|(s, _)| s.clone()),
            offset_in_symbol: found.map_or(0, |(_, off)| off),
            build_id: self.build_id().cloned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::test_support::{
        ALPHA_MARK, BETA_MARK, CXX_MARK, Fixture, LIB_MARK, LOCAL_MARK, RUST_LEGACY_MARK,
        RUST_V0_MARK, code_has_mark, readelf_symbol, scratch_dir,
    };

    /// For PIE, non-PIE, stripped and shared-library files, `symbol → file offset` lands on
    /// the bytes of that function's code (found by its marker constant), and the symbol's
    /// address and size are the ones readelf shows.
    #[test]
    fn symbol_offsets_point_at_the_function_code() {
        let exe = [
            ("elf_fn_alpha", "elf_fn_alpha", ALPHA_MARK),
            ("elf_fn_beta", "elf_fn_beta", BETA_MARK),
            ("elf_fn_local", "elf_fn_local", LOCAL_MARK),
        ];
        let lib = [
            ("elf_lib_fn", "elf_lib_fn", LIB_MARK),
            ("ns::Widget::poke", "_ZN2ns6Widget4pokeEi", CXX_MARK),
            (
                "mycrate::module::func",
                "_RNvNtCs1234_7mycrate6module4func",
                RUST_V0_MARK,
            ),
            (
                "mycrate::module::legacy",
                "_ZN7mycrate6module6legacy17h0123456789abcdefE",
                RUST_LEGACY_MARK,
            ),
        ];
        // (name asked for, raw symbol name, marker in its code)
        type Func<'a> = (&'a str, &'a str, u32);
        let cases: [(Fixture, &[Func]); 4] = [
            (Fixture::Pie, &exe),
            (Fixture::NoPie, &exe),
            (Fixture::Stripped, &exe[..2]),
            (Fixture::SharedLib, &lib),
        ];
        for (fixture, funcs) in cases {
            let path = fixture.path();
            for &(query, raw, mark) in funcs {
                let target = resolve_attach(&path, query, 0).unwrap();
                let sym = target.symbol.as_ref().unwrap();
                let want = readelf_symbol(&path, raw);
                assert_eq!(
                    (&*sym.name, sym.addr, sym.size),
                    (raw, want.value, want.size)
                );
                assert!(
                    code_has_mark(&path, target.file_offset, sym.size, mark),
                    "{fixture:?} {query}: no marker at file offset {:#x}",
                    target.file_offset
                );
                assert_eq!(target.id, FileId::of_path(&path).unwrap());
            }
        }
    }

    /// A data symbol in the RW segment translates through that segment's own delta, which
    /// differs from .text's: text-based (or section-based) math would read the wrong bytes.
    #[test]
    fn data_symbols_use_their_own_segment() {
        for (fixture, name, text) in [
            (
                Fixture::Pie,
                "elf_data_marker",
                &b"PROBED-ELF-DATA-MARKER"[..],
            ),
            (Fixture::NoPie, "elf_data_marker", b"PROBED-ELF-DATA-MARKER"),
            (Fixture::SharedLib, "elf_lib_data", b"PROBED-ELF-LIB-DATA"),
        ] {
            let path = fixture.path();
            let image = ElfImage::open(&path).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let data = image.symbols().find(name).unwrap();
            let code = image.symbols().iter().find(|s| s.kind.is_code()).unwrap();
            let delta = |vaddr| {
                let seg = image.segments().by_vaddr(vaddr).unwrap();
                seg.vaddr.wrapping_sub(seg.offset)
            };
            assert_ne!(
                delta(data.addr),
                delta(code.addr),
                "{fixture:?}: layout lost its teeth"
            );
            let off = image.vaddr_to_file_offset(data.addr).unwrap() as usize;
            assert_eq!(&bytes[off..off + text.len()], text, "{fixture:?}");
            let wrong = data.addr.wrapping_sub(delta(code.addr)) as usize;
            assert_ne!(bytes.get(wrong..wrong + text.len()), Some(text));
            assert_eq!(image.file_offset_to_vaddr(off as u64), Some(data.addr));
            let err = image.attach_symbol(name, 0).unwrap_err();
            assert!(matches!(err, AttachError::NotAFunction { .. }), "{err:?}");
        }
    }

    /// `symbol+N` moves the offset by N inside the symbol and is refused at or past its end.
    #[test]
    fn plus_offset_stays_inside_the_symbol() {
        let image = ElfImage::open(&Fixture::NoPie.path()).unwrap();
        let base = image.attach_symbol("elf_fn_beta", 0).unwrap();
        let size = base.symbol.as_ref().unwrap().size;
        let last = image.attach_symbol("elf_fn_beta", size - 1).unwrap();
        assert_eq!(last.file_offset, base.file_offset + size - 1);
        assert_eq!(last.offset_in_symbol, size - 1);
        let err = image.attach_symbol("elf_fn_beta", size).unwrap_err();
        assert!(matches!(err, AttachError::OutsideSymbol { .. }), "{err:?}");
    }

    /// An unknown name is refused with the closest function names suggested.
    #[test]
    fn unknown_symbol_suggests_close_names() {
        let err = resolve_attach(&Fixture::Pie.path(), "elf_fn_alpah", 0).unwrap_err();
        let AttachError::SymbolNotFound { suggestions, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(
            suggestions.first().map(String::as_str),
            Some("elf_fn_alpha")
        );
        assert!(
            err.to_string().contains("did you mean elf_fn_alpha"),
            "{err}"
        );
    }

    /// A raw file offset inside a function names that function; one outside code is refused.
    #[test]
    fn raw_offsets_are_checked_and_named() {
        let path = Fixture::Pie.path();
        let alpha = resolve_attach(&path, "elf_fn_alpha", 0).unwrap();
        let target = resolve_attach_offset(&path, alpha.file_offset + 2).unwrap();
        assert_eq!(&*target.symbol.unwrap().name, "elf_fn_alpha");
        assert_eq!(target.offset_in_symbol, 2);
        let err = resolve_attach_offset(&path, 0).unwrap_err();
        assert!(
            matches!(err, AttachError::OffsetNotExecutable { .. }),
            "{err:?}"
        );
    }

    /// Loading errors come through with their own message.
    #[test]
    fn load_errors_pass_through() {
        let dir = scratch_dir("attach-not-elf");
        let script = dir.join("tool");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let err = resolve_attach(&script, "main", 0).unwrap_err();
        assert!(
            matches!(err, AttachError::Elf(ElfError::NotElf { .. })),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("{}: not an ELF file", script.display())
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
