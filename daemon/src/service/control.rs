//! The control socket: a Unix stream socket (mode 0600) on which `probed ctl` lists, adds and
//! removes probes and reads counters while the daemon runs.
//!
//! Protocol: one JSON object per line each way. A request is `{"cmd": "list"}`,
//! `{"cmd": "stats"}`, `{"cmd": "remove", "id": N}` or `{"cmd": "add", "spec": "…", …}`; the
//! reply is `{"ok": true, …}` or `{"ok": false, "error": "…"}`. A connection may carry many
//! requests.
//!
//! Who may talk: the kernel's peer credentials (SO_PEERCRED) of every connection are checked —
//! root or the daemon's own user — on top of the socket's mode, so a socket made reachable by
//! mistake (a looser directory, a bind mount into a container) still refuses strangers.
//! Requests larger than [`MAX_REQUEST`], garbage and unknown commands get an error reply; a
//! peer that says nothing for [`IDLE_TIMEOUT`] is dropped. None of it reaches the daemon's
//! state: the loop only ever sees parsed requests.

use std::{
    io,
    num::{NonZeroU32, NonZeroU64},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::reply::Reply;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc, oneshot},
};

/// Largest request accepted, in bytes (a SPEC is a path and a symbol: far below this).
pub const MAX_REQUEST: usize = 64 * 1024;
/// A connection idle this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more wait (a flood of clients cannot exhaust the daemon).
const MAX_CONNECTIONS: usize = 32;

/// A request on the control socket.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// The probes and their state.
    List,
    /// Counters of every probe, the resolver and the daemon.
    Stats,
    /// Attach a probe.
    Add(AddRequest),
    /// Detach a probe.
    Remove {
        /// Its id (from `list` or `add`).
        id: u32,
    },
}

/// `add`: the fields of a `[[probes]]` entry — also `probed ctl add`'s arguments.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    /// The SPEC, as for `probed trace`.
    pub spec: String,
    /// The output its hits go to (default stdout).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Only this process.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<NonZeroU32>,
    /// Only processes in this process's pid namespace.
    #[arg(long, value_name = "PID")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<NonZeroU32>,
    /// At most this many hits per second.
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<NonZeroU64>,
    /// Bucket size for --rate-limit.
    #[arg(long, value_name = "N", requires = "rate_limit")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<NonZeroU64>,
    /// Detach the probe if it fires more than this many times per second.
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_above: Option<NonZeroU64>,
    /// Capture user stacks: `--stack` (= fp, the kernel's frame-pointer walk) or
    /// `--stack=auto|dwarf` (a stack copy unwound with CFI; refused while the daemon's
    /// tracker runs lock mode).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "fp")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::unwind::setting::deserialize"
    )]
    pub stack: Option<crate::unwind::StackMode>,
    /// KiB of user stack copied per hit with `--stack=auto|dwarf`: 4, 8, 16 (the default),
    /// 32 or 64.
    #[arg(long, value_name = "KIB", value_parser = parse_kib)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_copy_kib: Option<u32>,
}

/// `--stack-copy-kib`, checked on the client as `probed trace` checks it (the daemon checks
/// again: a request may come from elsewhere).
fn parse_kib(text: &str) -> Result<u32, String> {
    let kib = crate::cli::parse_copy_kib(text)?;
    u32::try_from(kib).map_err(|e| e.to_string())
}

/// A parsed request and where its reply goes; the daemon loop answers.
#[derive(Debug)]
pub struct Call {
    /// The request.
    pub request: Request,
    /// The reply.
    pub reply: oneshot::Sender<Reply>,
}

