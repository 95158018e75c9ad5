//! uprobe_multi links (Linux 6.6): one link puts a program at many offsets of one file, each
//! with its own cookie (the probe id) and semaphore, and one close takes them all away.
//!
//! Why here: one perf-event uprobe per probe costs the kernel a registration to attach and,
//! to detach, a wait for an RCU grace period under a global mutex — ~0.1 s each here, so
//! 1,000 probes took 100 s to go away however many threads closed them (`bench attach`). A
//! multi link retires its uprobes in one batch.
//!
//! What aya 0.14 lacks: the kernel takes a multi link only for a program loaded with
//! `expected_attach_type = BPF_TRACE_UPROBE_MULTI`, and aya loads uprobe programs without
//! one. So the uprobe programs are loaded a second time, here, from the same object:
//! aya-obj (the parser aya itself uses) parses it, its map references are relocated to the
//! maps aya already created — the very same maps, so hits, counters and settings are
//! shared with every other probe — and `BPF_PROG_LOAD` gets the attach type. This is aya's
//! own load sequence (`EbpfLoader::load`: parse, relocate maps and calls, sanitize for the
//! kernel's features, load the BTF, load the programs with their func and line info).

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use super::perf_link::owned;
use aya_obj::generated::{
    BPF_F_UPROBE_MULTI_RETURN,
    bpf_attach_type::BPF_TRACE_UPROBE_MULTI,
    bpf_attr,
    bpf_cmd::{self, BPF_BTF_LOAD, BPF_LINK_CREATE, BPF_PROG_LOAD},
    bpf_insn,
    bpf_prog_type::BPF_PROG_TYPE_KPROBE,
};

/// Why the multi-link programs could not be loaded (the caller falls back to one perf-event
/// uprobe per probe).
#[derive(Debug, thiserror::Error)]
pub enum MultiError {
    /// aya-obj could not parse or relocate the object.
    #[error("preparing the BPF object for uprobe_multi: {0}")]
    Object(String),
    /// The object has no such program.
    #[error("the BPF object has no program {0}")]
    NoProgram(&'static str),
    /// A map of the object was not created by aya.
    #[error("the BPF object's map {0} is not loaded")]
    NoMap(String),
    /// The kernel refused the program (no uprobe_multi before 6.6: EINVAL), with the
    /// verifier's last lines when it said anything.
    #[error("loading {name} for uprobe_multi: {source}{log}")]
    Load {
        /// The program.
        name: &'static str,
        /// The error.
        #[source]
        source: io::Error,
        /// The verifier log's tail, if any.
        log: String,
    },
}

/// Programs loaded for multi links, by name.
#[derive(Debug, Default)]
pub struct MultiPrograms {
    fds: HashMap<&'static str, OwnedFd>,
}

impl MultiPrograms {
    /// Loads `names` of `object`, their map references pointing at `maps` (name, descriptor:
    /// every map of the object as aya created it).
    pub fn load(
        object: &[u8],
        maps: &HashMap<String, RawFd>,
        names: &[&'static str],
    ) -> Result<Self, MultiError> {
        let mut obj =
            aya_obj::Object::parse(object).map_err(|e| MultiError::Object(e.to_string()))?;
        let text_sections: HashSet<usize> = obj.functions.keys().map(|&(s, _)| s).collect();
        let defs = obj.maps.clone();
        let mut relocated = Vec::new();
        for (name, def) in &defs {
            let fd = *maps
                .get(name)
                .ok_or_else(|| MultiError::NoMap(name.clone()))?;
            relocated.push((name.as_str(), fd, def));
        }
        obj.relocate_maps(relocated.into_iter(), &text_sections)
            .map_err(|e| MultiError::Object(e.to_string()))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| MultiError::Object(e.to_string()))?;
        obj.sanitize_functions(aya::features());
        // The program BTF: verifiers since 6.x require its func_info for bpf-to-bpf calls
        // ("missing btf func_info"), which the programs make.
        let btf = match aya::features().btf() {
            Some(features) => obj
                .fixup_and_sanitize_btf(features)
                .map_err(|e| MultiError::Object(e.to_string()))?
                .map(|btf| load_btf(&btf.to_bytes()))
                .transpose()
                .map_err(|source| MultiError::Load {
                    name: "BTF",
                    source,
                    log: String::new(),
                })?,
            None => None,
        };
        let mut fds = HashMap::new();
        for &name in names {
            let prog = obj.programs.get(name).ok_or(MultiError::NoProgram(name))?;
            let function = obj
                .functions
                .get(&prog.function_key())
                .ok_or(MultiError::NoProgram(name))?;
            let fd = load_program(name, function, &prog.license, btf.as_ref())?;
            fds.insert(name, fd);
        }
        Ok(Self { fds })
    }

    /// Program `name`'s descriptor, if loaded.
    pub fn fd(&self, name: &str) -> Option<BorrowedFd<'_>> {
        use std::os::fd::AsFd as _;
        self.fds.get(name).map(|fd| fd.as_fd())
    }
}

