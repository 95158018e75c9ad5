//! Where logs go and at which level.
//!
//! Under systemd, logs go to journald as structured entries (`tracing-journald`: each event's
//! fields become journal fields, its level the syslog priority), so `journalctl -u probed`
//! can filter on them; otherwise they are human-readable lines on stderr. "Under systemd"
//! is systemd's own documented test (`man 5 systemd.exec`, `$JOURNAL_STREAM`): the variable
//! holds the `DEVICE:INODE` of the stream systemd connected stdout/stderr to, and it applies
//! only if stderr is still that stream — a variable inherited by a child whose stderr was
//! redirected must not send its logs to the journal.
//!
//! The level, strongest first: `RUST_LOG`, then `-v`/`-vv`, then the config's `log_level`
//! ([`LogHandle::set_level`], applied after the config is read, through a reload layer),
//! then `warn`.

use std::{
    io::IsTerminal as _,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd},
};

use tracing_subscriber::{EnvFilter, Registry, layer::SubscriberExt as _, reload};

/// A bad level or a subscriber that cannot take it.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The level string is not an `EnvFilter` directive.
    #[error(
        "bad log level {level:?}: {reason} (expected off|error|warn|info|debug|trace or \
         RUST_LOG-style directives such as probed=debug,warn)"
    )]
    BadLevel {
        /// The rejected string.
        level: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The global subscriber is gone or was not ours.
    #[error("cannot change the log level")]
    Reload(#[source] reload::Error),
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Structured entries to journald.
    Journald,
    /// Human-readable lines on stderr.
    Stderr,
}

/// Which source decided the level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelSource {
    /// `RUST_LOG` (the config cannot change it).
    Env(String),
    /// `-v` flags (the config cannot change it).
    Verbose(u8),
    /// The default, until the config says otherwise.
    Default,
}

/// The default level of a command-line run when nothing else says; `probed daemon` passes
/// `info` (a service logs its lifecycle: attach, reload, stop).
pub const DEFAULT_LEVEL: &str = "warn";

/// The handle [`init`] installed, for [`apply_config_level`].
static INSTALLED: std::sync::OnceLock<LogHandle> = std::sync::OnceLock::new();

/// The live logging set-up: lets the config change the level later.
#[derive(Clone)]
pub struct LogHandle {
    /// Where logs go.
    sink: Sink,
    /// What decided the level at start.
    source: LevelSource,
    /// The level when the config gives none.
    default: &'static str,
    /// The reload handle of the level filter; `None` if another subscriber was already
    /// installed (tests) — then levels cannot change.
    reload: Option<reload::Handle<EnvFilter, Registry>>,
}

impl LogHandle {
    /// Where logs go.
    pub fn sink(&self) -> Sink {
        self.sink
    }

    /// Applies the config's `log_level` (e.g. `info`, or `probed=debug,warn`), unless
    /// `RUST_LOG` or `-v` decided the level. A bad level is an error either way.
    pub fn set_level(&self, level: &str) -> Result<(), LogError> {
        let filter = parse_level(level)?;
        if !config_applies(&self.source) {
            tracing::debug!(
                "log_level {level:?} from the config ignored: {:?} decides",
                self.source
            );
            return Ok(());
        }
        match &self.reload {
            Some(handle) => handle.reload(filter).map_err(LogError::Reload),
            None => Ok(()),
        }
    }
}

/// A config `log_level`: a level name, or `RUST_LOG`-style directives (`probed=debug,warn`).
/// A lone word must be a level: `EnvFilter` would take `loud` as a target name and log
/// everything of that target, which is never what a config meant.
fn parse_level(level: &str) -> Result<EnvFilter, LogError> {
    let trimmed = level.trim();
    let bad = |reason: String| LogError::BadLevel {
        level: level.to_owned(),
        reason,
    };
    let is_directive = trimmed.contains(['=', ',', '[']);
    if !is_directive {
        trimmed
            .parse::<tracing::level_filters::LevelFilter>()
            .map_err(|e| bad(e.to_string()))?;
    }
    EnvFilter::try_new(trimmed).map_err(|e| bad(e.to_string()))
}

