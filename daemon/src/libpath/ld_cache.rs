//! `/etc/ld.so.cache` in glibc's "new" format (`glibc-ld.so.cache1.1`, the only one glibc
//! writes since 2.32), as `ldconfig -p` reads it.
//!
//! Layout (glibc `sysdeps/generic/dl-cache.h`): a 48-byte header — magic
//! `"glibc-ld.so.cache"`, version `"1.1"`, `nlibs: u32`, `len_strings: u32`, flags, padding,
//! extension offset — then `nlibs` 24-byte entries `{flags: i32, key: u32, value: u32,
//! osversion: u32, hwcap: u64}` whose `key` (soname) and `value` (path) are offsets of
//! NUL-terminated strings from the start of the new-format header. An older file may start
//! with the old `ld.so-1.7.0` table and carry the new one after it (aligned to 8 bytes): the
//! magic is searched for, so both layouts read.

const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
const HEADER_LEN: usize = 48;
const ENTRY_LEN: usize = 24;

/// `FLAG_ELF_LIBC6`: the entry is a glibc ELF library (other values: libc5, a.out…).
const FLAG_ELF_LIBC6: i32 = 0x0003;
/// `FLAG_TYPE_MASK`.
const FLAG_TYPE_MASK: i32 = 0x00ff;
/// `FLAG_REQUIRED_MASK`: the architecture variant bits.
const FLAG_REQUIRED_MASK: i32 = 0xff00;
/// The architecture variant this host's loader accepts (`_DL_CACHE_DEFAULT_ID`).
#[cfg(target_arch = "x86_64")]
const HOST_ARCH: i32 = 0x0300; // FLAG_X8664_LIB64
#[cfg(target_arch = "aarch64")]
const HOST_ARCH: i32 = 0x0a00; // FLAG_AARCH64_LIB64

/// Why a cache could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LdCacheError {
    /// No `glibc-ld.so.cache1.1` header in the file.
    #[error("not a glibc ld.so.cache (no `glibc-ld.so.cache1.1` header)")]
    NoMagic,
    /// The header promises more entries or strings than the file holds.
    #[error("truncated ld.so.cache")]
    Truncated,
}

/// One library the cache knows: `libc.so.6` → `/lib/x86_64-linux-gnu/libc.so.6`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    /// The soname (the name a program's `DT_NEEDED` asks for).
    pub soname: String,
    /// Where the loader finds it.
    pub path: String,
}

