//! Separate debug files: the full symbol table of a distribution binary that ships only
//! `.dynsym` (Debian's `-dbg`/`-dbgsym` packages, Fedora's debuginfo), found the way gdb
//! finds it and checked to belong to the binary:
//!
//! 1. by build-id: `/usr/lib/debug/.build-id/ab/cdef….debug`, accepted if its own build-id
//!    is the binary's;
//! 2. by `.gnu_debuglink` (a file name and the CRC-32 of the debug file): next to the
//!    binary, in `.debug/` next to it, and under `/usr/lib/debug/<the binary's dir>/`,
//!    accepted if its CRC matches (and its build-id, when both files have one).
//!
//! Only symbols are taken from it: the debug file's addresses are the binary's own (it is
//! the same link, with the code sections emptied), so they merge into the binary's table.

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use super::BuildId;

/// Where distributions install debug files.
pub const DEBUG_ROOT: &str = "/usr/lib/debug";

/// The `.gnu_debuglink` section: the debug file's name and its CRC-32.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugLink {
    /// File name (no directory).
    pub name: String,
    /// CRC-32 (IEEE, as zlib) of the whole debug file.
    pub crc: u32,
}

impl DebugLink {
    /// Parses the section: a NUL-terminated name, padding to 4 bytes, a little-endian u32.
    pub fn parse(data: &[u8]) -> Option<Self> {
        let end = data.iter().position(|&b| b == 0)?;
        let name = std::str::from_utf8(&data[..end]).ok()?;
        // A name with a slash would leave the directories searched.
        if name.is_empty() || name.contains('/') {
            return None;
        }
        let crc_at = (end + 1).next_multiple_of(4);
        let crc = u32::from_le_bytes(data.get(crc_at..crc_at + 4)?.try_into().ok()?);
        Some(Self {
            name: name.to_owned(),
            crc,
        })
    }
}

/// How a candidate must prove it is the binary's debug file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Its build-id equals the binary's.
    BuildId,
    /// Its CRC-32 equals the debug link's (and its build-id the binary's, if both have one).
    Crc(u32),
}

/// The places to look for the debug file of the binary at `path`, best first, with the
/// check each must pass; `root` is [`DEBUG_ROOT`] outside tests.
pub fn candidates(
    path: &Path,
    build_id: Option<&BuildId>,
    link: Option<&DebugLink>,
    root: &Path,
) -> Vec<(PathBuf, Check)> {
    let mut out = Vec::new();
    if let Some(id) = build_id
        && id.as_bytes().len() >= 2
    {
        let hex = id.to_string();
        out.push((
            root.join(".build-id")
                .join(&hex[..2])
                .join(format!("{}.debug", &hex[2..])),
            Check::BuildId,
        ));
    }
    if let Some(link) = link
        && let Some(dir) = path.parent()
    {
        let check = Check::Crc(link.crc);
        out.push((dir.join(&link.name), check));
        out.push((dir.join(".debug").join(&link.name), check));
        let relative = dir.strip_prefix("/").unwrap_or(dir);
        out.push((root.join(relative).join(&link.name), check));
    }
    // The binary itself can be its own debuglink target (same dir, same name): never that.
    out.retain(|(p, _)| p != path);
    out
}

/// CRC-32 of a whole file.
pub fn file_crc(path: &Path) -> std::io::Result<u32> {
    let mut file = File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The section as objcopy writes it: name, NUL, padding to 4, CRC little-endian.
    #[test]
    fn parses_debuglink() {
        let mut data = b"libc.so.6.debug\0".to_vec();
        data.extend(0x1234_5678u32.to_le_bytes());
        assert_eq!(
            DebugLink::parse(&data),
            Some(DebugLink {
                name: "libc.so.6.debug".into(),
                crc: 0x1234_5678
            })
        );
        let mut odd = b"ab\0\0".to_vec();
        odd.extend(7u32.to_le_bytes());
        assert_eq!(DebugLink::parse(&odd).map(|l| l.crc), Some(7));
        assert_eq!(DebugLink::parse(b"../x\0\0\0\0\0\0\0\0"), None);
        assert_eq!(DebugLink::parse(b"short\0"), None);
    }

    /// gdb's order: build-id first, then next to the binary, .debug/, the debug root.
    #[test]
    fn candidates_in_gdb_order() {
        let id = BuildId::new(&[0xab, 0xcd, 0xef]);
        let link = DebugLink {
            name: "x.debug".into(),
            crc: 1,
        };
        let got = candidates(
            Path::new("/usr/lib/x"),
            Some(&id),
            Some(&link),
            Path::new("/usr/lib/debug"),
        );
        let paths: Vec<_> = got.iter().map(|(p, _)| p.to_str().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "/usr/lib/debug/.build-id/ab/cdef.debug",
                "/usr/lib/x.debug",
                "/usr/lib/.debug/x.debug",
                "/usr/lib/debug/usr/lib/x.debug",
            ]
        );
        assert_eq!(got[0].1, Check::BuildId);
        assert_eq!(got[1].1, Check::Crc(1));
    }
}
