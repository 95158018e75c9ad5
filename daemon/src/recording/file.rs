//! The recording file: its frames, the writer a live run appends them with, and the reader.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    sync::Mutex,
};

use probed_common::ProbeStats;
use serde::{Deserialize, Serialize};

use crate::resolve::ProcKey;

/// The file's first bytes.
const MAGIC: &[u8] = b"probed-recording\n";
/// Bumped whenever a frame's layout or a ring record's layout changes: a recording is only
/// replayed by the probed that can decode its ring items.
pub const VERSION: u32 = 1;

/// What the run was: enough to rebuild its probe table and its pipeline's settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    /// [`VERSION`] of the writer.
    pub version: u32,
    /// The SPECs as given.
    pub specs: Vec<String>,
    /// `--pid`.
    pub pid: Option<u32>,
    /// `--stack` mode when stacks were captured.
    pub stack_mode: Option<crate::unwind::StackMode>,
    /// The change tracker's hooks (lock mode's hits carry their mappings).
    pub tracker: crate::track::TrackerMode,
    /// The probes that were attached (a wildcard's refused matches are not).
    pub probes: Vec<RecordedProbe>,
}

/// One attached probe.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordedProbe {
    /// Its id (the BPF cookie in its hits).
    pub id: u32,
    /// Its SPEC text (a wildcard's match names the function).
    pub spec: String,
    /// The file it attached to: device and inode.
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
}

/// A frame's kind byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// JSON [`Header`].
    Header = 1,
    /// A ring buffer item, as BPF wrote it.
    Item = 2,
    /// The consumer ended a batch (`Pipeline::end_batch`).
    BatchEnd = 3,
    /// A maps read: pid u32, generation u64, status u8 (0 text, 1 gone, 2 error), then the
    /// text or the error's message.
    Maps = 4,
    /// A sequence read (`SeqSource::try_begin`): pid, generation, u8 present, u64 value.
    SeqBegin = 5,
    /// A sequence re-check (`SeqSource::retry`): pid, generation, u8 moved.
    SeqRetry = 6,
    /// A running process tracked at start: pid, generation.
    Track = 7,
    /// A probe's final BPF counters: id u32, hits, lost, rate_limited, filtered,
    /// self_excluded, counted (u64 each).
    Stats = 8,
}

/// A maps read's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapsResult {
    /// The text.
    Text(Vec<u8>),
    /// The process was gone.
    Gone,
    /// Another error, by its message.
    Error(String),
}

/// One frame, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// See [`Kind::Header`].
    Header(Header),
    /// See [`Kind::Item`].
    Item(Vec<u8>),
    /// See [`Kind::BatchEnd`].
    BatchEnd,
    /// See [`Kind::Maps`].
    Maps(ProcKey, MapsResult),
    /// See [`Kind::SeqBegin`].
    SeqBegin(ProcKey, Option<u64>),
    /// See [`Kind::SeqRetry`].
    SeqRetry(ProcKey, bool),
    /// See [`Kind::Track`].
    Track(ProcKey),
    /// See [`Kind::Stats`].
    Stats(u32, ProbeStats),
}

/// Why a recording cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The file could not be created, written or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The recording.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the magic line.
    #[error("{} is not a probed recording", path.display())]
    NotARecording {
        /// The file.
        path: PathBuf,
    },
    /// Written by another probed version.
    #[error("{} is a version {found} recording; this probed replays version {VERSION}", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// A frame is cut short or does not decode.
    #[error("{} is damaged at byte {offset}: {what}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Where the bad frame starts.
        offset: usize,
        /// What is wrong.
        what: String,
    },
}

/// Appends frames to a recording. Shared by the consumer loop and the resolver's seams (one
/// thread uses it at a time in `probed trace`; the mutex keeps it correct if not). The first
/// write error is kept and every later frame dropped: [`Recorder::finish`] reports it.
pub struct Recorder {
    path: PathBuf,
    out: Mutex<(BufWriter<File>, Option<io::Error>)>,
}

