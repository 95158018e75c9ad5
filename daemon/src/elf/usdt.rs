//! USDT probes (SystemTap SDT notes): the `NT_STAPSDT` notes of `.note.stapsdt`, as
//! `readelf -n` and `bpftrace -l 'usdt:…'` show them.
//!
//! Each note's descriptor is three addresses — the probe's `pc`, the link-time address of
//! `.stapsdt.base`, the semaphore (0 for none) — then `provider\0name\0args\0`. If the file
//! was prelinked (or otherwise moved) after the note was written, its `.stapsdt.base`
//! section's address differs from the note's: `pc` and the semaphore move by the same delta
//! (systemtap's and bcc's rule). Addresses are virtual addresses of the file's own layout;
//! a file offset for a uprobe comes from the `PT_LOAD` segments like any symbol's.

use std::path::Path;

use object::{Object as _, ObjectSection as _, ReadCache};

use super::ElfError;

/// `NT_STAPSDT`.
const NT_STAPSDT: u32 = 3;
/// The note owner.
const OWNER: &[u8] = b"stapsdt";

/// One USDT probe point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsdtNote {
    /// `python` in `python:function__entry`.
    pub provider: String,
    /// `function__entry`.
    pub name: String,
    /// The probed instruction's virtual address, adjusted for `.stapsdt.base`.
    pub pc: u64,
    /// The semaphore's virtual address (adjusted), if the probe has one: a counter that the
    /// program checks before computing the probe's arguments, non-zero while traced.
    pub semaphore: Option<u64>,
    /// The argument specs as written by the assembler: `8@%rbp 8@%r12 -4@%eax`.
    pub args: String,
}

/// Why the notes of a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UsdtError {
    /// The file could not be opened.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// The ELF structure is broken.
    #[error("{path}: malformed ELF file")]
    Malformed {
        /// The file.
        path: std::path::PathBuf,
        /// What object said.
        #[source]
        source: object::read::Error,
    },
}

/// The USDT probes of the ELF file at `path`, in note order (none if it has no
/// `.note.stapsdt`).
pub fn read_notes(path: &Path) -> Result<Vec<UsdtNote>, UsdtError> {
    let (file, _meta) = super::reader::open(path)?;
    let cache = ReadCache::new(file);
    let malformed = |source| UsdtError::Malformed {
        path: path.to_owned(),
        source,
    };
    let elf = object::File::parse(&cache).map_err(malformed)?;
    let Some(notes) = elf.section_by_name(".note.stapsdt") else {
        return Ok(Vec::new());
    };
    let data = notes.data().map_err(malformed)?;
    let base = elf.section_by_name(".stapsdt.base").map(|s| s.address());
    Ok(parse_notes(data, base))
}

/// The `NT_STAPSDT` notes in a note section's bytes; `base` is the address of the file's
/// `.stapsdt.base` section. Malformed notes end the walk (what was read before stands).
pub fn parse_notes(data: &[u8], base: Option<u64>) -> Vec<UsdtNote> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
    };
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(namesz), Some(descsz), Some(kind)) =
        (u32_at(at), u32_at(at + 4), u32_at(at + 8))
    {
        let (namesz, descsz) = (namesz as usize, descsz as usize);
        let name_at = at + 12;
        let Some(desc_at) = align4(name_at + namesz) else {
            break;
        };
        let Some(next) = align4(desc_at + descsz) else {
            break;
        };
        let (Some(owner), Some(desc)) = (
            data.get(name_at..name_at + namesz),
            data.get(desc_at..desc_at + descsz),
        ) else {
            break;
        };
        if kind == NT_STAPSDT
            && owner.strip_suffix(b"\0").unwrap_or(owner) == OWNER
            && let Some(note) = parse_desc(desc, base)
        {
            out.push(note);
        }
        at = next;
    }
    out
}

