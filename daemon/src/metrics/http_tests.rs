//! The server over real TCP sockets on 127.0.0.1, with a fake daemon loop answering scrapes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use super::*;
use crate::metrics::snapshot::ProbeMetrics;

/// Short timeouts so the timeout tests run in well under a second.
const TEST_LIMITS: Limits = Limits {
    head_timeout: Duration::from_millis(300),
    answer_timeout: Duration::from_millis(300),
    write_timeout: Duration::from_millis(300),
    linger: Duration::from_millis(300),
    max_connections: 16,
};

fn fixed_snapshot() -> MetricsSnapshot {
    MetricsSnapshot {
        probes: vec![ProbeMetrics {
            id: 3,
            spec: "uprobe:/bin/x:f".into(),
            output: "stdout".into(),
            hits: 42,
            ..ProbeMetrics::default()
        }],
        uptime_seconds: 2.0,
        ..MetricsSnapshot::default()
    }
}

/// A server on an ephemeral port and a fake daemon loop answering with [`fixed_snapshot`];
/// returns the address and the count of scrapes answered.
async fn start(limits: Limits) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    start_with(limits, fixed_snapshot()).await
}

/// [`start`] with the loop answering `snapshot`.
async fn start_with(
    limits: Limits,
    snapshot: MetricsSnapshot,
) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, mut rx) = mpsc::channel::<ScrapeRequest>(4);
    let answered = Arc::new(AtomicU64::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            count.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(snapshot.clone());
        }
    });
    tokio::spawn(serve_with(listener, tx, limits));
    (addr, answered)
}

