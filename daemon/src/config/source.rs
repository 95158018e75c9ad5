//! Reading and checking a configuration file: its text kept for positions ([`Source`]),
//! TOML parsed into [`Config`], the checks serde cannot express, and errors that name the
//! file, line and column ([`ConfigError`]).

use std::{
    collections::BTreeMap,
    ops::Range,
    path::{Path, PathBuf},
};

use super::{Config, OutputKind, ProbeDef, STDOUT_OUTPUT};

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
pub(super) fn is_log_filter(text: &str) -> bool {
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
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}
