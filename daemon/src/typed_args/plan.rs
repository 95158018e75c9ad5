//! A probe's argument plan: the six `ArgSpec`s BPF evaluates (`PROBE_ARGS`), and the types
//! the output shows them as. Made from a SPEC's argument list (uprobes: the x86-64 SysV
//! argument registers; uretprobes: `%rax`) or from a USDT note's operands, which a list may
//! retype (`str` over an `8@%rbp` pointer).

use probed_common::{ARG_REG, ARG_REGS, ArgSpec, ProbeArgs};

use super::{
    operand::{self, OperandError},
    types::{ArgList, ArgType},
};
use crate::spec::ProbeKind;

/// The SysV x86-64 integer argument registers, in order (their `pt_regs` offsets: rdi, rsi,
/// rdx, rcx, r8, r9).
const ARG_REG_OFFSETS: [u16; ARG_REGS] = [112, 104, 96, 88, 72, 64];
/// `%rax`'s `pt_regs` offset: the return value.
const RAX: u16 = 80;

/// What BPF evaluates for a probe and how its values are shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgPlan {
    /// The specs written to `PROBE_ARGS` (unused slots zero).
    pub specs: ProbeArgs,
    /// The type of each shown slot: the arguments (entry, USDT), or the return value alone.
    pub types: Vec<ArgType>,
    /// Whether the one shown slot is the return value.
    pub ret: bool,
}

/// Why a SPEC's argument list or a note's operands cannot make a plan.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// `(ret:T)` on an entry probe.
    #[error("`(ret:T)` types a return value: use it with uretprobe")]
    RetOnEntry,
    /// `(T,…)` on a return probe.
    #[error("a return probe has only a return value: type it as `(ret:T)`")]
    ArgsOnReturn,
    /// More types than the note has operands.
    #[error("{given} argument types for a USDT probe with {operands} arguments")]
    TooManyTypes {
        /// Types in the list.
        given: usize,
        /// Operands in the note.
        operands: usize,
    },
    /// More operands than probed evaluates.
    #[error("the USDT probe has {0} arguments; probed reads the first {ARG_REGS}")]
    TooManyOperands(usize),
    /// An operand probed cannot read.
    #[error(transparent)]
    Operand(#[from] OperandError),
}

impl ArgPlan {
    /// The plan of a uprobe or uretprobe with a typed argument list.
    pub fn for_function(kind: ProbeKind, list: &ArgList) -> Result<Self, PlanError> {
        let reg = |reg: u16, ty: ArgType| {
            typed(
                ArgSpec {
                    how: ARG_REG,
                    reg,
                    ..ArgSpec::default()
                },
                ty,
            )
        };
        match (kind, list) {
            (ProbeKind::Entry, ArgList::Args(types)) => Ok(Self::new(
                types
                    .iter()
                    .zip(ARG_REG_OFFSETS)
                    .map(|(&ty, off)| reg(off, ty))
                    .collect(),
                types.clone(),
                false,
            )),
            (ProbeKind::Return, ArgList::Ret(ty)) => {
                Ok(Self::new(vec![reg(RAX, *ty)], vec![*ty], true))
            }
            (ProbeKind::Entry, ArgList::Ret(_)) => Err(PlanError::RetOnEntry),
            (ProbeKind::Return, ArgList::Args(_)) => Err(PlanError::ArgsOnReturn),
        }
    }

