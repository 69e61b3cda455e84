//! How long and how hard each measurement runs: the full bench, or `--quick`.

use std::time::Duration;

use serde::Serialize;

/// How long and how hard: the full bench, or `--quick`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Plan {
    pub(crate) quick: bool,
    pub(crate) runs: u32,
    #[serde(rename = "warmup_s", serialize_with = "as_seconds")]
    pub(crate) warmup: Duration,
    #[serde(rename = "measure_s", serialize_with = "as_seconds")]
    pub(crate) measure: Duration,
    pub(crate) wrk_threads: u32,
    pub(crate) new_conn_connections: u32,
    pub(crate) keep_alive_connections: u32,
    /// HTTP/2 connections of the TLS keep-alive workload, and requests in flight on each.
    pub(crate) h2_connections: u32,
    pub(crate) h2_streams: u32,
    /// Distinct cookies of the repeating workloads.
    pub(crate) cookie_pool: u64,
    pub(crate) download_connections: u32,
    /// Bytes of each download.
    pub(crate) download_bytes: u64,
    pub(crate) table_entries: u64,
    pub(crate) restarts: u32,
    /// Requests per connection of the browser-like workloads (the last one closes).
    pub(crate) churn_requests: u32,
    /// Requests per second of the paced workload, all connections together.
    pub(crate) paced_rate: f64,
    /// The unmeasured keep-alive prelude of the port-reuse workload.
    #[serde(rename = "port_reuse_prelude_s", serialize_with = "as_seconds")]
    pub(crate) port_reuse_prelude: Duration,
    /// New spliced connections per second offered to one server (the source-port budget).
    pub(crate) splice_rate: f64,
    #[serde(rename = "splice_rate_duration_s", serialize_with = "as_seconds")]
    pub(crate) splice_rate_duration: Duration,
    /// Tries per run when other processes disturb it (see `run_cell`).
    pub(crate) attempts: u32,
    /// Time the whole run may spend waiting for other processes and repeating disturbed runs.
    #[serde(rename = "patience_s", serialize_with = "as_seconds")]
    pub(crate) patience: Duration,
    #[serde(rename = "fill_limit_s", serialize_with = "as_seconds")]
    pub(crate) fill_limit: Duration,
    /// Both load balancers write an access line per request (`--access-log`): stickylb its
    /// default `--log info`, HAProxy `option httplog` to stderr. Off by default, as the
    /// comparison of the proxies alone.
    pub(crate) access_log: bool,
}

impl Plan {
    /// The full plan, or the `--quick` one; `runs` overrides the repetitions.
    pub(crate) fn new(quick: bool, runs: Option<u32>) -> Self {
        Self {
            quick,
            runs: runs.unwrap_or(if quick { 1 } else { 3 }),
            warmup: Duration::from_secs(if quick { 1 } else { 2 }),
            measure: Duration::from_secs(if quick { 2 } else { 10 }),
            wrk_threads: 2,
            new_conn_connections: 16,
            keep_alive_connections: 64,
            // As many requests in flight as the HTTP/1.1 keep-alive workloads, on fewer
            // connections, as a browser multiplexes a page's requests.
            h2_connections: 16,
            h2_streams: 4,
            cookie_pool: 1000,
            download_connections: 4,
            download_bytes: if quick { 64 << 20 } else { 512 << 20 },
            table_entries: if quick { 100_000 } else { 1_000_000 },
            restarts: if quick { 1 } else { 3 },
            churn_requests: 5,
            paced_rate: 20_000.0,
            port_reuse_prelude: Duration::from_secs(if quick { 1 } else { 3 }),
            splice_rate: if quick { 1000.0 } else { 2000.0 },
            splice_rate_duration: Duration::from_secs(if quick { 3 } else { 120 }),
            attempts: if quick { 1 } else { 3 },
            patience: Duration::from_secs(if quick { 0 } else { 240 }),
            fill_limit: Duration::from_secs(if quick { 60 } else { 300 }),
            access_log: false,
        }
    }
}

fn as_seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}
