//! A hit's address lookups, each as of the hit's sequence (or, in lock mode, from its
//! capture): the hit's own address, its stack's frames, and the unwinder's steps through a
//! copied stack; answers symbolized, or why not.

use std::io::Write;

use probed_common::{CAPTURE_CACHED, CAPTURE_FOUND, HitEvent, KIND_RETURN, MAX_FRAMES};

use super::{
    Pipeline,
    kseq::with_kseq,
    lock::{Capture, Captures, with_captured},
    names::Names,
};
use crate::{
    elf::FileSource,
    file_id::FileId,
    output::{Frame, Resolved},
    resolve::{Hit, ProcKey, Resolution, SeqSource},
    symbolize::Symbolizer,
    track::paths,
    unwind::{Located, Start, StopReason},
};

/// What resolving a hit's address gives: the symbolized answer or why not, the path taken
/// (`via`), and where the address was placed (file, offset) for the probe oracle.
pub(super) type Answer = (
    Result<Resolved, &'static str>,
    &'static str,
    Option<(FileId, u64)>,
);

/// The reason given for an address whose mapping was found but whose file no source could
/// name (see `track::paths`).
pub(super) const UNNAMED: &str = "unnamed";

impl<W: Write, S: SeqSource> Pipeline<W, S> {
    /// Unwinds a copied stack against the hit's own picture of its address space.
    pub(super) fn unwind(&mut self, hit: &HitEvent, start: Start<'_>) -> (Vec<u64>, StopReason) {
        let proc = ProcKey::new(hit.pid, hit.proc_gen);
        let (seq, pid) = (hit.seq, hit.pid);
        let mode = self
            .probes
            .get(hit.probe_id as usize)
            .and_then(|s| s.as_ref()?.stack_mode)
            .unwrap_or(self.stack_mode);
        let reader = &mut self.reader;
        let tables = &mut self.unwind_tables;
        let walk = self.unwinder.walk(
            start,
            mode,
            MAX_FRAMES,
            crate::stack_check::mmap_min_addr(),
            crate::stack_check::user_limit(),
            |addr| {
                reader.resolve_with(proc, addr, Some(seq), |r| {
                    let Ok(found) = r.outcome else {
                        return Located::Without(StopReason::NoModule);
                    };
                    let vma = found.vma;
                    if paths::is_unnamed(&vma.path) {
                        return Located::Without(StopReason::NoModule);
                    }
                    let source = FileSource::mapped(vma.file, &vma.path, pid, vma.start, vma.end);
                    match tables.get(&source) {
                        Ok(table) => match table.vaddr(found.file_offset) {
                            Some(vaddr) => Located::Cfi(table, vaddr),
                            None => Located::Without(StopReason::NoCfi),
                        },
                        Err(_) => Located::Without(StopReason::NoCfi),
                    }
                })
            },
        );
        (walk.frames, walk.stop)
    }

    /// A hit's own address: mapping → symbol (see [`Self::look_up`]).
    pub(super) fn resolve(
        &mut self,
        proc: ProcKey,
        hit: &HitEvent,
        addr: u64,
        back: u64,
        capture: Option<Capture<'_>>,
    ) -> Answer {
        let pid = hit.pid;
        self.look_up(proc, hit, addr, back, capture, false, |names, r| {
            hit_answer(names, pid, back, r)
        })
    }

    /// Resolves every frame of a hit's user stack through the resolver, as of the hit's
    /// sequence: frames in libraries since unloaded, or of a process since gone, resolve
    /// against the picture of the hit's time.
    /// `fp_walk`: the frames are the kernel's frame-pointer walk, which misses the caller
    /// of a function probed at its first instruction (added here from `ret_addr`).
    pub(super) fn resolve_stack(
        &mut self,
        proc: ProcKey,
        hit: &HitEvent,
        frames: &[u64],
        captures: Option<Captures<'_>>,
        fp_walk: bool,
    ) -> Vec<Frame> {
        // The last hit's vector, emptied: a stack costs no allocation once one as deep was
        // seen (each one is a malloc probed would trap on when tracing malloc).
        let mut out = std::mem::take(&mut self.frame_buf);
        out.clear();
        out.reserve(frames.len() + 1);
        let at_entry = fp_walk
            && hit.kind != KIND_RETURN
            && self
                .probes
                .get(hit.probe_id as usize)
                .and_then(Option::as_ref)
                .is_some_and(|slot| {
                    slot.probe.target.symbol.is_some() && slot.probe.target.offset_in_symbol == 0
                });
        for (i, &addr) in frames.iter().enumerate() {
            // The innermost frame of an entry probe is the probed instruction itself; every
            // other frame is a return address, looked up one byte back so that a call at the
            // very end of a function is not attributed to the next one.
            let back = u64::from(i > 0 || hit.kind == KIND_RETURN);
            out.push(self.resolve_frame(proc, hit, addr, back, captures.map(|c| c.get(i))));
            if i == 0 && at_entry && hit.ret_addr != 0 && frames.get(1) != Some(&hit.ret_addr) {
                // At a function's first instruction the caller has not been given a frame
                // yet (no push rbp): the frame-pointer walk skips it, so BPF read its return
                // address from the top of the stack. Kernels since 6.11 add it themselves
                // when that instruction is `push %rbp` (perf_callchain_user's fix-up for
                // uprobes at function entry): then it is already the next frame.
                let cap = captures.map(|c| c.get(MAX_FRAMES));
                out.push(self.resolve_frame(proc, hit, hit.ret_addr, 1, cap));
            }
        }
        out
    }