impl Recorder {
    /// Creates `path` and writes the magic line and `header`.
    pub fn create(path: &Path, header: &Header) -> Result<Self, RecordingError> {
        let io_err = |source| RecordingError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io_err)?);
        file.write_all(MAGIC).map_err(io_err)?;
        let this = Self {
            path: path.to_owned(),
            out: Mutex::new((file, None)),
        };
        let json = serde_json::to_vec(header).map_err(|e| io_err(io::Error::other(e)))?;
        this.frame(Kind::Header, &[&json]);
        Ok(this)
    }

    fn frame(&self, kind: Kind, parts: &[&[u8]]) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if out.1.is_some() {
            return;
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut result = out.0.write_all(&[kind as u8]);
        if result.is_ok() {
            result = out.0.write_all(&(len as u32).to_le_bytes());
        }
        for part in parts {
            if result.is_ok() {
                result = out.0.write_all(part);
            }
        }
        if let Err(err) = result {
            out.1 = Some(err);
        }
    }

    /// A ring buffer item.
    pub fn item(&self, bytes: &[u8]) {
        self.frame(Kind::Item, &[bytes]);
    }

    /// The end of a consumer batch.
    pub fn batch_end(&self) {
        self.frame(Kind::BatchEnd, &[]);
    }

    /// A maps read and its result.
    pub fn maps(&self, proc: ProcKey, result: &Result<&[u8], MapsFailure<'_>>) {
        let key = proc_bytes(proc);
        match result {
            Ok(text) => self.frame(Kind::Maps, &[&key, &[0], text]),
            Err(MapsFailure::Gone) => self.frame(Kind::Maps, &[&key, &[1]]),
            Err(MapsFailure::Error(msg)) => self.frame(Kind::Maps, &[&key, &[2], msg.as_bytes()]),
        }
    }

    /// A sequence read.
    pub fn seq_begin(&self, proc: ProcKey, value: Option<u64>) {
        let v = value.unwrap_or(0).to_le_bytes();
        self.frame(
            Kind::SeqBegin,
            &[&proc_bytes(proc), &[value.is_some() as u8], &v],
        );
    }

    /// A sequence re-check.
    pub fn seq_retry(&self, proc: ProcKey, moved: bool) {
        self.frame(Kind::SeqRetry, &[&proc_bytes(proc), &[moved as u8]]);
    }

    /// A running process tracked at start.
    pub fn track(&self, proc: ProcKey) {
        self.frame(Kind::Track, &[&proc_bytes(proc)]);
    }

    /// A probe's final counters.
    pub fn stats(&self, id: u32, s: &ProbeStats) {
        let mut b = Vec::with_capacity(52);
        b.extend_from_slice(&id.to_le_bytes());
        for v in [
            s.hits,
            s.lost,
            s.rate_limited,
            s.filtered,
            s.self_excluded,
            s.counted,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        self.frame(Kind::Stats, &[&b]);
    }

    /// Flushes the file; the first error of the run, if any.
    pub fn finish(&self) -> Result<(), RecordingError> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let result = match out.1.take() {
            Some(err) => Err(err),
            None => out.0.flush(),
        };
        result.map_err(|source| RecordingError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// A failed maps read, as recorded.
pub enum MapsFailure<'a> {
    /// The process was gone.
    Gone,
    /// Any other error, by its message.
    Error(&'a str),
}

fn proc_bytes(proc: ProcKey) -> [u8; 12] {
    let mut b = [0; 12];
    b[..4].copy_from_slice(&proc.pid.to_le_bytes());
    b[4..].copy_from_slice(&proc.generation.to_le_bytes());
    b
}

/// A whole recording, in memory.
#[derive(Debug)]
pub struct Recording {
    /// Its header.
    pub header: Header,
    /// Every frame after the header, in order.
    pub frames: Vec<Frame>,
}

/// Reads the recording at `path`.
pub fn read(path: &Path) -> Result<Recording, RecordingError> {
    let bytes = std::fs::read(path).map_err(|source| RecordingError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &bytes)
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Recording, RecordingError> {
    let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
        return Err(RecordingError::NotARecording {
            path: path.to_owned(),
        });
    };
    let mut header = None;
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let offset = bytes.len() - rest.len();
        let bad = |what: &str| RecordingError::Malformed {
            path: path.to_owned(),
            offset,
            what: what.to_owned(),
        };
        if rest.len() < 5 {
            return Err(bad("a frame cut short"));
        }
        let kind = rest[0];
        let len = u32::from_le_bytes(rest[1..5].try_into().expect("4 bytes")) as usize;
        let Some(payload) = rest.get(5..5 + len) else {
            return Err(bad("a frame cut short"));
        };
        rest = &rest[5 + len..];
        let frame = decode(kind, payload).ok_or_else(|| bad(&format!("frame kind {kind}")))?;
        match frame {
            Frame::Header(h) if header.is_none() => {
                if h.version != VERSION {
                    return Err(RecordingError::Version {
                        path: path.to_owned(),
                        found: h.version,
                    });
                }
                header = Some(h);
            }
            Frame::Header(_) => return Err(bad("a second header")),
            _ if header.is_none() => return Err(bad("a frame before the header")),
            other => frames.push(other),
        }
    }
    let header = header.ok_or_else(|| RecordingError::Malformed {
        path: path.to_owned(),
        offset: MAGIC.len(),
        what: "no header".into(),
    })?;
    Ok(Recording { header, frames })
}

fn decode(kind: u8, p: &[u8]) -> Option<Frame> {
    let proc = |p: &[u8]| -> Option<ProcKey> {
        Some(ProcKey {
            pid: u32::from_le_bytes(p.get(..4)?.try_into().ok()?),
            generation: u64::from_le_bytes(p.get(4..12)?.try_into().ok()?),
        })
    };
    let u64_at = |p: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(p.get(at..at + 8)?.try_into().ok()?))
    };
    Some(match kind {
        k if k == Kind::Header as u8 => Frame::Header(serde_json::from_slice(p).ok()?),
        k if k == Kind::Item as u8 => Frame::Item(p.to_vec()),
        k if k == Kind::BatchEnd as u8 => Frame::BatchEnd,
        k if k == Kind::Maps as u8 => {
            let result = match *p.get(12)? {
                0 => MapsResult::Text(p[13..].to_vec()),
                1 => MapsResult::Gone,
                2 => MapsResult::Error(String::from_utf8_lossy(&p[13..]).into_owned()),
                _ => return None,
            };
            Frame::Maps(proc(p)?, result)
        }
        k if k == Kind::SeqBegin as u8 => {
            let value = u64_at(p, 13)?;
            Frame::SeqBegin(proc(p)?, (*p.get(12)? == 1).then_some(value))
        }
        k if k == Kind::SeqRetry as u8 => Frame::SeqRetry(proc(p)?, *p.get(12)? == 1),
        k if k == Kind::Track as u8 => Frame::Track(proc(p)?),
        k if k == Kind::Stats as u8 => {
            let id = u32::from_le_bytes(p.get(..4)?.try_into().ok()?);
            Frame::Stats(
                id,
                ProbeStats {
                    hits: u64_at(p, 4)?,
                    lost: u64_at(p, 12)?,
                    rate_limited: u64_at(p, 20)?,
                    filtered: u64_at(p, 28)?,
                    self_excluded: u64_at(p, 36)?,
                    counted: u64_at(p, 44)?,
                },
            )
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            version: VERSION,
            specs: vec!["uprobe:/bin/bash:readline".into()],
            pid: Some(7),
            stack_mode: Some(crate::unwind::StackMode::Auto),
            tracker: crate::track::TrackerMode::Lock,
            probes: vec![RecordedProbe {
                id: 0,
                spec: "uprobe:/bin/bash:readline".into(),
                dev: 2049,
                ino: 42,
            }],
        }
    }

    /// A fresh path in the temporary directory (removed first if a previous run left it).
    fn scratch(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("probed-rec-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn every_frame_reads_back_as_written() {
        let path = scratch("frames");
        let rec = Recorder::create(&path, &header()).unwrap();
        let p = ProcKey {
            pid: 12,
            generation: 1 << 40,
        };
        rec.item(b"\x01\x02\x03");
        rec.maps(p, &Ok(b"55-66 r-xp 0 08:01 42 /bin/bash\n"));
        rec.maps(p, &Err(MapsFailure::Gone));
        rec.maps(p, &Err(MapsFailure::Error("permission denied")));
        rec.seq_begin(p, Some(6));
        rec.seq_begin(p, None);
        rec.seq_retry(p, true);
        rec.track(p);
        rec.batch_end();
        let stats = ProbeStats {
            hits: 5,
            lost: 1,
            rate_limited: 2,
            filtered: 3,
            self_excluded: 4,
            counted: 6,
        };
        rec.stats(3, &stats);
        rec.finish().unwrap();
        let got = read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(got.header, header());
        assert_eq!(
            got.frames,
            vec![
                Frame::Item(vec![1, 2, 3]),
                Frame::Maps(
                    p,
                    MapsResult::Text(b"55-66 r-xp 0 08:01 42 /bin/bash\n".to_vec())
                ),
                Frame::Maps(p, MapsResult::Gone),
                Frame::Maps(p, MapsResult::Error("permission denied".into())),
                Frame::SeqBegin(p, Some(6)),
                Frame::SeqBegin(p, None),
                Frame::SeqRetry(p, true),
                Frame::Track(p),
                Frame::BatchEnd,
                Frame::Stats(3, stats),
            ]
        );
    }

    #[test]
    fn damage_is_said_with_its_offset() {
        let path = scratch("damage");
        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(
            read(&path),
            Err(RecordingError::NotARecording { .. })
        ));
        let rec = Recorder::create(&path, &header()).unwrap();
        rec.item(&[9; 10]);
        rec.finish().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, &bytes).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("damaged at byte") && err.contains("cut short"),
            "{err}"
        );
        let mut old = header();
        old.version = VERSION + 1;
        Recorder::create(&path, &old).unwrap().finish().unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("version 2 recording"), "{err}");
        let _ = std::fs::remove_file(&path);
    }
}
