//! The probe table of one run: SPECs parsed and checked against their ELF files, each given
//! an id (the attach cookie). Nothing is attached here, so a bad SPEC anywhere in the list
//! stops the run before any probe exists.

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    container::{ContainerError, ContainerRoot},
    elf::{self, AttachTarget, ElfImage},
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
    /// For a probe in a container: the file as resolved there (see [`crate::container`]).
    pub in_container: Option<InContainer>,
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
            None => self.spec.path.clone(),
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
            self.spec.path.clone()
        } else {
            std::fs::canonicalize(&self.spec.path).unwrap_or_else(|_| self.spec.path.clone())
        }
    }
}

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

/// Parses and checks every SPEC (paths inside `container`'s root if given); the first bad
/// one is the error.
pub fn prepare(
    specs: &[String],
    container: Option<&ContainerRoot>,
) -> Result<Vec<Probe>, ProbeError> {
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
            prepare_one(id, spec, container)
        })
        .collect()
}

/// Checks one parsed SPEC against its file: on the host, or with `container`, the file its
/// path names inside that container's root.
pub fn prepare_one(
    id: u32,
    spec: ProbeSpec,
    container: Option<&ContainerRoot>,
) -> Result<Probe, ProbeError> {
    let target_error = |source| ProbeError::Target {
        spec: spec.text.clone(),
        source,
    };
    let Some(root) = container else {
        let target = match &spec.location {
            Location::Symbol { name, offset } => elf::resolve_attach(&spec.path, name, *offset),
            Location::FileOffset(off) => elf::resolve_attach_offset(&spec.path, *off),
        }
        .map_err(target_error)?;
        return Ok(Probe {
            id,
            file_offset: target.file_offset,
            spec,
            target,
            in_container: None,
        });
    };
    let opened = root
        .open(&spec.path)
        .map_err(|source| ProbeError::Container {
            spec: spec.text.clone(),
            source,
        })?;
    let (image, target) =
        check_in(&opened.file, &opened.host_path, &spec.location).map_err(target_error)?;
    Ok(Probe {
        id,
        file_offset: target.file_offset,
        in_container: Some(InContainer {
            pid: root.pid().get(),
            host_path: opened.host_path,
            file: Some(Arc::new(opened.file)),
            image,
        }),
        spec,
        target,
    })
}

/// The attach point `location` in the open `file` (named `host_path` in messages).
fn check_in(
    file: &File,
    host_path: &Path,
    location: &Location,
) -> Result<(Arc<ElfImage>, AttachTarget), elf::AttachError> {
    let meta = file.metadata().map_err(|source| elf::ElfError::Io {
        path: host_path.to_owned(),
        source,
    })?;
    let image = ElfImage::from_file(file, &meta, host_path)?;
    let target = match location {
        Location::Symbol { name, offset } => image.attach_symbol(name, *offset),
        Location::FileOffset(off) => image.attach_offset(*off),
    }?;
    Ok((Arc::new(image), target))
}