    /// The plan of a USDT probe: its note's `operands` (see `operand::parse` for `pc` and
    /// `symbol`), retyped by `list` where given.
    pub fn for_usdt(
        operands: &str,
        pc: u64,
        symbol: &dyn Fn(&str) -> Option<u64>,
        list: Option<&ArgList>,
    ) -> Result<Self, PlanError> {
        let ops: Vec<&str> = operands.split_whitespace().collect();
        if ops.len() > ARG_REGS {
            return Err(PlanError::TooManyOperands(ops.len()));
        }
        let retype: &[ArgType] = match list {
            None => &[],
            Some(ArgList::Ret(_)) => return Err(PlanError::RetOnEntry),
            Some(ArgList::Args(types)) if types.len() > ops.len() => {
                return Err(PlanError::TooManyTypes {
                    given: types.len(),
                    operands: ops.len(),
                });
            }
            Some(ArgList::Args(types)) => types,
        };
        let mut specs = Vec::new();
        let mut types = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let spec = operand::parse(op, pc, symbol)?;
            let ty = retype.get(i).copied().unwrap_or(if spec.signed != 0 {
                ArgType::Signed(spec.size)
            } else {
                ArgType::Unsigned(spec.size)
            });
            // A retyped operand keeps where it is; its size, sign and string flag are the
            // type's.
            let spec = if retype.get(i).is_some() {
                typed(spec, ty)
            } else {
                spec
            };
            specs.push(spec);
            types.push(ty);
        }
        Ok(Self::new(specs, types, false))
    }

    fn new(specs: Vec<ArgSpec>, types: Vec<ArgType>, ret: bool) -> Self {
        let mut all = ProbeArgs::default();
        for (slot, spec) in all.specs.iter_mut().zip(specs) {
            *slot = spec;
        }
        Self {
            specs: all,
            types,
            ret,
        }
    }

    /// Whether BPF reads strings for this probe.
    pub fn has_strings(&self) -> bool {
        self.types.contains(&ArgType::Str)
    }
}

/// `spec` with `ty`'s size, sign and string flag.
fn typed(spec: ArgSpec, ty: ArgType) -> ArgSpec {
    ArgSpec {
        size: ty.size(),
        signed: u8::from(ty.signed()),
        string: u8::from(ty == ArgType::Str),
        ..spec
    }
}

#[cfg(test)]
mod tests {
    use probed_common::ARG_MEM;

    use super::*;

    fn no_symbols(_: &str) -> Option<u64> {
        None
    }

    /// python3.11's function__entry: two pointers and an int; retyped as (str,str,i32).
    #[test]
    fn usdt_plans() {
        let plain = ArgPlan::for_usdt("8@%rbp 8@%r12 -4@%eax", 0, &no_symbols, None).unwrap();
        assert_eq!(
            plain.types,
            [
                ArgType::Unsigned(8),
                ArgType::Unsigned(8),
                ArgType::Signed(4)
            ]
        );
        assert!(!plain.has_strings());
        let list = ArgList::parse("str,str,i32").unwrap();
        let typed =
            ArgPlan::for_usdt("8@%rbp 8@%r12 -4@%eax", 0, &no_symbols, Some(&list)).unwrap();
        assert!(typed.has_strings());
        assert_eq!(typed.specs.specs[0].string, 1);
        assert_eq!(typed.specs.specs[1].reg, 24);
        assert_eq!(typed.specs.specs[2].string, 0);
        assert_eq!(typed.specs.specs[3], ArgSpec::default());
        let mem = ArgPlan::for_usdt("-4@112(%rsp)", 0, &no_symbols, None).unwrap();
        assert_eq!(mem.specs.specs[0].how, ARG_MEM);
        assert_eq!(
            ArgPlan::for_usdt("8@%rbp", 0, &no_symbols, Some(&list)),
            Err(PlanError::TooManyTypes {
                given: 3,
                operands: 1
            })
        );
        assert_eq!(
            ArgPlan::for_usdt(
                "8@%rbp",
                0,
                &no_symbols,
                Some(&ArgList::parse("ret:str").unwrap())
            ),
            Err(PlanError::RetOnEntry)
        );
    }

    #[test]
    fn function_plans() {
        let entry =
            ArgPlan::for_function(ProbeKind::Entry, &ArgList::parse("str,i32").unwrap()).unwrap();
        assert_eq!(entry.specs.specs[0].reg, 112);
        assert_eq!(entry.specs.specs[1].reg, 104);
        assert_eq!(
            (entry.specs.specs[1].size, entry.specs.specs[1].signed),
            (4, 1)
        );
        let ret =
            ArgPlan::for_function(ProbeKind::Return, &ArgList::parse("ret:str").unwrap()).unwrap();
        assert!(ret.ret && ret.has_strings());
        assert_eq!(ret.specs.specs[0].reg, RAX);
        assert_eq!(
            ArgPlan::for_function(ProbeKind::Return, &ArgList::parse("u8").unwrap()),
            Err(PlanError::ArgsOnReturn)
        );
        assert_eq!(
            ArgPlan::for_function(ProbeKind::Entry, &ArgList::parse("ret:u8").unwrap()),
            Err(PlanError::RetOnEntry)
        );
    }
}
