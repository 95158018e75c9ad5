//! [`GenCheckedMaps`]: /proc maps of a process, refused when the pid belongs to another
//! generation.

use std::sync::Arc;

use super::Generations;
use crate::resolve::{MapsSource, ProcKey, ProcMaps, ScanError};

/// Reads /proc/PID/maps and then checks that `PROC_GEN` still names the same generation.
///
/// Checking *after* the read is what makes it sound: [`ProcMaps`] reads through a /proc
/// directory descriptor opened first, which fails if the process it named exits. If the
/// generation is still ours after the read, the text came from our process; if the pid had
/// been reused before the open, `PROC_GEN` holds the newcomer's generation (or none yet) and
/// the read is refused as [`ScanError::Gone`].
pub struct GenCheckedMaps {
    /// The /proc reader, without its own start-time check (generations come from BPF).
    inner: ProcMaps,
    /// The BPF generation map.
    generations: Arc<Generations>,
}

impl GenCheckedMaps {
    /// A maps source checking generations against `generations`.
    pub fn new(generations: Arc<Generations>) -> Self {
        Self {
            inner: ProcMaps::without_gen_check(),
            generations,
        }
    }
}

impl MapsSource for GenCheckedMaps {
    fn read_maps(&self, proc: ProcKey, buf: &mut Vec<u8>) -> Result<(), ScanError> {
        self.inner.read_maps(proc, buf)?;
        match self.generations.get(proc.pid) {
            Some(g) if g == proc.generation => Ok(()),
            _ => Err(ScanError::Gone(proc)),
        }
    }
}
