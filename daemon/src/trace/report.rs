//! What `probed trace` says on stderr about its probes before and while they attach: what
//! library names resolved to and what wildcards matched, and a progress line while many
//! probes attach (its threshold also says when a detach will take long enough to announce).
//!
//! Apart from the run (`trace.rs`) because it only talks to the user: nothing here changes
//! what is attached or how the run goes.

use crate::probes::Probe;

/// Says on stderr what library names resolved to and what wildcards matched (aliases
/// included), once per SPEC as written.
pub(super) fn report_expansion(probes: &[Probe]) {
    let mut said: Vec<&str> = Vec::new();
    for probe in probes {
        let written = probe.pattern.as_deref().unwrap_or(&probe.spec.text);
        if said.contains(&written) {
            continue;
        }
        said.push(written);
        if let crate::spec::FileRef::Library(name) = &probe.spec.file {
            eprintln!("probed: library {name} is {}", probe.path.display());
        }
        if probe.pattern.is_some() {
            let matched: Vec<&Probe> = probes
                .iter()
                .filter(|p| p.pattern.as_deref() == Some(written))
                .collect();
            let what = if matches!(probe.spec.location, crate::spec::Location::Usdt { .. }) {
                "USDT probe site(s)"
            } else {
                "function(s)"
            };
            eprintln!("probed: {written} matches {} {what}", matched.len());
            for p in matched.iter().filter(|p| !p.aliases.is_empty()) {
                eprintln!(
                    "probed: {} (probe {}) also matches its aliases {}",
                    p.spec.text,
                    p.id,
                    p.aliases.join(", ")
                );
            }
        }
    }
}

/// A progress line on a terminal while many probes attach (`uprobe:libc:*`): the kernel
/// registers each uprobe in every process that maps its file, which takes a while.
pub(super) struct AttachProgress {
    total: usize,
    /// Shown only for this many probes or more, and on a terminal.
    shown: bool,
}

impl AttachProgress {
    /// Probes from which the line is shown.
    pub(super) const FROM: usize = 100;

    pub(super) fn new(total: usize) -> Self {
        use std::io::IsTerminal as _;
        Self {
            total,
            shown: total >= Self::FROM && std::io::stderr().is_terminal(),
        }
    }

    /// `n` probes are attached (called from the attaching threads; about 100 updates).
    pub(super) fn show(&self, n: usize) {
        if self.shown && (n.is_multiple_of((self.total / 100).max(1)) || n == self.total) {
            eprint!("\rprobed: attaching {n}/{} probes", self.total);
        }
    }

    pub(super) fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}
