//! Where the daemon's outputs write: its stdout, or a file rotated by size.
//!
//! Rotation happens only at a line boundary (a hit is one line in either format), so a JSON
//! line is never split across two files: once a file holds at least `rotate_bytes`, the next
//! line starts a new file. Rotated files are `FILE.1` (newest) … `FILE.N`; the oldest beyond
//! `keep` is deleted. Files are opened for appending, so a restarted daemon continues its
//! file instead of truncating it.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    num::{NonZeroU32, NonZeroU64},
    path::{Path, PathBuf},
};

/// An output's destination.
pub enum Sink {
    /// The daemon's standard output.
    Stdout(io::Stdout),
    /// A file, rotated by size.
    File(RotatingFile),
}

impl Sink {
    /// The daemon's standard output.
    pub fn stdout() -> Self {
        Self::Stdout(io::stdout())
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Stdout(out) => out.write(buf),
            Self::File(file) => file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout(out) => out.flush(),
            Self::File(file) => file.flush(),
        }
    }
}

/// A file that starts over as `FILE` (moving the old ones to `FILE.1`…) at a size.
pub struct RotatingFile {
    path: PathBuf,
    out: BufWriter<File>,
    /// Bytes in the current file (including what is still buffered).
    written: u64,
    /// Rotate once the file holds this many bytes; never if unset.
    rotate_bytes: Option<NonZeroU64>,
    /// Rotated files kept.
    keep: NonZeroU32,
    /// Whether the last byte written ended a line (rotation waits for a line boundary).
    at_line_start: bool,
    /// Files rotated so far.
    pub rotations: u64,
}

impl RotatingFile {
    /// Opens (creating or appending to) `path`; its parent directory is created if missing.
    pub fn open(
        path: &Path,
        rotate_bytes: Option<NonZeroU64>,
        keep: NonZeroU32,
    ) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            written,
            rotate_bytes,
            keep,
            at_line_start: true,
            rotations: 0,
        })
    }

    /// The path of rotated file number `n` (1 = newest).
    pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Moves FILE → FILE.1 → … → FILE.keep (dropping the oldest) and opens a new FILE.
    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let keep = self.keep.get();
        match std::fs::remove_file(Self::rotated_path(&self.path, keep)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        for n in (1..keep).rev() {
            match std::fs::rename(
                Self::rotated_path(&self.path, n),
                Self::rotated_path(&self.path, n + 1),
            ) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        std::fs::rename(&self.path, Self::rotated_path(&self.path, 1))?;
        self.out = BufWriter::new(open_append(&self.path)?);
        self.written = 0;
        self.rotations += 1;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.at_line_start
            && !buf.is_empty()
            && self
                .rotate_bytes
                .is_some_and(|limit| self.written >= limit.get())
        {
            self.rotate()?;
        }
        let n = self.out.write(buf)?;
        self.written += n as u64;
        if n > 0 {
            self.at_line_start = buf[n - 1] == b'\n';
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("probed-sink-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Files rotate at line boundaries once they reach the size, keep at most `keep` old
    /// ones, and together hold every line exactly once, in order.
    #[test]
    fn rotates_at_line_boundaries() {
        let dir = temp_dir("rotate");
        let path = dir.join("hits.jsonl");
        let mut file =
            RotatingFile::open(&path, NonZeroU64::new(100), NonZeroU32::new(3).unwrap()).unwrap();
        let lines: Vec<String> = (0..50).map(|i| format!("{{\"n\":{i:04}}}\n")).collect();
        for line in &lines {
            // Written in two pieces, as serializers do: rotation must not split the line.
            let (a, b) = line.split_at(3);
            file.write_all(a.as_bytes()).unwrap();
            file.write_all(b.as_bytes()).unwrap();
        }
        file.flush().unwrap();
        assert!(file.rotations >= 4, "rotations {}", file.rotations);
        assert!(!RotatingFile::rotated_path(&path, 4).exists());
        let mut kept = String::new();
        for n in (1..=3).rev() {
            let text = std::fs::read_to_string(RotatingFile::rotated_path(&path, n)).unwrap();
            // Each file holds whole lines and reached the limit by at most one line.
            assert!(text.ends_with('\n'));
            assert!(text.len() >= 100 && text.len() < 100 + 11, "{}", text.len());
            kept.push_str(&text);
        }
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.len() <= 100 + 11);
        kept.push_str(&current);
        let all = lines.concat();
        assert!(
            all.ends_with(&kept),
            "the kept files are the newest lines, in order"
        );
        assert_eq!(kept.len() % 11, 0);
    }

    /// Without a size there is no rotation, and reopening appends.
    #[test]
    fn appends_without_rotation() {
        let dir = temp_dir("append");
        let path = dir.join("sub/out.txt");
        for _ in 0..2 {
            let mut file = RotatingFile::open(&path, None, NonZeroU32::new(1).unwrap()).unwrap();
            for _ in 0..100 {
                file.write_all(b"line\n").unwrap();
            }
            file.flush().unwrap();
            assert_eq!(file.rotations, 0);
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap().len(), 1000);
    }
}
