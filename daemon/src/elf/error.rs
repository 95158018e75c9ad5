//! Why an ELF file could not be loaded.

use std::{io, path::PathBuf};

/// Why an ELF file could not be opened or parsed.
///
/// Messages are lowercase and name the file; the underlying cause, when there is one, is the
/// error's `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// Nothing exists at the path.
    #[error("{path}: no such file")]
    NotFound {
        /// The path that was opened.
        path: PathBuf,
        /// The error `open(2)` returned.
        #[source]
        source: io::Error,
    },
    /// The file exists but could not be opened (permissions, too many open files, …).
    #[error("{path}: cannot open")]
    Open {
        /// The path that was opened.
        path: PathBuf,
        /// The error `open(2)` returned.
        #[source]
        source: io::Error,
    },
    /// Permission denied to a process without CAP_DAC_READ_SEARCH (or CAP_DAC_OVERRIDE):
    /// named, since for root that capability is what is missing (systemd unit, setpriv).
    #[error("{path}: cannot open without CAP_DAC_READ_SEARCH (or read permission)")]
    NoReadCapability {
        /// The path that was opened.
        path: PathBuf,
        /// The error `open(2)` returned.
        #[source]
        source: io::Error,
    },
    /// The path names a directory, a FIFO, a device or a socket.
    #[error("{path}: not a regular file")]
    NotRegularFile {
        /// The path that was opened.
        path: PathBuf,
    },
    /// The file does not start with the ELF magic (a script, a text file, an empty file).
    #[error("{path}: not an ELF file")]
    NotElf {
        /// The path that was opened.
        path: PathBuf,
    },
    /// The file is ELF, but not one probed can attach to or symbolize on this host.
    #[error("{path}: unsupported ELF file ({what})")]
    Unsupported {
        /// The path that was opened.
        path: PathBuf,
        /// What is unsupported, e.g. "32-bit" or "machine 183, expected x86-64".
        what: String,
    },
    /// The file claims to be ELF but its headers or tables are inconsistent.
    #[error("{path}: malformed ELF file")]
    Malformed {
        /// The path that was opened.
        path: PathBuf,
        /// What the parser rejected.
        #[source]
        source: object::read::Error,
    },
    /// Reading the file failed.
    #[error("{path}: read failed")]
    Io {
        /// The path that was opened.
        path: PathBuf,
        /// The error `pread(2)` or `fstat(2)` returned.
        #[source]
        source: io::Error,
    },
    /// The file's size or modification time changed while it was being read (truncated or
    /// rewritten in place), so what was read cannot be trusted.
    #[error("{path}: file changed while it was being read")]
    Changed {
        /// The path that was opened.
        path: PathBuf,
    },
}

impl ElfError {
    /// True when the failure depends on the moment (the file may be readable or stable
    /// later), false when it is a property of the file's content.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::NotFound { .. }
            | Self::Open { .. }
            | Self::NoReadCapability { .. }
            | Self::Io { .. }
            | Self::Changed { .. } => true,
            Self::NotRegularFile { .. }
            | Self::NotElf { .. }
            | Self::Unsupported { .. }
            | Self::Malformed { .. } => false,
        }
    }
}
