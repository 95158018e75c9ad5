//! ELF symbols and the sorted table that maps addresses and names to them.

use std::sync::OnceLock;

use super::{demangle::demangle, suggest};

/// What a symbol names. Only these kinds are kept: they are the ones an address in a mapped
/// file can belong to (`STT_TLS` values are offsets into a TLS block, `STT_SECTION` and
/// `STT_FILE` name no code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SymbolKind {
    /// `STT_FUNC`: code.
    Function,
    /// `STT_GNU_IFUNC`: the resolver that picks an implementation at load time (glibc's
    /// `memcpy`, `strlen`…); its address is the resolver's, not the implementation's.
    IndirectFunction,
    /// `STT_OBJECT`: data.
    Object,
}

impl SymbolKind {
    /// A stable short name for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Function => "func",
            Self::IndirectFunction => "ifunc",
            Self::Object => "object",
        }
    }

    /// True for kinds whose address is code a uprobe can be placed on.
    pub fn is_code(self) -> bool {
        matches!(self, Self::Function | Self::IndirectFunction)
    }
}

/// A symbol's binding, ordered by preference when several symbols share an address or name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SymbolBinding {
    /// `STB_GLOBAL` (and `STB_GNU_UNIQUE`).
    Global,
    /// `STB_WEAK`.
    Weak,
    /// `STB_LOCAL` (`static` functions; only in `.symtab`).
    Local,
}

/// One defined function or data symbol.
#[derive(Clone, Debug)]
pub struct Symbol {
    /// The name as stored in the file (mangled, possibly with an `@VERSION` suffix).
    pub name: Box<str>,
    /// `st_value`: a virtual address in the file's own layout (not a file offset).
    pub addr: u64,
    /// `st_size` in bytes; 0 when the symbol has no recorded size.
    pub size: u64,
    /// Function, indirect function or data.
    pub kind: SymbolKind,
    /// Global, weak or local.
    pub binding: SymbolBinding,
    /// The demangled name, computed on first use and then shared by every hit on the symbol
    /// (`None` inside: the name is not mangled).
    demangled: OnceLock<Option<Box<str>>>,
}

impl Symbol {
    /// A symbol named `name` (raw, as stored in the file).
    pub fn new(
        name: impl Into<Box<str>>,
        addr: u64,
        size: u64,
        kind: SymbolKind,
        binding: SymbolBinding,
    ) -> Self {
        Self {
            name: name.into(),
            addr,
            size,
            kind,
            binding,
            demangled: OnceLock::new(),
        }
    }

    /// The name without a symbol-version suffix: `malloc` for `malloc@@GLIBC_2.2.5`.
    pub fn bare_name(&self) -> &str {
        bare(&self.name)
    }

    /// The demangled name for Rust and C++ symbols, else the raw name. Demangled once per
    /// symbol, on first call.
    pub fn demangled(&self) -> &str {
        self.demangled
            .get_or_init(|| demangle(&self.name).map(String::into_boxed_str))
            .as_deref()
            .unwrap_or(&self.name)
    }

    /// The first address past the symbol (its own address for a zero-size symbol).
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }

    /// True when `vaddr` belongs to the symbol: inside `[addr, addr + size)`, or equal to
    /// `addr` for a zero-size symbol (whose extent is unknown, so only its start is claimed).
    pub fn contains(&self, vaddr: u64) -> bool {
        if self.size == 0 {
            vaddr == self.addr
        } else {
            vaddr >= self.addr && vaddr - self.addr < self.size
        }
    }

    /// The order among symbols at the same address: code first, then global, then the
    /// larger one, then by name so the choice is deterministic.
    fn preference(&self) -> impl Ord + '_ {
        (
            self.kind,
            self.binding,
            std::cmp::Reverse(self.size),
            &self.name,
        )
    }
}

/// `name` without its `@VERSION` / `@@VERSION` suffix.
fn bare(name: &str) -> &str {
    name.split_once('@').map_or(name, |(base, _)| base)
}

/// The symbols of one file, sorted by address for lookups.
#[derive(Clone, Debug, Default)]
pub struct SymbolTable {
    /// Sorted by address, then by [`Symbol::preference`].
    syms: Vec<Symbol>,
    /// `max_end[i]` is the largest extent end among `syms[..=i]` (a zero-size symbol counts
    /// as one byte). An address at or past it is outside every symbol up to `i`, which bounds
    /// the backward scan of [`SymbolTable::symbolize`] when symbols nest or overlap.
    max_end: Vec<u64>,
}

