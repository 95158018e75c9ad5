//! The GNU build-id note: a content hash the linker stores in the file, useful to tell two
//! builds apart in logs and caches whatever their path.

use std::fmt;

use object::{
    LittleEndian, ReadCache, ReadRef,
    elf::{FileHeader64, NT_GNU_BUILD_ID},
    read::elf::{FileHeader, ProgramHeader},
};

/// The bytes of an `NT_GNU_BUILD_ID` note, displayed as lowercase hex.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BuildId(Box<[u8]>);

impl BuildId {
    /// Wraps raw build-id bytes.
    pub fn new(bytes: &[u8]) -> Self {
        Self(bytes.into())
    }

    /// The raw bytes (20 for the usual SHA-1 build-id).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BuildId({self})")
    }
}

/// The build-id from the `PT_NOTE` segments, if any. Best effort: a malformed note is
/// skipped, since the build-id is only informative.
pub(crate) fn find<'data, R: ReadRef<'data>>(
    phdrs: &[<FileHeader64<LittleEndian> as object::read::elf::FileHeader>::ProgramHeader],
    data: R,
) -> Option<BuildId> {
    for ph in phdrs {
        let Ok(Some(mut notes)) = ph.notes(LittleEndian, data) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.n_type(LittleEndian) == NT_GNU_BUILD_ID && note.name() == b"GNU" {
                return Some(BuildId::new(note.desc()));
            }
        }
    }
    None
}

/// The build-id of the 64-bit little-endian ELF file `file` (a downloaded debug file, checked
/// before it is accepted), or `None` if it is not one or has none.
pub(crate) fn of_file(file: &std::fs::File) -> Option<BuildId> {
    let cache = ReadCache::new(file);
    let header = FileHeader64::<LittleEndian>::parse(&cache).ok()?;
    let phdrs = header.program_headers(LittleEndian, &cache).ok()?;
    find(phdrs, &cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build-id prints as contiguous lowercase hex.
    #[test]
    fn displays_as_hex() {
        assert_eq!(BuildId::new(&[0x0a, 0xff, 0x10]).to_string(), "0aff10");
    }
}
