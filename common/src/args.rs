//! Typed probe arguments evaluated in BPF: USDT argument specs (`-4@%eax`, `8@-8(%rbp)`,
//! `$5`, `8@sym(%rip)`) and the typed argument lists of a SPEC (`(str,i32)`, `(ret:str)`).
//!
//! The daemon turns each argument into an [`ArgSpec`] (where the value is, its size and
//! sign, whether it points to a string) and writes a probe's six into `PROBE_ARGS`; a probe
//! with [`PROBE_FLAG_ARGS`] has BPF evaluate them in place of the six raw argument
//! registers (for a return probe, spec 0 gives the return value). String arguments are read
//! in BPF at the hit and written as one [`ArgStringsEvent`] just before the hit's own record
//! (same program run, same CPU, so the ring keeps them in that order); the daemon joins the
//! two by thread and timestamp.

/// `PROBE_FLAGS` bit: evaluate the probe's `PROBE_ARGS` specs instead of taking the raw
/// argument registers.
pub const PROBE_FLAG_ARGS: u32 = 32;
/// `PROBE_FLAGS` bit: some of the probe's arguments are strings; write an
/// [`ArgStringsEvent`] before each hit.
pub const PROBE_FLAG_ARG_STRINGS: u32 = 64;

/// [`ArgSpec::how`]: no value (0).
pub const ARG_UNUSED: u8 = 0;
/// [`ArgSpec::how`]: the register at byte offset `reg` of `pt_regs`.
pub const ARG_REG: u8 = 1;
/// [`ArgSpec::how`]: the memory at the register's value plus `off`.
pub const ARG_MEM: u8 = 2;
/// [`ArgSpec::how`]: the constant `off`.
pub const ARG_CONST: u8 = 3;
/// [`ArgSpec::how`]: the memory at the probed instruction's address plus `off` (a
/// `sym(%rip)` operand: `off` is the symbol's distance from the probe in the file's layout,
/// so no load address is needed).
pub const ARG_MEM_IP: u8 = 4;

/// Where one argument's value is, and how to read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArgSpec {
    /// Memory offset (`ARG_MEM`, `ARG_MEM_IP`) or the value (`ARG_CONST`).
    pub off: i64,
    /// Byte offset of the register in `struct pt_regs` (`ARG_REG`, `ARG_MEM`).
    pub reg: u16,
    /// One of `ARG_*`.
    pub how: u8,
    /// The value's size in bytes: 1, 2, 4 or 8; the rest of the 64 bits is dropped
    /// (zero- or sign-extended).
    pub size: u8,
    /// Non-zero: sign-extend from `size` bytes.
    pub signed: u8,
    /// Non-zero: the value is the address of a NUL-terminated user string, read at the hit.
    pub string: u8,
    /// Reserved, zero.
    pub _reserved: [u8; 2],
}

/// A probe's argument specs (the `PROBE_ARGS` array's value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeArgs {
    /// One per argument slot (`HitEvent::args`; slot 0 is the return value of a return
    /// probe).
    pub specs: [ArgSpec; crate::ARG_REGS],
}

/// First field of every ring buffer item: an [`ArgStringsEvent`].
pub const EVENT_ARG_STRINGS: u32 = 10;

/// Bytes read of one string argument, its NUL included: a longer string is cut to
/// `ARG_STR_LEN - 1` bytes and flagged in [`ArgStringsEvent::truncated`].
pub const ARG_STR_LEN: usize = 256;

/// The string arguments of one hit, written just before the hit's record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgStringsEvent {
    /// [`EVENT_ARG_STRINGS`].
    pub event: u32,
    /// The probe (as in the hit).
    pub probe_id: u32,
    /// The thread (as in the hit).
    pub tid: u32,
    /// Bit i: slot i was read (`lens[i]` bytes of `data[i]`, NUL excluded).
    pub read: u8,
    /// Bit i: slot i's string was longer than `ARG_STR_LEN - 1` bytes.
    pub truncated: u8,
    /// Bit i: slot i's address could not be read (NULL, unmapped, or not paged in).
    pub faulted: u8,
    /// Reserved, zero.
    pub _reserved: u8,
    /// The hit's timestamp (as in the hit): with `tid`, what the daemon joins on.
    pub ts_ns: u64,
    /// Bytes of each string, NUL excluded.
    pub lens: [u16; crate::ARG_REGS],
    /// Reserved, zero.
    pub _reserved2: u32,
    /// The strings, one slot per argument.
    pub data: [[u8; ARG_STR_LEN]; crate::ARG_REGS],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: ArgSpec, ProbeArgs and ArgStringsEvent are #[repr(C)], integers and integer
    // arrays only, with no padding (sizes asserted below): every bit pattern is valid.
    unsafe impl aya::Pod for super::ArgSpec {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProbeArgs {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ArgStringsEvent {}
}

const _: () = assert!(core::mem::size_of::<ArgSpec>() == 16);
const _: () = assert!(core::mem::size_of::<ProbeArgs>() == 16 * crate::ARG_REGS);
const _: () = assert!(
    core::mem::size_of::<ArgStringsEvent>()
        == 24 + 2 * crate::ARG_REGS + 4 + ARG_STR_LEN * crate::ARG_REGS
);

/// Drops the bits of `raw` above `size` bytes, sign-extending if `signed`: what BPF does to
/// an evaluated argument (and what the daemon's tests check it against).
pub const fn narrow(raw: u64, size: u8, signed: bool) -> u64 {
    let shift = match size {
        1 => 56,
        2 => 48,
        4 => 32,
        _ => 0,
    };
    if signed {
        (((raw << shift) as i64) >> shift) as u64
    } else {
        (raw << shift) >> shift
    }
}

#[cfg(test)]
mod tests {
    use super::narrow;

    #[test]
    fn narrow_sign_and_zero_extends() {
        assert_eq!(narrow(0xffff_ffff, 4, true), u64::MAX);
        assert_eq!(narrow(0x1_ffff_fffe, 4, true) as i64, -2);
        assert_eq!(narrow(0x1_0000_0005, 4, false), 5);
        assert_eq!(narrow(0x80, 1, true) as i64, -128);
        assert_eq!(narrow(0x1234, 1, false), 0x34);
        assert_eq!(narrow(u64::MAX, 8, false), u64::MAX);
    }
}
