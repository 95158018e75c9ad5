//! One consumer thread's output (`--consumers`, shards.rs): its lines kept, then written
//! whole into the output the threads share.

use std::{
    io::{self, Write},
    sync::{Arc, Mutex, PoisonError},
};

/// Bytes a shard's output keeps before writing its whole lines without a flush.
const KEEP_AT_MOST: usize = 1 << 20;

/// One shard's output: its lines kept until a flush, then written whole under the shared
/// destination's lock (a line is never split between shards).
pub struct ChunkOut<W: Write> {
    buf: Vec<u8>,
    out: Arc<Mutex<W>>,
}

impl<W: Write> ChunkOut<W> {
    /// A shard's output onto `out`.
    pub fn new(out: Arc<Mutex<W>>) -> Self {
        Self {
            buf: Vec::new(),
            out,
        }
    }
}

impl<W: Write> ChunkOut<W> {
    /// Writes the whole lines kept so far (a long drain between flushes stays bounded).
    #[cold]
    #[inline(never)]
    fn write_lines(&mut self) -> io::Result<()> {
        let Some(end) = self.buf.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let written = out.write_all(&self.buf[..=end]);
        self.buf.drain(..=end);
        written
    }
}

impl<W: Write> Write for ChunkOut<W> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    // The formatters write a line in many small pieces, most of a length known where they
    // are written: inlined there, each is a few stores. Out of line, each was a call to
    // `memmove`, the top entry (11%) of a live JSON run's profile. The rare write of the
    // kept lines stays out of line.
    #[inline(always)]
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= KEEP_AT_MOST {
            return self.write_lines();
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.buf.is_empty() {
            let written = out.write_all(&self.buf);
            self.buf.clear();
            written?;
        }
        out.flush()
    }
}
