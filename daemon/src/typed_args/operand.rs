//! USDT argument operands (x86-64, as the assembler wrote them into `.note.stapsdt`):
//! `-4@%eax` (a register), `8@-8(%rbp)` (memory at a register plus a displacement),
//! `4@$5` (a constant), `8@sym(%rip)` / `8@sym+16(%rip)` (memory at a symbol). The size
//! before `@` is the value's bytes, negative for a signed value; without it, 8 unsigned.
//! Indexed operands (`8@-4(%rbp,%rax,8)`) are refused: no Debian binary probed was tried
//! on uses them, and evaluating them needs a second register read.

use probed_common::{ARG_CONST, ARG_MEM, ARG_MEM_IP, ARG_REG, ArgSpec};

/// Why an operand could not be turned into an [`ArgSpec`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OperandError {
    /// Not one of the supported forms.
    #[error(
        "USDT argument `{0}` is not a form probed can read (size@%reg, size@disp(%reg), size@$const, size@sym(%rip))"
    )]
    Unsupported(String),
    /// A register name x86-64 does not have (or that cannot be read, like `%ah`).
    #[error("USDT argument `{operand}`: unknown register `%{register}`")]
    Register {
        /// The operand.
        operand: String,
        /// The register name.
        register: String,
    },
    /// A `sym(%rip)` operand whose symbol is not in the file.
    #[error("USDT argument `{operand}`: symbol `{symbol}` is not in the file")]
    Symbol {
        /// The operand.
        operand: String,
        /// The symbol.
        symbol: String,
    },
}

/// Byte offsets in the kernel's x86-64 `struct pt_regs`, by 64-bit register name.
const PT_REGS: [(&str, u16); 17] = [
    ("r15", 0),
    ("r14", 8),
    ("r13", 16),
    ("r12", 24),
    ("rbp", 32),
    ("rbx", 40),
    ("r11", 48),
    ("r10", 56),
    ("r9", 64),
    ("r8", 72),
    ("rax", 80),
    ("rcx", 88),
    ("rdx", 96),
    ("rsi", 104),
    ("rdi", 112),
    ("rip", 128),
    ("rsp", 152),
];

/// The `pt_regs` offset of a register by any of its names (`rax`, `eax`, `ax`, `al`;
/// `r8`, `r8d`, `r8w`, `r8b`): the operand's size says how much of it is the value.
pub fn register_offset(name: &str) -> Option<u16> {
    let full = match name {
        "eax" | "ax" | "al" => "rax",
        "ebx" | "bx" | "bl" => "rbx",
        "ecx" | "cx" | "cl" => "rcx",
        "edx" | "dx" | "dl" => "rdx",
        "esi" | "si" | "sil" => "rsi",
        "edi" | "di" | "dil" => "rdi",
        "ebp" | "bp" | "bpl" => "rbp",
        "esp" | "sp" | "spl" => "rsp",
        other => other
            .strip_suffix(['d', 'w', 'b'])
            .filter(|r| r.starts_with('r') && r[1..].parse::<u8>().is_ok_and(|n| n >= 8))
            .unwrap_or(other),
    };
    PT_REGS
        .iter()
        .find(|(n, _)| *n == full)
        .map(|&(_, off)| off)
}

/// `operand` as an [`ArgSpec`]. `symbol(name)` gives a symbol's address in the file's
/// layout; `pc` is the probe's own address in that layout (a `sym(%rip)` operand becomes
/// the symbol's distance from the probe, which BPF adds to the hit's address).
pub fn parse(
    operand: &str,
    pc: u64,
    symbol: &dyn Fn(&str) -> Option<u64>,
) -> Result<ArgSpec, OperandError> {
    let unsupported = || OperandError::Unsupported(operand.into());
    let (size, signed, loc) = match operand.split_once('@') {
        Some((size, loc)) => {
            let n: i8 = size.parse().map_err(|_| unsupported())?;
            let bytes = n.unsigned_abs();
            if ![1, 2, 4, 8].contains(&bytes) {
                return Err(unsupported());
            }
            (bytes, n < 0, loc)
        }
        None => (8, false, operand),
    };
    let mut spec = ArgSpec {
        size,
        signed: u8::from(signed),
        ..ArgSpec::default()
    };
    let register = |name: &str| {
        register_offset(name).ok_or_else(|| OperandError::Register {
            operand: operand.into(),
            register: name.into(),
        })
    };
    if let Some(name) = loc.strip_prefix('%') {
        spec.how = ARG_REG;
        spec.reg = register(name)?;
    } else if let Some(value) = loc.strip_prefix('$') {
        spec.how = ARG_CONST;
        spec.off = parse_int(value).ok_or_else(unsupported)?;
    } else if let Some((disp, base)) = loc.strip_suffix(')').and_then(|l| l.split_once('(')) {
        let base = base.strip_prefix('%').ok_or_else(unsupported)?;
        if base.contains(',') {
            return Err(unsupported());
        }
        if base == "rip" {
            // `sym`, `sym+N`, `sym-N`: the symbol's address relative to the probe.
            let (name, plus) = split_symbol(disp).ok_or_else(unsupported)?;
            let addr = symbol(name).ok_or_else(|| OperandError::Symbol {
                operand: operand.into(),
                symbol: name.into(),
            })?;
            spec.how = ARG_MEM_IP;
            spec.off = (addr.wrapping_add(plus as u64)).wrapping_sub(pc) as i64;
        } else {
            spec.how = ARG_MEM;
            spec.reg = register(base)?;
            spec.off = if disp.is_empty() {
                0
            } else {
                parse_int(disp).ok_or_else(unsupported)?
            };
        }
    } else {
        return Err(unsupported());
    }
    Ok(spec)
}

