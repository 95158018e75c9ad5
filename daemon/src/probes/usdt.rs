//! A USDT SPEC's probe sites: the `.note.stapsdt` notes of `[provider:]name` in the file.

use super::ProbeError;
use crate::{
    elf::{self, ElfImage},
    spec::ProbeSpec,
};

/// The notes of the USDT probe `[provider:]name` in `image` (one per site).
pub(super) fn sites(
    spec: &ProbeSpec,
    image: &ElfImage,
    provider: Option<&str>,
    name: &str,
) -> Result<Vec<elf::UsdtNote>, ProbeError> {
    let notes = elf::read_notes(image.path()).map_err(|source| ProbeError::Usdt {
        spec: spec.text.clone(),
        source,
    })?;
    let sites: Vec<elf::UsdtNote> = notes
        .into_iter()
        .filter(|n| n.name == name && provider.is_none_or(|p| n.provider == p))
        .collect();
    if sites.is_empty() {
        return Err(ProbeError::NoUsdt {
            spec: spec.text.clone(),
            path: image.path().to_owned(),
            name: provider.map_or_else(|| name.to_owned(), |p| format!("{p}:{name}")),
        });
    }
    let mut providers: Vec<&str> = sites.iter().map(|n| n.provider.as_str()).collect();
    providers.dedup();
    if providers.len() > 1 {
        return Err(ProbeError::UsdtAmbiguous {
            spec: spec.text.clone(),
            name: name.into(),
            providers: providers.join(", "),
        });
    }
    Ok(sites)
}
