//! The admin API's figures (issue 5, parts 4 and 5): `GET /v1/sources?top=20`
//! and `/metrics` with 1 M tracked sources, daemon memory, and requests per
//! second and p99 of `GET /v1/status` and `/metrics` under wrk on loopback.
//!
//! The admin API is not there yet, so every row is reported as not measured.
//! Once it is, each row becomes a measurement against a daemon started with
//! `Daemon::builder(..)` (its `admin()` address), e.g. timing `curl` on
//! `/v1/sources?top=20` after [`crate::scale`] has filled its bucket map
//! through the daemon's pinned maps, and parsing `wrk --latency` for the rest:
//! fill in `value` and `met` in [`rows`]; the tables and the JSON carry them.

use serde::Serialize;

/// One admin API figure.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub what: &'static str,
    pub target: &'static str,
    /// The measured figure, with its unit; `None` while not measured.
    pub value: Option<String>,
    pub met: Option<bool>,
}

/// Why the rows are empty.
pub const NOT_MEASURED: &str = "not measured: the admin API is not implemented yet";

/// The admin API rows.
pub fn rows() -> Vec<Row> {
    [
        ("GET /v1/sources?top=20 with 1 M sources", "< 1 s"),
        ("GET /metrics with 1 M sources", "-"),
        ("daemon memory with 1 M sources", "-"),
        ("GET /v1/status under wrk", "> 10 000 requests/s"),
        ("GET /metrics under wrk", "-"),
    ]
    .into_iter()
    .map(|(what, target)| Row { what, target, value: None, met: None })
    .collect()
}
