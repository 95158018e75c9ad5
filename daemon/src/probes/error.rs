//! Why a SPEC cannot become a probe (`ProbeError`): one variant per cause, each naming
//! the SPEC it is about (but `TooMany`, which is about them all).
//!
//! Apart from the probe table's making (`probes.rs`): what can go wrong, said once, and
//! carried as it is by the daemon's own errors (`service/op_error.rs`).

use std::path::PathBuf;

use crate::{
    container::ContainerError, elf, libpath::LibraryError, spec::SpecError, typed_args::PlanError,
};

/// Why a SPEC cannot become a probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The SPEC does not parse.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The file is not in the container (or the container is gone).
    #[error("{spec}: {source}")]
    Container {
        /// The SPEC.
        spec: String,
        /// What is wrong.
        #[source]
        source: ContainerError,
    },
    /// The library name resolves to no file, or to several.
    #[error("{spec}: {source}")]
    Library {
        /// The SPEC.
        spec: String,
        /// What is wrong.
        #[source]
        source: LibraryError,
    },
    /// The file, symbol or offset is not usable.
    #[error("{spec}: {source}")]
    Target {
        /// The SPEC.
        spec: String,
        /// What is wrong with it.
        #[source]
        source: elf::AttachError,
    },
    /// The argument list or the USDT operands cannot be evaluated.
    #[error("{spec}: {source}")]
    Args {
        /// The SPEC.
        spec: String,
        /// What is wrong.
        #[source]
        source: PlanError,
    },
    /// The file has no USDT probe of that name.
    #[error(
        "{spec}: no USDT probe `{name}` in {path} (list them with `probed list 'usdt:{path}:*'`)"
    )]
    NoUsdt {
        /// The SPEC.
        spec: String,
        /// The file searched.
        path: PathBuf,
        /// The probe as written (`provider:name` or `name`).
        name: String,
    },
    /// `usdt:PATH:NAME` where several providers have a probe `NAME`.
    #[error(
        "{spec}: several providers have a USDT probe `{name}` ({providers}): say which, as usdt:PATH:PROVIDER:{name}"
    )]
    UsdtAmbiguous {
        /// The SPEC.
        spec: String,
        /// The name.
        name: String,
        /// The providers, comma-separated.
        providers: String,
    },
    /// The USDT notes could not be read.
    #[error("{spec}: {source}")]
    Usdt {
        /// The SPEC.
        spec: String,
        /// What is wrong.
        #[source]
        source: elf::UsdtError,
    },
    /// A USDT probe with several sites where a SPEC must be one probe.
    #[error(
        "{spec}: the USDT probe has {sites} sites; a daemon probe is one site (use `probed trace`, which attaches every site)"
    )]
    UsdtSites {
        /// The SPEC.
        spec: String,
        /// How many.
        sites: usize,
    },
    /// A note's address is not in the file's loaded segments.
    #[error("{spec}: the USDT probe's address {addr:#x} is not in a loaded segment of {path}")]
    UsdtAddress {
        /// The SPEC.
        spec: String,
        /// The file.
        path: PathBuf,
        /// The address.
        addr: u64,
    },
    /// A wildcard matches no function.
    #[error("{spec}: no function in {path} matches `{pattern}`")]
    NoMatch {
        /// The SPEC.
        spec: String,
        /// The file searched.
        path: PathBuf,
        /// The wildcard.
        pattern: String,
    },
    /// Wildcards where each SPEC must be exactly one probe (the daemon's config and `ctl
    /// add`: a probe's identity there is its SPEC).
    #[error(
        "{spec}: wildcards are not supported here (a daemon probe is one function); list the matches with `probed list '{spec}'` and give each its own SPEC"
    )]
    PatternNotAllowed {
        /// The SPEC.
        spec: String,
    },
    /// More SPECs (or wildcard matches) than probe ids.
    #[error("too many probes: at most {max}")]
    TooMany {
        /// The limit.
        max: u32,
    },
}
