//! The Prometheus metrics endpoint of `probed daemon`.
//!
//! The daemon loop owns every counter; it fills a [`MetricsSnapshot`] (plain data) when a
//! scrape asks for one, [`render`] turns it into the Prometheus text exposition format, and
//! [`http`] is the HTTP/1.1 server (hyper, with the endpoint's limits) that asks the loop for
//! a snapshot per `GET /metrics`.
//! No metrics registry and no shared atomics: the loop answers in between events, so a scrape
//! never contends with the hot path.

#[cfg(test)]
mod exposition_parser;
pub mod http;
pub mod render;
pub mod snapshot;

pub use http::{BindError, ScrapeRequest, bind, serve};
pub use render::{CONTENT_TYPE, render};
pub use snapshot::{MetricsSnapshot, ProbeMetrics};
