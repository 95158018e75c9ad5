//! `probed trace`'s attach: a file's probes of one kind through uprobe_multi links where the
//! kernel has them (6.6+, see `multi_link`), every other probe as `attach_many` does.
//!
//! A multi link is all or nothing: one offset the kernel refuses (ENOTSUPP: an instruction
//! uprobes cannot step over; 23 of libc's 3,706 functions here) fails the whole link. A
//! failed link is split in halves and each half tried again, down to single probes, which
//! go the per-probe way (and are refused there, one by one, with their reason). Links start
//! at [`CHUNK`] offsets so that a refusal costs a few small retries, not re-registering a
//! whole library.

use std::{collections::HashMap, num::NonZeroU32, os::fd::AsRawFd as _};

use super::{
    AttachError, AttachRequest, ENTRY_PROGRAM, RETURN_PROGRAM, Tracer,
    multi_link::{self, MultiPrograms, MultiUprobe},
};
use crate::spec::ProbeKind;

/// Offsets per multi link at most.
const CHUNK: usize = 64;

/// How the multi-link programs stand: not tried yet, loaded, or unavailable (and why).
#[derive(Debug, Default)]
pub enum MultiState {
    /// Not needed yet.
    #[default]
    Untried,
    /// Loaded.
    Ready(MultiPrograms),
    /// This kernel (or object) cannot (the reason is logged): one perf-event uprobe per
    /// probe.
    Unavailable,
}

impl Tracer {
    /// Attaches `reqs` (to all processes or to one pid), a file's untyped probes of one kind
    /// through uprobe_multi links where the kernel has them, the rest one by one; returns the
    /// requests the kernel refused (index in `reqs`, why), like [`Tracer::attach_many`].
    /// Probes attached this way are detached together ([`Tracer::detach_all`]), never one by
    /// one: the daemon, which removes single probes, attaches with `attach_many`.
    pub fn attach_grouped(
        &mut self,
        reqs: &[AttachRequest],
        pid: Option<NonZeroU32>,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<(usize, AttachError)>, AttachError> {
        let groups = multi_groups(reqs);
        // Indexes attached through multi links.
        let mut linked = vec![false; reqs.len()];
        let mut done = 0;
        if !groups.is_empty() && self.multi_ready() {
            for &i in groups.iter().flatten() {
                self.set_probe_settings(&reqs[i], pid)?;
            }
            for members in &groups {
                for chunk in members.chunks(CHUNK) {
                    self.attach_chunk(reqs, chunk, pid, &mut linked);
                    done += chunk.iter().filter(|&&i| linked[i]).count();
                    progress(done);
                }
            }
        }
        let rest: Vec<usize> = (0..reqs.len()).filter(|&i| !linked[i]).collect();
        let rest_reqs: Vec<AttachRequest> = rest.iter().map(|&i| reqs[i].clone()).collect();
        let failed = self.attach_many(&rest_reqs, pid, &|n| progress(done + n))?;
        Ok(failed.into_iter().map(|(j, e)| (rest[j], e)).collect())
    }

    /// Whether the multi-link programs are loaded (loading them on the first call).
    fn multi_ready(&mut self) -> bool {
        if matches!(self.multi, MultiState::Untried) {
            self.multi = match self.load_multi() {
                Ok(programs) => MultiState::Ready(programs),
                Err(why) => {
                    tracing::info!("uprobe_multi links unavailable ({why}): one uprobe per probe");
                    MultiState::Unavailable
                }
            };
        }
        matches!(self.multi, MultiState::Ready(_))
    }

    /// Loads the entry and return programs again for multi links, if the kernel has them
    /// (no program is loaded for nothing on older kernels: under emulation a load takes
    /// seconds).
    fn load_multi(&self) -> Result<MultiPrograms, String> {
        if !crate::kernel_paths::has_uprobe_multi() {
            return Err("no uprobe_multi links before Linux 6.6".into());
        }
        let object = crate::bpf_object::bytes().map_err(|e| e.to_string())?;
        let maps = self
            .map_fds
            .iter()
            .map(|(name, fd)| (name.clone(), fd.as_raw_fd()))
            .collect();
        MultiPrograms::load(object, &maps, &[ENTRY_PROGRAM, RETURN_PROGRAM])
            .map_err(|e| e.to_string())
    }

    /// Attaches `chunk` (indexes into `reqs`: one file, one kind) through one multi link, or
    /// its halves through one each if the kernel refuses it, marking in `linked` what is
    /// attached; a single probe is left to the per-probe way.
    fn attach_chunk(
        &mut self,
        reqs: &[AttachRequest],
        chunk: &[usize],
        pid: Option<NonZeroU32>,
        linked: &mut [bool],
    ) {
        let MultiState::Ready(programs) = &self.multi else {
            return;
        };
        let first = &reqs[chunk[0]];
        let ret = first.kind == ProbeKind::Return;
        let Some(program) = programs.fd(if ret { RETURN_PROGRAM } else { ENTRY_PROGRAM }) else {
            return;
        };
        let mut links = Vec::new();
        let go_on = link_halving(
            chunk,
            &mut |part| {
                let offsets: Vec<u64> = part.iter().map(|&i| reqs[i].file_offset).collect();
                let cookies: Vec<u64> = part.iter().map(|&i| u64::from(reqs[i].id)).collect();
                let semaphores: Vec<u64> = part
                    .iter()
                    .map(|&i| reqs[i].semaphore.unwrap_or(0))
                    .collect();
                let probe = MultiUprobe {
                    path: &first.path,
                    offsets: &offsets,
                    ref_ctr_offsets: semaphores
                        .iter()
                        .any(|&s| s != 0)
                        .then_some(&semaphores[..]),
                    cookies: &cookies,
                    ret,
                    pid: pid.map(NonZeroU32::get),
                };
                match multi_link::attach(program, &probe) {
                    Ok(link) => {
                        links.push((part.len(), link));
                        Link::Linked
                    }
                    // EINVAL: the kernel does not take the link at all (not a refused
                    // offset, which is ENOTSUPP): nothing more through multi links.
                    Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                        tracing::info!(
                            error = %err,
                            "uprobe_multi link refused: one uprobe per probe from here"
                        );
                        Link::Unsupported
                    }
                    Err(err) => {
                        tracing::debug!(
                            error = %err,
                            path = %first.path.display(),
                            offsets = part.len(),
                            "uprobe_multi link refused: trying its halves"
                        );
                        Link::Refused
                    }
                }
            },
            linked,
        );
        self.multi_links.extend(links);
        if !go_on {
            self.multi = MultiState::Unavailable;
        }
    }
}

