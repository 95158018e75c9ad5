//! A minimal HTTP/1.1 server for the metrics endpoint: `GET /metrics`, one request per
//! connection, `Connection: close`.
//!
//! Hand-written rather than hyper/axum: the endpoint serves one path to one scraper every
//! few seconds, and a few hundred lines with hard limits are easier to audit than a
//! framework. Every connection runs in its own task under a head-size limit and timeouts,
//! and at most [`Limits::max_connections`] run at once (more are answered 503 and closed at
//! once, never queued), so a slow or hostile client delays nobody else.
//!
//! The daemon loop owns all state; a scrape sends it a oneshot over `scrape` and renders
//! whatever snapshot comes back, so rendering never runs on the loop.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, oneshot},
    task::JoinSet,
    time::timeout,
};

use super::{render, snapshot::MetricsSnapshot};

/// What the server sends the daemon loop per scrape: where to put the snapshot.
pub type ScrapeRequest = oneshot::Sender<MetricsSnapshot>;

/// Largest request head (request line + headers) read; Prometheus sends a few hundred bytes.
pub const MAX_HEAD: usize = 8 * 1024;

/// The server's limits. [`serve`] uses the defaults; tests shorten the timeouts.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time a client has to send its whole request head.
    pub head_timeout: Duration,
    /// Time the daemon loop has to answer a scrape (it is between events, normally µs).
    pub answer_timeout: Duration,
    /// Time a client has to take the response.
    pub write_timeout: Duration,
    /// Time to keep reading (and discarding) after an error reply, so that closing with
    /// unread input does not reset the connection and destroy the reply in flight.
    pub linger: Duration,
    /// Connections handled at once; as many again may be in the middle of being refused.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            head_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            linger: Duration::from_secs(1),
            max_connections: 16,
        }
    }
}

/// The metrics listener could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// bind(2)/listen(2) failed (address in use, not local, no permission…).
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// Binds the metrics listener. Done at daemon start, before anything is attached, so a bad
/// or busy address is a startup error rather than a silently missing endpoint.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError::Bind { addr, source })
}

/// Serves metrics on `listener` with the default [`Limits`] until the daemon loop drops the
/// receiving end of `scrape`.
pub async fn serve(listener: TcpListener, scrape: mpsc::Sender<ScrapeRequest>) {
    serve_with(listener, scrape, Limits::default()).await;
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: TcpListener,
    scrape: mpsc::Sender<ScrapeRequest>,
    limits: Limits,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(limits.max_connections));
    // Connection tasks live in a JoinSet so that dropping (aborting) the server ends them
    // too; finished ones are reaped as they end.
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = scrape.closed() => return,
            Some(_) = connections.join_next() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: transient; a pause keeps the loop from spinning.
                    tracing::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Queueing would let slow clients delay scrapes; refuse at once instead, with a
            // 503 (in a task of its own: the client may be slow to take it) while refusals
            // are bounded too, and by closing outright beyond that.
            tracing::debug!(
                "metrics: {peer}: over {} connections, refused",
                limits.max_connections
            );
            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                connections.spawn(async move {
                    let reply = Response::text(503, "too many connections\n").bytes(false);
                    respond(stream, peer, &reply, true, limits).await;
                    drop(permit);
                });
            }
            continue;
        };
        let scrape = scrape.clone();
        connections.spawn(async move {
            handle(stream, peer, &scrape, limits).await;
            drop(permit);
        });
    }
}

/// Why a request could not be taken.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    /// No complete head within [`MAX_HEAD`] bytes.
    #[error("request head over {MAX_HEAD} bytes")]
    TooLarge,
    /// Not an HTTP/1.x request.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The client sent nothing and closed: nothing to answer.
    #[error("closed before sending a request")]
    Closed,
    /// Not a whole head within the head timeout.
    #[error("no complete request within {0:?}")]
    Timeout(Duration),
    /// Reading failed (reset…).
    #[error("reading the request: {0}")]
    Io(#[from] io::Error),
}

/// One connection: read the head, answer, close.
async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    scrape: &mpsc::Sender<ScrapeRequest>,
    limits: Limits,
) {
    let head = match timeout(limits.head_timeout, read_head(&mut stream)).await {
        Ok(head) => head,
        Err(_) => Err(RequestError::Timeout(limits.head_timeout)),
    };
    let mut extra = false;
    let request = head.and_then(|(bytes, more)| {
        extra = more;
        parse(&bytes)
    });
    let (response, head_only) = match request {
        Ok(request) => (
            route(&request, scrape, limits).await,
            request.method == "HEAD",
        ),
        Err(e) => {
            tracing::debug!("metrics: {peer}: {e}");
            let response = match e {
                RequestError::TooLarge => Response::text(431, "request head too large\n"),
                RequestError::Malformed(_) => Response::text(400, "bad request\n"),
                RequestError::Timeout(_) => Response::text(408, "request timeout\n"),
                RequestError::Closed | RequestError::Io(_) => return,
            };
            (response, false)
        }
    };
    // Error replies may leave input unread (a body, the rest of an oversized head).
    let linger = extra || response.status != 200;
    respond(stream, peer, &response.bytes(head_only), linger, limits).await;
}

