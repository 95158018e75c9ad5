//! The daemon's TOML configuration (`probed daemon --config FILE`): probes, outputs, metrics,
//! control socket, log level.
//!
//! Loading checks everything that can be checked without touching the kernel — syntax, types,
//! unknown keys, outputs a probe names, numbers in range — and every error names the file,
//! line and column and says what was expected. Probe SPECs are checked against their ELF files
//! by the daemon before anything is attached (see `service::probe_set`), with the same
//! position in the message.
//!
//! This file holds the configuration's types and defaults; `config/source.rs` reads and
//! checks a file.

mod source;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    num::{NonZeroU32, NonZeroU64},
    path::PathBuf,
};

use serde::Deserialize;
use toml::Spanned;

pub use source::{ConfigError, Source, load};

use crate::{output::Format, unwind::StackMode};

/// Where the control socket lives unless the config says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/probed/control.sock";
/// The metrics endpoint's address when `[metrics]` gives none: localhost only, since the
/// numbers describe what runs on the host.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// The output that always exists: JSON lines on stdout (the journal under systemd).
pub const STDOUT_OUTPUT: &str = "stdout";

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`, or an `EnvFilter` directive);
    /// `RUST_LOG` overrides it.
    #[serde(default)]
    pub log_level: Option<Spanned<String>>,
    /// The control socket's path.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// Seconds a stop (SIGTERM, SIGINT) processes the hits already in the ring buffer before
    /// counting the rest as dropped_at_stop (default 2).
    #[serde(default)]
    pub drain_timeout: Option<Spanned<f64>>,
    /// How address-space changes are learned (`lock`, `syscalls`, `auto`; default `auto`);
    /// read at start only.
    #[serde(default)]
    pub tracker: crate::track::TrackerChoice,
    /// The Prometheus endpoint; absent = none.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Named outputs.
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputConfig>,
    /// The probes.
    #[serde(default)]
    pub probes: Vec<ProbeConfig>,
}

impl Config {
    /// How long a stop processes what is left in the ring buffer.
    pub fn drain_timeout(&self) -> std::time::Duration {
        self.drain_timeout
            .as_ref()
            .map_or(crate::stop::DEFAULT_DRAIN_TIMEOUT, |t| {
                std::time::Duration::from_secs_f64(*t.get_ref())
            })
    }
}

/// `[metrics]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint serving `/metrics`.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

/// Where an output writes.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// A file, optionally rotated by size.
    File,
    /// The daemon's standard output.
    Stdout,
}

/// The format of an output, as spelled in the config.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Aligned text for people.
    Text,
}

impl From<OutputFormat> for Format {
    fn from(f: OutputFormat) -> Self {
        match f {
            OutputFormat::Json => Format::Json,
            OutputFormat::Text => Format::Text,
        }
    }
}

/// `[outputs.NAME]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// File or stdout.
    pub kind: Spanned<OutputKind>,
    /// The file (for `kind = "file"`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// JSON lines (default) or text.
    #[serde(default)]
    pub format: OutputFormat,
    /// Rotate the file once it reaches this many bytes (at a line boundary).
    #[serde(default)]
    pub rotate_bytes: Option<NonZeroU64>,
    /// How many rotated files to keep (`FILE.1` newest … `FILE.N`).
    #[serde(default = "default_rotate_keep")]
    pub rotate_keep: NonZeroU32,
}

/// `[[probes]]`: one probe and how its hits are handled.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// The SPEC, as for `probed trace`.
    pub spec: Spanned<String>,
    /// The output its hits go to.
    #[serde(default = "default_output")]
    pub output: Spanned<String>,
    /// Only this process.
    #[serde(default)]
    pub pid: Option<Spanned<NonZeroU32>>,
    /// Only processes in this process's pid namespace (any pid inside a container).
    #[serde(default)]
    pub container: Option<Spanned<NonZeroU32>>,
    /// At most this many hits per second (token bucket in BPF).
    #[serde(default)]
    pub rate_limit: Option<NonZeroU64>,
    /// Bucket size (hits that may pass at once); default = `rate_limit`.
    #[serde(default)]
    pub burst: Option<Spanned<NonZeroU64>>,
    /// Detach the probe when it fires more than this many times per second.
    #[serde(default)]
    pub disable_above: Option<NonZeroU64>,
    /// Capture user stacks: `true` (= `"fp"`, the kernel's frame-pointer walk), `false`, or
    /// `"auto"`/`"dwarf"` (a stack copy unwound with CFI; needs a replaying tracker, so the
    /// daemon does not run lock mode when a configured probe asks for one).
    #[serde(default, deserialize_with = "crate::unwind::setting::deserialize")]
    pub stack: Option<StackMode>,
    /// KiB of user stack copied per hit with `stack = "auto"|"dwarf"`: 4, 8, 16 (the
    /// default), 32 or 64.
    #[serde(default)]
    pub stack_copy_kib: Option<u32>,
}

/// What a probe is, without where its text was: two configs' probes are the same probe when
/// these are equal (a reload leaves such probes attached and untouched).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ProbeDef {
    /// The SPEC.
    pub spec: String,
    /// The output.
    pub output: String,
    /// Only this process.
    pub pid: Option<NonZeroU32>,
    /// Only this process's pid namespace.
    pub container: Option<NonZeroU32>,
    /// Hits per second allowed.
    pub rate_limit: Option<NonZeroU64>,
    /// Bucket size.
    pub burst: Option<NonZeroU64>,
    /// Runaway threshold, hits per second.
    pub disable_above: Option<NonZeroU64>,
    /// How stacks are captured, if they are.
    pub stack: Option<StackMode>,
    /// KiB of stack copied per hit (copying modes; default 16).
    pub stack_copy_kib: Option<u32>,
}

impl ProbeConfig {
    /// The probe, without positions.
    pub fn def(&self) -> ProbeDef {
        ProbeDef {
            spec: self.spec.get_ref().clone(),
            output: self.output.get_ref().clone(),
            pid: self.pid.as_ref().map(|p| *p.get_ref()),
            container: self.container.as_ref().map(|p| *p.get_ref()),
            rate_limit: self.rate_limit,
            burst: self.burst.as_ref().map(|b| *b.get_ref()),
            disable_above: self.disable_above,
            stack: self.stack,
            stack_copy_kib: self.stack_copy_kib,
        }
    }
}

fn default_control_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}

fn default_metrics_listen() -> SocketAddr {
    DEFAULT_METRICS_LISTEN.parse().expect("a valid address")
}

fn default_rotate_keep() -> NonZeroU32 {
    NonZeroU32::new(5).expect("not zero")
}

fn default_output() -> Spanned<String> {
    Spanned::new(0..0, STDOUT_OUTPUT.to_owned())
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
