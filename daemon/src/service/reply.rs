//! The control socket's replies as types, shared by the daemon (which builds them) and
//! `probed ctl` (which reads them back): one definition of every field, so the two sides
//! cannot drift apart by a misspelt key.
//!
//! On the wire a reply is one JSON object: `{"ok": true, …fields…}` or
//! `{"ok": false, "error": "…"}` (see control.rs for the protocol).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::probe_set::Origin;
use crate::metrics::ProbeMetrics;

/// One probe as `ctl list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRow {
    /// The probe's id.
    pub id: u32,
    /// Its SPEC as given.
    pub spec: String,
    /// The file it is attached to (a library name's resolved path), if it is attached.
    pub file: Option<String>,
    /// Where it came from.
    pub origin: Origin,
    /// `attached`, `disabled` or `detaching`.
    pub state: String,
    /// Why it was disabled (a runaway).
    pub disabled_reason: Option<String>,
    /// The output its hits go to.
    pub output: String,
    /// Only this process.
    pub pid: Option<u32>,
    /// Only processes of this process's pid namespace.
    pub container: Option<u32>,
    /// At most this many hits per second.
    pub rate_limit: Option<u64>,
    /// Bucket size of the rate limit.
    pub burst: Option<u64>,
    /// Disabled when firing faster than this.
    pub disable_above: Option<u64>,
    /// How hits' user stacks are captured, if they are (`fp`, `auto`, `dwarf`).
    #[serde(default, deserialize_with = "crate::unwind::setting::deserialize")]
    pub stack: Option<crate::unwind::StackMode>,
    /// KiB of stack copied per hit, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_copy_kib: Option<u32>,
}

/// `ctl list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListReply {
    /// Every probe, by id.
    pub probes: Vec<ProbeRow>,
}

/// One probe's row of `ctl stats`: its state and the counters a metrics scrape reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStatsRow {
    /// `attached`, `disabled` or `detaching`.
    pub state: String,
    /// Id, SPEC, output and counters (BPF's and the pipeline's), as in metrics.
    #[serde(flatten)]
    pub counters: ProbeMetrics,
}

/// `ctl stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    /// Seconds since the daemon started.
    pub uptime_s: f64,
    /// Every probe's counters.
    pub probes: Vec<ProbeStatsRow>,
    /// Probes attached.
    pub attached: usize,
    /// Live processes tracked.
    pub processes_tracked: usize,
    /// Pictures of exited processes kept for hits still queued.
    pub exited_retained: usize,
    /// The resolver's counters by name.
    pub resolver: BTreeMap<String, u64>,
    /// The change tracker's mode (`lock`, `kprobes` or `syscalls`).
    #[serde(default)]
    pub tracker: String,
    /// The change tracker's error counters by kind (rescans instead of replays).
    #[serde(default)]
    pub tracker_errors: BTreeMap<String, u64>,
    /// Successful reloads.
    pub reloads: u64,
    /// Rejected reloads.
    pub reload_failures: u64,
    /// Ring-buffer records that did not decode.
    pub malformed_events: u64,
}

/// `ctl add`: the new probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    /// Its id.
    pub id: u32,
}

/// `ctl remove`: the probe that went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// Its id.
    pub id: u32,
    /// Its SPEC (absent when the probe had already been detached as a runaway).
    #[serde(default)]
    pub spec: Option<String>,
}

/// Any reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `list`.
    List(ListReply),
    /// `stats`.
    Stats(Box<StatsReply>),
    /// `add`.
    Added(Added),
    /// `remove`.
    Removed(Removed),
    /// The request was refused; nothing changed.
    Error(String),
}

impl Reply {
    /// An error reply.
    pub fn error(message: impl std::fmt::Display) -> Self {
        Reply::Error(message.to_string())
    }

