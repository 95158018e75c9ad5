//! Test helpers: the ELF fixtures built from `tests/fixtures/elf_*.c`, and independent views
//! of them (binutils' `readelf`, raw file bytes) to check the ELF layer against.

use std::{path::PathBuf, process::Command};

/// The fixtures the ELF tests use, one per kind of file.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fixture {
    /// `elf_target.c` as a position-independent executable.
    Pie,
    /// `elf_target.c` as a non-PIE (`ET_EXEC`) executable.
    NoPie,
    /// `elf_target.c` stripped (`-s`), its globals exported (`-rdynamic`): only `.dynsym`.
    Stripped,
    /// `elf_lib.c` as a shared library.
    SharedLib,
}

/// Marker constants, as in `tests/fixtures/elf_markers.h`.
pub(crate) const ALPHA_MARK: u32 = 0x5EC7_A001;
pub(crate) const BETA_MARK: u32 = 0x5EC7_B002;
pub(crate) const LOCAL_MARK: u32 = 0x5EC7_C003;
pub(crate) const LIB_MARK: u32 = 0x5EC7_D004;
pub(crate) const CXX_MARK: u32 = 0x5EC7_E005;
pub(crate) const RUST_V0_MARK: u32 = 0x5EC7_F006;
pub(crate) const RUST_LEGACY_MARK: u32 = 0x5EC7_1007;

impl Fixture {
    /// Builds (or reuses) the fixture and returns its path.
    pub(crate) fn path(self) -> PathBuf {
        // `-include` names the header in the flags, so editing it invalidates the cache.
        let common = ["-O1", "-include", "elf_markers.h"];
        let (source, name, extra): (_, _, &[&str]) = match self {
            Self::Pie => ("elf_target.c", "elf_target_pie", &["-pie", "-fPIE"]),
            Self::NoPie => ("elf_target.c", "elf_target_nopie", &["-no-pie", "-fno-pie"]),
            Self::Stripped => ("elf_target.c", "elf_target_stripped", &["-s", "-rdynamic"]),
            Self::SharedLib => ("elf_lib.c", "libelf_lib.so", &["-shared", "-fPIC"]),
        };
        let flags: Vec<&str> = common.iter().chain(extra).copied().collect();
        crate::fixtures::build(source, name, &flags).expect("build ELF fixture")
    }
}

/// A symbol as `readelf -sW` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReadelfSym {
    /// `Value`.
    pub(crate) value: u64,
    /// `Size`.
    pub(crate) size: u64,
    /// `Type` (`FUNC`, `OBJECT`, …).
    pub(crate) kind: String,
    /// `Ndx`: a section number, `UND` or `ABS`.
    pub(crate) section: String,
    /// `Name`, without readelf's version decoration.
    pub(crate) name: String,
}

/// Every symbol of `.symtab` and `.dynsym` according to binutils' `readelf`.
pub(crate) fn readelf_symbols(path: &std::path::Path) -> Vec<ReadelfSym> {
    let out = Command::new("readelf")
        .args(["-sW", "--dyn-syms"])
        .arg(path)
        .output()
        .expect("run readelf (binutils)");
    assert!(out.status.success(), "readelf failed on {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // "   12: 0000000000001177     8 FUNC    LOCAL  DEFAULT   15 elf_fn_local"
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || !f[0].ends_with(':') {
                return None;
            }
            let size = match f[2].strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok()?,
                None => f[2].parse().ok()?,
            };
            Some(ReadelfSym {
                value: u64::from_str_radix(f[1], 16).ok()?,
                size,
                kind: f[3].to_owned(),
                section: f[6].to_owned(),
                name: f[7].split('@').next()?.to_owned(),
            })
        })
        .collect()
}

/// The one `readelf` symbol named `name` (panics if there is none).
pub(crate) fn readelf_symbol(path: &std::path::Path, name: &str) -> ReadelfSym {
    readelf_symbols(path)
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("readelf shows no `{name}` in {}", path.display()))
}

/// The GNU build-id according to `readelf -n`.
pub(crate) fn readelf_build_id(path: &std::path::Path) -> Option<String> {
    let out = Command::new("readelf")
        .arg("-n")
        .arg(path)
        .output()
        .expect("run readelf (binutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_owned))
}

/// True when the `len` file bytes at `offset` contain `mark` as a little-endian immediate.
pub(crate) fn code_has_mark(path: &std::path::Path, offset: u64, len: u64, mark: u32) -> bool {
    let bytes = std::fs::read(path).expect("read fixture");
    let start = usize::try_from(offset).unwrap();
    let end = start + usize::try_from(len).unwrap();
    bytes
        .get(start..end)
        .is_some_and(|code| code.windows(4).any(|w| w == mark.to_le_bytes()))
}

/// A fresh, empty directory for one test's scratch files.
pub(crate) fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("probed-elf-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}