/// Why the control socket cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another daemon answers on the socket.
    #[error("another probed is already listening on {}", .0.display())]
    InUse(PathBuf),
    /// Creating the directory, binding or setting the mode failed.
    #[error("cannot create the control socket {}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// The bound control socket; the file is removed on drop.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` (mode 0600). A stale socket file left by a killed daemon is replaced; a
    /// live one is an error. A missing parent directory is created with mode 0700.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let err = |source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(err)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
        if std::fs::symlink_metadata(path).is_ok() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        // The peer check below is the guard; the mode keeps others from even connecting.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts connections until the daemon stops, handing parsed requests to `calls`.
    pub async fn serve(&self, calls: mpsc::Sender<Call>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let calls = calls.clone();
                    tokio::spawn(async move {
                        if let Err(err) = connection(stream, calls).await {
                            tracing::debug!(error = %err, "control connection ended");
                        }
                        drop(permit);
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a peer with user id `uid` may use the socket: root, or the daemon's own user.
pub fn allowed(uid: u32, own_uid: u32) -> bool {
    uid == 0 || uid == own_uid
}

/// Parses one request line; the error is the reply's message.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| "the request is not UTF-8".to_owned())?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("the request is not a JSON object: {e}"))?;
    let Some(cmd) = value.get("cmd").and_then(Value::as_str).map(str::to_owned) else {
        return Err("the request has no \"cmd\" (expected list, stats, add or remove)".to_owned());
    };
    if !["list", "stats", "add", "remove"].contains(&cmd.as_str()) {
        return Err(format!(
            "unknown command `{cmd}` (expected list, stats, add or remove)"
        ));
    }
    serde_json::from_value(value).map_err(|e| format!("bad `{cmd}` request: {e}"))
}

/// Serves one connection: peer check, then request/reply lines until EOF, an oversized
/// request or the idle timeout.
async fn connection(stream: UnixStream, calls: mpsc::Sender<Call>) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    let (read, mut write) = stream.into_split();
    if !allowed(cred.uid(), own) {
        tracing::warn!(
            uid = cred.uid(),
            pid = cred.pid(),
            "control request refused: not root or probed's user"
        );
        let reply = Reply::error(format!(
            "permission denied: uid {} may not control probed (root only)",
            cred.uid()
        ));
        send(&mut write, &reply).await?;
        // Take the peer's request before closing: closing first would make its write fail
        // (EPIPE) before it reads why it was refused.
        let mut discard = [0u8; 4096];
        let mut read = read;
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::io::AsyncReadExt::read(&mut read, &mut discard),
        )
        .await;
        return Ok(());
    }
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = u64::try_from(MAX_REQUEST).unwrap_or(u64::MAX) + 1;
        let mut limited = tokio::io::AsyncReadExt::take(&mut read, limit);
        let n = match tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(b'\n', &mut line)).await
        {
            Ok(n) => n?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_REQUEST {
            // Part of the request is still unread; the stream cannot be resynchronized.
            let reply = Reply::error(format!("request larger than {MAX_REQUEST} bytes"));
            return send(&mut write, &reply).await;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let reply = match parse_request(text) {
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if calls.send(Call { request, reply: tx }).await.is_err() {
                    return send(&mut write, &Reply::error("probed is stopping")).await;
                }
                rx.await
                    .unwrap_or_else(|_| Reply::error("probed is stopping"))
            }
            Err(message) => Reply::error(message),
        };
        send(&mut write, &reply).await?;
    }
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(&reply.to_json()).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests parse into commands; everything else gets a message saying what was
    /// expected.
    #[test]
    fn requests() {
        assert_eq!(parse_request(br#"{"cmd":"list"}"#), Ok(Request::List));
        assert_eq!(
            parse_request(br#"{"cmd":"remove","id":7}"#),
            Ok(Request::Remove { id: 7 })
        );
        let add = parse_request(br#"{"cmd":"add","spec":"uprobe:/bin/x:f","pid":3}"#).unwrap();
        let Request::Add(add) = add else {
            panic!("{add:?}")
        };
        assert_eq!(add.spec, "uprobe:/bin/x:f");
        assert_eq!(add.pid.map(NonZeroU32::get), Some(3));
        for (bad, want) in [
            (&b"\xff\xfe"[..], "not UTF-8"),
            (b"hello", "not a JSON object"),
            (b"[1,2]", "no \"cmd\""),
            (br#"{"cmd":"reboot"}"#, "unknown command `reboot`"),
            (
                br#"{"cmd":"remove"}"#,
                "bad `remove` request: missing field `id`",
            ),
            (br#"{"cmd":"remove","id":-1}"#, "bad `remove` request"),
            (
                br#"{"cmd":"add","spec":"x","bogus":1}"#,
                "unknown field `bogus`",
            ),
            (br#"{"cmd":"add","spec":"x","pid":0}"#, "bad `add` request"),
        ] {
            let err = parse_request(bad).expect_err(&String::from_utf8_lossy(bad));
            assert!(err.contains(want), "{err} / {want}");
        }
    }

    /// Root and the daemon's own user may talk; others may not.
    #[test]
    fn peers() {
        assert!(allowed(0, 1000));
        assert!(allowed(1000, 1000));
        assert!(!allowed(1001, 1000));
        assert!(allowed(0, 0));
        assert!(!allowed(65534, 0));
    }

    /// Over a real socket: replies come from the loop; garbage, unknown commands and an
    /// oversized request get error replies; a live socket cannot be bound twice and a stale
    /// one is replaced.
    #[tokio::test]
    async fn over_a_socket() {
        let dir = std::env::temp_dir().join(format!("probed-ctl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/control.sock");
        let socket = ControlSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            ControlSocket::bind(&path),
            Err(ControlError::InUse(_))
        ));
        let (tx, mut rx) = mpsc::channel::<Call>(4);
        let server = async move { socket.serve(tx).await };
        let answer = async move {
            while let Some(call) = rx.recv().await {
                let _ = call
                    .reply
                    .send(Reply::error(format!("echo {:?}", call.request)));
            }
        };
        let client = async {
            let stream = UnixStream::connect(&path).await.unwrap();
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            let mut ask = async |bytes: &[u8]| -> Value {
                w.write_all(bytes).await.unwrap();
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                serde_json::from_str(&line).unwrap()
            };
            let v = ask(b"{\"cmd\":\"list\"}\n").await;
            assert_eq!(v["error"], "echo List");
            let v = ask(b"garbage\n").await;
            assert_eq!(v["ok"], false);
            let v = ask(b"{\"cmd\":\"fly\"}\n").await;
            assert!(v["error"].as_str().unwrap().contains("unknown command"));
            // The connection still works after bad requests.
            let v = ask(b"{\"cmd\":\"stats\"}\n").await;
            assert_eq!(v["error"], "echo Stats");
            let huge = vec![b'x'; MAX_REQUEST + 10];
            let v = ask(&huge).await;
            assert!(v["error"].as_str().unwrap().contains("larger than"));
            // A new connection works after that one was dropped.
            let stream = UnixStream::connect(&path).await.unwrap();
            let (r, mut w) = stream.into_split();
            w.write_all(b"{\"cmd\":\"remove\",\"id\":3}\n")
                .await
                .unwrap();
            let mut line = String::new();
            BufReader::new(r).read_line(&mut line).await.unwrap();
            assert!(line.contains("Remove { id: 3 }"), "{line}");
        };
        tokio::select! {
            () = server => panic!("server ended"),
            () = answer => panic!("answers ended"),
            () = client => {}
        }
        // Stale socket file (no listener): replaced.
        let stale = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        let again = ControlSocket::bind(&stale).unwrap();
        drop(again);
        assert!(!stale.exists(), "removed on drop");
    }
}
