//! A USDT SPEC's probe sites: the `.note.stapsdt` notes of `[provider:]name` in the file,
//! either part possibly a wildcard.

use super::ProbeError;
use crate::{
    elf::{self, ElfImage, UsdtNote},
    glob::{Glob, GlobError},
    spec::ProbeSpec,
};

/// Which notes `[provider:]name` names: both parts match (as globs; a plain name matches
/// itself), or with no provider, the name matches the note's name or its
/// `provider:name`. `probed list` and `usdt:` SPECs match alike.
pub fn matcher(
    provider: Option<&str>,
    name: &str,
) -> Result<impl Fn(&UsdtNote) -> bool + use<>, GlobError> {
    let provider = provider.map(Glob::new).transpose()?;
    let name = Glob::new(name)?;
    Ok(move |note: &UsdtNote| match &provider {
        Some(p) => p.matches(&note.provider) && name.matches(&note.name),
        None => {
            name.matches(&note.name) || name.matches(&format!("{}:{}", note.provider, note.name))
        }
    })
}

/// The notes of the USDT probe `[provider:]name` in `image` (one per site; for a wildcard,
/// every site of every matching probe).
pub(super) fn sites(
    spec: &ProbeSpec,
    image: &ElfImage,
    provider: Option<&str>,
    name: &str,
) -> Result<Vec<UsdtNote>, ProbeError> {
    let notes = elf::read_notes(image.path()).map_err(|source| ProbeError::Usdt {
        spec: spec.text.clone(),
        source,
    })?;
    // The parser checked the globs.
    let matches = matcher(provider, name).map_err(|source| {
        ProbeError::Spec(crate::spec::SpecError::Glob {
            spec: spec.text.clone(),
            source,
        })
    })?;
    let sites: Vec<UsdtNote> = notes.into_iter().filter(|n| matches(n)).collect();
    if sites.is_empty() {
        return Err(ProbeError::NoUsdt {
            spec: spec.text.clone(),
            path: image.path().to_owned(),
            name: provider.map_or_else(|| name.to_owned(), |p| format!("{p}:{name}")),
        });
    }
    if !spec.location.is_pattern() {
        let mut providers: Vec<&str> = sites.iter().map(|n| n.provider.as_str()).collect();
        providers.dedup();
        if providers.len() > 1 {
            return Err(ProbeError::UsdtAmbiguous {
                spec: spec.text.clone(),
                name: name.into(),
                providers: providers.join(", "),
            });
        }
    }
    Ok(sites)
}