/// A decimal or 0x-hex integer, maybe negative.
fn parse_int(text: &str) -> Option<i64> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let value = match digits.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16).ok()?,
        None => digits.parse().ok()?,
    };
    Some(if neg { -value } else { value })
}

/// `sym`, `sym+N` or `sym-N` → (sym, N). A bare number is not a symbol.
fn split_symbol(disp: &str) -> Option<(&str, i64)> {
    let at = disp.rfind(['+', '-']).filter(|&i| i > 0);
    let (name, plus) = match at {
        Some(i) => (&disp[..i], parse_int(disp[i..].trim_start_matches('+'))?),
        None => (disp, 0),
    };
    let first = name.chars().next()?;
    (first.is_ascii_alphabetic() || first == '_' || first == '.').then_some((name, plus))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<ArgSpec, OperandError> {
        parse(text, 0x1000, &|name| (name == "counter").then_some(0x4010))
    }

    /// The forms Debian's python3.11 and libstdc++ use, and the others the issue names.
    #[test]
    fn operand_forms() {
        let rbp = spec("8@%rbp").unwrap();
        assert_eq!(
            (rbp.how, rbp.reg, rbp.size, rbp.signed),
            (ARG_REG, 32, 8, 0)
        );
        let eax = spec("-4@%eax").unwrap();
        assert_eq!(
            (eax.how, eax.reg, eax.size, eax.signed),
            (ARG_REG, 80, 4, 1)
        );
        let mem = spec("8@-8(%rbp)").unwrap();
        assert_eq!((mem.how, mem.reg, mem.off, mem.size), (ARG_MEM, 32, -8, 8));
        let rsp = spec("-4@112(%rsp)").unwrap();
        assert_eq!(
            (rsp.how, rsp.reg, rsp.off, rsp.signed),
            (ARG_MEM, 152, 112, 1)
        );
        let constant = spec("4@$-5").unwrap();
        assert_eq!((constant.how, constant.off), (ARG_CONST, -5));
        let sym = spec("8@counter(%rip)").unwrap();
        assert_eq!((sym.how, sym.off), (ARG_MEM_IP, 0x3010));
        let plus = spec("4@counter+8(%rip)").unwrap();
        assert_eq!(plus.off, 0x3018);
        let bare = spec("%r12").unwrap();
        assert_eq!((bare.reg, bare.size, bare.signed), (24, 8, 0));
        assert_eq!(spec("2@%r9w").unwrap().reg, 64);
        assert_eq!(spec("1@%sil").unwrap().reg, 104);
        assert_eq!(spec("8@(%rdi)").unwrap().off, 0);
        assert_eq!(spec("8@0x10(%rdi)").unwrap().off, 16);
    }

    #[test]
    fn unsupported_operands_are_refused() {
        assert!(matches!(
            spec("8@-4(%rbp,%rax,8)"),
            Err(OperandError::Unsupported(_))
        ));
        assert!(matches!(spec("3@%rax"), Err(OperandError::Unsupported(_))));
        assert!(matches!(spec("8@%ah"), Err(OperandError::Register { .. })));
        assert!(matches!(spec("8@%r16"), Err(OperandError::Register { .. })));
        assert!(matches!(
            spec("8@missing(%rip)"),
            Err(OperandError::Symbol { .. })
        ));
        assert!(matches!(spec("8@rax"), Err(OperandError::Unsupported(_))));
    }
}
