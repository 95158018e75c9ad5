//! debuginfod client: the third place a separate debug file is looked for, after the
//! build-id path and `.gnu_debuglink` (debug_file.rs), for binaries whose debug package is
//! not installed.
//!
//! As elfutils' client: `DEBUGINFOD_URLS` lists servers (space-separated); the debug file of
//! build-id `ID` is `GET {url}/buildid/{ID}/debuginfo`, servers tried in order until one has
//! it. Files are cached as `<cache>/<ID>/debuginfo` (elfutils' layout, so
//! `DEBUGINFOD_CACHE_PATH` may point both at one directory), written to a temporary file and
//! renamed into place only once its own build-id is the one asked for: a reader never sees
//! half a file or another build's. The cache is `$DEBUGINFOD_CACHE_PATH`, else
//! `/var/cache/probed/debuginfod` for root, else `$XDG_CACHE_HOME/probed/debuginfod`
//! (`~/.cache/…`).
//!
//! A request waits at most [`CONNECT_TIMEOUT`] to connect and [`TOTAL_TIMEOUT`] in all. A
//! build-id no server has (or that failed) is not asked again for [`MISSING_TTL`]: in
//! memory, and on disk for "no server has it" (`<cache>/<ID>/debuginfo.missing`), so a run
//! of `probed trace` does not ask again what the last one was just told.
//!
//! The cache is cleaned as elfutils cleans its own (debuginfod_clean.rs): files unused for a
//! week go, checked at most daily, before a download.
//!
//! This file only fetches, and it blocks. Who may wait for it is decided by its callers:
//! attaching by name waits (image.rs, [`super::DebugFetch::Wait`]); symbolizing a hit never
//! does (symbolize/fetch.rs fetches in the background and swaps the symbols in on arrival).

use std::{
    collections::HashMap,
    ffi::OsString,
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use super::{BuildId, build_id};

/// Longest wait for a connection to a server: a server that is down must not hold an
/// attach for long (elfutils waits 90 s by default; probed attaches interactively).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a whole request, body included: enough for a libc debug file (≈ 30 MB)
/// over a modest link.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a build-id that no server had (or whose request failed) is not asked again.
pub const MISSING_TTL: Duration = Duration::from_secs(300);
/// Largest debug file accepted (Chromium's is over 1 GB; anything above this is refused).
pub const MAX_SIZE: u64 = 4 << 30;

/// The cache directory for root when `DEBUGINFOD_CACHE_PATH` is not set.
pub const ROOT_CACHE: &str = "/var/cache/probed/debuginfod";

/// Why a debug file could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum DebuginfodError {
    /// Every server answered that it does not have the build-id.
    #[error("no debuginfod server has build-id {build_id}")]
    NotFound {
        /// The build-id asked for, as hex.
        build_id: String,
    },
    /// The build-id failed or was missing less than [`MISSING_TTL`] ago.
    #[error("build-id {build_id}: not found or failed recently, not asked again yet")]
    RecentlyMissing {
        /// The build-id asked for, as hex.
        build_id: String,
    },
    /// A request to a server failed (connect, timeout, TLS, an unexpected status).
    #[error("{url}: request failed")]
    Request {
        /// The URL requested.
        url: String,
        /// What failed.
        #[source]
        source: TransportError,
    },
    /// The server sent a file whose build-id is not the one asked for (or none).
    #[error("{url}: the file served is not the debug file of build-id {build_id}")]
    WrongBuildId {
        /// The URL requested.
        url: String,
        /// The build-id asked for, as hex.
        build_id: String,
    },
    /// The cache directory or file could not be written.
    #[error("{path}: cannot write to the debuginfod cache")]
    Cache {
        /// The file or directory written.
        path: PathBuf,
        /// The error the file system returned.
        #[source]
        source: io::Error,
    },
}

/// Why one GET failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Connecting, TLS, a timeout, or reading the body.
    #[error("http")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A status other than 200 and 404.
    #[error("status {0}")]
    Status(u16),
    /// Writing the body to the cache file.
    #[error("write")]
    Write(#[source] io::Error),
}

/// What a server answered to a GET.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    /// 200: the body was written to the output.
    Body,
    /// 404: the server does not have it.
    NotFound,
}

/// The network seam: one GET, its body streamed into `out`. Unit tests replace it.
pub trait Transport: Send + Sync {
    /// Requests `url`, writing a 200 body into `out`.
    fn get(&self, url: &str, out: &mut File) -> Result<Got, TransportError>;
}

/// HTTP(S) through ureq (rustls with the Mozilla roots: public servers are https), with the
/// timeouts above.
struct Http {
    agent: ureq::Agent,
}

impl Http {
    fn new() -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(TOTAL_TIMEOUT))
            // 404 is an answer here, not an error.
            .http_status_as_error(false)
            .user_agent(concat!("probed/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            agent: config.into(),
        }
    }
}

