//! Reading a file that may be truncated or rewritten while probed reads it.
//!
//! A memory mapping of a file that shrinks raises SIGBUS on the next access past the new end,
//! which would kill the daemon. A `pread(2)` into a buffer we own returns a short read
//! instead. So ELF parsing goes through [`object::ReadCache`] over positional reads and touches
//! only what it needs (headers, symbol and string tables, notes), never `.text` or debug info;
//! everything kept is copied into owned data, after which the file can go.

use std::{
    fs::{File, Metadata, OpenOptions},
    io,
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt},
    path::Path,
};

use object::ReadCacheOps;

use super::ElfError;

/// Positional reads, so tests can put a file that changes mid-read behind the parser.
pub(crate) trait ReadAt {
    /// Reads up to `buf.len()` bytes at `offset`, like `pread(2)`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }
}

/// Adapts [`ReadAt`] to the seek-and-read interface of [`object::ReadCache`], remembering the
/// first I/O error (the cache only sees `Err(())`) so it can be reported with its cause.
pub(crate) struct PosReader<R> {
    /// The file being read.
    inner: R,
    /// The position the next `read` starts at.
    pos: u64,
    /// The file's length when it was opened: reads never go past it, so a lying header
    /// cannot make the cache allocate more than the file holds.
    len: u64,
    /// The first error a read returned; a short read is recorded as `UnexpectedEof`.
    error: Option<io::Error>,
}

impl<R: ReadAt> PosReader<R> {
    /// A reader over `inner`, whose length at open time was `len`.
    pub(crate) fn new(inner: R, len: u64) -> Self {
        Self {
            inner,
            pos: 0,
            len,
            error: None,
        }
    }

    /// The first I/O error seen, if any.
    pub(crate) fn into_error(self) -> Option<io::Error> {
        self.error
    }

    fn record(&mut self, err: io::Error) {
        self.error.get_or_insert(err);
    }
}

impl<R: ReadAt> ReadCacheOps for PosReader<R> {
    fn len(&mut self) -> Result<u64, ()> {
        Ok(self.len)
    }

    fn seek(&mut self, pos: u64) -> Result<u64, ()> {
        self.pos = pos;
        Ok(pos)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ()> {
        loop {
            match self.inner.read_at(buf, self.pos) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.record(e);
                    return Err(());
                }
            }
        }
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), ()> {
        while !buf.is_empty() {
            match self.read(buf)? {
                0 => {
                    self.record(io::ErrorKind::UnexpectedEof.into());
                    return Err(());
                }
                n => buf = &mut buf[n..],
            }
        }
        Ok(())
    }
}

/// What `fstat` said about a file, enough to notice it was truncated or rewritten in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// `st_size`.
    pub(crate) size: u64,
    /// `st_mtime` and its nanoseconds.
    pub(crate) mtime: (i64, i64),
    /// `st_ctime` and its nanoseconds: also moves on truncate and on metadata changes.
    pub(crate) ctime: (i64, i64),
}

impl Stamp {
    /// The stamp of `meta`.
    pub(crate) fn of(meta: &Metadata) -> Self {
        Self {
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Opens `path` for reading and checks it is a regular file.
///
/// `O_NONBLOCK` keeps `open` from hanging on a FIFO someone passed as a binary; it changes
/// nothing for regular files.
pub(crate) fn open(path: &Path) -> Result<(File, Metadata), ElfError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ElfError::NotFound {
                path: path.to_owned(),
                source,
            },
            io::ErrorKind::PermissionDenied if !crate::privileges::can_read_any_file() => {
                ElfError::NoReadCapability {
                    path: path.to_owned(),
                    source,
                }
            }
            _ => ElfError::Open {
                path: path.to_owned(),
                source,
            },
        })?;
    let meta = file.metadata().map_err(|source| ElfError::Io {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ElfError::NotRegularFile {
            path: path.to_owned(),
        });
    }
    Ok((file, meta))
}

#[cfg(test)]
mod tests {
    use object::ReadRef;

    use super::*;

    /// A read past the end is an error with `UnexpectedEof` recorded, never a panic.
    #[test]
    fn short_read_is_recorded() {
        let bytes: &[u8] = b"0123456789";
        struct Slice<'a>(&'a [u8]);
        impl ReadAt for Slice<'_> {
            fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
                let rest = self.0.get(offset as usize..).unwrap_or(&[]);
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                Ok(n)
            }
        }
        // The length claims 20 bytes but only 10 exist: the file shrank after open.
        let cache = object::ReadCache::new(PosReader::new(Slice(bytes), 20));
        assert_eq!((&cache).read_bytes_at(2, 3).unwrap(), b"234");
        assert!((&cache).read_bytes_at(5, 10).is_err());
        let err = cache
            .into_inner()
            .into_error()
            .expect("an error is recorded");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Opening a directory or a missing path gives the matching error variant.
    #[test]
    fn open_rejects_directories_and_missing_files() {
        let dir = std::env::temp_dir();
        assert!(matches!(open(&dir), Err(ElfError::NotRegularFile { .. })));
        let missing = dir.join("probed-definitely-missing-file");
        assert!(matches!(open(&missing), Err(ElfError::NotFound { .. })));
    }
}
