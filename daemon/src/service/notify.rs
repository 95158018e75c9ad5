//! The sd_notify protocol, client side: one datagram per state change to the Unix socket
//! systemd names in `NOTIFY_SOCKET` (`man 3 sd_notify`).
//!
//! Written by hand rather than linking libsystemd: the protocol is a `KEY=VALUE\n` datagram
//! to a path (or an abstract name written `@name`), and the daemon needs only five messages.
//! Not running under systemd (no `NOTIFY_SOCKET`) makes every call a no-op.
//!
//! Not the `sd-notify` crate either: its 0.5.0 (read for issue 15) does not cover what this
//! does. (1) It connects to `NOTIFY_SOCKET`'s value as a path, so the `@name` abstract form
//! (`abstract_socket` below) fails; (2) it reads `NOTIFY_SOCKET` from the environment at every
//! message, so probed could not remove the variable at start (which keeps processes it starts
//! from notifying in its name) without losing every later STOPPING, WATCHDOG and STATUS
//! (`notify_and_unset_env` drops them); (3) it takes its settings only from the environment,
//! which unit tests cannot set per test ([`Notifier::new`] takes the values).

use std::{
    io,
    os::unix::net::{SocketAddr, UnixDatagram},
    time::Duration,
};

/// Failure to reach the service manager.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` is set but names no usable socket address.
    #[error("NOTIFY_SOCKET={value:?} is not a socket path or @abstract name")]
    BadAddress {
        /// The variable's value.
        value: String,
    },
    /// Creating the datagram socket failed.
    #[error("cannot create the notification socket")]
    Socket(#[source] io::Error),
    /// Sending a message failed (the manager went away, or the socket is not ours to write).
    #[error("cannot send {message:?} to NOTIFY_SOCKET")]
    Send {
        /// The message, first line only.
        message: String,
        /// The send error.
        #[source]
        source: io::Error,
    },
}

/// A connection to the service manager's notification socket (or nothing, outside systemd).
#[derive(Debug)]
pub struct Notifier {
    /// The socket and the manager's address; `None` when not running under systemd.
    target: Option<(UnixDatagram, SocketAddr)>,
    /// How often to send `WATCHDOG=1`, when the manager asked for it.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, then removes them from the
    /// environment so that processes probed starts do not notify systemd in its name.
    ///
    /// The watchdog applies only when `WATCHDOG_PID` is unset or is this process (systemd
    /// sets it so a forking parent's settings do not leak to children).
    pub fn from_env() -> Result<Self, NotifyError> {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        // SAFETY: called once at start-up, before the runtime or any other thread that
        // could read the environment concurrently exists.
        unsafe {
            std::env::remove_var("NOTIFY_SOCKET");
            std::env::remove_var("WATCHDOG_USEC");
            std::env::remove_var("WATCHDOG_PID");
        }
        let socket = socket.map(|s| s.to_string_lossy().into_owned());
        Self::new(socket.as_deref(), usec.as_deref(), pid.as_deref())
    }

