//! Typed arguments: a probe's `PROBE_ARGS` specs evaluated at the hit (USDT operands and
//! SPEC argument lists), and its string arguments read into an `ArgStringsEvent` written
//! just before the hit's record (see `probed_common::args`).

use aya_ebpf::{
    bindings::pt_regs,
    helpers::generated::{bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_str},
};
use probed_common::{
    ARG_CONST, ARG_MEM, ARG_MEM_IP, ARG_REG, ARG_REGS, ARG_STR_LEN, ArgSpec, ArgStringsEvent,
    EVENT_ARG_STRINGS, ProbeArgs, narrow,
};

use crate::{maps::PROBE_ARGS, ring::Ring};

/// The probe's specs, if it has any.
#[inline(always)]
pub fn specs(probe_id: u32) -> Option<&'static ProbeArgs> {
    PROBE_ARGS.get(probe_id)
}

/// The six argument slots of a hit, evaluated by `specs` from the registers `regs` and the
/// probed address `ip`. A value that cannot be read (unmapped memory) is 0.
/// Written through `out` (not returned: a BPF function returns one register).
#[inline(never)]
pub fn evaluate(regs: *const pt_regs, ip: u64, specs: &ProbeArgs, out: &mut [u64; ARG_REGS]) {
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = one(regs, ip, &specs.specs[i]);
    }
}

/// One spec's value.
#[inline(always)]
fn one(regs: *const pt_regs, ip: u64, spec: &ArgSpec) -> u64 {
    let raw = match spec.how {
        ARG_REG | ARG_MEM => {
            let Some(reg) = register(regs, spec.reg) else {
                return 0;
            };
            if spec.how == ARG_REG {
                reg
            } else {
                read_user(reg.wrapping_add(spec.off as u64))
            }
        }
        ARG_MEM_IP => read_user(ip.wrapping_add(spec.off as u64)),
        ARG_CONST => spec.off as u64,
        _ => return 0,
    };
    narrow(raw, spec.size, spec.signed != 0)
}

/// The register at byte offset `off` of `pt_regs` (the offsets `typed_args::operand`
/// gives). Copied out with a checked kernel read (the registers are kernel memory): BPF may
/// not dereference its context at a run-time offset, and a `match` over the fields is
/// compiled back into one. libbpf's usdt.bpf.h does the same.
#[inline(always)]
fn register(regs: *const pt_regs, off: u16) -> Option<u64> {
    if off > PT_REGS_BYTES - 8 {
        return None;
    }
    let mut v = 0u64;
    // SAFETY: the offset is inside pt_regs (checked above); bpf_probe_read_kernel returns an
    // error rather than faulting, leaving the zeroed value.
    unsafe {
        let at = (regs as *const u8).add(off as usize);
        bpf_probe_read_kernel((&raw mut v).cast(), 8, at.cast());
    }
    Some(v)
}

/// `size_of::<pt_regs>()`: a register offset must leave 8 bytes inside it.
const PT_REGS_BYTES: u16 = core::mem::size_of::<pt_regs>() as u16;

/// Eight bytes of user memory at `addr` (narrowed by the caller, little-endian), or 0.
#[inline(always)]
fn read_user(addr: u64) -> u64 {
    let mut v = 0u64;
    // SAFETY: bpf_probe_read_user copies into a valid local and returns an error (leaving
    // it zeroed) for an unreadable address.
    unsafe { bpf_probe_read_user((&raw mut v).cast(), 8, addr as *const core::ffi::c_void) };
    v
}

/// Writes the string arguments of a hit (`values` as evaluated; the slots whose spec says
/// `string`) as one `ArgStringsEvent`. Returns false if the ring buffer is full: the hit
/// then goes out without them (the daemon counts it).
#[inline(never)]
pub fn record_strings(
    probe_id: u32,
    tid: u32,
    ts_ns: u64,
    values: &[u64; ARG_REGS],
    specs: &ProbeArgs,
) -> bool {
    // The hit program's task: the strings go to its process's ring, before its hit.
    let ring = Ring::of((aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32);
    let Some((mut entry, wake)) = ring.reserve::<ArgStringsEvent>() else {
        return false;
    };
    let e = entry.as_mut_ptr();
    let (mut read, mut truncated, mut faulted) = (0u8, 0u8, 0u8);
    // SAFETY: `e` points to a reserved, writable record of ArgStringsEvent's size; every
    // write below is to one of its fields, each string read is bounded by its slot's size
    // (ARG_STR_LEN), and bpf_probe_read_user(_str) return errors rather than fault.
    unsafe {
        (&raw mut (*e).event).write(EVENT_ARG_STRINGS);
        (&raw mut (*e).probe_id).write(probe_id);
        (&raw mut (*e).tid).write(tid);
        (&raw mut (*e)._reserved).write(0);
        (&raw mut (*e).ts_ns).write(ts_ns);
        (&raw mut (*e)._reserved2).write(0);
        // `i` indexes three arrays and a bit mask. Kept as a counted loop on purpose: its
        // shape is what the verifier bounds, and a changed shape can only be checked by the
        // BPF integration tests.
        #[allow(clippy::needless_range_loop)]
        for i in 0..ARG_REGS {
            let mut len = 0u16;
            if specs.specs[i].string != 0 {
                let dst = (&raw mut (*e).data[i]).cast::<core::ffi::c_void>();
                let src = values[i] as *const core::ffi::c_void;
                let got = bpf_probe_read_user_str(dst, ARG_STR_LEN as u32, src);
                if got > 0 {
                    read |= 1 << i;
                    len = (got - 1) as u16;
                    // A full slot holds ARG_STR_LEN - 1 bytes and the NUL the helper
                    // wrote: the string was cut unless its next byte is its NUL.
                    if got as usize == ARG_STR_LEN {
                        let mut next = 0u8;
                        let at = values[i].wrapping_add(ARG_STR_LEN as u64 - 1);
                        bpf_probe_read_user(
                            (&raw mut next).cast(),
                            1,
                            at as *const core::ffi::c_void,
                        );
                        if next != 0 {
                            truncated |= 1 << i;
                        }
                    }
                } else {
                    faulted |= 1 << i;
                }
            }
            (&raw mut (*e).lens[i]).write(len);
        }
        (&raw mut (*e).read).write(read);
        (&raw mut (*e).truncated).write(truncated);
        (&raw mut (*e).faulted).write(faulted);
    }
    entry.submit(wake);
    true
}
