//! The daemon's TOML configuration (`probed daemon --config FILE`): probes, outputs, metrics,
//! control socket, log level.
//!
//! Loading checks everything that can be checked without touching the kernel — syntax, types,
//! unknown keys, outputs a probe names, numbers in range — and every error names the file,
//! line and column and says what was expected. Probe SPECs are checked against their ELF files
//! by the daemon before anything is attached (see `service::probe_set`), with the same
//! position in the message.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    num::{NonZeroU32, NonZeroU64},
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

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
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// Bad syntax, a wrong type or an unknown key, or a value that does not fit.
    #[error("{}:{line}:{column}: {message}", path.display())]
    At {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column (characters).
        column: usize,
        /// What is wrong and what was expected.
        message: String,
    },
    /// An error without a position in the file.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A configuration file's text, kept to turn byte spans into line:column.
#[derive(Clone, Debug)]
pub struct Source {
    /// The file.
    pub path: PathBuf,
    /// Its contents.
    pub text: String,
}

impl Source {
    /// Reads `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            text,
        })
    }

    /// An error at byte span `span` of the file.
    pub fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_column(&self.text, span.start);
        ConfigError::At {
            path: self.path.clone(),
            line,
            column,
            message: message.into(),
        }
    }

    /// Parses and checks the configuration.
    pub fn parse(&self) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(&self.text).map_err(|err| {
            // toml's message repeats the offending line with a caret; the position is ours.
            let message = err.message().trim().to_owned();
            match err.span() {
                Some(span) => self.error_at(span, message),
                None => ConfigError::File {
                    path: self.path.clone(),
                    message,
                },
            }
        })?;
        self.check(&config)?;
        Ok(config)
    }

    /// The checks serde cannot express.
    fn check(&self, config: &Config) -> Result<(), ConfigError> {
        if let Some(level) = &config.log_level
            && !is_log_filter(level.get_ref())
        {
            return Err(self.error_at(
                level.span(),
                format!(
                    "log_level `{}` is not a level (off, error, warn, info, debug, trace) or \
                     a filter directive such as `probed=debug,info`",
                    level.get_ref()
                ),
            ));
        }
        if let Some(t) = &config.drain_timeout
            && !(t.get_ref().is_finite() && *t.get_ref() >= 0.0)
        {
            return Err(self.error_at(
                t.span(),
                format!(
                    "drain_timeout `{}` is not a number of seconds (a finite number ≥ 0)",
                    t.get_ref()
                ),
            ));
        }
        for (name, output) in &config.outputs {
            let span = output.kind.span();
            match (output.kind.get_ref(), &output.path) {
                (OutputKind::File, None) => {
                    return Err(
                        self.error_at(span, format!("output `{name}` is a file but has no `path`"))
                    );
                }
                (OutputKind::Stdout, Some(_)) => {
                    return Err(self.error_at(
                        span,
                        format!("output `{name}` writes to stdout and cannot have a `path`"),
                    ));
                }
                (OutputKind::Stdout, None) if output.rotate_bytes.is_some() => {
                    return Err(self.error_at(
                        span,
                        format!("output `{name}` writes to stdout and cannot be rotated"),
                    ));
                }
                _ => {}
            }
            if name == STDOUT_OUTPUT && *output.kind.get_ref() != OutputKind::Stdout {
                return Err(self.error_at(
                    span,
                    format!("output `{STDOUT_OUTPUT}` is built in and must be kind = \"stdout\""),
                ));
            }
        }
        let mut paths: BTreeMap<&Path, &str> = BTreeMap::new();
        for (name, output) in &config.outputs {
            if let Some(path) = &output.path
                && let Some(other) = paths.insert(path, name)
            {
                return Err(self.error_at(
                    output.kind.span(),
                    format!(
                        "outputs `{other}` and `{name}` write to the same file {}",
                        path.display()
                    ),
                ));
            }
        }
        let mut seen: BTreeMap<ProbeDef, usize> = BTreeMap::new();
        for probe in &config.probes {
            let output = probe.output.get_ref();
            if output != STDOUT_OUTPUT && !config.outputs.contains_key(output) {
                let known: Vec<&str> = std::iter::once(STDOUT_OUTPUT)
                    .chain(config.outputs.keys().map(String::as_str))
                    .collect();
                return Err(self.error_at(
                    probe.output.span(),
                    format!(
                        "no output named `{output}` (expected one of: {})",
                        known.join(", ")
                    ),
                ));
            }
            if let Some(burst) = &probe.burst
                && probe.rate_limit.is_none()
            {
                return Err(self.error_at(burst.span(), "`burst` needs a `rate_limit`"));
            }
            if let Some(&first) = seen.get(&probe.def()) {
                let (line, _) = line_column(&self.text, first);
                return Err(self.error_at(
                    probe.spec.span(),
                    format!("the same probe is already defined at line {line}"),
                ));
            }
            seen.insert(probe.def(), probe.spec.span().start);
        }
        Ok(())
    }
}

