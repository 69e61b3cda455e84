//! Driving h2load (Debian's nghttp2-client) for keep-alive over TLS with HTTP/2: its command
//! line, the summary it prints, and the per-request log its latency percentiles come from
//! (h2load's summary has only min, max, mean and deviation).
//!
//! h2load sends the same headers on every request of a process, so each session is its own
//! process: `sessions` h2load processes at once, each with its own cookie and its share of the
//! connections, as wrk's keep-alive runs keep one cookie per thread.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _};
use netns_kit::NetNs;

use super::{procs, stats::nearest_rank, wrk::WrkResult};

/// One h2load run: how much load, where, and which cookies.
pub(super) struct H2loadSpec<'a> {
    /// Processes, each one session (cookie) on its share of the connections.
    pub(super) sessions: u32,
    /// Connections in all.
    pub(super) connections: u32,
    /// Requests in flight on each connection (HTTP/2 streams).
    pub(super) streams: u32,
    /// How long it runs; with `requests`, how long each process may take (either way, a minute
    /// more before it is killed).
    pub(super) duration: Duration,
    /// Requests per process: it stops after these instead of after `duration`.
    pub(super) requests: Option<u64>,
    /// HTTP/1.1 over TLS (`--h1`) instead of HTTP/2.
    pub(super) h1: bool,
    /// `https://host:port`.
    pub(super) url: &'a str,
    /// The path of every request (`/`, `/bytes/N`).
    pub(super) path: &'a str,
    /// 8 characters that start every cookie of the run.
    pub(super) prefix: &'a str,
    /// Where the per-request logs go (`h2load-N.tsv`, replaced by every run).
    pub(super) log_dir: &'a Path,
}

/// What the h2load processes measured together, and what TLS they negotiated.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct H2loadResult {
    pub(super) figures: WrkResult,
    /// `TLSv1.3, TLS_AES_256_GCM_SHA384, X25519 253 bits, h2`, as h2load reports it.
    pub(super) negotiated: Option<String>,
}

/// Runs the h2load processes to completion in `netns`.
pub(super) fn run(netns: &NetNs, spec: &H2loadSpec<'_>) -> anyhow::Result<H2loadResult> {
    let sessions = spec.sessions.max(1);
    let mut children: Vec<(Child, PathBuf)> = Vec::new();
    for session in 0..sessions {
        let log = spec.log_dir.join(format!("h2load-{session}.tsv"));
        let mut command = netns.command("h2load");
        command
            .arg(format!(
                "--clients={}",
                (spec.connections / sessions).max(1)
            ))
            .arg(format!("--max-concurrent-streams={}", spec.streams.max(1)))
            .arg("--threads=1");
        match spec.requests {
            Some(requests) => {
                // A transfer that stops (a stalled answer) is counted as failed, not waited for.
                command
                    .arg(format!("--requests={requests}"))
                    .arg("--connection-inactivity-timeout=10");
            }
            None => {
                command.arg(format!("--duration={}", spec.duration.as_secs().max(1)));
            }
        }
        if spec.h1 {
            command.arg("--h1");
        }
        command
            .arg(format!(
                "--header=cookie: c1=1; c2=2; JSESSIONID={}{session:024}",
                spec.prefix
            ))
            .arg(format!("--log-file={}", log.display()))
            .arg(format!("{}{}", spec.url, spec.path))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push((procs::spawn(&mut command)?, log));
    }
    let limit = spec.duration + Duration::from_secs(60);
    let mut figures: Vec<Summary> = Vec::new();
    let mut latencies_us: Vec<u64> = Vec::new();
    let mut negotiated = None;
    for (mut child, log) in children {
        procs::wait(&mut child, limit, "h2load")?;
        let output = child
            .wait_with_output()
            .context("reading h2load's output")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let Some(summary) = parse_summary(&stdout) else {
            bail!(
                "h2load printed no result ({}):\n{stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        };
        negotiated = negotiated.or_else(|| parse_negotiated(&stdout));
        let text = fs::read_to_string(&log)
            .with_context(|| format!("could not read h2load's log {}", log.display()))?;
        latencies_us.extend(parse_log(&text));
        figures.push(summary);
    }
    latencies_us.sort_unstable();
    let percentile = |p: f64| nearest_rank(&latencies_us, p).unwrap_or(0);
    Ok(H2loadResult {
        figures: WrkResult {
            requests: figures.iter().map(|f| f.succeeded).sum(),
            // The processes ran side by side: the run lasted as long as the longest.
            seconds: figures.iter().map(|f| f.seconds).fold(0.0, f64::max),
            bytes: figures.iter().map(|f| f.bytes).sum(),
            errors: figures.iter().map(|f| f.errors).sum(),
            status_errors: figures.iter().map(|f| f.status_errors).sum(),
            p50_us: percentile(50.0),
            p99_us: percentile(99.0),
        },
        negotiated,
    })
}

/// The figures of one h2load summary.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Summary {
    seconds: f64,
    /// Requests answered 2xx or 3xx (h2load's "succeeded").
    succeeded: u64,
    /// Requests that failed without an answer: h2load's "failed" counts 4xx and 5xx answers
    /// too ("errored" and "timeout" are parts of it).
    errors: u64,
    /// 4xx and 5xx answers.
    status_errors: u64,
    bytes: u64,
}

/// From `finished in 10.00s, ...`, `requests: N total, N started, N done, N succeeded, N
/// failed, N errored, N timeout`, `status codes: N 2xx, N 3xx, N 4xx, N 5xx` and `traffic:
/// 1.60MB (1673792) total, ...`.
fn parse_summary(stdout: &str) -> Option<Summary> {
    let line = |prefix: &str| {
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix).map(str::to_owned))
    };
    // "N word" pairs separated by commas, by word.
    let counts = |text: &str| -> Vec<(String, u64)> {
        text.split(',')
            .filter_map(|part| {
                let mut words = part.split_whitespace();
                let n = words.next()?.parse().ok()?;
                Some((words.next()?.to_owned(), n))
            })
            .collect()
    };
    let count = |counts: &[(String, u64)], name: &str| {
        counts.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    };
    let seconds = duration_seconds(line("finished in ")?.split(',').next()?)?;
    let requests = counts(&line("requests:")?);
    let statuses = counts(&line("status codes:")?);
    let traffic = line("traffic:")?;
    let bytes = traffic.split_once('(')?.1.split_once(')')?.0.parse().ok()?;
    let status_errors = count(&statuses, "4xx")? + count(&statuses, "5xx")?;
    Some(Summary {
        seconds,
        succeeded: count(&requests, "succeeded")?,
        errors: count(&requests, "failed")?.saturating_sub(status_errors),
        status_errors,
        bytes,
    })
}