    /// A notifier from the variables' values (`None`: unset).
    pub fn new(
        socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
    ) -> Result<Self, NotifyError> {
        let Some(value) = socket.filter(|s| !s.is_empty()) else {
            return Ok(Self::disabled());
        };
        let bad = || NotifyError::BadAddress {
            value: value.to_owned(),
        };
        let addr = if let Some(name) = value.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| bad())?
        } else if value.starts_with('/') {
            SocketAddr::from_pathname(value).map_err(|_| bad())?
        } else {
            return Err(bad());
        };
        let socket = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        let ours = watchdog_pid.is_none_or(|p| p.trim().parse() == Ok(std::process::id()));
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && ours)
            // Half the timeout, as sd_watchdog_enabled(3) recommends: one late ping is not
            // yet a missed deadline.
            .map(|u| Duration::from_micros(u / 2));
        Ok(Self {
            target: Some((socket, addr)),
            watchdog,
        })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self {
            target: None,
            watchdog: None,
        }
    }

    /// Whether messages go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to call [`Notifier::watchdog`]: half of `WATCHDOG_USEC`; `None` when the
    /// manager runs no watchdog for this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Start-up is complete: the probes are attached.
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.send("READY=1")
    }

    /// A reload has begun; [`Notifier::ready`] ends it. `MONOTONIC_USEC` is required by
    /// `Type=notify-reload` (systemd ≥ 253) to match the message to the reload request;
    /// older managers ignore it.
    pub fn reloading(&self) -> Result<(), NotifyError> {
        // SAFETY: clock_gettime writes only into the timespec we pass.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: valid clock id and a valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let usec = u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
            + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"))
    }

    /// Shutdown has begun.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send("STOPPING=1")
    }

    /// A watchdog keep-alive ping.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.send("WATCHDOG=1")
    }

    /// A free-form status line (`systemctl status` shows it).
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        // A newline would start another KEY=VALUE assignment.
        self.send(&format!("STATUS={}", status.replace('\n', " ")))
    }

    fn send(&self, message: &str) -> Result<(), NotifyError> {
        let Some((socket, addr)) = &self.target else {
            return Ok(());
        };
        socket
            .send_to_addr(message.as_bytes(), addr)
            .map(drop)
            .map_err(|source| NotifyError::Send {
                message: message.lines().next().unwrap_or_default().to_owned(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A bound datagram socket in a fresh temp directory (removed on drop).
    struct Manager {
        dir: PathBuf,
        socket: UnixDatagram,
    }

    impl Manager {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "probed-notify-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            let socket = UnixDatagram::bind(dir.join("notify")).expect("bind");
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            Self { dir, socket }
        }

        fn path(&self) -> String {
            self.dir.join("notify").to_str().expect("UTF-8").to_owned()
        }

        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.socket.recv(&mut buf).expect("a message");
            String::from_utf8(buf[..n].to_vec()).expect("UTF-8 message")
        }
    }

    impl Drop for Manager {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Every message arrives as one datagram, in order, with the exact bytes systemd parses.
    #[test]
    fn messages_reach_a_path_socket_in_order() {
        let m = Manager::new("path");
        let n = Notifier::new(Some(&m.path()), None, None).expect("notifier");
        assert!(n.is_enabled());
        n.ready().unwrap();
        n.watchdog().unwrap();
        n.status("attached 3\nprobes").unwrap();
        n.reloading().unwrap();
        n.stopping().unwrap();
        assert_eq!(m.recv(), "READY=1");
        assert_eq!(m.recv(), "WATCHDOG=1");
        assert_eq!(m.recv(), "STATUS=attached 3 probes");
        let reloading = m.recv();
        let usec: u64 = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{reloading:?}"))
            .parse()
            .expect("numeric MONOTONIC_USEC");
        assert!(usec > 0);
        assert_eq!(m.recv(), "STOPPING=1");
    }

    /// `@name` is an abstract socket (systemd uses these for some managers).
    #[test]
    fn abstract_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("probed-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::new(Some(&format!("@{name}")), None, None).unwrap();
        n.stopping().unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
    }

    /// No NOTIFY_SOCKET: nothing is sent and nothing fails; a relative path is an error.
    #[test]
    fn unset_is_a_no_op_and_garbage_is_an_error() {
        let n = Notifier::new(None, Some("1000000"), None).unwrap();
        assert!(!n.is_enabled());
        n.ready().unwrap();
        assert_eq!(n.watchdog_interval(), None);
        assert!(!Notifier::new(Some(""), None, None).unwrap().is_enabled());
        let err = Notifier::new(Some("relative/sock"), None, None).unwrap_err();
        assert!(matches!(err, NotifyError::BadAddress { .. }), "{err}");
    }

    /// The interval is half of WATCHDOG_USEC, and only for the process WATCHDOG_PID names.
    #[test]
    fn watchdog_interval_follows_usec_and_pid() {
        let m = Manager::new("wd");
        let me = std::process::id().to_string();
        let interval = |usec, pid| {
            Notifier::new(Some(&m.path()), usec, pid)
                .unwrap()
                .watchdog_interval()
        };
        assert_eq!(
            interval(Some("400000"), None),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            interval(Some("30000000"), Some(&me)),
            Some(Duration::from_secs(15))
        );
        assert_eq!(interval(Some("400000"), Some("1")), None);
        assert_eq!(interval(Some("0"), None), None);
        assert_eq!(interval(Some("soon"), None), None);
        assert_eq!(interval(None, None), None);
    }

    /// A manager that went away is reported, naming the message.
    #[test]
    fn send_to_a_closed_socket_fails() {
        let m = Manager::new("gone");
        let path = m.path();
        let n = Notifier::new(Some(&path), None, None).unwrap();
        drop(m);
        let err = n.ready().unwrap_err();
        assert!(err.to_string().contains("READY=1"), "{err}");
    }
}
