//! Demangling of Rust (legacy and v0) and C++ (Itanium) symbol names.

/// The human-readable form of a mangled symbol name, or `None` if `raw` is not a name this
/// function recognises as mangled (a C name, say).
///
/// Rust names (`_R…` v0, `_ZN…17h<hash>E` legacy) are tried first and printed without the
/// hash; then Itanium C++ (`_Z…`). A symbol-version suffix (`@GLIBCXX_3.4`, `@@…`) is kept
/// as is after the demangled part.
pub fn demangle(raw: &str) -> Option<String> {
    let (base, version) = match raw.find('@') {
        Some(at) => raw.split_at(at),
        None => (raw, ""),
    };
    let demangled = demangle_rust(base).or_else(|| demangle_cpp(base))?;
    Some(demangled + version)
}

fn demangle_rust(name: &str) -> Option<String> {
    if !(name.starts_with("_R") || name.starts_with("_ZN") || name.starts_with("__ZN")) {
        return None;
    }
    // `{:#}` leaves out the legacy hash (`::h0123…`) and v0 crate disambiguators.
    rustc_demangle::try_demangle(name)
        .ok()
        .map(|d| format!("{d:#}"))
}

fn demangle_cpp(name: &str) -> Option<String> {
    if !name.starts_with("_Z") {
        return None;
    }
    cpp_demangle::Symbol::new(name.as_bytes())
        .ok()?
        .demangle()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Rust v0 name demangles to its path without the crate disambiguator.
    #[test]
    fn rust_v0() {
        assert_eq!(
            demangle("_RNvNtCs1234_7mycrate6module4func").as_deref(),
            Some("mycrate::module::func")
        );
    }

    /// A Rust legacy name demangles to its path without the hash.
    #[test]
    fn rust_legacy() {
        assert_eq!(
            demangle("_ZN7mycrate6module4func17h0123456789abcdefE").as_deref(),
            Some("mycrate::module::func")
        );
    }

    /// A C++ name demangles with its parameter types; compiler clone suffixes survive.
    #[test]
    fn cpp_itanium() {
        assert_eq!(
            demangle("_ZN2ns6Widget4pokeEi").as_deref(),
            Some("ns::Widget::poke(int)")
        );
        let cold = demangle("_ZN2ns6Widget4pokeEi.cold").expect("clone suffix demangles");
        assert!(cold.starts_with("ns::Widget::poke(int)"), "{cold}");
    }

    /// A version suffix is kept after the demangled name.
    #[test]
    fn version_suffix_is_kept() {
        assert_eq!(
            demangle("_ZNSt9exceptionD2Ev@@GLIBCXX_3.4").as_deref(),
            Some("std::exception::~exception()@@GLIBCXX_3.4")
        );
    }

    /// Plain C names and garbage are not demangled.
    #[test]
    fn c_names_are_left_alone() {
        assert_eq!(demangle("malloc"), None);
        assert_eq!(demangle("malloc@@GLIBC_2.2.5"), None);
        assert_eq!(demangle("_Zjunk"), None);
        assert_eq!(demangle("_R"), None);
        assert_eq!(demangle(""), None);
    }
}
