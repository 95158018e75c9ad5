//! The probe table of one run: SPECs parsed and checked against their ELF files, each given
//! an id (the attach cookie). Nothing is attached here, so a bad SPEC anywhere in the list
//! stops the run before any probe exists.

use crate::{
    elf::{self, AttachTarget},
    spec::{Location, ProbeSpec, SpecError},
};

/// One probe of the run.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The id: index in the probe table, the attach cookie, the BPF counters' index.
    pub id: u32,
    /// The SPEC it came from.
    pub spec: ProbeSpec,
    /// Byte offset in the file of the probed instruction.
    pub file_offset: u64,
    /// The checked attach point (file identity, symbol).
    pub target: AttachTarget,
}

/// Why a SPEC cannot become a probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The SPEC does not parse.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The file, symbol or offset is not usable.
    #[error("{spec}: {source}")]
    Target {
        /// The SPEC.
        spec: String,
        /// What is wrong with it.
        #[source]
        source: elf::AttachError,
    },
    /// More SPECs than probe ids.
    #[error("too many probes: at most {max}")]
    TooMany {
        /// The limit.
        max: u32,
    },
}

/// Parses and checks every SPEC; the first bad one is the error.
pub fn prepare(specs: &[String]) -> Result<Vec<Probe>, ProbeError> {
    if specs.len() > probed_common::MAX_PROBES as usize {
        return Err(ProbeError::TooMany {
            max: probed_common::MAX_PROBES,
        });
    }
    specs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let spec: ProbeSpec = text.parse()?;
            let id = u32::try_from(i).expect("bounded by MAX_PROBES");
            prepare_one(id, spec)
        })
        .collect()
}

/// Checks one parsed SPEC against its file.
pub fn prepare_one(id: u32, spec: ProbeSpec) -> Result<Probe, ProbeError> {
    let target = match &spec.location {
        Location::Symbol { name, offset } => elf::resolve_attach(&spec.path, name, *offset),
        Location::FileOffset(off) => elf::resolve_attach_offset(&spec.path, *off),
    }
    .map_err(|source| ProbeError::Target {
        spec: spec.text.clone(),
        source,
    })?;
    Ok(Probe {
        id,
        file_offset: target.file_offset,
        spec,
        target,
    })
}