impl SymbolTable {
    /// Builds a table from the symbols of `.symtab` and `.dynsym` together. A symbol present
    /// in both (same address, same name up to the version suffix, same kind) is kept once,
    /// under its shorter name, with the larger size and the stronger binding.
    pub fn new(syms: Vec<Symbol>) -> Self {
        // Bare-name lengths computed once: the sort compares bare names O(n log n) times,
        // and scanning long Rust names for '@' each time dominated loading.
        let mut keyed: Vec<(usize, Symbol)> =
            syms.into_iter().map(|s| (s.bare_name().len(), s)).collect();
        fn key((bare_len, s): &(usize, Symbol)) -> (u64, &str, SymbolKind) {
            (s.addr, &s.name[..*bare_len], s.kind)
        }
        keyed.sort_by(|a, b| {
            key(a)
                .cmp(&key(b))
                .then(a.1.name.len().cmp(&b.1.name.len()))
        });
        // `dedup_by` passes the later element first and keeps the earlier (shorter) one.
        keyed.dedup_by(|later, kept| {
            let same = key(later) == key(kept);
            if same {
                kept.1.size = kept.1.size.max(later.1.size);
                kept.1.binding = kept.1.binding.min(later.1.binding);
            }
            same
        });
        let mut syms: Vec<Symbol> = keyed.into_iter().map(|(_, s)| s).collect();
        syms.sort_by(|a, b| (a.addr, a.preference()).cmp(&(b.addr, b.preference())));
        let mut max_end = Vec::with_capacity(syms.len());
        let mut running = 0;
        for s in &syms {
            running = std::cmp::max(running, s.end().max(s.addr.saturating_add(1)));
            max_end.push(running);
        }
        Self { syms, max_end }
    }

    /// The number of symbols.
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    /// True when the file has no usable symbols.
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// The symbols, sorted by address.
    pub fn iter(&self) -> impl Iterator<Item = &Symbol> {
        self.syms.iter()
    }

    /// The symbol at `index` in address order.
    pub fn get(&self, index: usize) -> Option<&Symbol> {
        self.syms.get(index)
    }

    /// The symbol that `vaddr` belongs to and how far into it `vaddr` is.
    ///
    /// Sizes are respected: an address past the end of a symbol is not that symbol, and a
    /// zero-size symbol only claims its own address. When symbols nest, the innermost
    /// (highest start address) wins; among symbols at the same address, a function beats
    /// data and a global beats a weak or local alias. Binary search, then a backward scan
    /// that stops as soon as no earlier symbol can reach `vaddr`.
    pub fn symbolize(&self, vaddr: u64) -> Option<(&Symbol, u64)> {
        let index = self.symbolize_index(vaddr)?;
        let sym = &self.syms[index];
        Some((sym, vaddr - sym.addr))
    }

    /// Like [`SymbolTable::symbolize`], returning the symbol's index.
    pub fn symbolize_index(&self, vaddr: u64) -> Option<usize> {
        let upto = self.syms.partition_point(|s| s.addr <= vaddr);
        let mut found: Option<usize> = None;
        for i in (0..upto).rev() {
            if self.max_end[i] <= vaddr {
                break;
            }
            let sym = &self.syms[i];
            match found {
                // Symbols at the found address sort by preference: keep walking back.
                Some(f) if self.syms[f].addr != sym.addr => break,
                _ if sym.contains(vaddr) => found = Some(i),
                _ => {}
            }
        }
        found
    }

