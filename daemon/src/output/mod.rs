//! Output: resolved hits and run summaries, as JSON lines or aligned text for people.

pub mod json;
pub mod record;
pub mod summary;
pub mod text;

use std::io::{self, Write};

pub use record::{Frame, HitRecord, Resolved};
pub use summary::{ProbeSummary, Summary};

/// The output formats of `probed trace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Text,
    /// One JSON object per line.
    Json,
}

/// Writes hits and the final summary in one format.
pub struct Writer<W: Write> {
    /// The destination (stdout for `probed trace`).
    out: W,
    /// The format.
    format: Format,
    /// Whether the text header has been written.
    header_done: bool,
}

impl<W: Write> Writer<W> {
    /// A writer of `format` onto `out`.
    pub fn new(out: W, format: Format) -> Self {
        Self {
            out,
            format,
            header_done: false,
        }
    }

    /// Writes one hit.
    pub fn hit(&mut self, hit: &HitRecord<'_>) -> io::Result<()> {
        match self.format {
            Format::Json => json::write_hit(&mut self.out, hit),
            Format::Text => {
                if !self.header_done {
                    text::write_header(&mut self.out)?;
                    self.header_done = true;
                }
                text::write_hit(&mut self.out, hit)
            }
        }
    }

    /// Writes the summary and flushes.
    pub fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        match self.format {
            Format::Json => json::write_summary(&mut self.out, summary)?,
            Format::Text => text::write_summary(&mut self.out, summary)?,
        }
        self.out.flush()
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