/// h2load's duration (`2.01s`, or `999.24ms` under a second, as its `util::format_duration`
/// prints it), in seconds.
fn duration_seconds(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(us) = text.strip_suffix("us") {
        (us, 1e-6)
    } else {
        (text.strip_suffix('s')?, 1.0)
    };
    Some(number.parse::<f64>().ok()? * scale)
}

/// `TLS Protocol`, `Cipher`, `Server Temp Key` and `Application protocol`, as h2load prints
/// them for its first connection.
fn parse_negotiated(stdout: &str) -> Option<String> {
    let field = |name: &str| {
        stdout.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
    };
    let fields: Vec<String> = [
        "TLS Protocol",
        "Cipher",
        "Server Temp Key",
        "Application protocol",
    ]
    .into_iter()
    .filter_map(field)
    .collect();
    (!fields.is_empty()).then(|| fields.join(", "))
}

/// The request times (microseconds) of the per-request log's answered requests: tab-separated
/// start time, status (-1 for a failed stream), time to the end of the response.
fn parse_log(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.lines().filter_map(|line| {
        let mut columns = line.split('\t');
        let status: i32 = columns.nth(1)?.trim().parse().ok()?;
        let elapsed = columns.next()?.trim().parse().ok()?;
        (200..400).contains(&status).then_some(elapsed)
    })
}

#[cfg(test)]
mod tests {
    use super::{parse_log, parse_negotiated, parse_summary, Summary};

    const STDOUT: &str = "starting benchmark...\n\
        TLS Protocol: TLSv1.3\nCipher: TLS_AES_256_GCM_SHA384\n\
        Server Temp Key: X25519 253 bits\nApplication protocol: h2\n\n\
        finished in 2.01s, 22022.00 req/s, 817.28KB/s\n\
        requests: 44044 total, 44052 started, 44044 done, 44030 succeeded, 14 failed, 4 errored, \
        1 timeout\n\
        status codes: 44030 2xx, 0 3xx, 8 4xx, 2 5xx\n\
        traffic: 1.60MB (1673792) total, 688.19KB (704704) headers (space savings 65.96%), \
        172.05KB (176176) data\n\
        \x20                    min         max         mean         sd        +/- sd\n\
        time for request:       29us     22.41ms       291us      1.09ms    96.03%\n";

    #[test]
    fn parses_the_summary() {
        assert_eq!(
            parse_summary(STDOUT),
            Some(Summary {
                seconds: 2.01,
                succeeded: 44_030,
                errors: 4,
                status_errors: 10,
                bytes: 1_673_792,
            })
        );
        assert_eq!(parse_summary("finished in 2.01s, 1 req/s\n"), None);
        // Under a second h2load says milliseconds (a CI run's 1 s measurement once did).
        let short = STDOUT.replace("finished in 2.01s", "finished in 999.24ms");
        let seconds = parse_summary(&short).map(|summary| summary.seconds);
        assert!(
            seconds.is_some_and(|s| (s - 0.99924).abs() < 1e-9),
            "{seconds:?}"
        );
    }

    #[test]
    fn durations_in_each_unit_h2load_prints() {
        assert_eq!(super::duration_seconds("10.00s"), Some(10.0));
        assert_eq!(super::duration_seconds("500ms"), Some(0.5));
        assert_eq!(super::duration_seconds("250us"), Some(0.000_25));
        assert_eq!(super::duration_seconds("3 parsecs"), None);
        assert_eq!(super::duration_seconds(""), None);
    }

    #[test]
    fn reports_what_tls_was_negotiated() {
        assert_eq!(
            parse_negotiated(STDOUT).as_deref(),
            Some("TLSv1.3, TLS_AES_256_GCM_SHA384, X25519 253 bits, h2")
        );
        assert_eq!(parse_negotiated("finished in 1s\n"), None);
    }

    #[test]
    fn latencies_come_from_the_log_without_failed_streams() {
        let log = "1796304212166904\t200\t3485\n1796304212166905\t-1\t90000\n\
                   1796304212166906\t302\t12\nnot a line\n";
        assert_eq!(parse_log(log).collect::<Vec<_>>(), [3485, 12]);
    }
}