/// Reads and checks the configuration at `path`.
pub fn load(path: &Path) -> Result<(Source, Config), ConfigError> {
    let source = Source::read(path)?;
    let config = source.parse()?;
    Ok((source, config))
}

/// Whether `text` is a log filter: comma-separated levels or `target=level` directives.
/// (`EnvFilter` itself takes a bare word as a target name, so `"loud"` would silently mean
/// "nothing from anywhere but target loud".)
fn is_log_filter(text: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |s: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s.trim()));
    !text.trim().is_empty()
        && text.split(',').all(|part| match part.rsplit_once('=') {
            None => is_level(part),
            Some((target, level)) => {
                !target.trim().is_empty()
                    && is_level(level)
                    && tracing_subscriber::EnvFilter::builder().parse(part).is_ok()
            }
        })
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
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
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Source {
            path: "/etc/probed/probed.toml".into(),
            text: text.to_owned(),
        }
        .parse()
        .map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"
log_level = "debug"
control_socket = "/tmp/probed.sock"

[metrics]

[outputs.hits]
kind = "file"
path = "/var/log/probed/hits.jsonl"
rotate_bytes = 1000000
rotate_keep = 3

[[probes]]
spec = "uprobe:/usr/bin/bash:readline"
output = "hits"
rate_limit = 100
burst = 10

