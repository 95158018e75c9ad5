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
    service::control::{AddRequest, Request},
};

/// How long `probed ctl` waits for the daemon's reply (attaching a probe loads an ELF file).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

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
    if reply.get("ok") != Some(&Value::Bool(true)) {
        let message = reply
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the daemon refused the request");
        bail!("{message}");
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{reply}")?;
    } else {
        print_reply(&mut out, &request, &reply)?;
    }
    Ok(())
}

/// One request/reply exchange with the daemon at `socket`.
pub fn call(socket: &std::path::Path, request: &Request) -> anyhow::Result<Value> {
    let stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to {} (is `probed daemon` running?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    let sent = (&stream).write_all(&line);
    // A daemon that refuses the connection replies and closes: the write may then fail, and
    // the reply saying why is still there to read.
    let mut reply = String::new();
    let read = BufReader::new(&stream).read_line(&mut reply);
    if reply.is_empty() {
        sent.context("sending the request")?;
        read.context("reading the reply")?;
        bail!("the daemon closed the connection without a reply");
    }
    serde_json::from_str(&reply).context("the daemon's reply is not JSON")
}

/// Prints a reply for people.
fn print_reply(out: &mut impl Write, request: &Request, reply: &Value) -> std::io::Result<()> {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    match request {
        Request::Add(add) => writeln!(out, "added probe {}: {}", s(&reply["id"]), add.spec),
        Request::Remove { id } => writeln!(out, "removed probe {id}: {}", s(&reply["spec"])),
        Request::List => {
            writeln!(
                out,
                "{:>4}  {:<8}  {:<6}  {:<10}  SPEC",
                "ID", "STATE", "ORIGIN", "OUTPUT"
            )?;
            for p in reply["probes"].as_array().into_iter().flatten() {
                let mut extra = Vec::new();
                for key in ["pid", "container", "rate_limit", "burst", "disable_above"] {
                    if !p[key].is_null() {
                        extra.push(format!("{key}={}", s(&p[key])));
                    }
                }
                // A library name's resolved file (a path SPEC shows its own).
                if let Some(file) = p["file"].as_str()
                    && !s(&p["spec"]).contains(file)
                {
                    extra.push(format!("file={file}"));
                }
                if p["stack"] == Value::Bool(true) {
                    extra.push("stack".into());
                }
                if let Some(why) = p["disabled_reason"].as_str() {
                    extra.push(format!("({why})"));
                }
                writeln!(
                    out,
                    "{:>4}  {:<8}  {:<6}  {:<10}  {} {}",
                    s(&p["id"]),
                    s(&p["state"]),
                    s(&p["origin"]),
                    s(&p["output"]),
                    s(&p["spec"]),
                    extra.join(" ")
                )?;
            }
            Ok(())
        }
        Request::Stats => {
            writeln!(
                out,
                "uptime {:.0} s, {} probe(s) attached, {} process(es) tracked, {} reload(s), {} \
                 rejected",
                reply["uptime_s"].as_f64().unwrap_or(0.0),
                s(&reply["attached"]),
                s(&reply["processes_tracked"]),
                s(&reply["reloads"]),
                s(&reply["reload_failures"]),
            )?;
            writeln!(
                out,
                "{:>4}  {:>12}  {:>8}  {:>12}  {:>10}  SPEC",
                "ID", "HITS", "LOST", "WRITTEN", "UNRESOLVED"
            )?;
            for p in reply["probes"].as_array().into_iter().flatten() {
                let unresolved: u64 = p["unresolved"]
                    .as_object()
                    .map(|m| m.values().filter_map(Value::as_u64).sum())
                    .unwrap_or(0);
                writeln!(
                    out,
                    "{:>4}  {:>12}  {:>8}  {:>12}  {:>10}  {}",
                    s(&p["id"]),
                    s(&p["hits"]),
                    s(&p["lost"]),
                    s(&p["written"]),
                    unresolved,
                    s(&p["spec"])
                )?;
            }
            if let Some(resolver) = reply["resolver"].as_object() {
                let parts: Vec<String> = resolver
                    .iter()
                    .filter(|(_, v)| v.as_u64() != Some(0))
                    .map(|(k, v)| format!("{k}={}", s(v)))
                    .collect();
                writeln!(out, "resolver: {}", parts.join(" "))?;
            }
            Ok(())
        }
    }
}
