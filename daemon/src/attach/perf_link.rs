//! Uprobes opened here rather than by aya: `perf_event_open` on the uprobe PMU, then
//! `BPF_LINK_CREATE` ties the loaded program to the event with the probe id as cookie —
//! what aya does (`aya::programs::probe::attach`), with two things aya 0.14 cannot do:
//! - a USDT semaphore: the kernel increments it (a counter in the traced file's data,
//!   checked by the program before it computes a probe's arguments) in every process
//!   mapping the file while the uprobe exists, and decrements it when the uprobe goes
//!   (`ref_ctr_offset`, Linux 4.20: the offset in `config`'s upper 32 bits);
//! - many uprobes at once from several threads: only the program's descriptor is needed,
//!   not `&mut` of aya's program (see `Tracer::attach_many`).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use aya::sys::SyscallError;

use crate::privileges::{PERF_FLAG_FD_CLOEXEC, UprobeAttr};

/// `PERF_UPROBE_REF_CTR_OFFSET_SHIFT`: the semaphore's file offset goes in `config` above
/// this bit (the uprobe PMU's `format/ref_ctr_offset` says `config:32-63`).
const REF_CTR_SHIFT: u32 = 32;
/// `BPF_LINK_CREATE`.
const BPF_LINK_CREATE: libc::c_long = 28;
/// `BPF_PERF_EVENT`: the attach type of a perf-event link.
const BPF_PERF_EVENT: u32 = 41;

/// The `link_create` member of `union bpf_attr` up to the perf-event cookie.
#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    bpf_cookie: u64,
}

const _: () = assert!(size_of::<LinkCreate>() == 24);

/// An attached uprobe: dropping it closes the link, then the event, which detaches the
/// probe (and takes its semaphore back down).
#[derive(Debug)]
pub struct PerfLink {
    /// The BPF link (program ↔ event), closed first.
    _link: OwnedFd,
    /// The uprobe perf event.
    _event: OwnedFd,
}

/// The uprobe PMU's facts, read once for many attaches.
#[derive(Clone, Copy, Debug)]
pub struct UprobePmu {
    /// Its perf event type.
    ty: u32,
    /// The `config` bit of a return probe (`format/retprobe`).
    retprobe_bit: u32,
}

impl UprobePmu {
    /// Reads them from sysfs.
    pub fn read() -> Result<Self, SyscallError> {
        let error = |call| move |io_error| SyscallError { call, io_error };
        let pmu = Path::new("/sys/bus/event_source/devices/uprobe");
        let ty: u32 = read_number(&pmu.join("type")).map_err(error("read uprobe PMU type"))?;
        let format = std::fs::read_to_string(pmu.join("format/retprobe"))
            .map_err(error("read uprobe PMU retprobe format"))?;
        // `config:N`.
        let retprobe_bit: u32 = format
            .trim()
            .strip_prefix("config:")
            .and_then(|b| b.parse().ok())
            .ok_or_else(|| io::Error::other(format!("uprobe retprobe format `{format}`")))
            .map_err(error("read uprobe PMU retprobe format"))?;
        Ok(Self { ty, retprobe_bit })
    }
}

/// Where and how to attach.
pub struct PerfUprobe<'a> {
    /// The file to probe.
    pub path: &'a Path,
    /// The probed instruction's file offset.
    pub offset: u64,
    /// The USDT semaphore's file offset, if any.
    pub semaphore: Option<u64>,
    /// A return probe.
    pub ret: bool,
    /// One process, or all.
    pub pid: Option<u32>,
    /// The attach cookie (the probe id).
    pub cookie: u64,
}

/// Attaches `program` as `probe` describes; the error names the call that failed.
pub fn attach(
    program: BorrowedFd<'_>,
    pmu: UprobePmu,
    probe: &PerfUprobe<'_>,
) -> Result<PerfLink, SyscallError> {
    let error = |call| move |io_error| SyscallError { call, io_error };
    let mut config = probe.semaphore.unwrap_or(0) << REF_CTR_SHIFT;
    if probe.ret {
        config |= 1 << pmu.retprobe_bit;
    }
    let path = CString::new(probe.path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        .map_err(error("perf_event_open"))?;
    let mut attr = UprobeAttr::default();
    attr.type_ = pmu.ty;
    attr.size = size_of::<UprobeAttr>() as u32;
    attr.config = config;
    attr.config1 = path.as_ptr() as u64;
    attr.config2 = probe.offset;
    let (pid, cpu) = match probe.pid {
        Some(pid) => (pid as libc::pid_t, -1),
        None => (-1, 0),
    };
    // SAFETY: perf_event_open reads `attr` (a valid, fully initialised perf_event_attr
    // prefix whose `size` says how long) and the C string at config1, which `path` keeps
    // alive across the call; it returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &raw const attr,
            pid,
            cpu,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    let event = owned(fd).map_err(error("perf_event_open"))?;
    let link = LinkCreate {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: event.as_raw_fd() as u32,
        attach_type: BPF_PERF_EVENT,
        flags: 0,
        bpf_cookie: probe.cookie,
    };
    // SAFETY: bpf(BPF_LINK_CREATE) reads `size` bytes of `link`, a valid prefix of union
    // bpf_attr (the kernel takes the missing tail as zeros), and returns a new descriptor
    // or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &raw const link,
            size_of::<LinkCreate>() as u32,
        )
    };
    Ok(PerfLink {
        _link: owned(fd).map_err(error("bpf(BPF_LINK_CREATE)"))?,
        _event: event,
    })
}

/// A syscall's new descriptor, or its error.
pub(super) fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a non-negative return of perf_event_open/bpf is a new descriptor that nothing
    // else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A decimal number in a sysfs file.
fn read_number<T: std::str::FromStr>(path: &Path) -> io::Result<T> {
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::other(format!("{}: not a number: {text:?}", path.display())))
}