[[probes]]
spec = "uretprobe:/usr/bin/bash:readline"
pid = 42
stack = true
"#;

    /// A full config parses, with defaults filled in.
    #[test]
    fn good_config() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.control_socket, PathBuf::from("/tmp/probed.sock"));
        assert_eq!(
            c.metrics.unwrap().listen,
            DEFAULT_METRICS_LISTEN.parse().unwrap()
        );
        let hits = &c.outputs["hits"];
        assert_eq!(hits.format, OutputFormat::Json);
        assert_eq!(hits.rotate_keep.get(), 3);
        assert_eq!(c.probes.len(), 2);
        let a = c.probes[0].def();
        assert_eq!(a.output, "hits");
        assert_eq!(a.rate_limit.map(NonZeroU64::get), Some(100));
        assert_eq!(a.burst.map(NonZeroU64::get), Some(10));
        let b = c.probes[1].def();
        assert_eq!(b.output, STDOUT_OUTPUT);
        assert_eq!(b.pid.map(NonZeroU32::get), Some(42));
        assert_eq!(b.stack, Some(StackMode::Fp));
        let c = parse("[[probes]]\nspec = \"uprobe:/bin/sh:main\"\nstack = \"dwarf\"\n").unwrap();
        assert_eq!(c.probes[0].def().stack, Some(StackMode::Dwarf));
        let err =
            parse("[[probes]]\nspec = \"uprobe:/bin/sh:main\"\nstack = \"cfi\"\n").unwrap_err();
        assert!(err.contains("\"auto\" or \"dwarf\""), "{err}");
        // An empty file is a valid config with no probes (the daemon waits for `ctl add`).
        let empty = parse("").unwrap();
        assert!(empty.probes.is_empty());
        assert_eq!(empty.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert!(empty.metrics.is_none());
    }

    /// Each kind of mistake is reported at its line and column, saying what was expected.
    #[test]
    fn errors_have_positions() {
        let cases: &[(&str, &str)] = &[
            (
                "[[probes]]\nspec = \"uprobe:/bin/x:f\"\nrate = 5\n",
                "/etc/probed/probed.toml:3:1: unknown field `rate`, expected one of",
            ),
            (
                "[[probes]]\nspec = \"uprobe:/bin/x:f\"\npid = \"self\"\n",
                "/etc/probed/probed.toml:3:7: invalid type: string \"self\", expected a nonzero u32",
            ),
            (
                "[[probes]]\nspec = \"uprobe:/bin/x:f\"\npid = 0\n",
                "/etc/probed/probed.toml:3:7: ",
            ),
            (
                "[[probes]]\nspec = \"uprobe:/bin/x:f\"\noutput = \"nowhere\"\n",
                "/etc/probed/probed.toml:3:10: no output named `nowhere` (expected one of: stdout)",
            ),
            (
                "[[probes]]\nspec = \"uprobe:/bin/x:f\"\nburst = 3\n",
                "/etc/probed/probed.toml:3:9: `burst` needs a `rate_limit`",
            ),
            (
                "[outputs.f]\nkind = \"file\"\n",
                "/etc/probed/probed.toml:2:8: output `f` is a file but has no `path`",
            ),
            (
                "[outputs.f]\nkind = \"pipe\"\n",
                "/etc/probed/probed.toml:2:8: unknown variant `pipe`, expected `file` or `stdout`",
            ),
            (
                "[metrics]\nlisten = \"localhost\"\n",
                "/etc/probed/probed.toml:2:10: invalid socket address syntax",
            ),
            (
                "log_level = \"loud!!\"\n",
                "/etc/probed/probed.toml:1:13: log_level `loud!!` is not a level",
            ),
            (
                "drain_timeout = -1.0\n",
                "/etc/probed/probed.toml:1:17: drain_timeout `-1` is not a number of seconds",
            ),
            (
                "drain_timeout = \"soon\"\n",
                "/etc/probed/probed.toml:1:17: invalid type: string \"soon\", expected f64",
            ),
            (
                "[[probes]]\nspec = \"uprobe:/bin/x:f\"\n[[probes]]\nspec = \"uprobe:/bin/x:f\"\n",
                "/etc/probed/probed.toml:4:8: the same probe is already defined at line 2",
            ),
            ("[[probes]\nspec = 1\n", "/etc/probed/probed.toml:1:"),
            (
                "[outputs.a]\nkind = \"file\"\npath = \"/x\"\n[outputs.b]\nkind = \"file\"\npath = \"/x\"\n",
                "write to the same file /x",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text);
            assert!(
                err.contains(want),
                "config {text:?}\n got: {err}\nwant: {want}"
            );
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    /// Levels and `target=level` directives are log filters; other words are not.
    #[test]
    fn log_filters() {
        for good in [
            "info",
            "DEBUG",
            "probed=debug,info",
            "warn,probed::service=trace",
        ] {
            assert!(is_log_filter(good), "{good}");
        }
        for bad in ["", "loud", "probed=loud", "=info", "info,,"] {
            assert!(!is_log_filter(bad), "{bad}");
        }
    }

    /// Line and column count characters, from 1.
    #[test]
    fn positions() {
        assert_eq!(line_column("abc", 0), (1, 1));
        assert_eq!(line_column("abc\ndef", 5), (2, 2));
        assert_eq!(line_column("é\nx", 3), (2, 1));
        assert_eq!(line_column("éa", 2), (1, 2));
        assert_eq!(line_column("x", 99), (1, 2));
    }
}
