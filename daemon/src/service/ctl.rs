//! `probed ctl`: talks to a running daemon over its control socket.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::{
    config::DEFAULT_CONTROL_SOCKET,
    service::{
        control::{AddRequest, Request},
        probe_set::Origin,
        reply::{self, Added, ListReply, Removed, ReplyError, StatsReply},
    },
};

/// How long `probed ctl` waits for the daemon's reply to `list`, `stats` and `remove`.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it waits for `add`: checking the probe loads its ELF file and may fetch a debug
/// file from each debuginfod server the daemon knows, up to 30 s a server
/// (`debuginfod::TOTAL_TIMEOUT`), off the daemon's loop (service/prepare.rs); two servers
/// could outlast [`REPLY_TIMEOUT`]. Ten servers' worth, on top of it.
const ADD_REPLY_TIMEOUT: Duration = Duration::from_secs(
    REPLY_TIMEOUT.as_secs() + 10 * crate::elf::debuginfod::TOTAL_TIMEOUT.as_secs(),
);

/// `probed ctl` arguments.
#[derive(Args, Clone, Debug)]
pub struct CtlArgs {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    pub socket: PathBuf,
    /// Print the daemon's reply as JSON.
    #[arg(long)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `probed ctl` commands.
#[derive(Subcommand, Clone, Debug)]
pub enum CtlCommand {
    /// List the probes: id, state, origin, output, SPEC.
    List,
    /// Counters per probe, of the resolver and of the daemon.
    Stats,
    /// Attach a probe (kept until removed or the daemon stops; a reload leaves it alone).
    Add(AddRequest),
    /// Detach a probe by id.
    Remove {
        /// The id (from `list` or `add`).
        id: u32,
    },
}

/// Sends one request and prints the reply; an error reply is an error.
pub fn run(args: CtlArgs) -> anyhow::Result<()> {
    let request = match args.command {
        CtlCommand::List => Request::List,
        CtlCommand::Stats => Request::Stats,
        CtlCommand::Remove { id } => Request::Remove { id },
        CtlCommand::Add(add) => Request::Add(add),
    };
    let reply = call(&args.socket, &request)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        // Checked as for people (a refusal is an error), printed as it came.
        check(&request, reply.clone())?;
        writeln!(out, "{reply}")?;
    } else {
        print_reply(&mut out, &request, reply)?;
    }
    Ok(())
}

/// Whether `reply` is a valid answer to `request`.
fn check(request: &Request, reply: Value) -> Result<(), ReplyError> {
    match request {
        Request::List => reply::parse::<ListReply>(reply, "list").map(drop),
        Request::Stats => reply::parse::<StatsReply>(reply, "stats").map(drop),
        Request::Add(_) => reply::parse::<Added>(reply, "add").map(drop),
        Request::Remove { .. } => reply::parse::<Removed>(reply, "remove").map(drop),
    }
}

/// One request/reply exchange with the daemon at `socket`.
pub fn call(socket: &std::path::Path, request: &Request) -> anyhow::Result<Value> {
    let timeout = match request {
        Request::Add(_) => ADD_REPLY_TIMEOUT,
        _ => REPLY_TIMEOUT,
    };
    call_within(socket, request, timeout)
}

