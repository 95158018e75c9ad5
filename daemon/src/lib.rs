//! probed: a uprobe tracing daemon.
//!
//! Data flows one way: [`events`] (hits out of BPF) → [`resolve`] (address → mapping → file
//! offset, speculative and sequence-validated) → [`symbolize`] (file offset → ELF symbol) →
//! [`output`]. [`trace`] wires them for `probed trace`; see ARCHITECTURE.md for the map from
//! concept to file.

pub mod attach;
pub mod bpf_object;
pub mod btf;
pub mod cli;
pub mod config;
pub mod container;
pub mod elf;
pub mod event_pool;
pub mod events;
pub mod file_id;
#[doc(hidden)]
pub mod fixtures;
pub mod fold;
pub mod glob;
pub mod kernel_paths;
pub mod libpath;
pub mod list;
pub mod logging;
pub mod metrics;
pub mod output;
pub mod pidns;
pub mod pipeline;
pub mod privileges;
pub mod probes;
pub mod recording;
pub mod resolve;
pub mod ring_source;
pub mod self_check;
pub mod self_filter;
pub mod service;
pub mod spec;
pub mod stack_check;
pub mod stop;
pub mod symbolize;
pub mod trace;
pub mod track;
pub mod typed_args;
pub mod unwind;