/// `BPF_PROG_LOAD` of a kprobe-type program for uprobe_multi links; on failure, again with
/// the verifier's log to say why.
fn load_program(
    name: &'static str,
    function: &aya_obj::Function,
    license: &CString,
    btf: Option<&OwnedFd>,
) -> Result<OwnedFd, MultiError> {
    let insns: &[bpf_insn] = &function.instructions;
    let attempt = |log: Option<&mut Vec<u8>>| -> io::Result<OwnedFd> {
        // SAFETY: bpf_attr is a plain C union of integers: all zeros is a valid value (and
        // what the kernel requires of the unused tail).
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing fields of the prog-load member of a zeroed union.
        let load = unsafe { &mut attr.__bindgen_anon_3 };
        load.prog_type = BPF_PROG_TYPE_KPROBE as u32;
        load.expected_attach_type = BPF_TRACE_UPROBE_MULTI as u32;
        load.insns = insns.as_ptr() as u64;
        load.insn_cnt = insns.len() as u32;
        load.license = license.as_ptr() as u64;
        for (dst, src) in load.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *dst = src as libc::c_char;
        }
        if let Some(btf) = btf {
            let funcs = &function.func_info.func_info;
            let lines = &function.line_info.line_info;
            load.prog_btf_fd = btf.as_raw_fd() as u32;
            load.func_info = funcs.as_ptr() as u64;
            load.func_info_cnt = funcs.len() as u32;
            load.func_info_rec_size = function.func_info_rec_size as u32;
            load.line_info = lines.as_ptr() as u64;
            load.line_info_cnt = lines.len() as u32;
            load.line_info_rec_size = function.line_info_rec_size as u32;
        }
        if let Some(log) = log {
            load.log_level = 1;
            load.log_buf = log.as_mut_ptr() as u64;
            load.log_size = log.len() as u32;
        }
        // SAFETY: bpf(BPF_PROG_LOAD) reads `attr` (fully initialised), the instructions and
        // the license it points to (alive for the call), and writes at most `log_size` bytes
        // of log into `log_buf`.
        unsafe { bpf_fd(BPF_PROG_LOAD, &mut attr) }
    };
    attempt(None).or_else(|source| {
        let mut log = vec![0u8; 1 << 20];
        let again = attempt(Some(&mut log));
        let text = String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)])
            .to_string();
        let tail: Vec<&str> = text.lines().rev().take(4).collect();
        let log = if tail.is_empty() {
            String::new()
        } else {
            format!(
                " (verifier: {})",
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )
        };
        again.map_err(|_| MultiError::Load { name, source, log })
    })
}

/// `BPF_BTF_LOAD` of the object's (fixed-up) BTF.
fn load_btf(bytes: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: all zeros is a valid bpf_attr (plain integers).
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing fields of the BTF-load member of a zeroed union.
    let load = unsafe { &mut attr.__bindgen_anon_7 };
    load.btf = bytes.as_ptr() as u64;
    load.btf_size = bytes.len() as u32;
    // SAFETY: bpf(BPF_BTF_LOAD) reads `btf_size` bytes at `btf`, alive for the call.
    unsafe { bpf_fd(BPF_BTF_LOAD, &mut attr) }
}

/// `bpf(cmd, attr)` for a command that returns a new descriptor.
///
/// # Safety
/// Every pointer in `attr` must be valid for what `cmd` reads or writes through it, for the
/// length `attr` gives, for the whole call.
unsafe fn bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a whole, initialised bpf_attr of the size passed; the caller vouches
    // for the pointers in it. bpf() returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>() as u32,
        )
    };
    owned(fd)
}

/// One multi link's request: a program at `offsets` of `path`.
#[derive(Debug)]
pub struct MultiUprobe<'a> {
    /// The file to probe.
    pub path: &'a Path,
    /// The probed instructions' file offsets.
    pub offsets: &'a [u64],
    /// Each offset's USDT semaphore (file offset, 0 for none), or None when none has one.
    pub ref_ctr_offsets: Option<&'a [u64]>,
    /// Each offset's cookie (its probe id).
    pub cookies: &'a [u64],
    /// Return probes.
    pub ret: bool,
    /// One process, or all.
    pub pid: Option<u32>,
}

/// Attached uprobes: dropping it closes the link, which detaches them all at once.
#[derive(Debug)]
pub struct MultiLink {
    _link: OwnedFd,
}

/// Creates the multi link of `probe` for `program` (loaded by [`MultiPrograms::load`]).
pub fn attach(program: BorrowedFd<'_>, probe: &MultiUprobe<'_>) -> io::Result<MultiLink> {
    assert_eq!(probe.offsets.len(), probe.cookies.len());
    if let Some(refs) = probe.ref_ctr_offsets {
        assert_eq!(refs.len(), probe.offsets.len());
    }
    let path = CString::new(probe.path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: all zeros is a valid bpf_attr (plain integers), as the kernel requires of the
    // unused tail.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing fields of the link-create member of a zeroed union.
    let link = unsafe { &mut attr.link_create };
    link.__bindgen_anon_1.prog_fd = program.as_raw_fd() as u32;
    link.attach_type = BPF_TRACE_UPROBE_MULTI as u32;
    // SAFETY: as above; the uprobe_multi member of the link-create union.
    let multi = unsafe { &mut link.__bindgen_anon_3.uprobe_multi };
    multi.path = path.as_ptr() as u64;
    multi.offsets = probe.offsets.as_ptr() as u64;
    multi.ref_ctr_offsets = probe.ref_ctr_offsets.map_or(0, |r| r.as_ptr() as u64);
    multi.cookies = probe.cookies.as_ptr() as u64;
    multi.cnt = probe.offsets.len() as u32;
    multi.flags = if probe.ret {
        BPF_F_UPROBE_MULTI_RETURN
    } else {
        0
    };
    multi.pid = probe.pid.unwrap_or(0);
    // SAFETY: bpf(BPF_LINK_CREATE) reads the path and the arrays `attr` points to, all alive
    // for the call (`cnt` entries each).
    let link = unsafe { bpf_fd(BPF_LINK_CREATE, &mut attr) }?;
    Ok(MultiLink { _link: link })
}
