//! The HTTP/1.1 server of the metrics endpoint: `GET /metrics`, one request per connection,
//! `Connection: close`.
//!
//! HTTP itself is hyper's (server, HTTP/1 only): request parsing, framing, HEAD, the
//! automatic 400/431 answers to bad heads. It used to be hand-written; a parser and framing
//! that are maintained elsewhere and carry much of the Rust ecosystem's HTTP (axum, reqwest…)
//! are easier to trust than our own, and what is left here is routing and the limits. hyper
//! runs each connection; this module layers on it what a daemon's side endpoint needs so that
//! a slow or hostile client delays nobody else:
//!
//! - a head-size limit, [`MAX_HEAD`] (hyper's `max_header_size`, with its read buffer capped
//!   to the same size), answered 431 by hyper;
//! - a head timeout (hyper's `header_read_timeout`, running from accept); hyper then closes
//!   the connection without an answer;
//! - the answer timeout: the daemon loop must send the snapshot in time, or the answer is 503;
//! - a whole-connection deadline (hyper has no write timeout), after which the connection is
//!   dropped whatever state it is in;
//! - at most [`Limits::max_connections`] connections at once; more are answered 503 as soon
//!   as their request is in (the loop is not asked) and closed, never queued;
//! - keep-alive off, and a gentle close (`close`) so a reply is not destroyed by a reset.
//!
//! The daemon loop owns all state; a scrape sends it a oneshot over `scrape` and renders
//! whatever snapshot comes back, so rendering never runs on the loop.

use std::{
    convert::Infallible, future::poll_fn, io, net::SocketAddr, pin::Pin, sync::Arc, time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
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

// hyper's `max_buf_size` panics below its minimum read buffer, 8192 bytes (not exported).
const _: () = assert!(MAX_HEAD >= 8192, "hyper's max_buf_size minimum");

/// The server's limits. [`serve`] uses the defaults; tests shorten the timeouts.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time a client has to send its whole request head, from accept.
    pub head_timeout: Duration,
    /// Time the daemon loop has to answer a scrape (it is between events, normally µs).
    pub answer_timeout: Duration,
    /// Time a client has to take the response. hyper has no write timeout, so this is the
    /// part of a whole-connection deadline (head + answer + write timeouts, from accept)
    /// left for writing; past it the connection is dropped.
    pub write_timeout: Duration,
    /// Time to keep reading (and discarding) after the reply, so that closing with unread
    /// input does not reset the connection and destroy the reply in flight.
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
    let http = builder(limits);
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
        let http = http.clone();
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Queueing would let slow clients delay scrapes; refuse at once instead, with a
            // 503 (in a task of its own: the client may be slow to send its request or to
            // take the answer) while refusals are bounded too, and by closing outright
            // beyond that.
            tracing::debug!(
                "metrics: {peer}: over {} connections, refused",
                limits.max_connections
            );
            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                connections.spawn(async move {
                    handle(stream, peer, Role::Refuse, &http, limits).await;
                    drop(permit);
                });
            }
            continue;
        };
        let role = Role::Serve(scrape.clone());
        connections.spawn(async move {
            handle(stream, peer, role, &http, limits).await;
            drop(permit);
        });
    }
}

/// hyper's connection settings: the limits it enforces itself.
fn builder(limits: Limits) -> http1::Builder {
    let mut http = http1::Builder::new();
    http
        // One request per connection: a scrape every few seconds gains nothing from reuse,
        // and a connection that ends with its answer cannot idle on a permit.
        .keep_alive(false)
        // A client may shut its sending side once its request is out (tests and simple
        // clients do); without this hyper would take that for an aborted request.
        .half_close(true)
        // `max_header_size` makes the limit exact: a complete head of MAX_HEAD bytes is
        // taken, one byte more is 431. The read buffer is capped to the same size so a
        // client cannot make hyper buffer more than that (~400 KB by default).
        .max_header_size(MAX_HEAD)
        .max_buf_size(MAX_HEAD)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout);
    http
}

/// What a connection is accepted for.
#[derive(Clone)]
enum Role {
    /// Answer the request, asking the daemon loop over this channel for `/metrics`.
    Serve(mpsc::Sender<ScrapeRequest>),
    /// Over the connection limit: whatever the request, 503.
    Refuse,
}

/// The response body: always the whole of it at once.
type Body = Full<Bytes>;

/// The service's future; boxed, because hyper's `poll_without_shutdown` wants it `Unpin`.
type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// One connection: hyper reads the head and writes the answer, within the whole-connection
/// deadline; then the socket is closed gently.
async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    role: Role,
    http: &http1::Builder,
    limits: Limits,
) {
    let service = service_fn(move |request: Request<Incoming>| -> Answer {
        let role = role.clone();
        Box::pin(async move { Ok(answer(&request, &role, limits).await) })
    });
    let mut conn = http.serve_connection(TokioIo::new(stream), service);
    let deadline = limits.head_timeout + limits.answer_timeout + limits.write_timeout;
    // Without shutdown: the socket comes back from `into_parts` for `close`.
    match timeout(deadline, poll_fn(|cx| conn.poll_without_shutdown(cx))).await {
        Ok(Ok(())) => {}
        // A bad head (hyper has answered 400/431), a head timeout or a client that closed
        // mid-head (no answer), a reset…: all the client's doing, so only logged at debug.
        Ok(Err(e)) => tracing::debug!("metrics: {peer}: {e}"),
        Err(_) => {
            tracing::debug!("metrics: {peer}: connection not done within {deadline:?}");
            return;
        }
    }
    close(conn.into_parts().io.into_inner(), limits.linger).await;
}

/// Closes after the reply: shuts the sending side (the client sees the end of the reply),
/// then reads and discards what the client still sends until it closes, or for `linger`.
/// Closing a socket with unread input (the rest of an oversized head, a body the server
/// never reads) makes the kernel send a reset, which can destroy the reply before the
/// client reads it.
async fn close(mut stream: TcpStream, linger: Duration) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = timeout(linger, async {
        while let Ok(n) = stream.read(&mut sink).await
            && n > 0
        {}
    })
    .await;
}

/// The answer to a request hyper has parsed.
async fn answer(request: &Request<Incoming>, role: &Role, limits: Limits) -> Response<Body> {
    let Role::Serve(scrape) = role else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n");
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match request.uri().path() {
        // hyper takes `GET metrics` (authority-form, meant for CONNECT) as a request for
        // the host "metrics"; like any target that is not a path, it is a bad request.
        path if !path.starts_with('/') => text(StatusCode::BAD_REQUEST, "bad request\n"),
        // HEAD is answered the same (hyper sends the headers, Content-Length included,
        // without the body), so it scrapes the loop too.
        "/metrics" => match snapshot(scrape, limits.answer_timeout).await {
            Some(snap) => {
                let body = render::render(&snap, env!("CARGO_PKG_VERSION"));
                response(StatusCode::OK, render::CONTENT_TYPE, body.into())
            }
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the daemon did not answer\n",
            ),
        },
        "/" => text(StatusCode::OK, "probed: metrics at /metrics\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        ),
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

/// A plain-text response.
fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    response(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

/// A response with `Connection: close`. hyper adds that header itself to HTTP/1.1 replies
/// when keep-alive is off, but not to HTTP/1.0 ones (whose default is to close); saying it
/// always keeps every reply explicit, as before.
fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
