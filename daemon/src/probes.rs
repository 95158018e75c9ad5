//! The probe table of one run: SPECs parsed and checked against their ELF files, each given
//! an id (the attach cookie). Nothing is attached here, so a bad SPEC anywhere in the list
//! stops the run before any probe exists.
//!
//! A library name is resolved here (`libpath`), in the view of the `--pid`/`--container`
//! process if there is one; a wildcard becomes one probe per matching function address.
//!
//! This file holds the probe table's making: the probe, the scope, the SPECs expanded.
//! Around it in `probes/`: why a SPEC cannot become a probe (`error.rs`), the file a SPEC
//! names as the scope's process sees it (`file.rs`), and a USDT SPEC's sites (`usdt.rs`).

mod error;
mod file;
mod usdt;

pub use error::ProbeError;
use file::{file_path, load};
pub use usdt::matcher as usdt_matcher;

use std::{collections::HashMap, fs::File, num::NonZeroU32, path::PathBuf, sync::Arc};

use crate::{
    container::ContainerRoot,
    elf::{AttachTarget, ElfImage},
    spec::{Location, ProbeSpec},
    typed_args::ArgPlan,
};

/// One probe of the run.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The id: index in the probe table, the attach cookie, the BPF counters' index.
    pub id: u32,
    /// The SPEC: as written, or for one match of a wildcard, the SPEC naming that function
    /// (`uprobe:libc:malloc` out of `uprobe:libc:mall*`).
    pub spec: ProbeSpec,
    /// The file: the SPEC's path, or where its library name resolved (as the probed process
    /// or container sees it).
    pub path: PathBuf,
    /// For a wildcard match: the SPEC as written.
    pub pattern: Option<String>,
    /// Other names of the probed function that the wildcard matched too (attached once).
    pub aliases: Vec<String>,
    /// Byte offset in the file of the probed instruction.
    pub file_offset: u64,
    /// The checked attach point (file identity, symbol).
    pub target: AttachTarget,
    /// For a probe in a container: the file as resolved there (see [`crate::container`]).
    pub in_container: Option<InContainer>,
    /// Typed arguments (a SPEC's list, a USDT note's operands), evaluated in BPF.
    pub args: Option<ArgPlan>,
    /// A USDT probe's semaphore: its file offset, which the kernel increments in every
    /// process while the probe is attached (`ref_ctr_offset`).
    pub semaphore: Option<u64>,
}

/// Where a container probe's file was found.
#[derive(Clone, Debug)]
pub struct InContainer {
    /// The container's process the path was resolved through.
    pub pid: u32,
    /// `/proc/PID/root/PATH`: the file from the host.
    pub host_path: PathBuf,
    /// The file, open until the probe is attached through it ([`Probe::attach_path`]), then
    /// dropped ([`Probe::release_file`]) so as not to pin the container's mount.
    file: Option<Arc<File>>,
    /// The file's ELF image as checked, for the symbolizer (see `Symbolizer::preload`).
    pub image: Arc<ElfImage>,
}

impl Probe {
    /// The path to attach the uprobe to: the SPEC's path, or for a container probe
    /// `/proc/self/fd/N` of the very file that was checked.
    pub fn attach_path(&self) -> PathBuf {
        match self.in_container.as_ref().and_then(|c| c.file.as_ref()) {
            Some(file) => {
                use std::os::fd::AsRawFd as _;
                PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
            }
            None => self.path.clone(),
        }
    }

    /// What the tracer needs to attach it.
    pub fn attach_request(&self) -> crate::attach::AttachRequest {
        crate::attach::AttachRequest {
            id: self.id,
            kind: self.spec.kind,
            path: self.attach_path(),
            file_offset: self.file_offset,
            args: self.args.as_ref().map(|a| a.specs),
            semaphore: self.semaphore,
        }
    }

    /// Closes a container probe's file (once attached).
    pub fn release_file(&mut self) {
        if let Some(c) = &mut self.in_container {
            c.file = None;
        }
    }

    /// The path its processes know the file by, for output: the SPEC's path made canonical
    /// on the host, or, in a container, as written (it names a file there).
    pub fn module_path(&self) -> PathBuf {
        if self.in_container.is_some() {
            self.path.clone()
        } else {
            std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone())
        }
    }
}

/// The process a run is limited to, whose view of the file system library names resolve in.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scope<'a> {
    /// `--container`: SPEC paths name files in this root.
    pub container: Option<&'a ContainerRoot>,
    /// `--pid`.
    pub pid: Option<NonZeroU32>,
}

/// Parses and checks every SPEC (paths inside the container's root if given), expanding
/// library names and wildcards; the first bad one is the error.
pub fn prepare(specs: &[String], scope: Scope<'_>) -> Result<Vec<Probe>, ProbeError> {
    let max = probed_common::MAX_PROBES;
    let mut probes: Vec<Probe> = Vec::new();
    // A thousand SPECs in one library read and index its symbols once, not a thousand times
    // (`bench attach`: 1,000 libc SPECs spent most of their attach time here).
    let mut images = Images::default();
    for text in specs {
        let spec: ProbeSpec = text.parse()?;
        for mut probe in expand(spec, scope, &mut images)? {
            probe.id = u32::try_from(probes.len())
                .ok()
                .filter(|&id| id < max)
                .ok_or(ProbeError::TooMany { max })?;
            probes.push(probe);
        }
    }
    Ok(probes)
}

