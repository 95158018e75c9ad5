//! Command-line argument types shared by the binary and tests, and error formatting.

use std::{num::NonZeroU32, path::PathBuf};

use clap::Args;

use crate::output::Format;

/// `probed trace SPEC... [--pid PID] [--format text|json] [--duration SECS] [--count N]`.
#[derive(Args, Clone, Debug)]
pub struct TraceArgs {
    /// Probes: uprobe:/path:symbol, uretprobe:/path:symbol, uprobe:/path:symbol+16,
    /// uprobe:/path:0x1a2b (file offset).
    #[arg(required = true, value_name = "SPEC")]
    pub specs: Vec<String>,
    /// Trace only this process (its threads included).
    #[arg(long, value_name = "PID")]
    pub pid: Option<NonZeroU32>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Stop after this many hits have been printed.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Capture the user stack with every hit (frame-pointer walk, up to 127 frames), each
    /// frame resolved to module, symbol and offset.
    #[arg(long)]
    pub stack: bool,
    /// Write output to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// An error and its causes on one line: `outer: cause: root cause`.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        // Wrappers often repeat their source's text; say each thing once.
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Causes are joined on one line, and a cause already contained in its wrapper is not
    /// repeated.
    #[test]
    fn one_line_chain() {
        let err = anyhow::anyhow!("root\ncause")
            .context("middle")
            .context("outer");
        assert_eq!(one_line(&err), "outer: middle: root cause");
        let dup = anyhow::anyhow!("same").context("same");
        assert_eq!(one_line(&dup), "same");
    }
}
