//! Typed probe arguments: a SPEC's argument list (`(str,i32)`, `(ret:str)`), USDT operands,
//! the plan BPF evaluates (`probed_common::ProbeArgs`) and the values the outputs show.
//! The BPF side is `ebpf/src/args.rs`.

mod operand;
mod plan;
mod types;
mod value;

pub use self::{
    operand::OperandError,
    plan::{ArgPlan, PlanError},
    types::{ArgList, ArgListError, ArgType, TYPE_NAMES},
    value::{ArgValue, STRING_LOST, STRING_NULL, STRING_UNREADABLE},
};