/// Writes `reply` and closes; with `linger`, first reads and discards what the client still
/// sends (until it closes, or for [`Limits::linger`]): closing a socket with unread input
/// makes the kernel send a reset, which can destroy the reply before the client reads it.
async fn respond(
    mut stream: TcpStream,
    peer: SocketAddr,
    reply: &[u8],
    linger: bool,
    limits: Limits,
) {
    let written = timeout(limits.write_timeout, async {
        stream.write_all(reply).await?;
        stream.shutdown().await
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!("metrics: {peer}: writing the response: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(
                "metrics: {peer}: response not taken within {:?}",
                limits.write_timeout
            );
            return;
        }
    }
    if linger {
        let mut sink = [0u8; 4096];
        let _ = timeout(limits.linger, async {
            while let Ok(n) = stream.read(&mut sink).await
                && n > 0
            {}
        })
        .await;
    }
}

/// Reads until the blank line that ends the head; the bytes up to and including it, and
/// whether more bytes came after it.
async fn read_head(stream: &mut TcpStream) -> Result<(Vec<u8>, bool), RequestError> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        if len == MAX_HEAD {
            return Err(RequestError::TooLarge);
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Err(if len == 0 {
                RequestError::Closed
            } else {
                RequestError::Malformed("closed mid-head")
            });
        }
        // Search from a little before the new bytes: the terminator may straddle reads.
        let from = len.saturating_sub(3);
        len += n;
        if let Some(end) = head_end(&buf[from..len]) {
            let extra = from + end < len;
            buf.truncate(from + end);
            return Ok((buf, extra));
        }
    }
}

/// The length of the head within `bytes` (through CRLF CRLF, or LF LF which RFC 9112 lets a
/// server accept), if complete.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = memchr::memmem::find(bytes, b"\r\n\r\n").map(|i| i + 4);
    let lf = memchr::memmem::find(bytes, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The parts of a request the server looks at.
#[derive(Debug)]
struct Request {
    method: String,
    /// The path, without any query string.
    path: String,
}

/// Parses the request line and checks the header lines' shape (their values are unused).
fn parse(head: &[u8]) -> Result<Request, RequestError> {
    let head = std::str::from_utf8(head).map_err(|_| RequestError::Malformed("not UTF-8"))?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Malformed(
            "request line is not METHOD TARGET VERSION",
        ));
    };
    if method.is_empty() || !method.bytes().all(is_token) {
        return Err(RequestError::Malformed("bad method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(RequestError::Malformed("bad request target"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(RequestError::Malformed("not HTTP/1.x"));
    }
    for header in lines.take_while(|l| !l.is_empty()) {
        let (name, _) = header
            .split_once(':')
            .ok_or(RequestError::Malformed("header without colon"))?;
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(RequestError::Malformed("bad header name"));
        }
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
    })
}

/// RFC 9110 `tchar`.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The answer to a well-formed request.
async fn route(
    request: &Request,
    scrape: &mpsc::Sender<ScrapeRequest>,
    limits: Limits,
) -> Response {
    if request.method != "GET" && request.method != "HEAD" {
        let mut r = Response::text(405, "only GET\n");
        r.allow = true;
        return r;
    }
    match request.path.as_str() {
        "/metrics" => match snapshot(scrape, limits.answer_timeout).await {
            Some(snap) => Response {
                status: 200,
                content_type: render::CONTENT_TYPE,
                body: render::render(&snap, env!("CARGO_PKG_VERSION")).into_bytes(),
                allow: false,
            },
            None => Response::text(503, "the daemon did not answer\n"),
        },
        "/" => Response::text(200, "probed: metrics at /metrics\n"),
        _ => Response::text(404, "not found; metrics are at /metrics\n"),
    }
}

/// Asks the daemon loop for a snapshot; `None` if it is gone or does not answer in time.
async fn snapshot(scrape: &mpsc::Sender<ScrapeRequest>, wait: Duration) -> Option<MetricsSnapshot> {
    let (tx, rx) = oneshot::channel();
    timeout(wait, async {
        scrape.send(tx).await.ok()?;
        rx.await.ok()
    })
    .await
    .ok()
    .flatten()
}

/// A response, always with `Connection: close`.
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// Whether to send `Allow: GET, HEAD` (405).
    allow: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            allow: false,
        }
    }

    /// The bytes on the wire; `head_only` for HEAD requests (same headers, no body).
    fn bytes(&self, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