    /// The wire form: the body's fields with `"ok"` added.
    pub fn to_json(&self) -> Value {
        let (ok, body) = match self {
            Reply::List(r) => (true, serde_json::to_value(r)),
            Reply::Stats(r) => (true, serde_json::to_value(r)),
            Reply::Added(r) => (true, serde_json::to_value(r)),
            Reply::Removed(r) => (true, serde_json::to_value(r)),
            Reply::Error(message) => return json!({"ok": false, "error": message}),
        };
        match body {
            Ok(Value::Object(mut fields)) => {
                fields.insert("ok".into(), Value::Bool(ok));
                Value::Object(fields)
            }
            // Plain structs of numbers and strings always serialize to objects; should one
            // not, the client is told rather than sent half a reply.
            Ok(_) | Err(_) => json!({"ok": false, "error": "the reply could not be encoded"}),
        }
    }
}

/// Why a reply read back from the socket is not the one expected.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// `{"ok": false, "error": …}`: the daemon refused.
    #[error("{0}")]
    Refused(String),
    /// The object does not have the fields of this reply.
    #[error("the daemon's reply is not a valid {what} reply")]
    Shape {
        /// Which reply was expected.
        what: &'static str,
        /// serde's reason.
        #[source]
        source: serde_json::Error,
    },
}

/// Reads a reply of type `T` from its wire form; an error reply is [`ReplyError::Refused`].
pub fn parse<T: serde::de::DeserializeOwned>(
    value: Value,
    what: &'static str,
) -> Result<T, ReplyError> {
    if value.get("ok") != Some(&Value::Bool(true)) {
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the daemon refused the request");
        return Err(ReplyError::Refused(message.to_owned()));
    }
    serde_json::from_value(value).map_err(|source| ReplyError::Shape { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reply reads back as what was sent, through its wire form.
    #[test]
    fn replies_round_trip() {
        let row = ProbeRow {
            id: 3,
            spec: "uprobe:libc:malloc".into(),
            file: Some("/usr/lib/x86_64-linux-gnu/libc.so.6".into()),
            origin: Origin::Ctl,
            state: "attached".into(),
            disabled_reason: None,
            output: "stdout".into(),
            pid: Some(42),
            container: None,
            rate_limit: Some(100),
            burst: None,
            disable_above: None,
            stack: Some(crate::unwind::StackMode::Dwarf),
            stack_copy_kib: Some(32),
        };
        let list = ListReply {
            probes: vec![row.clone()],
        };
        let wire = Reply::List(list.clone()).to_json();
        assert_eq!(wire["ok"], Value::Bool(true));
        assert_eq!(wire["probes"][0]["spec"], "uprobe:libc:malloc");
        assert_eq!(parse::<ListReply>(wire, "list").unwrap(), list);

        let stats = StatsReply {
            uptime_s: 1.5,
            probes: vec![ProbeStatsRow {
                state: "attached".into(),
                counters: ProbeMetrics {
                    id: 3,
                    hits: 10,
                    unresolved: [("unmapped".to_owned(), 2)].into(),
                    ..Default::default()
                },
            }],
            resolver: [("fast".to_owned(), 7)].into(),
            ..Default::default()
        };
        let wire = Reply::Stats(Box::new(stats.clone())).to_json();
        assert_eq!(wire["probes"][0]["unresolved"]["unmapped"], 2);
        assert_eq!(parse::<StatsReply>(wire, "stats").unwrap(), stats);

        let removed = Removed { id: 1, spec: None };
        let wire = Reply::Removed(removed.clone()).to_json();
        assert_eq!(parse::<Removed>(wire, "remove").unwrap(), removed);
    }

    /// An error reply is the daemon's message; a reply of the wrong shape says which reply.
    #[test]
    fn refusals_and_wrong_shapes_are_errors() {
        let wire = Reply::error("no probe with id 9").to_json();
        assert_eq!(wire, json!({"ok": false, "error": "no probe with id 9"}));
        let err = parse::<Added>(wire, "add").unwrap_err();
        assert_eq!(err.to_string(), "no probe with id 9");

        let err = parse::<Added>(json!({"ok": true, "id": "x"}), "add").unwrap_err();
        assert!(
            matches!(err, ReplyError::Shape { what: "add", .. }),
            "{err:?}"
        );
        let err = parse::<Added>(json!({"id": 1}), "add").unwrap_err();
        assert_eq!(err.to_string(), "the daemon refused the request");
    }
}