/// [`call`], waiting at most `timeout` for the reply.
fn call_within(
    socket: &std::path::Path,
    request: &Request,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to {} (is `probed daemon` running?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    let sent = (&stream).write_all(&line);
    // A daemon that refuses the connection replies and closes: the write may then fail, and
    // the reply saying why is still there to read.
    let mut reply = String::new();
    let read = BufReader::new(&stream).read_line(&mut reply);
    if reply.is_empty() {
        sent.context("sending the request")?;
        if let Err(err) = &read
            && matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        {
            let after = match request {
                Request::Add(_) => "; it may still attach the probe (see `probed ctl list`)",
                _ => "",
            };
            bail!(
                "the daemon did not reply within {} s{after}",
                timeout.as_secs_f64()
            );
        }
        read.context("reading the reply")?;
        bail!("the daemon closed the connection without a reply");
    }
    serde_json::from_str(&reply).context("the daemon's reply is not JSON")
}

/// Prints a reply for people.
fn print_reply(out: &mut impl Write, request: &Request, reply: Value) -> anyhow::Result<()> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    match request {
        Request::Add(add) => {
            let added: Added = reply::parse(reply, "add")?;
            writeln!(out, "added probe {}: {}", added.id, add.spec)?;
        }
        Request::Remove { id } => {
            let removed: Removed = reply::parse(reply, "remove")?;
            writeln!(out, "removed probe {id}: {}", opt(removed.spec))?;
        }
        Request::List => {
            let list: ListReply = reply::parse(reply, "list")?;
            writeln!(
                out,
                "{:>4}  {:<8}  {:<6}  {:<10}  SPEC",
                "ID", "STATE", "ORIGIN", "OUTPUT"
            )?;
            for p in list.probes {
                let mut extra = Vec::new();
                let numbers = [
                    ("pid", p.pid.map(u64::from)),
                    ("container", p.container.map(u64::from)),
                    ("rate_limit", p.rate_limit),
                    ("burst", p.burst),
                    ("disable_above", p.disable_above),
                ];
                for (key, value) in numbers {
                    if let Some(value) = value {
                        extra.push(format!("{key}={value}"));
                    }
                }
                // A library name's resolved file (a path SPEC shows its own).
                if let Some(file) = &p.file
                    && !p.spec.contains(file.as_str())
                {
                    extra.push(format!("file={file}"));
                }
                if let Some(mode) = p.stack {
                    extra.push(format!("stack={}", mode.as_str()));
                }
                if let Some(kib) = p.stack_copy_kib {
                    extra.push(format!("stack_copy_kib={kib}"));
                }
                if let Some(why) = &p.disabled_reason {
                    extra.push(format!("({why})"));
                }
                let origin = match p.origin {
                    Origin::Config => "config",
                    Origin::Ctl => "ctl",
                };
                writeln!(
                    out,
                    "{:>4}  {:<8}  {:<6}  {:<10}  {} {}",
                    p.id,
                    p.state,
                    origin,
                    p.output,
                    p.spec,
                    extra.join(" ")
                )?;
            }
        }
        Request::Stats => {
            let stats: StatsReply = reply::parse(reply, "stats")?;
            writeln!(
                out,
                "uptime {:.0} s, {} probe(s) attached, {} process(es) tracked, {} reload(s), {} \
                 rejected",
                stats.uptime_s,
                stats.attached,
                stats.processes_tracked,
                stats.reloads,
                stats.reload_failures,
            )?;
            writeln!(
                out,
                "{:>4}  {:>12}  {:>8}  {:>12}  {:>10}  SPEC",
                "ID", "HITS", "LOST", "WRITTEN", "UNRESOLVED"
            )?;
            for row in &stats.probes {
                let p = &row.counters;
                let unresolved: u64 = p.unresolved.values().sum();
                writeln!(
                    out,
                    "{:>4}  {:>12}  {:>8}  {:>12}  {:>10}  {}",
                    p.id, p.hits, p.lost, p.written, unresolved, p.spec
                )?;
            }
            let parts: Vec<String> = stats
                .resolver
                .iter()
                .filter(|(_, v)| **v != 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(out, "resolver: {}", parts.join(" "))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon that takes the request and never answers: one line saying so (for `add`,
    /// that the probe may still come), not an OS error.
    #[test]
    fn a_silent_daemon_is_said_to_be_silent() {
        let path = std::env::temp_dir().join(format!("probed-ctl-silent-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let held = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(600));
            drop(conn);
        });
        let err = call_within(&path, &Request::List, Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        held.join().unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(err, "the daemon did not reply within 0.2 s", "{err}");
    }
}
