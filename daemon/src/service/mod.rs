//! `probed daemon`: the long-lived service. A TOML config ([`crate::config`]) says which
//! probes to attach and where their hits go; SIGHUP reloads it, the control socket changes
//! probes live, SIGTERM/SIGINT stop cleanly.
//!
//! One task owns every piece of state (the BPF object, the pipeline, the probe table): the
//! control socket and the metrics endpoint only send it requests and wait for replies, so
//! nothing is shared and nothing needs a lock.

pub mod answer;
pub mod control;
pub mod core;
pub mod ctl;
pub mod daemon;
pub mod kernel;
pub mod notify;
pub mod op_error;
pub mod outputs;
pub mod prepare;
pub mod probe_set;
pub mod reload;
pub mod reply;
pub mod run;
pub mod runaway;
pub mod scrape;

#[cfg(test)]
mod core_tests;
#[cfg(test)]
pub mod fake_kernel;