/// A parsed response.
#[derive(Debug)]
struct Reply {
    /// `HTTP/1.1`, or `HTTP/1.0` in answer to an HTTP/1.0 request (hyper answers in the
    /// client's version).
    version: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` as is and closes the sending side, reads until the server closes (at
/// most 5 s), parses the reply.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("send");
    s.shutdown().await.expect("shutdown write");
    read_reply(&mut s).await
}

async fn read_reply(s: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("server closes the connection")
        .expect("read reply");
    let text = String::from_utf8(raw).expect("UTF-8 reply");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let (version, status) = status_line
        .split_once(' ')
        .filter(|(v, _)| matches!(*v, "HTTP/1.1" | "HTTP/1.0"))
        .and_then(|(v, rest)| Some((v.to_owned(), rest.get(..3)?.parse().ok()?)))
        .unwrap_or_else(|| panic!("bad status line {status_line}"));
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(": ").expect("header");
            (n.to_owned(), v.to_owned())
        })
        .collect();
    let reply = Reply {
        version,
        status,
        headers,
        body: body.to_owned(),
    };
    assert_eq!(reply.header("Connection"), Some("close"), "{reply:?}");
    let len: usize = reply
        .header("Content-Length")
        .expect("length")
        .parse()
        .expect("numeric");
    if !reply.body.is_empty() {
        // The head only: a body may be megabytes.
        assert_eq!(
            len,
            reply.body.len(),
            "{} {:?}",
            reply.status,
            reply.headers
        );
    }
    reply
}

/// Reads until the server closes (at most 5 s) and expects nothing: a connection closed
/// without an answer.
async fn read_nothing(s: &mut TcpStream) {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("server closes the connection")
        .expect("read to the end");
    assert!(raw.is_empty(), "{:?}", String::from_utf8_lossy(&raw));
}

const GET_METRICS: &[u8] =
    b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain;version=0.0.4;q=1\r\nUser-Agent: test\r\n\r\n";

#[tokio::test]
async fn get_metrics_returns_the_rendered_snapshot() {
    let (addr, answered) = start(TEST_LIMITS).await;
    let r = exchange(addr, GET_METRICS).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(
        r.body,
        render::render(&fixed_snapshot(), env!("CARGO_PKG_VERSION"))
    );
    assert!(
        r.body.contains("probed_probe_hits_total{probe_id=\"3\",spec=\"uprobe:/bin/x:f\",output=\"stdout\"} 42\n"),
        "{}",
        r.body
    );
    assert_eq!(r.version, "HTTP/1.1", "{r:?}");
    assert_eq!(answered.load(Ordering::Relaxed), 1);
    // A query string does not change the path; HTTP/1.0 and bare-LF heads are accepted.
    // hyper answers an HTTP/1.0 request in HTTP/1.0 (the hand-written server said
    // HTTP/1.1); `Connection: close` is still sent (`read_reply` checks it).
    let r = exchange(addr, b"GET /metrics?x=1 HTTP/1.0\n\n").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.version, "HTTP/1.0", "{r:?}");
    assert_eq!(answered.load(Ordering::Relaxed), 2);
}

/// Keep-alive is off: of two requests sent on one connection only the first is answered,
/// then the connection is closed.
#[tokio::test]
async fn one_request_per_connection() {
    let (addr, answered) = start(TEST_LIMITS).await;
    let twice = [GET_METRICS, GET_METRICS].concat();
    let r = exchange(addr, &twice).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body,
        render::render(&fixed_snapshot(), env!("CARGO_PKG_VERSION")),
        "one reply only"
    );
    assert_eq!(answered.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn head_gets_headers_only() {
    let (addr, _) = start(TEST_LIMITS).await;
    let r = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
    let expected = render::render(&fixed_snapshot(), env!("CARGO_PKG_VERSION")).len();
    assert_eq!(
        r.header("Content-Length"),
        Some(expected.to_string().as_str())
    );
}

#[tokio::test]
async fn index_points_to_metrics_and_other_paths_are_404() {
    let (addr, answered) = start(TEST_LIMITS).await;
    let r = exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("/metrics"), "{r:?}");
    for path in ["/metrics/", "/metricsx", "/favicon.ico"] {
        let r = exchange(addr, format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes()).await;
        assert_eq!(r.status, 404, "{path}: {r:?}");
    }
    assert_eq!(
        answered.load(Ordering::Relaxed),
        0,
        "no scrape for other paths"
    );
}

#[tokio::test]
async fn other_methods_are_405() {
    let (addr, answered) = start(TEST_LIMITS).await;
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let r = exchange(
            addr,
            format!("{method} /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 405, "{method}: {r:?}");
        assert_eq!(r.header("Allow"), Some("GET, HEAD"), "{r:?}");
    }
    // A body the server never reads is drained after the answer (`close`), so closing does
    // not reset the connection and destroy the 405 before the client reads it.
    let body = vec![b'x'; 256 * 1024];
    let mut post = format!(
        "POST /metrics HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    post.extend_from_slice(&body);
    let r = exchange(addr, &post).await;
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(answered.load(Ordering::Relaxed), 0);
}

/// A head of exactly MAX_HEAD bytes is served; one byte more is 431.
#[tokio::test]
async fn head_size_limit_is_exact() {
    let (addr, _) = start(TEST_LIMITS).await;
    let request = |size: usize| {
        let start = "GET /metrics HTTP/1.1\r\nX-Pad: ";
        let end = "\r\n\r\n";
        let pad = "a".repeat(size - start.len() - end.len());
        format!("{start}{pad}{end}").into_bytes()
    };
    let r = exchange(addr, &request(MAX_HEAD)).await;
    assert_eq!(r.status, 200, "{:?}", r.status);
    let r = exchange(addr, &request(MAX_HEAD + 1)).await;
    assert_eq!(r.status, 431, "{r:?}");
    // A client that keeps sending without ever ending its head is cut off at the limit too.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&vec![b'x'; 64 * 1024]).await.ok();
    let r = read_reply(&mut s).await;
    assert_eq!(r.status, 431, "{r:?}");
}

#[tokio::test]
async fn garbage_is_400() {
    let (addr, answered) = start(TEST_LIMITS).await;
    for bad in [
        &b"\x00\x01\x02\xff\xfe garbage\r\n\r\n"[..],
        b"GET /metrics\r\n\r\n",
        b"GET /metrics HTTP/2.0\r\n\r\n",
        b"GET metrics HTTP/1.1\r\n\r\n",
        b"GET  /metrics HTTP/1.1\r\n\r\n",
        b"G(T /metrics HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n",
    ] {
        let r = exchange(addr, bad).await;
        assert_eq!(r.status, 400, "{bad:?}: {r:?}");
    }
    // Where hyper differs from the hand-written server (which answered 400 to both): empty
    // lines before a request line are skipped (RFC 9112 §2.2), so a client that sends only
    // those and closes sent no request; and a client that closes mid-head gets no answer,
    // hyper just closes too.
    for incomplete in [&b"\r\n\r\n"[..], b"GET /metrics HTTP/1.1\r\nHost:"] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(incomplete).await.expect("send");
        s.shutdown().await.expect("shutdown write");
        read_nothing(&mut s).await;
    }
    assert_eq!(answered.load(Ordering::Relaxed), 0);
}

/// A client that connects and never sends, or never ends its head, is disconnected after
/// the head timeout, and meanwhile other scrapes are served at once. (hyper closes without
/// an answer where the hand-written server sent 408.)
#[tokio::test]
async fn silent_client_times_out_without_blocking_scrapes() {
    let (addr, _) = start(TEST_LIMITS).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"GET /metrics HTTP/1.1\r\n")
        .await
        .expect("send");
    let r = exchange(addr, GET_METRICS).await;
    assert_eq!(r.status, 200);
    let served_in = started.elapsed();
    assert!(
        served_in < TEST_LIMITS.head_timeout,
        "scrape waited {served_in:?}"
    );
    for s in [&mut silent, &mut half] {
        read_nothing(s).await;
    }
    let timed_out_in = started.elapsed();
    assert!(timed_out_in >= TEST_LIMITS.head_timeout, "{timed_out_in:?}");
    assert!(
        timed_out_in < TEST_LIMITS.head_timeout * 5,
        "{timed_out_in:?}"
    );
}

/// 16 scrapes at once all get the full snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scrapes_all_succeed() {
    let (addr, answered) = start(TEST_LIMITS).await;
    let expected = render::render(&fixed_snapshot(), env!("CARGO_PKG_VERSION"));
    let mut tasks = JoinSet::new();
    for _ in 0..16 {
        tasks.spawn(async move { exchange(addr, GET_METRICS).await });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        let r = r.expect("task");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, expected);
        ok += 1;
    }
    assert_eq!(ok, 16);
    assert_eq!(answered.load(Ordering::Relaxed), 16);
}

/// Over the connection limit a client is refused with 503 at once (not queued behind the
/// slow ones); once they time out, scrapes work again.
#[tokio::test]
async fn over_the_limit_is_refused_at_once() {
    let limits = Limits {
        max_connections: 2,
        ..TEST_LIMITS
    };
    let (addr, _) = start(limits).await;
    let mut slow: Vec<_> = Vec::new();
    for _ in 0..2 {
        slow.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Let the server accept both before the third arrives.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let r = exchange(addr, GET_METRICS).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        started.elapsed() < limits.head_timeout,
        "{:?}",
        started.elapsed()
    );
    for s in &mut slow {
        read_nothing(s).await;
    }
    // Their connections (and permits) end once they close too: the server lingers for them.
    drop(slow);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(exchange(addr, GET_METRICS).await.status, 200);
}

/// A client that never takes its response is cut off at the whole-connection deadline
/// (head + answer + write timeouts: hyper has no write timeout of its own), which frees its
/// connection slot.
#[tokio::test]
async fn client_that_never_reads_is_cut_off() {
    let limits = Limits {
        max_connections: 1,
        ..TEST_LIMITS
    };
    // A response far larger than the sockets can buffer: the server's send buffer grows to
    // 4 MiB at most (net.ipv4.tcp_wmem), the client's receive buffer is shrunk below.
    let mut big = fixed_snapshot();
    big.probes[0].spec = "x".repeat(1 << 20);
    let size = render::render(&big, env!("CARGO_PKG_VERSION")).len();
    assert!(size > 8 << 20, "response of {size} bytes");
    let (addr, answered) = start_with(limits, big).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stuck = socket.connect(addr).await.expect("connect");
    let started = Instant::now();
    stuck.write_all(GET_METRICS).await.expect("send");
    // Its slot is taken while the server is stuck writing: another client is refused.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let index = b"GET / HTTP/1.1\r\n\r\n";
    assert_eq!(exchange(addr, index).await.status, 503);
    assert_eq!(answered.load(Ordering::Relaxed), 1);
    // Past the deadline the server has given up on it: the slot is free again, and a client
    // that reads gets the whole response (hyper's write buffer, capped at MAX_HEAD with the
    // read buffer, does not limit what is written).
    let deadline = limits.head_timeout + limits.answer_timeout + limits.write_timeout;
    tokio::time::sleep_until((started + deadline + Duration::from_millis(100)).into()).await;
    let r = exchange(addr, GET_METRICS).await;
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(r.body.len(), size);
    drop(stuck);
}

/// A daemon loop that takes scrape requests but never answers gives 503 after the answer
/// timeout; a loop that is gone gives 503 at once and stops the server.
#[tokio::test]
async fn unanswered_scrape_is_503_and_a_gone_loop_stops_the_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, mut rx) = mpsc::channel::<ScrapeRequest>(4);
    let server = tokio::spawn(serve_with(listener, tx, TEST_LIMITS));
    let hoard = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(reply) = rx.recv().await {
            held.push(reply);
            if held.len() == 1 {
                break;
            }
        }
        (held, rx)
    });
    let started = Instant::now();
    let r = exchange(addr, GET_METRICS).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        started.elapsed() >= TEST_LIMITS.answer_timeout,
        "{:?}",
        started.elapsed()
    );
    let (held, rx) = hoard.await.expect("hoard");
    drop(held);
    drop(rx);
    tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .expect("server returns once the loop is gone")
        .expect("server task");
}

/// Binding a port already in use is an error naming the address.
#[tokio::test]
async fn bind_error_names_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = taken.local_addr().expect("addr");
    let e = bind(addr).await.expect_err("port in use");
    let msg = e.to_string();
    assert!(msg.contains(&addr.to_string()), "{msg}");
    assert!(msg.contains("in use"), "{msg}");
}