/// The requests that go through multi links, as groups of one file and one kind (in the
/// order of their first request): untyped probes (typed ones have programs of their own)
/// sharing their (file, kind) with another.
fn multi_groups(reqs: &[AttachRequest]) -> Vec<Vec<usize>> {
    let mut groups: HashMap<(&std::path::Path, ProbeKind), Vec<usize>> = HashMap::new();
    for (i, req) in reqs.iter().enumerate() {
        if req.args.is_none() {
            groups.entry((&req.path, req.kind)).or_default().push(i);
        }
    }
    let mut groups: Vec<Vec<usize>> = groups
        .into_values()
        .filter(|members| members.len() > 1)
        .collect();
    groups.sort_by_key(|members| members[0]);
    groups
}

/// What the kernel answered one multi link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// Attached.
    Linked,
    /// Refused (an offset it cannot probe, somewhere in the link): try the halves.
    Refused,
    /// No multi links on this kernel at all.
    Unsupported,
}

/// Links `chunk` through `link` (one multi link per call), a refused part split in halves
/// and each tried again down to pairs (a single probe is left to the per-probe way),
/// marking in `linked` what is attached. Returns false once the kernel said it takes no
/// multi links at all (nothing more is tried).
fn link_halving(
    chunk: &[usize],
    link: &mut dyn FnMut(&[usize]) -> Link,
    linked: &mut [bool],
) -> bool {
    if chunk.len() < 2 {
        return true;
    }
    match link(chunk) {
        Link::Linked => {
            for &i in chunk {
                linked[i] = true;
            }
            true
        }
        Link::Unsupported => false,
        Link::Refused => {
            let (a, b) = chunk.split_at(chunk.len() / 2);
            link_halving(a, link, linked) && link_halving(b, link, linked)
        }
    }
}

#[cfg(test)]
#[path = "grouped_tests.rs"]
mod tests;