/// One note's descriptor.
fn parse_desc(desc: &[u8], base: Option<u64>) -> Option<UsdtNote> {
    let u64_at = |at: usize| Some(u64::from_le_bytes(desc.get(at..at + 8)?.try_into().ok()?));
    let (pc, note_base, semaphore) = (u64_at(0)?, u64_at(8)?, u64_at(16)?);
    let mut strings = desc.get(24..)?.split(|&b| b == 0);
    let mut next = || {
        strings
            .next()
            .map(|s| String::from_utf8_lossy(s).into_owned())
    };
    let (provider, name, args) = (next()?, next()?, next().unwrap_or_default());
    // Moved since the note was written (prelink): everything moved by the same amount.
    let delta = base.map_or(0, |b| b.wrapping_sub(note_base));
    Some(UsdtNote {
        provider,
        name,
        pc: pc.wrapping_add(delta),
        semaphore: (semaphore != 0).then(|| semaphore.wrapping_add(delta)),
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One NT_STAPSDT note as gcc's `<sys/sdt.h>` emits it.
    fn note(pc: u64, base: u64, sem: u64, provider: &str, name: &str, args: &str) -> Vec<u8> {
        let mut desc = Vec::new();
        for v in [pc, base, sem] {
            desc.extend(v.to_le_bytes());
        }
        for s in [provider, name, args] {
            desc.extend(s.as_bytes());
            desc.push(0);
        }
        let mut out = Vec::new();
        out.extend(8u32.to_le_bytes());
        out.extend((desc.len() as u32).to_le_bytes());
        out.extend(NT_STAPSDT.to_le_bytes());
        out.extend(b"stapsdt\0");
        out.extend(&desc);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    /// Crafted notes: fields read back, the `.stapsdt.base` delta applied to pc and
    /// semaphore (not to a missing semaphore), other note kinds skipped, a cut note ends the
    /// walk without a panic.
    #[test]
    fn crafted_notes() {
        let mut data = note(
            0x1000,
            0x5000,
            0x9000,
            "prov",
            "first",
            "-4@%eax 8@-8(%rbp)",
        );
        // A GNU build-id note in between is not a USDT probe.
        data.extend(4u32.to_le_bytes());
        data.extend(4u32.to_le_bytes());
        data.extend(3u32.to_le_bytes());
        data.extend(b"GNU\0abcd");
        data.extend(note(0x2000, 0x5000, 0, "prov", "second", ""));
        let notes = parse_notes(&data, Some(0x5100));
        assert_eq!(
            notes,
            [
                UsdtNote {
                    provider: "prov".into(),
                    name: "first".into(),
                    pc: 0x1100,
                    semaphore: Some(0x9100),
                    args: "-4@%eax 8@-8(%rbp)".into()
                },
                UsdtNote {
                    provider: "prov".into(),
                    name: "second".into(),
                    pc: 0x2100,
                    semaphore: None,
                    args: String::new()
                }
            ]
        );
        assert_eq!(parse_notes(&data, None)[0].pc, 0x1000, "no base section");
        for cut in 0..data.len() {
            assert!(parse_notes(&data[..cut], Some(0x5000)).len() <= 2);
        }
    }

    /// The (provider, name, args) of every USDT note of `path`, as `readelf -n` prints them.
    fn readelf_notes(path: &Path) -> Vec<(String, String, String)> {
        let out = std::process::Command::new("readelf")
            .arg("-n")
            .arg(path)
            .output()
            .expect("run readelf (binutils)");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut notes = Vec::new();
        let mut fields: Vec<String> = Vec::new();
        for line in text.lines().map(str::trim) {
            for key in ["Provider: ", "Name: ", "Arguments: "] {
                if let Some(v) = line.strip_prefix(key) {
                    fields.push(v.to_owned());
                }
            }
            if line.starts_with("Arguments:") {
                notes.push((fields[0].clone(), fields[1].clone(), fields[2].clone()));
                fields.clear();
            }
        }
        notes
    }

    /// Debian's python3.11 carries 8 probes (readelf and `bpftrace -l` agree), all with
    /// semaphores; names and args are readelf's, `function__entry`'s are `8@%rbp 8@%r12
    /// -4@%eax`, and every pc lies in an executable segment.
    #[test]
    fn python311() {
        let path = Path::new("/usr/bin/python3.11");
        if !path.exists() {
            eprintln!("no /usr/bin/python3.11 here; skipped");
            return;
        }
        let notes = read_notes(path).unwrap();
        let ours: Vec<(String, String, String)> = notes
            .iter()
            .map(|n| (n.provider.clone(), n.name.clone(), n.args.clone()))
            .collect();
        assert_eq!(ours, readelf_notes(path));
        assert_eq!(notes.len(), 8, "{notes:#?}");
        assert!(
            notes
                .iter()
                .all(|n| n.provider == "python" && n.semaphore.is_some())
        );
        let entry = notes.iter().find(|n| n.name == "function__entry").unwrap();
        assert_eq!(entry.args, "8@%rbp 8@%r12 -4@%eax");
        let image = super::super::ElfImage::open(path).unwrap();
        for n in &notes {
            let seg = image.segments().by_vaddr(n.pc).unwrap();
            assert!(seg.is_executable(), "{n:?}");
        }
        // The file's own numbers, from readelf (base section unmoved: pc as written).
        let gc = notes.iter().find(|n| n.name == "gc__start").unwrap();
        assert_eq!(gc.args, "-4@112(%rsp)");
    }
}
