//! Why one probe could not be added (checked or attached) by the daemon: a config's probe at
//! start or reload, or a `ctl add`. Each variant says what failed once; its source says why.

use std::num::NonZeroU32;

use crate::{
    attach::AttachError, config::ConfigError, container::ContainerError, pidns::PidNsError,
    probes::ProbeError, service::outputs::OutputError, spec::SpecError,
};

/// Why a probe could not be added.
#[derive(Debug, thiserror::Error)]
pub enum ProbeOpError {
    /// The SPEC does not parse.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// `pid` names no live process.
    #[error("no process with pid {0} (it may have exited)")]
    NoProcess(NonZeroU32),
    /// `container`'s root cannot be opened.
    #[error("container")]
    ContainerRoot(#[from] ContainerError),
    /// `container`'s pid namespace cannot be identified.
    #[error("container")]
    ContainerPidNs(#[from] PidNsError),
    /// Every probe id is taken.
    #[error("too many probes: at most {max}")]
    TooMany {
        /// The limit.
        max: u32,
    },
    /// The file or function does not check out.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// The kernel refused the attachment.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// A stack copy (`stack = "auto"|"dwarf"`) while the tracker runs lock or kseq mode, which
    /// captures only what BPF walks itself: copied frames of a changed process would have no
    /// picture.
    #[error(
        "stack = \"{mode}\" copies stacks, which the lock and kseq trackers cannot serve; use stack = \"fp\" \
         (or true), or run the daemon with tracker = \"kprobes\" or \"syscalls\""
    )]
    CopiedStacksUnderLock {
        /// The mode asked for.
        mode: &'static str,
    },
    /// `stack_copy_kib` is not one of the sizes BPF copies.
    #[error("{0}")]
    StackCopySize(String),
    /// No thread could be started to check the probe off the event loop (prepare.rs).
    #[error("cannot start a thread to check the probe")]
    PrepareThread(#[source] std::io::Error),
}

impl ProbeOpError {
    /// The whole chain on one line, each cause once (for replies and logs).
    pub fn one_line(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut cause: Option<&dyn std::error::Error> = Some(self);
        while let Some(err) = cause {
            let text = err.to_string();
            // Wrappers often repeat their source's text; say each thing once.
            if parts.last().is_none_or(|last| !last.contains(&text)) {
                parts.push(text);
            }
            cause = err.source();
        }
        parts.join(": ").replace('\n', " ")
    }
}

/// Why a config could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The file does not load.
    #[error(transparent)]
    Config(ConfigError),
    /// An output cannot be opened; nothing was changed.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A probe does not check out (at its place in the file); nothing was changed.
    #[error(transparent)]
    Probe(ConfigError),
    /// A probe does not check out (its place in the file unknown); nothing was changed.
    #[error(transparent)]
    Unplaced(ProbeOpError),
    /// The kernel refused some attachments; the rest was applied.
    #[error("some probes could not be attached: {}", list(.0))]
    Attach(Vec<(String, ProbeOpError)>),
}

/// `SPEC: why; SPEC: why`.
fn list(failed: &[(String, ProbeOpError)]) -> String {
    failed
        .iter()
        .map(|(spec, err)| format!("{spec}: {}", err.one_line()))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wrapper and its source are said once each, in order.
    #[test]
    fn one_line_says_each_cause_once() {
        let err = ProbeOpError::ContainerPidNs(PidNsError::NoProcess(
            NonZeroU32::new(4_000_000).unwrap(),
        ));
        let line = err.one_line();
        assert!(line.starts_with("container: "), "{line}");
        assert_eq!(line.matches("container").count(), 1, "{line}");
        let err = ProbeOpError::TooMany { max: 4 };
        assert_eq!(err.one_line(), "too many probes: at most 4");
    }
}