impl Transport for Http {
    fn get(&self, url: &str, out: &mut File) -> Result<Got, TransportError> {
        let response = self
            .agent
            .get(url)
            .call()
            .map_err(|e| TransportError::Http(e.into()))?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(Got::NotFound),
            other => return Err(TransportError::Status(other)),
        }
        let mut body = response
            .into_body()
            .into_with_config()
            .limit(MAX_SIZE)
            .reader();
        // Not io::copy: a read error is the network's, a write error the cache's.
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match io::Read::read(&mut body, &mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(TransportError::Http(e.into())),
            };
            out.write_all(&buf[..n]).map_err(TransportError::Write)?;
        }
        Ok(Got::Body)
    }
}

/// A debuginfod client: servers, cache, negative cache.
pub struct Client {
    /// Server base URLs, without a trailing slash, in the order tried.
    urls: Vec<String>,
    /// `<cache>/<build-id>/debuginfo`.
    cache: PathBuf,
    /// The network.
    transport: Box<dyn Transport>,
    /// Build-ids that failed, and until when they are not asked again.
    missing: Mutex<HashMap<BuildId, Instant>>,
    /// Files downloaded (and accepted).
    fetched: AtomicU64,
    /// Requests that ended without a file (not found anywhere, or failed).
    failed: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("urls", &self.urls)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// The client configured by the environment (`DEBUGINFOD_URLS`), if any; read once.
pub fn global() -> Option<&'static Client> {
    static GLOBAL: OnceLock<Option<Client>> = OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let env = |name: &str| std::env::var_os(name);
            // SAFETY: geteuid has no preconditions and cannot fail.
            let root = unsafe { libc::geteuid() } == 0;
            let client = Client::from_env(env, root, Box::new(Http::new()));
            if let Some(client) = &client {
                tracing::info!(urls = ?client.urls, cache = %client.cache.display(), "debuginfod enabled");
            }
            client
        })
        .as_ref()
}

/// The server base URLs in `DEBUGINFOD_URLS`: space-separated, `http://` or `https://`,
/// trailing slashes dropped (others are logged and skipped).
pub fn parse_urls(value: &str) -> Vec<String> {
    value
        .split_ascii_whitespace()
        .filter(|url| {
            let ok = url.starts_with("http://") || url.starts_with("https://");
            if !ok {
                tracing::warn!(
                    url,
                    "DEBUGINFOD_URLS: only http:// and https:// URLs are used"
                );
            }
            ok
        })
        .map(|url| url.trim_end_matches('/').to_owned())
        .collect()
}

/// The cache directory: `$DEBUGINFOD_CACHE_PATH`; else [`ROOT_CACHE`] for root; else
/// `$XDG_CACHE_HOME/probed/debuginfod` or `$HOME/.cache/probed/debuginfod`.
pub fn cache_root(env: impl Fn(&str) -> Option<OsString>, root: bool) -> Option<PathBuf> {
    let set = |name| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(path) = set("DEBUGINFOD_CACHE_PATH") {
        return Some(path);
    }
    if root {
        return Some(PathBuf::from(ROOT_CACHE));
    }
    let base = set("XDG_CACHE_HOME").or_else(|| set("HOME").map(|h| h.join(".cache")))?;
    Some(base.join("probed").join("debuginfod"))
}

impl Client {
    /// The client `DEBUGINFOD_URLS` asks for (read through `env`), or `None` when it names
    /// no server or there is no cache directory.
    pub fn from_env(
        env: impl Fn(&str) -> Option<OsString>,
        root: bool,
        transport: Box<dyn Transport>,
    ) -> Option<Self> {
        let urls = parse_urls(&env("DEBUGINFOD_URLS")?.to_string_lossy());
        if urls.is_empty() {
            return None;
        }
        let Some(cache) = cache_root(&env, root) else {
            tracing::warn!("DEBUGINFOD_URLS is set but there is no cache directory (no HOME)");
            return None;
        };
        Some(Self::new(urls, cache, transport))
    }