    /// One stack frame: mapping → symbol (see [`Self::look_up`]).
    fn resolve_frame(
        &mut self,
        proc: ProcKey,
        hit: &HitEvent,
        addr: u64,
        back: u64,
        capture: Option<Capture<'_>>,
    ) -> Frame {
        let pid = hit.pid;
        self.look_up(proc, hit, addr, back, capture, true, |names, r| {
            frame_answer(names, pid, addr, back, r)
        })
    }

    /// Address → mapping, as of the hit's sequence, or, in lock mode, from the address's
    /// capture (`capture`: status and mapping), handed to `answer` with what names it.
    /// `back` bytes are subtracted for the lookup (1 for return addresses, so that a call at
    /// the very end of a function is not attributed to the next one); `frame`: a stack
    /// frame's capture (counted apart from hits').
    #[allow(clippy::too_many_arguments)]
    fn look_up<R>(
        &mut self,
        proc: ProcKey,
        hit: &HitEvent,
        addr: u64,
        back: u64,
        capture: Option<Capture<'_>>,
        frame: bool,
        answer: impl FnOnce(Namer<'_>, Resolution<Hit<'_>>) -> R,
    ) -> R {
        let lookup = addr.wrapping_sub(back);
        let kseq_mode = self.kseq_mode();
        let names = Namer {
            symbolizer: &self.symbolizer,
            names: &mut self.names,
            unnamed: &mut self.unnamed,
        };
        let cached = capture.is_some_and(|(status, _)| status == CAPTURE_CACHED);
        if cached || (capture.is_none() && kseq_mode) {
            // Kseq mode, no capture of this address: a capture at the same counter value
            // answers it (or nothing, counted).
            let picture = self.kseq.find(proc, hit.seq, lookup).map(|vma| {
                self.lock
                    .picture((CAPTURE_FOUND, Some(&vma)), hit.pid, &self.paths)
            });
            return with_kseq(
                &mut self.kseq,
                frame,
                hit.seq,
                picture.as_deref(),
                lookup,
                |r| answer(names, r),
            );
        }
        if let Some(cap) = capture {
            let picture = self.lock.picture(cap, hit.pid, &self.paths);
            return with_captured(&mut self.lock, frame, hit.seq, &picture, lookup, |r| {
                answer(names, r)
            });
        }
        self.reader
            .resolve_with(proc, lookup, Some(hit.seq), |r| answer(names, r))
    }
}

/// What names an address once the resolver found its mapping: the symbolizer, the
/// pipeline's shared names, and the count of mapped files no source could name.
pub(super) struct Namer<'a> {
    symbolizer: &'a Symbolizer,
    names: &'a mut Names,
    unnamed: &'a mut u64,
}

/// A hit's address: the resolver's answer, symbolized.
fn hit_answer(
    Namer {
        symbolizer,
        names,
        unnamed,
    }: Namer<'_>,
    pid: u32,
    back: u64,
    r: Resolution<Hit<'_>>,
) -> Answer {
    let via = r.via.as_str();
    let found = match r.outcome {
        Ok(found) => found,
        Err(reason) => return (Err(reason.as_str()), via, None),
    };
    let vma = found.vma;
    let place = Some((vma.file, found.file_offset));
    if paths::is_unnamed(&vma.path) {
        *unnamed += 1;
        return (Err(UNNAMED), via, place);
    }
    let source = FileSource::mapped(vma.file, &vma.path, pid, vma.start, vma.end);
    let resolved = symbolizer.symbolize_with(&source, found.file_offset, |sym| match sym {
        Ok(sym) => Ok(Resolved {
            module: names.module(&vma.path),
            symbol: Some(names.symbol(sym.symbol)),
            offset: Some(sym.offset + back),
            file_offset: found.file_offset + back,
        }),
        Err(why) => Err(why.as_str()),
    });
    (resolved, via, place)
}

/// A stack frame: the resolver's answer, symbolized.
fn frame_answer(
    Namer {
        symbolizer,
        names,
        unnamed,
    }: Namer<'_>,
    pid: u32,
    addr: u64,
    back: u64,
    r: Resolution<Hit<'_>>,
) -> Frame {
    let found = match r.outcome {
        Ok(found) => found,
        Err(reason) => {
            return Frame {
                addr,
                module: None,
                symbol: None,
                offset: None,
                unresolved: Some(reason.as_str()),
                file: None,
            };
        }
    };
    let vma = found.vma;
    if paths::is_unnamed(&vma.path) {
        *unnamed += 1;
        return Frame {
            addr,
            module: None,
            symbol: None,
            offset: None,
            unresolved: Some(UNNAMED),
            file: Some(vma.file.to_string()),
        };
    }
    let source = FileSource::mapped(vma.file, &vma.path, pid, vma.start, vma.end);
    let module = Some(names.module(&vma.path));
    symbolizer.symbolize_with(&source, found.file_offset, |sym| match sym {
        Ok(sym) => Frame {
            addr,
            module,
            symbol: Some(names.symbol(sym.symbol)),
            offset: Some(sym.offset + back),
            unresolved: None,
            file: None,
        },
        // The module is known even when no symbol covers the address (a stripped
        // library's internal function).
        Err(why) => Frame {
            addr,
            module,
            symbol: None,
            offset: None,
            unresolved: Some(why.as_str()),
            file: None,
        },
    })
}