/// Checks one parsed SPEC that must be exactly one probe (no wildcard): the daemon's probe
/// `id`.
pub fn prepare_one(id: u32, spec: ProbeSpec, scope: Scope<'_>) -> Result<Probe, ProbeError> {
    if spec.location.is_pattern() {
        return Err(ProbeError::PatternNotAllowed { spec: spec.text });
    }
    let text = spec.text.clone();
    let mut probes = expand(spec, scope, &mut Images::default())?;
    // A USDT probe may be compiled in at several places (each a site with its own operands).
    if probes.len() != 1 {
        return Err(ProbeError::UsdtSites {
            spec: text,
            sites: probes.len(),
        });
    }
    let mut probe = probes.pop().expect("one probe");
    probe.id = id;
    Ok(probe)
}

/// The ELF images of host files read so far by one [`prepare`], by path.
type Images = HashMap<PathBuf, Arc<ElfImage>>;

/// The probes of one SPEC (ids 0: numbered by the caller): its file found (library names
/// resolved, container paths opened in the container) and checked, its location resolved —
/// one probe, or one per function address a wildcard matches.
fn expand(
    spec: ProbeSpec,
    scope: Scope<'_>,
    images: &mut Images,
) -> Result<Vec<Probe>, ProbeError> {
    let path = file_path(&spec, scope)?;
    let target_error = |source| ProbeError::Target {
        spec: spec.text.clone(),
        source,
    };
    let (image, in_container) = match scope.container {
        None => {
            let image = match images.get(&path) {
                Some(image) => image.clone(),
                None => {
                    let image =
                        Arc::new(ElfImage::open(&path).map_err(|e| target_error(e.into()))?);
                    images.insert(path.clone(), image.clone());
                    image
                }
            };
            (image, None)
        }
        Some(root) => {
            let opened = root.open(&path).map_err(|source| ProbeError::Container {
                spec: spec.text.clone(),
                source,
            })?;
            let image = load(&opened.file, &opened.host_path).map_err(target_error)?;
            let file = Arc::new(opened.file);
            let container = InContainer {
                pid: root.pid().get(),
                host_path: opened.host_path,
                file: Some(file),
                image: image.clone(),
            };
            (image, Some(container))
        }
    };
    let plan_error = |source| ProbeError::Args {
        spec: spec.text.clone(),
        source,
    };
    // A function probe's typed arguments (a USDT probe's come from its note, per site).
    let function_args = match (&spec.location, &spec.args) {
        (Location::Usdt { .. }, _) | (_, None) => None,
        (_, Some(list)) => Some(ArgPlan::for_function(spec.kind, list).map_err(plan_error)?),
    };
    let one = |spec: ProbeSpec, target: AttachTarget, pattern: Option<String>, aliases| Probe {
        id: 0,
        file_offset: target.file_offset,
        spec,
        path: path.clone(),
        pattern,
        aliases,
        target,
        in_container: in_container.clone(),
        args: function_args.clone(),
        semaphore: None,
    };
    match &spec.location {
        Location::Usdt { provider, name } => {
            let sites = usdt::sites(&spec, &image, provider.as_deref(), name)?;
            sites
                .into_iter()
                .map(|note| {
                    let at = |addr: u64| {
                        image
                            .vaddr_to_file_offset(addr)
                            .ok_or_else(|| ProbeError::UsdtAddress {
                                spec: spec.text.clone(),
                                path: path.clone(),
                                addr,
                            })
                    };
                    let target = image.attach_offset(at(note.pc)?).map_err(target_error)?;
                    let symbol = |name: &str| image.symbols().find(name).map(|sym| sym.addr);
                    let plan = ArgPlan::for_usdt(&note.args, note.pc, &symbol, spec.args.as_ref())
                        .map_err(plan_error)?;
                    // A wildcard's match is named by the SPEC of that very probe.
                    let mut probe = if spec.location.is_pattern() {
                        let concrete = ProbeSpec {
                            text: format!(
                                "usdt:{}:{}:{}{}",
                                spec.file,
                                note.provider,
                                note.name,
                                spec.args
                                    .as_ref()
                                    .map(ToString::to_string)
                                    .unwrap_or_default()
                            ),
                            location: Location::Usdt {
                                provider: Some(note.provider.clone()),
                                name: note.name.clone(),
                            },
                            ..spec.clone()
                        };
                        one(concrete, target, Some(spec.text.clone()), Vec::new())
                    } else {
                        one(spec.clone(), target, None, Vec::new())
                    };
                    probe.args = Some(plan);
                    probe.semaphore = note.semaphore.map(at).transpose()?;
                    Ok(probe)
                })
                .collect()
        }
        Location::Symbol { name, offset } => {
            let target = image.attach_symbol(name, *offset).map_err(target_error)?;
            Ok(vec![one(spec, target, None, Vec::new())])
        }
        Location::FileOffset(off) => {
            let target = image.attach_offset(*off).map_err(target_error)?;
            Ok(vec![one(spec, target, None, Vec::new())])
        }
        Location::Pattern(glob) => {
            let matches = image.symbols().matching(glob);
            if matches.is_empty() {
                return Err(ProbeError::NoMatch {
                    spec: spec.text.clone(),
                    path: path.clone(),
                    pattern: glob.as_str().into(),
                });
            }
            let kind = spec.text.split_once(':').map_or("uprobe", |(k, _)| k);
            matches
                .iter()
                .map(|m| {
                    let target = image.attach_found(m.symbol, 0).map_err(target_error)?;
                    // Named so that the SPEC finds this very function again: without its
                    // version unless that is an old one (`memcpy@GLIBC_2.2.5`).
                    let sym = &m.symbol.name;
                    let name = if sym.contains('@') && !sym.contains("@@") {
                        sym.to_string()
                    } else {
                        m.symbol.bare_name().to_owned()
                    };
                    let concrete = ProbeSpec {
                        text: format!(
                            "{kind}:{}:{name}{}",
                            spec.file,
                            spec.args
                                .as_ref()
                                .map(ToString::to_string)
                                .unwrap_or_default()
                        ),
                        kind: spec.kind,
                        file: spec.file.clone(),
                        location: Location::Symbol { name, offset: 0 },
                        args: spec.args.clone(),
                    };
                    let aliases = m.aliases.iter().map(|a| a.to_string()).collect();
                    Ok(one(concrete, target, Some(spec.text.clone()), aliases))
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Where a SPEC must be one probe (the daemon), a wildcard is refused with a pointer to
    /// `probed list`; elsewhere it expands, and a library name resolves.
    #[test]
    fn wildcards_and_libraries() {
        let spec: ProbeSpec = "uprobe:libc:mallo*".parse().unwrap();
        let err = prepare_one(0, spec, Scope::default()).unwrap_err();
        assert!(
            matches!(err, ProbeError::PatternNotAllowed { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("probed list 'uprobe:libc:mallo*'"),
            "{err}"
        );
        let probes = prepare(&["uprobe:libc:mallo*".into()], Scope::default()).unwrap();
        assert!(probes.iter().any(|p| p.spec.text == "uprobe:libc:malloc"));
        assert!(
            probes
                .iter()
                .all(|p| p.pattern.as_deref() == Some("uprobe:libc:mallo*"))
        );
        let ids: Vec<u32> = probes.iter().map(|p| p.id).collect();
        assert_eq!(ids, (0..probes.len() as u32).collect::<Vec<_>>());
        let one = prepare_one(7, "uprobe:libc:malloc".parse().unwrap(), Scope::default()).unwrap();

        assert_eq!(one.id, 7);
        assert!(
            one.path.to_string_lossy().ends_with("libc.so.6"),
            "{:?}",
            one.path
        );
    }

    /// A USDT wildcard becomes one probe per matching site, each named by its own SPEC and
    /// carrying the pattern; where a SPEC must be one probe it is refused.
    #[test]
    fn usdt_wildcards() {
        let python = "/usr/bin/python3.11";
        if !Path::new(python).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{python} is missing (the CI image installs it)"
            );
            return;
        }
        let text = format!("usdt:{python}:python:function__*");
        let probes = prepare(std::slice::from_ref(&text), Scope::default()).unwrap();
        let mut names: Vec<&str> = probes.iter().map(|p| p.spec.text.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(
            names,
            [
                format!("usdt:{python}:python:function__entry"),
                format!("usdt:{python}:python:function__return")
            ]
        );
        assert!(
            probes
                .iter()
                .all(|p| p.pattern.as_deref() == Some(text.as_str()))
        );
        assert!(
            probes
                .iter()
                .all(|p| p.semaphore.is_some() && p.args.is_some())
        );
        // `usdt:PATH:*` takes every provider's probes: python3.11 (Debian's) has 8, one
        // site each.
        let all = prepare(&[format!("usdt:{python}:*")], Scope::default()).unwrap();
        let mut kinds: Vec<&str> = all.iter().map(|p| p.spec.text.as_str()).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!((all.len(), kinds.len()), (8, 8), "{kinds:?}");
        let err = prepare_one(0, text.parse().unwrap(), Scope::default()).unwrap_err();
        assert!(
            matches!(err, ProbeError::PatternNotAllowed { .. }),
            "{err:?}"
        );
        let err = prepare(&[format!("usdt:{python}:nosuch*")], Scope::default()).unwrap_err();
        assert!(matches!(err, ProbeError::NoUsdt { .. }), "{err:?}");
    }
}
