//! `probed list PATTERN`: the probe points a pattern names, without attaching anything (like
//! `bpftrace -l`).
//!
//! ```text
//! uprobe:FILE:GLOB            functions (.symtab + .dynsym), one line per name
//! usdt:FILE:GLOB              USDT probes whose name or provider:name matches
//! usdt:FILE:PROVIDER:NAME     globs on each part
//! ```
//! FILE is a path or a library name (resolved as for `probed trace`, in `--pid`'s view).
//! USDT lines carry the probe's argument specs and whether it has a semaphore.

use std::{
    io::{self, Write},
    num::NonZeroU32,
    path::PathBuf,
};

use clap::Args;

use crate::{
    elf::{self, ElfImage},
    glob::{Glob, GlobError},
    libpath::{self, LibraryError, Lookup},
};

/// `probed list PATTERN [--pid PID]`.
#[derive(Args, Clone, Debug)]
pub struct ListArgs {
    /// What to list: uprobe:FILE:GLOB, usdt:FILE:GLOB or usdt:FILE:PROVIDER:NAME (FILE a
    /// path or a library name such as libc; GLOB with *, ? and […]).
    #[arg(value_name = "PATTERN")]
    pub pattern: String,
    /// Resolve library names as this process sees them (its mappings and root first).
    #[arg(long, value_name = "PID")]
    pub pid: Option<NonZeroU32>,
}

/// Why a listing failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// Not one of the forms.
    #[error(
        "cannot parse `{0}`: expected uprobe:FILE:GLOB, usdt:FILE:GLOB or usdt:FILE:PROVIDER:NAME"
    )]
    Shape(String),
    /// A bad glob.
    #[error("`{pattern}`: {source}")]
    Glob {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        #[source]
        source: GlobError,
    },
    /// The library name did not resolve.
    #[error("`{pattern}`: {source}")]
    Library {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        #[source]
        source: LibraryError,
    },
    /// The file cannot be read as ELF.
    #[error("`{pattern}`: {source}")]
    Elf {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        #[source]
        source: elf::ElfError,
    },
    /// The notes cannot be read.
    #[error("`{pattern}`: {source}")]
    Usdt {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        #[source]
        source: elf::UsdtError,
    },
    /// Nothing matches.
    #[error("`{pattern}`: nothing in {} matches", path.display())]
    NoMatch {
        /// The pattern.
        pattern: String,
        /// The file searched.
        path: PathBuf,
    },
    /// Writing the list failed.
    #[error("cannot write the list")]
    Write(#[from] io::Error),
}

/// Runs `probed list`.
pub fn run(args: ListArgs) -> anyhow::Result<()> {
    let lines = list(&args.pattern, args.pid)?;
    let mut out = io::stdout().lock();
    for line in lines {
        // A closed pipe (`| head`) ends the listing quietly.
        if let Err(e) = writeln!(out, "{line}") {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(ListError::Write(e).into());
        }
    }
    Ok(())
}

/// The lines `probed list PATTERN` prints.
pub fn list(pattern: &str, pid: Option<NonZeroU32>) -> Result<Vec<String>, ListError> {
    let shape = || ListError::Shape(pattern.into());
    let (kind, rest) = pattern.split_once(':').ok_or_else(shape)?;
    let (file, what) = rest.split_once(':').ok_or_else(shape)?;
    if file.is_empty() || what.is_empty() {
        return Err(shape());
    }
    let glob = |text: &str| {
        Glob::new(text).map_err(|source| ListError::Glob {
            pattern: pattern.into(),
            source,
        })
    };
    let path = if libpath::is_library_name(file) {
        let pid = pid.map(NonZeroU32::get);
        libpath::resolve(file, Lookup { pid, root_pid: pid }).map_err(|source| {
            ListError::Library {
                pattern: pattern.into(),
                source,
            }
        })?
    } else if file.starts_with('/') {
        PathBuf::from(file)
    } else {
        return Err(shape());
    };
    let lines = match kind {
        "uprobe" | "u" | "uretprobe" | "ur" => {
            let image = ElfImage::open(&path).map_err(|source| ListError::Elf {
                pattern: pattern.into(),
                source,
            })?;
            let glob = glob(what)?;
            let mut names: Vec<String> = image
                .symbols()
                .iter()
                .filter(|s| s.kind.is_code() && elf::name_matches(&glob, s))
                .map(|s| {
                    let name = &s.name;
                    if name.contains('@') && !name.contains("@@") {
                        name.to_string()
                    } else {
                        s.bare_name().to_owned()
                    }
                })
                .collect();
            names.sort();
            names.dedup();
            names
                .into_iter()
                .map(|n| format!("{kind}:{file}:{n}"))
                .collect::<Vec<_>>()
        }
        "usdt" => {
            let notes = elf::read_notes(&path).map_err(|source| ListError::Usdt {
                pattern: pattern.into(),
                source,
            })?;
            let (provider, name) = match what.split_once(':') {
                Some((provider, name)) => (Some(provider), name),
                None => (None, what),
            };
            let matches =
                crate::probes::usdt_matcher(provider, name).map_err(|source| ListError::Glob {
                    pattern: pattern.into(),
                    source,
                })?;
            notes
                .iter()
                .filter(|n| matches(n))
                .map(|n| {
                    let semaphore = if n.semaphore.is_some() {
                        " [semaphore]"
                    } else {
                        ""
                    };
                    format!(
                        "usdt:{file}:{}:{}\t{}{semaphore}",
                        n.provider, n.name, n.args
                    )
                })
                .collect()
        }
        _ => return Err(shape()),
    };
    if lines.is_empty() {
        return Err(ListError::NoMatch {
            pattern: pattern.into(),
            path,
        });
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python's 8 USDT probes with their argument specs; the `provider:name` form and a
    /// name glob narrow it.
    #[test]
    fn python_usdt() {
        if !std::path::Path::new("/usr/bin/python3.11").exists() {
            return;
        }
        let all = list("usdt:/usr/bin/python3.11:*", None).unwrap();
        assert_eq!(all.len(), 8, "{all:#?}");
        assert!(
            all.contains(
                &"usdt:/usr/bin/python3.11:python:function__entry\t8@%rbp 8@%r12 -4@%eax [semaphore]"
                    .to_string()
            ),
            "{all:#?}"
        );
        let fe = list("usdt:/usr/bin/python3.11:python:function__*", None).unwrap();
        assert_eq!(fe.len(), 2);
        assert_eq!(
            list("usdt:/usr/bin/python3.11:gc__*", None).unwrap().len(),
            2
        );
    }

    /// Functions by glob, through a library name too; errors for bad shapes and no match.
    #[test]
    fn functions() {
        let reads = list("uprobe:libc:read*", None).unwrap();
        assert!(reads.contains(&"uprobe:libc:read".to_string()), "{reads:?}");
        assert!(reads.iter().all(|l| l.starts_with("uprobe:libc:read")));
        assert!(matches!(
            list("uprobe:libc", None),
            Err(ListError::Shape(_))
        ));
        assert!(matches!(
            list("kprobe:libc:x", None),
            Err(ListError::Shape(_))
        ));
        assert!(matches!(
            list("uprobe:libc:probed_nothing*", None),
            Err(ListError::NoMatch { .. })
        ));
    }
}
