//! The names a hit's output carries — its module's path and its symbol — as shared strings
//! kept by each pipeline, so that resolving a hit allocates nothing once its names were seen.
//!
//! Why: a hit named with fresh `String`s cost two `malloc`s. Tracing `malloc` system-wide,
//! every one of them is a hit of probed itself — excluded in BPF, but only after the kernel
//! took the uprobe trap — so probed paid two traps per hit it printed (measured: 422,877
//! self-excluded hits for 205,752 printed in 4 s, 1.0 s of system time in probed).
//!
//! Each pipeline (each consumer thread) has its own table: cloning an `Arc` the thread alone
//! holds touches no cache line another thread writes, where one shared name per symbol would
//! bounce between consumer threads on every hit of a hot function.
//!
//! Entries are found by the address of what they name (the symbol in its ELF image, the path
//! in the resolver's snapshot) and kept only if the text still matches: an address reused by
//! another symbol or path after its image or snapshot was freed is found to differ and gets a
//! new name — never the old one.

use std::{os::unix::ffi::OsStrExt as _, path::Path, sync::Arc};

use rustc_hash::FxHashMap;

use crate::elf::Symbol;

/// Entries kept per table before it is emptied (a cache: names are made again on demand).
const MAX_ENTRIES: usize = 16 * 1024;

/// A pipeline's shared names.
#[derive(Default)]
pub struct Names {
    symbols: FxHashMap<usize, Arc<str>>,
    modules: FxHashMap<usize, Arc<str>>,
}

impl Names {
    /// `symbol`'s output name (demangled).
    pub fn symbol(&mut self, symbol: &Symbol) -> Arc<str> {
        let text = symbol.demangled();
        shared(
            &mut self.symbols,
            std::ptr::from_ref(symbol) as usize,
            text.as_bytes(),
            || text.into(),
        )
    }

    /// `path`'s output name (lossy UTF-8: a path that is not UTF-8 never matches its lossy
    /// name, so it is named anew each time).
    pub fn module(&mut self, path: &Path) -> Arc<str> {
        let bytes = path.as_os_str().as_bytes();
        // Compared as bytes: a kept name equal to them is the path's UTF-8, checked once.
        shared(&mut self.modules, bytes.as_ptr() as usize, bytes, || {
            path.to_string_lossy().into()
        })
    }
}

/// The table's string for `key` if it still reads `text`, else a new one (`make()`) put
/// there.
fn shared(
    table: &mut FxHashMap<usize, Arc<str>>,
    key: usize,
    text: &[u8],
    make: impl FnOnce() -> Arc<str>,
) -> Arc<str> {
    if let Some(name) = table.get(&key)
        && name.as_bytes() == text
    {
        return name.clone();
    }
    if table.len() >= MAX_ENTRIES {
        table.clear();
    }
    let name = make();
    table.insert(key, name.clone());
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::{SymbolBinding, SymbolKind};

    /// The same symbol twice: one string, shared.
    #[test]
    fn a_name_is_made_once() {
        let mut names = Names::default();
        let sym = Symbol::new(
            "malloc",
            0x10,
            8,
            SymbolKind::Function,
            SymbolBinding::Global,
        );
        let a = names.symbol(&sym);
        let b = names.symbol(&sym);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "malloc");
        let p = Path::new("/usr/lib/libc.so.6");
        assert!(Arc::ptr_eq(&names.module(p), &names.module(p)));
        // A path that is not UTF-8 is named lossily, each time.
        let odd = Path::new(std::ffi::OsStr::from_bytes(b"/lib/\xff.so"));
        assert_eq!(&*names.module(odd), "/lib/\u{fffd}.so");
        assert_eq!(&*names.module(odd), "/lib/\u{fffd}.so");
    }

    /// A key reused by other text (a freed image's address taken by another symbol) never
    /// answers the old name.
    #[test]
    fn a_reused_address_gets_its_own_name() {
        let mut table = FxHashMap::default();
        let mut name = |text: &'static str| shared(&mut table, 7, text.as_bytes(), || text.into());
        let old = name("free");
        let new = name("malloc");
        assert_eq!((&*old, &*new), ("free", "malloc"));
        let again = name("malloc");
        assert!(Arc::ptr_eq(&new, &again));
    }
}