    /// The symbol to attach to for `name`.
    ///
    /// Tried in order, first tier with a match wins: the exact raw name; the name without
    /// its version suffix (`malloc` finds `malloc@@GLIBC_2.2.5`); the demangled name, with or
    /// without a C++ parameter list (`ns::f` finds `ns::f(int)`). Within a tier: functions
    /// beat data, a default version (`@@`) beats an old one (`@`), global beats weak beats
    /// local, and then the lowest address.
    pub fn find(&self, name: &str) -> Option<&Symbol> {
        let rank = |s: &&Symbol| {
            let old_version = s.name.contains('@') && !s.name.contains("@@");
            (s.kind, old_version, s.binding, s.addr)
        };
        let exact = self
            .syms
            .iter()
            .filter(|s| &*s.name == name)
            .min_by_key(rank);
        if exact.is_some() {
            return exact;
        }
        if !name.contains('@') {
            let by_bare = self
                .syms
                .iter()
                .filter(|s| s.bare_name() == name)
                .min_by_key(rank);
            if by_bare.is_some() {
                return by_bare;
            }
        }
        self.syms
            .iter()
            .filter(|s| {
                let d = bare(s.demangled());
                d == name
                    || d.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('('))
            })
            .min_by_key(rank)
    }

    /// Up to `n` names of functions in the table that look like `name`, best first, for
    /// "symbol not found, did you mean …" messages. Names are given demangled and without
    /// version suffix, a form [`SymbolTable::find`] accepts.
    pub fn closest_names(&self, name: &str, n: usize) -> Vec<String> {
        let candidates = self
            .syms
            .iter()
            .filter(|s| s.kind.is_code())
            .map(|s| bare(s.demangled()));
        suggest::closest(name, candidates, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn func(name: &str, addr: u64, size: u64) -> Symbol {
        Symbol::new(
            name,
            addr,
            size,
            SymbolKind::Function,
            SymbolBinding::Global,
        )
    }

    /// Addresses inside a symbol map to it with the right offset; past its end they do not.
    #[test]
    fn sizes_are_respected() {
        let table = SymbolTable::new(vec![func("a", 0x100, 0x10), func("b", 0x200, 0x20)]);
        let (s, off) = table.symbolize(0x10f).unwrap();
        assert_eq!((&*s.name, off), ("a", 0xf));
        assert!(table.symbolize(0x110).is_none(), "one past the end of a");
        assert!(table.symbolize(0x1ff).is_none(), "gap between a and b");
        assert!(table.symbolize(0xff).is_none(), "before any symbol");
        assert_eq!(&*table.symbolize(0x21f).unwrap().0.name, "b");
        assert!(table.symbolize(0x220).is_none());
    }

    /// A zero-size symbol matches its own address only, and does not hide an enclosing one.
    #[test]
    fn zero_size_symbols_match_only_their_address() {
        let table = SymbolTable::new(vec![func("outer", 0x100, 0x100), func("label", 0x140, 0)]);
        assert_eq!(&*table.symbolize(0x140).unwrap().0.name, "label");
        let (s, off) = table.symbolize(0x141).unwrap();
        assert_eq!((&*s.name, off), ("outer", 0x41));
    }

    /// A nested symbol wins inside its range; the enclosing one is found around it, even
    /// across many small symbols in between.
    #[test]
    fn nested_symbols_prefer_the_innermost() {
        let mut syms = vec![func("big", 0x1000, 0x1000), func("inner", 0x1100, 0x10)];
        for i in 0..50 {
            syms.push(func(&format!("tiny{i}"), 0x1200 + i * 4, 2));
        }
        let table = SymbolTable::new(syms);
        assert_eq!(&*table.symbolize(0x1105).unwrap().0.name, "inner");
        assert_eq!(&*table.symbolize(0x1110).unwrap().0.name, "big");
        assert_eq!(&*table.symbolize(0x1202).unwrap().0.name, "big");
        assert_eq!(&*table.symbolize(0x1201).unwrap().0.name, "tiny0");
        assert!(table.symbolize(0x2000).is_none());
    }

    /// The same symbol from .symtab and .dynsym is kept once; aliases at one address are
    /// both kept and the global function is the one an address resolves to.
    #[test]
    fn merge_dedupes_and_prefers_global_functions() {
        let mut local = func("__libc_malloc", 0x500, 0x40);
        local.binding = SymbolBinding::Local;
        let mut data = func("malloc_table", 0x500, 0x40);
        data.kind = SymbolKind::Object;
        let table = SymbolTable::new(vec![
            func("malloc@@GLIBC_2.2.5", 0x500, 0x40),
            func("malloc", 0x500, 0),
            local,
            data,
        ]);
        assert_eq!(table.len(), 3);
        let (s, _) = table.symbolize(0x510).unwrap();
        assert_eq!((&*s.name, s.size), ("malloc", 0x40));
    }

    /// Name lookup: exact, then without version (default version first), then demangled;
    /// a function beats a data symbol of the same name.
    #[test]
    fn find_by_name() {
        let mut obj = func("dup", 0x10, 8);
        obj.kind = SymbolKind::Object;
        let table = SymbolTable::new(vec![
            obj,
            func("dup", 0x900, 8),
            func("memcpy@GLIBC_2.2.5", 0x100, 8),
            func("memcpy@@GLIBC_2.14", 0x200, 8),
            func("_ZN2ns6Widget4pokeEi", 0x300, 8),
            func("_RNvCs1234_7mycrate3run", 0x400, 8),
        ]);
        assert_eq!(table.find("dup").unwrap().addr, 0x900);
        assert_eq!(table.find("memcpy").unwrap().addr, 0x200);
        assert_eq!(table.find("memcpy@GLIBC_2.2.5").unwrap().addr, 0x100);
        assert_eq!(table.find("ns::Widget::poke").unwrap().addr, 0x300);
        assert_eq!(table.find("ns::Widget::poke(int)").unwrap().addr, 0x300);
        assert_eq!(table.find("mycrate::run").unwrap().addr, 0x400);
        assert!(table.find("ns::Widget::pok").is_none());
        assert!(table.find("nothing").is_none());
    }

    /// Demangled names are computed on demand and raw names survive.
    #[test]
    fn demangled_alongside_raw() {
        let s = func("_ZN7mycrate4main17h0123456789abcdefE", 1, 1);
        assert_eq!(s.demangled(), "mycrate::main");
        assert_eq!(&*s.name, "_ZN7mycrate4main17h0123456789abcdefE");
        assert_eq!(func("plain", 1, 1).demangled(), "plain");
    }
}