/// Applies a (re)loaded config's `log_level` — `None` restores the default — to the logging
/// [`init`] installed. The config loader has already checked the level; a failure here is
/// logged, not fatal.
pub fn apply_config_level(level: Option<&str>) {
    let Some(handle) = INSTALLED.get() else {
        return;
    };
    if let Err(err) = handle.set_level(level.unwrap_or(handle.default)) {
        tracing::error!("{err}");
    }
}

/// Whether the config's level may replace the start-up one.
fn config_applies(source: &LevelSource) -> bool {
    *source == LevelSource::Default
}

/// The start-up filter directive and where it came from.
fn start_level(rust_log: Option<&str>, verbose: u8, default: &str) -> (String, LevelSource) {
    match (rust_log.filter(|s| !s.trim().is_empty()), verbose) {
        (Some(env), _) => (env.to_owned(), LevelSource::Env(env.to_owned())),
        (None, 0) => (default.to_owned(), LevelSource::Default),
        (None, 1) => ("probed=debug,info".to_owned(), LevelSource::Verbose(1)),
        (None, v) => ("trace".to_owned(), LevelSource::Verbose(v)),
    }
}

/// Whether `journal_stream` (`$JOURNAL_STREAM`, `DEVICE:INODE` in decimal) names the file
/// `fd` is open on.
pub fn journal_stream_matches(journal_stream: &str, fd: BorrowedFd<'_>) -> bool {
    let Some((dev, ino)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat writes only into the stat buffer we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid open descriptor (borrowed for the call) and a valid out pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    st.st_dev == dev && st.st_ino == ino
}

/// Where logs should go given `$JOURNAL_STREAM` and stderr.
fn choose_sink(journal_stream: Option<&str>, stderr: BorrowedFd<'_>) -> Sink {
    match journal_stream {
        Some(js) if journal_stream_matches(js, stderr) => Sink::Journald,
        _ => Sink::Stderr,
    }
}

/// Installs the global subscriber. `verbose` is the number of `-v` flags; `default` the
/// level when neither they, `RUST_LOG` nor a config say (and what a config without
/// `log_level` goes back to on reload).
pub fn init(verbose: u8, default: &'static str) -> LogHandle {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (directive, source) = start_level(rust_log.as_deref(), verbose, default);
    // A bad RUST_LOG is reported below, once logging works, and the default used instead.
    let (filter, bad_env) = match EnvFilter::try_new(&directive) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new(default), Some(e)),
    };
    let (filter, reload) = reload::Layer::new(filter);
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    let stderr = std::io::stderr();
    let mut sink = choose_sink(journal_stream.as_deref(), stderr.as_fd());
    let mut journald_failed = None;
    let journald = match sink {
        Sink::Journald => match tracing_journald::layer() {
            Ok(layer) => Some(layer.with_syslog_identifier("probed".to_owned())),
            Err(e) => {
                journald_failed = Some(e);
                sink = Sink::Stderr;
                None
            }
        },
        Sink::Stderr => None,
    };
    let fmt = (sink == Sink::Stderr).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colour codes only for a person at a terminal, not in files or the journal.
            .with_ansi(stderr.is_terminal())
    });
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(fmt);
    let installed = tracing::subscriber::set_global_default(subscriber).is_ok();
    if let Some(e) = journald_failed {
        tracing::warn!(
            "JOURNAL_STREAM is set but journald cannot be reached ({e}); logging to stderr"
        );
    }
    if let Some(e) = bad_env {
        tracing::warn!("RUST_LOG={directive:?} ignored: {e}; using {default:?}");
    }
    let handle = LogHandle {
        sink,
        source,
        default,
        reload: installed.then_some(reload),
    };
    if installed {
        let _ = INSTALLED.set(handle.clone());
    }
    handle
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn temp_file(name: &str) -> (std::path::PathBuf, std::fs::File) {
        let path =
            std::env::temp_dir().join(format!("probed-logging-{name}-{}", std::process::id()));
        let file = std::fs::File::create(&path).expect("temp file");
        (path, file)
    }

    /// JOURNAL_STREAM matches exactly the file it names: same device and inode; another file,
    /// another device, or a malformed value does not.
    #[test]
    fn journal_stream_matches_the_fd_it_names() {
        let (path_a, a) = temp_file("a");
        let (path_b, b) = temp_file("b");
        let meta = a.metadata().unwrap();
        let value = format!("{}:{}", meta.dev(), meta.ino());
        assert!(journal_stream_matches(&value, a.as_fd()));
        assert!(!journal_stream_matches(&value, b.as_fd()));
        let other_dev = format!("{}:{}", meta.dev() + 1, meta.ino());
        assert!(!journal_stream_matches(&other_dev, a.as_fd()));
        for garbage in ["", ":", "12", "x:y", &format!("{}", meta.ino())] {
            assert!(!journal_stream_matches(garbage, a.as_fd()), "{garbage:?}");
        }
        assert_eq!(choose_sink(Some(&value), a.as_fd()), Sink::Journald);
        assert_eq!(choose_sink(Some(&value), b.as_fd()), Sink::Stderr);
        assert_eq!(choose_sink(None, a.as_fd()), Sink::Stderr);
        let _ = std::fs::remove_file(path_a);
        let _ = std::fs::remove_file(path_b);
    }

    /// RUST_LOG beats -v, -v beats the config, and only the default yields to the config.
    #[test]
    fn level_precedence() {
        let (d, s) = start_level(Some("probed=trace"), 2, DEFAULT_LEVEL);
        assert_eq!(d, "probed=trace");
        assert!(!config_applies(&s));
        let (d, s) = start_level(None, 1, DEFAULT_LEVEL);
        assert_eq!(d, "probed=debug,info");
        assert!(!config_applies(&s));
        assert_eq!(start_level(None, 3, DEFAULT_LEVEL).0, "trace");
        let (d, s) = start_level(None, 0, DEFAULT_LEVEL);
        assert_eq!(d, "warn");
        assert!(config_applies(&s));
        // The daemon's own default (info) when nothing else says.
        assert_eq!(start_level(None, 0, "info").0, "info");
        assert_eq!(start_level(None, 1, "info").0, "probed=debug,info");
        // An empty RUST_LOG is treated as unset, as EnvFilter's own from_env does.
        assert_eq!(
            start_level(Some(" "), 0, DEFAULT_LEVEL).1,
            LevelSource::Default
        );
    }

    /// set_level: a bad level is refused whatever decides; a good one reloads the filter
    /// only when the config decides.
    #[test]
    fn set_level_reloads_only_when_the_config_decides() {
        let (layer, handle) = reload::Layer::new(EnvFilter::new("warn"));
        let subscriber = tracing_subscriber::registry().with(layer);
        let enabled_info = |h: &reload::Handle<EnvFilter, Registry>| {
            h.with_current(|f| f.max_level_hint()).unwrap()
        };
        let _guard = tracing::subscriber::set_default(subscriber);
        let log = LogHandle {
            sink: Sink::Stderr,
            source: LevelSource::Default,
            default: DEFAULT_LEVEL,
            reload: Some(handle.clone()),
        };
        assert!(matches!(
            log.set_level("loud"),
            Err(LogError::BadLevel { .. })
        ));
        log.set_level("info").unwrap();
        assert_eq!(
            enabled_info(&handle),
            Some(tracing::level_filters::LevelFilter::INFO)
        );
        assert!(tracing::enabled!(tracing::Level::INFO));
        assert!(!tracing::enabled!(tracing::Level::DEBUG));
        let pinned = LogHandle {
            sink: Sink::Stderr,
            source: LevelSource::Env("warn".into()),
            default: DEFAULT_LEVEL,
            reload: Some(handle.clone()),
        };
        pinned.set_level("trace").unwrap();
        assert_eq!(
            enabled_info(&handle),
            Some(tracing::level_filters::LevelFilter::INFO),
            "RUST_LOG must win over the config"
        );
        assert!(pinned.set_level("probed=loud").is_err());
    }
}