    /// A client of `urls` caching under `cache`.
    pub fn new(urls: Vec<String>, cache: PathBuf, transport: Box<dyn Transport>) -> Self {
        Self {
            urls,
            cache,
            transport,
            missing: Mutex::default(),
            fetched: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Where the debug file of `id` is cached.
    pub fn cache_path(&self, id: &BuildId) -> PathBuf {
        self.cache.join(id.to_string()).join("debuginfo")
    }

    /// The cached debug file of `id`, without asking any server. An empty file (elfutils'
    /// own negative-cache marker, if the cache is shared with it) is not one.
    pub fn cached(&self, id: &BuildId) -> Option<PathBuf> {
        let path = self.cache_path(id);
        let meta = fs::metadata(&path).ok()?;
        (meta.is_file() && meta.len() > 0).then_some(path)
    }

    /// (files fetched and accepted, requests that ended without a file).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.fetched.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// The debug file of `id`: from the cache, else from the first server that has it.
    /// Blocks up to [`TOTAL_TIMEOUT`] per server.
    pub fn fetch(&self, id: &BuildId) -> Result<PathBuf, DebuginfodError> {
        if let Some(path) = self.cached(id) {
            return Ok(path);
        }
        let hex = id.to_string();
        let recently = self
            .lock_missing()
            .get(id)
            .is_some_and(|until| Instant::now() < *until)
            || self.missing_on_disk(id);
        if recently {
            return Err(DebuginfodError::RecentlyMissing { build_id: hex });
        }
        let result = self.download(id, &hex);
        match &result {
            Ok(_) => {
                self.fetched.fetch_add(1, Ordering::Relaxed);
                self.lock_missing().remove(id);
                let _ = fs::remove_file(self.missing_marker(id));
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.lock_missing()
                    .insert(id.clone(), Instant::now() + MISSING_TTL);
                if matches!(e, DebuginfodError::NotFound { .. }) {
                    // Best effort: without the marker only the next run asks again.
                    let marker = self.missing_marker(id);
                    let _ = fs::create_dir_all(marker.parent().unwrap_or(&self.cache))
                        .and_then(|()| File::create(&marker));
                }
            }
        }
        result
    }

    /// Asks each server in turn; the first file whose build-id is `id` is renamed into the
    /// cache.
    fn download(&self, id: &BuildId, hex: &str) -> Result<PathBuf, DebuginfodError> {
        // Before the cache grows: what went unused for a week goes (debuginfod_clean.rs).
        match super::debuginfod_clean::clean_if_due(&self.cache, SystemTime::now()) {
            Ok(Some(c)) if c.files > 0 => tracing::info!(
                files = c.files,
                bytes = c.bytes,
                cache = %self.cache.display(),
                "debuginfod cache: removed files unused for a week"
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "debuginfod cache not cleaned"),
        }
        let dest = self.cache_path(id);
        let dir = dest.parent().unwrap_or(&self.cache).to_owned();
        fs::create_dir_all(&dir).map_err(|source| DebuginfodError::Cache {
            path: dir.clone(),
            source,
        })?;
        let mut last = DebuginfodError::NotFound {
            build_id: hex.to_owned(),
        };
        for base in &self.urls {
            let url = format!("{base}/buildid/{hex}/debuginfo");
            let (tmp, mut file) = temp_file(&dir)?;
            let started = Instant::now();
            let got = self.transport.get(&url, &mut file).and_then(|got| {
                file.flush().map_err(TransportError::Write)?;
                Ok(got)
            });
            let outcome = match got {
                Ok(Got::Body) if build_id::of_file(&file).as_ref() == Some(id) => {
                    fs::rename(&tmp, &dest).map_err(|source| DebuginfodError::Cache {
                        path: dest.clone(),
                        source,
                    })
                }
                Ok(Got::Body) => Err(DebuginfodError::WrongBuildId {
                    url: url.clone(),
                    build_id: hex.to_owned(),
                }),
                Ok(Got::NotFound) => Err(DebuginfodError::NotFound {
                    build_id: hex.to_owned(),
                }),
                Err(source) => Err(DebuginfodError::Request {
                    url: url.clone(),
                    source,
                }),
            };
            match outcome {
                Ok(()) => {
                    tracing::debug!(%url, elapsed = ?started.elapsed(), "debug file fetched");
                    return Ok(dest);
                }
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    tracing::debug!(%url, error = %error_chain(&e), "debuginfod: no file");
                    // "Not found" from one server does not hide another's failure.
                    if !matches!(e, DebuginfodError::NotFound { .. })
                        || matches!(last, DebuginfodError::NotFound { .. })
                    {
                        last = e;
                    }
                }
            }
        }
        Err(last)
    }

    /// `<cache>/<ID>/debuginfo.missing`: every server said it lacks `id`, at its mtime.
    fn missing_marker(&self, id: &BuildId) -> PathBuf {
        self.cache.join(id.to_string()).join("debuginfo.missing")
    }

    /// True when the on-disk marker says `id` was missing less than [`MISSING_TTL`] ago.
    fn missing_on_disk(&self, id: &BuildId) -> bool {
        fs::metadata(self.missing_marker(id))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .is_some_and(|age| age < MISSING_TTL)
    }

    fn lock_missing(&self) -> std::sync::MutexGuard<'_, HashMap<BuildId, Instant>> {
        // Single inserts and removes: a panic cannot leave the map inconsistent.
        self.missing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `error: cause: cause…`, for a log line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// A new, uniquely named temporary file in `dir` (same file system as the destination, so
/// the rename is atomic).
fn temp_file(dir: &Path) -> Result<(PathBuf, File), DebuginfodError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        ".debuginfo.{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.join(name);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| DebuginfodError::Cache {
            path: path.clone(),
            source,
        })?;
    Ok((path, file))
}

#[cfg(test)]
#[path = "debuginfod_tests.rs"]
mod tests;