/// The host-architecture glibc entries of the cache `bytes`, in the cache's order (which is
/// the loader's preference order among entries of one soname).
pub fn parse(bytes: &[u8]) -> Result<Vec<CacheEntry>, LdCacheError> {
    let start = memchr::memmem::find(bytes, MAGIC).ok_or(LdCacheError::NoMagic)?;
    let data = &bytes[start..];
    let u32_at = |at: usize| -> Result<u32, LdCacheError> {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or(LdCacheError::Truncated)
    };
    let nlibs = u32_at(MAGIC.len())? as usize;
    let entries_end = nlibs
        .checked_mul(ENTRY_LEN)
        .and_then(|n| n.checked_add(HEADER_LEN))
        .ok_or(LdCacheError::Truncated)?;
    if data.len() < entries_end {
        return Err(LdCacheError::Truncated);
    }
    let string = |offset: u32| -> Result<String, LdCacheError> {
        let rest = data.get(offset as usize..).ok_or(LdCacheError::Truncated)?;
        let end = memchr::memchr(0, rest).ok_or(LdCacheError::Truncated)?;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    let mut out = Vec::with_capacity(nlibs);
    for i in 0..nlibs {
        let at = HEADER_LEN + i * ENTRY_LEN;
        let flags = u32_at(at)? as i32;
        if flags & FLAG_TYPE_MASK != FLAG_ELF_LIBC6 || flags & FLAG_REQUIRED_MASK != HOST_ARCH {
            continue;
        }
        out.push(CacheEntry {
            soname: string(u32_at(at + 4)?)?,
            path: string(u32_at(at + 8)?)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A cache of `entries` `(flags, soname, path)` in the new format, as ldconfig writes it
    /// (strings after the entries, offsets from the header's start), after `prefix`.
    pub(crate) fn craft(prefix: &[u8], entries: &[(i32, &str, &str)]) -> Vec<u8> {
        let mut header = MAGIC.to_vec();
        header.extend((entries.len() as u32).to_le_bytes());
        let mut strings = Vec::new();
        let strings_at = HEADER_LEN + entries.len() * ENTRY_LEN;
        let mut table = Vec::new();
        for (flags, soname, path) in entries {
            let key = strings_at + strings.len();
            strings.extend(soname.as_bytes());
            strings.push(0);
            let value = strings_at + strings.len();
            strings.extend(path.as_bytes());
            strings.push(0);
            table.extend(flags.to_le_bytes());
            table.extend((key as u32).to_le_bytes());
            table.extend((value as u32).to_le_bytes());
            table.extend(0u32.to_le_bytes());
            table.extend(0u64.to_le_bytes());
        }
        header.extend((strings.len() as u32).to_le_bytes());
        header.resize(HEADER_LEN, 0);
        let mut out = prefix.to_vec();
        out.extend(header);
        out.extend(table);
        out.extend(strings);
        out
    }

    /// A crafted cache reads back its host-architecture glibc entries in order; entries of
    /// another architecture variant or type are skipped; an old-format prefix is stepped over.
    #[test]
    fn crafted_cache() {
        let host = FLAG_ELF_LIBC6 | HOST_ARCH;
        let entries = [
            (host, "libfoo.so.2", "/opt/a/libfoo.so.2"),
            (FLAG_ELF_LIBC6, "libfoo.so.2", "/usr/lib32/libfoo.so.2"),
            (0x0001 | HOST_ARCH, "libold.so", "/lib/libold.so"),
            (host, "libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
        ];
        for prefix in [&b""[..], b"ld.so-1.7.0\0\0\0\0\0\0\0\0\0"] {
            let got = parse(&craft(prefix, &entries)).unwrap();
            let got: Vec<(&str, &str)> = got
                .iter()
                .map(|e| (e.soname.as_str(), e.path.as_str()))
                .collect();
            assert_eq!(
                got,
                [
                    ("libfoo.so.2", "/opt/a/libfoo.so.2"),
                    ("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6")
                ]
            );
        }
    }

    /// Garbage and truncated caches are errors, never panics.
    #[test]
    fn bad_caches() {
        assert_eq!(parse(b"hello"), Err(LdCacheError::NoMagic));
        let good = craft(b"", &[(FLAG_ELF_LIBC6 | HOST_ARCH, "libx.so.1", "/x")]);
        for cut in [MAGIC.len() + 2, HEADER_LEN + 10, good.len() - 1] {
            assert_eq!(
                parse(&good[..cut]),
                Err(LdCacheError::Truncated),
                "cut at {cut}"
            );
        }
    }

    /// The machine's own cache: the same (soname, path) pairs `ldconfig -p` prints for this
    /// architecture, libc among them.
    #[test]
    fn real_cache_matches_ldconfig() {
        let Ok(bytes) = std::fs::read("/etc/ld.so.cache") else {
            eprintln!("no /etc/ld.so.cache here; skipped");
            return;
        };
        let ours: Vec<(String, String)> = parse(&bytes)
            .unwrap()
            .into_iter()
            .map(|e| (e.soname, e.path))
            .collect();
        assert!(ours.iter().any(|(s, _)| s == "libc.so.6"), "{ours:?}");
        let Ok(out) = std::process::Command::new("/sbin/ldconfig")
            .arg("-p")
            .output()
        else {
            return;
        };
        // `\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6`
        let arch = if cfg!(target_arch = "x86_64") {
            "x86-64"
        } else {
            "AArch64"
        };
        let theirs: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (left, path) = l.trim().split_once(" => ")?;
                let (soname, kind) = left.split_once(" (")?;
                let kind = kind.trim_end_matches(')');
                (kind.starts_with("libc6,") && kind.contains(arch) && !kind.contains("hwcap"))
                    .then(|| (soname.to_owned(), path.to_owned()))
            })
            .collect();
        assert_eq!(ours, theirs);
    }
}
