//! Wildcard SPECs: the functions of a file whose name matches a [`Glob`], one per address.

use super::{Symbol, SymbolTable};
use crate::glob::Glob;

/// One probe point a pattern expands to.
#[derive(Clone, Debug)]
pub struct PatternMatch<'a> {
    /// The symbol probed (the preferred matching one at its address).
    pub symbol: &'a Symbol,
    /// Other matching names at the same address (aliases: `__libc_malloc` for `malloc`),
    /// attached once, under `symbol`.
    pub aliases: Vec<&'a str>,
}

/// Whether `sym`'s name matches in any of the forms a SPEC may use: raw (`_ZN2ns…`,
/// `memcpy@@GLIBC_2.14`), without version (`memcpy`), demangled (`ns::Widget::poke(int)`)
/// and demangled without its parameter list (`ns::Widget::poke`).
pub fn name_matches(glob: &Glob, sym: &Symbol) -> bool {
    let demangled = sym.demangled();
    let bare_demangled = demangled.split_once('@').map_or(demangled, |(b, _)| b);
    glob.matches(&sym.name)
        || glob.matches(sym.bare_name())
        || glob.matches(bare_demangled)
        || bare_demangled
            .split_once('(')
            .is_some_and(|(without, _)| glob.matches(without))
}

impl SymbolTable {
    /// The functions matching `glob`, in address order, each address once.
    pub fn matching(&self, glob: &Glob) -> Vec<PatternMatch<'_>> {
        let mut out: Vec<PatternMatch<'_>> = Vec::new();
        // Symbols are sorted by address and then by preference, so the first match at an
        // address is the one to probe and later ones at that address are its aliases.
        for sym in self.iter().filter(|s| s.kind.is_code()) {
            if !name_matches(glob, sym) {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.symbol.addr == sym.addr => {
                    let name = sym.bare_name();
                    if name != last.symbol.bare_name() && !last.aliases.contains(&name) {
                        last.aliases.push(name);
                    }
                }
                _ => out.push(PatternMatch {
                    symbol: sym,
                    aliases: Vec::new(),
                }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::{SymbolBinding, SymbolKind};

    fn sym(name: &str, addr: u64, kind: SymbolKind, binding: SymbolBinding) -> Symbol {
        Symbol::new(name, addr, 8, kind, binding)
    }

    /// Raw, versionless and demangled names match; data does not; aliases at one address
    /// are folded into one match under the preferred (global) name.
    #[test]
    fn matches_by_every_name_form_once_per_address() {
        use SymbolBinding::*;
        use SymbolKind::*;
        let table = SymbolTable::new(vec![
            sym("read", 0x100, Function, Global),
            sym("__read", 0x100, Function, Local),
            sym("readline", 0x200, Function, Global),
            sym("read_data", 0x300, Object, Global),
            sym("readdir@@GLIBC_2.2.5", 0x400, Function, Global),
            sym("_ZN2ns6Widget4pokeEi", 0x500, Function, Global),
            sym("_ZN2ns6Widget4prodEv", 0x600, Function, Global),
            sym("_ZN2ns6Gadget4pokeEi", 0x700, Function, Global),
        ]);
        let names = |pattern: &str| -> Vec<(String, Vec<String>)> {
            table
                .matching(&Glob::new(pattern).unwrap())
                .iter()
                .map(|m| {
                    (
                        m.symbol.bare_name().to_owned(),
                        m.aliases.iter().map(|a| a.to_string()).collect(),
                    )
                })
                .collect()
        };
        assert_eq!(
            names("read*"),
            [
                ("read".into(), vec![]),
                ("readline".into(), vec![]),
                ("readdir".into(), vec![])
            ]
        );
        assert_eq!(
            names("*read"),
            [("read".to_string(), vec!["__read".to_string()])]
        );
        assert_eq!(
            names("ns::Widget::*")
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
            ["_ZN2ns6Widget4pokeEi", "_ZN2ns6Widget4prodEv"]
        );
        assert_eq!(names("*::poke").len(), 2, "demangled without parameters");
        assert_eq!(names("_ZN2ns6Gadget*").len(), 1, "raw mangled");
        assert!(names("nothing*").is_empty());
    }
}
