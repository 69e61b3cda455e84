//! The request workloads and one measured run ("cell") of a workload against a contender.

use std::{
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::{
    client,
    contender::{Contender, Frontend, LbProcess},
    env::{Env, FastPathCounters, Layout},
    h2load::{self, H2loadSpec},
    load::{self, LoadSpec},
    procs, tls,
    tls_client::{self, TlsClientArgs},
    wrk::{self, WrkSpec},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Workload {
    /// A new connection per request, a new cookie each time: every request a new session.
    NewConnUnique,
    /// A new connection per request, cookies from a small pool: sticky hits.
    NewConnRepeat,
    /// Keep-alive connections, small responses, cookies from the pool.
    KeepAlive,
    /// One large download per connection, several connections at once.
    Download,
    /// Browser-like connections: a few requests each, the last closing, many sessions.
    Churn,
    /// The same from many client addresses.
    ChurnManyClients,
    /// A new connection per request right after keep-alive connections that the fast path
    /// took over: the client's ports come round to those of spliced flows.
    PortReuse,
    /// Keep-alive connections at a fixed rate every contender sustains: latency at equal load.
    PacedKeepAlive,
    /// Keep-alive through a one-armed load balancer (client and servers on one interface).
    OneArmedKeepAlive,
    /// Browser-like connections through a one-armed load balancer.
    OneArmedChurn,
    /// HTTPS, a new TLS connection (a full handshake) per request, a new cookie each time.
    TlsNewConn,
    /// HTTPS keep-alive connections with HTTP/1.1, small responses.
    TlsKeepAlive,
    /// HTTPS keep-alive connections with HTTP/2, a few streams in flight on each.
    TlsH2KeepAlive,
    /// HTTPS browser-like connections: a few requests each (HTTP/1.1), many sessions.
    TlsChurn,
    /// HTTPS browser-like connections with HTTP/2: a page, then its resources at once.
    TlsH2Churn,
    /// HTTPS, one large download per connection (HTTP/1.1), several connections at once.
    TlsDownload,
    /// The same over HTTP/2.
    TlsH2Download,
}

impl Workload {
    pub(super) const ALL: [Self; 17] = [
        Self::NewConnUnique,
        Self::NewConnRepeat,
        Self::KeepAlive,
        Self::Download,
        Self::Churn,
        Self::ChurnManyClients,
        Self::PortReuse,
        Self::PacedKeepAlive,
        Self::OneArmedKeepAlive,
        Self::OneArmedChurn,
        Self::TlsNewConn,
        Self::TlsKeepAlive,
        Self::TlsH2KeepAlive,
        Self::TlsChurn,
        Self::TlsH2Churn,
        Self::TlsDownload,
        Self::TlsH2Download,
    ];

    /// The name in tables and JSON.
    pub(super) fn id(self) -> &'static str {
        match self {
            Self::NewConnUnique => "new-conn-unique",
            Self::NewConnRepeat => "new-conn-repeat",
            Self::KeepAlive => "keep-alive",
            Self::Download => "download",
            Self::Churn => "churn",
            Self::ChurnManyClients => "churn-16-clients",
            Self::PortReuse => "port-reuse",
            Self::PacedKeepAlive => "paced-keep-alive",
            Self::OneArmedKeepAlive => "one-armed-keep-alive",
            Self::OneArmedChurn => "one-armed-churn",
            Self::TlsNewConn => "tls-new-conn",
            Self::TlsKeepAlive => "tls-keep-alive",
            Self::TlsH2KeepAlive => "tls-h2-keep-alive",
            Self::TlsChurn => "tls-churn",
            Self::TlsH2Churn => "tls-h2-churn",
            Self::TlsDownload => "tls-download",
            Self::TlsH2Download => "tls-h2-download",
        }
    }

    pub(super) fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|workload| workload.id() == id)
    }

    /// What a request of this workload costs is counted per request; a download's per GB.
    pub(super) fn per_gigabyte(self) -> bool {
        matches!(
            self,
            Self::Download | Self::TlsDownload | Self::TlsH2Download
        )
    }

    /// The frontend its requests go to.
    pub(super) fn frontend(self) -> Frontend {
        match self {
            Self::TlsNewConn
            | Self::TlsKeepAlive
            | Self::TlsH2KeepAlive
            | Self::TlsChurn
            | Self::TlsH2Churn
            | Self::TlsDownload
            | Self::TlsH2Download => Frontend::Https,
            _ => Frontend::Http,
        }
    }

    /// Whether it is measured against `contender`. Over TLS, neither the direct path (the
    /// backends speak cleartext: a TLS baseline would measure another server, not the path)
    /// nor the fast path (a TLS frontend is served in userspace: the kernel cannot splice TLS
    /// without kTLS, so it would measure stickylb again) apply.
    pub(super) fn runs_against(self, contender: Contender) -> bool {
        match self.frontend() {
            Frontend::Http => true,
            Frontend::Https => matches!(contender, Contender::Haproxy | Contender::Stickylb),
        }
    }

    /// The hosts it runs on.
    pub(super) fn layout(self) -> Layout {
        match self {
            Self::OneArmedKeepAlive | Self::OneArmedChurn => Layout::OneArmed,
            _ => Layout::Routed,
        }
    }
}

/// One measured run of a workload against a contender.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Sample {
    pub(super) requests: u64,
    pub(super) seconds: f64,
    /// Bytes received by the client (wrk: headers and bodies; downloads: bodies).
    pub(super) bytes: u64,
    /// Failed requests: connection errors, timeouts, non-2xx/3xx answers, short downloads.
    pub(super) errors: u64,
    pub(super) p50_ms: Option<f64>,
    pub(super) p99_ms: Option<f64>,
    /// CPU seconds (user + system, all threads) of the load balancer during the measurement.
    pub(super) lb_cpu_s: Option<f64>,
    /// Peak resident memory of the load balancer at the end of the run.
    pub(super) lb_peak_rss_bytes: Option<u64>,
    /// CPU time of other processes on the machine during the run, in percent of all CPUs.
    pub(super) others_cpu_percent: Option<f64>,
    /// Runs made to get this one: more than one when others disturbed the earlier ones.
    pub(super) attempts: u32,
    /// What the fast path did during the run (warm-up included).
    pub(super) fastpath: Option<FastPathCounters>,
    /// The TLS version, cipher, group and protocol the client negotiated, when it says.
    pub(super) negotiated: Option<String>,
}

impl Sample {
    /// What the load generator measured; the rest is filled in by the caller.
    fn measured(requests: u64, seconds: f64, bytes: u64, errors: u64) -> Self {
        Self {
            requests,
            seconds,
            bytes,
            errors,
            p50_ms: None,
            p99_ms: None,
            lb_cpu_s: None,
            lb_peak_rss_bytes: None,
            others_cpu_percent: None,
            attempts: 1,
            fastpath: None,
            negotiated: None,
        }
    }

    /// The same with the load generator's latency percentiles (microseconds).
    fn with_latency(self, p50_us: u64, p99_us: u64) -> Self {
        Self {
            p50_ms: Some(p50_us as f64 / 1e3),
            p99_ms: Some(p99_us as f64 / 1e3),
            ..self
        }
    }

    pub(super) fn requests_per_s(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    pub(super) fn megabytes_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds
    }
}

/// Warms up (not measured), then measures `workload` against the running `lb` (none for the
/// direct contender). `run` makes the unique cookies of every run different.
pub(super) fn measure(
    env: &Env,
    workload: Workload,
    contender: Contender,
    lb: Option<&mut LbProcess>,
    run: u32,
) -> anyhow::Result<Sample> {
    let Some(base) = contender.url(&env.topology(workload.layout()).addrs, workload.frontend())
    else {
        bail!(
            "{} does not run against {}",
            workload.id(),
            contender.label()
        );
    };
    let (warmup_prefix, measure_prefix) = cookie_prefixes(workload, run);
    warm_up(env, workload, &base, &warmup_prefix)?;
    let cpu_before = lb.as_ref().map(|lb| lb.cpu_seconds()).transpose()?;
    let mut sample = load(env, workload, &base, &measure_prefix, env.plan.measure)?;
    if let Some(lb) = lb {
        lb.check_running()?;
        let cpu_after = lb.cpu_seconds()?;
        sample.lb_cpu_s = cpu_before.map(|before| cpu_after - before);
        sample.lb_peak_rss_bytes = Some(lb.peak_rss_bytes()?);
    }
    if sample.requests == 0 {
        bail!(
            "{} against {}: no request completed",
            workload.id(),
            contender.label()
        );
    }
    Ok(sample)
}

/// The cookie prefixes of a run's warm-up and measurement: pooled cookies are the same in both,
/// so the measurement is sticky hits; unique ones differ.
pub(super) fn cookie_prefixes(workload: Workload, run: u32) -> (String, String) {
    let warmup = cookie_prefix(run, 0);
    let measurement = if matches!(workload, Workload::NewConnUnique | Workload::TlsNewConn) {
        cookie_prefix(run, 1)
    } else {
        warmup.clone()
    };
    (warmup, measurement)
}

/// Load that is not measured: a short run of the workload, or one small download.
pub(super) fn warm_up(
    env: &Env,
    workload: Workload,
    base: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    match workload {
        Workload::Download => download(env, base, prefix, 1, 1 << 20).map(drop),
        Workload::TlsDownload | Workload::TlsH2Download => {
            tls_download(env, workload, base, prefix, (1, 1 << 20)).map(drop)
        }
        _ => load(env, workload, base, prefix, env.plan.warmup).map(drop),
    }
}

/// The load of a measurement: wrk, the load generator or the downloads, for `duration` (the
/// downloads take however long they take).
pub(super) fn load(
    env: &Env,
    workload: Workload,
    base: &str,
    prefix: &str,
    duration: Duration,
) -> anyhow::Result<Sample> {
    let client = &env.topology(workload.layout()).client;
    let target = base.trim_start_matches("http://");
    let plan = &env.plan;
    let spec = |connections| LoadSpec::new(target, connections, duration, prefix);
    let churn = || LoadSpec {
        per_connection: plan.churn_requests,
        ..spec(plan.keep_alive_connections)
    };
    let sources = env.topology(Layout::Routed).addrs.more_clients();
    let generated = match workload {
        Workload::NewConnUnique
        | Workload::NewConnRepeat
        | Workload::KeepAlive
        | Workload::OneArmedKeepAlive
        | Workload::TlsKeepAlive => {
            let spec = wrk_spec(env, workload, base, prefix, duration);
            let r = wrk::run(client, &env.script, &spec)?;
            let errors = r.errors + r.status_errors;
            let sample = Sample::measured(r.requests, r.seconds, r.bytes, errors);
            return Ok(sample.with_latency(r.p50_us, r.p99_us));
        }
        // A full handshake per request, a new session each time: handshakes per second.
        Workload::TlsNewConn => {
            let args = TlsClientArgs {
                connections: plan.new_conn_connections,
                per_connection: 1,
                pool: 0,
                resume: false,
                ..tls_client_args(base, prefix, duration)
            };
            return tls_connections(env, workload, &args);
        }
        // A browser's connections: a few requests each, resuming an earlier TLS session.
        Workload::TlsChurn => {
            let args = TlsClientArgs {
                connections: plan.keep_alive_connections,
                per_connection: plan.churn_requests,
                pool: plan.cookie_pool,
                resume: true,
                ..tls_client_args(base, prefix, duration)
            };
            return tls_connections(env, workload, &args);
        }
        // The same over HTTP/2, as a browser that speaks it loads a page.
        Workload::TlsH2Churn => {
            let args = TlsClientArgs {
                connections: plan.keep_alive_connections,
                per_connection: plan.churn_requests,
                pool: plan.cookie_pool,
                resume: true,
                h2: true,
                ..tls_client_args(base, prefix, duration)
            };
            return tls_connections(env, workload, &args);
        }
        Workload::TlsH2KeepAlive => {
            let spec = H2loadSpec {
                sessions: plan.wrk_threads,
                connections: plan.h2_connections,
                streams: plan.h2_streams,
                duration,
                requests: None,
                h1: false,
                url: base,
                path: "/",
                prefix,
                log_dir: &env.work_dir,
            };
            let r = h2load::run(client, &spec)?;
            let f = r.figures;
            let sample =
                Sample::measured(f.requests, f.seconds, f.bytes, f.errors + f.status_errors);
            return Ok(Sample {
                negotiated: r.negotiated,
                ..sample.with_latency(f.p50_us, f.p99_us)
            });
        }
        Workload::Download => {
            return download(
                env,
                base,
                prefix,
                plan.download_connections,
                plan.download_bytes,
            )
        }
        Workload::TlsDownload | Workload::TlsH2Download => {
            let size = (plan.download_connections, plan.download_bytes);
            return tls_download(env, workload, base, prefix, size);
        }
        Workload::Churn | Workload::OneArmedChurn => churn(),
        Workload::ChurnManyClients => LoadSpec {
            sources: &sources,
            ..churn()
        },
        Workload::PortReuse => {
            // Not measured: keep-alive connections, each with its session, long enough for the
            // fast path to take them over; they close at its end.
            let prelude = LoadSpec {
                pool: u64::from(plan.keep_alive_connections),
                duration: plan.port_reuse_prelude,
                ..spec(plan.keep_alive_connections)
            };
            load::run(client, &env.load, &prelude)?;
            LoadSpec {
                per_connection: 1,
                ..spec(plan.new_conn_connections)
            }
        }
        Workload::PacedKeepAlive => LoadSpec {
            rate: plan.paced_rate,
            ..spec(plan.keep_alive_connections)
        },
    };
    let r = load::run(client, &env.load, &generated)?;
    let errors = r.errors + r.status_errors;
    let sample = Sample::measured(r.requests, r.seconds, r.bytes, errors);
    Ok(sample.with_latency(r.p50_us, r.p99_us))
}

/// The TLS client's arguments for `base` (`https://host:port`), to be completed per workload.
fn tls_client_args(base: &str, prefix: &str, duration: Duration) -> TlsClientArgs {
    TlsClientArgs {
        addr: base.trim_start_matches("https://").to_owned(),
        server_name: tls::NAME.to_owned(),
        connections: 1,
        duration: duration.as_secs_f64(),
        per_connection: 1,
        pool: 0,
        prefix: prefix.to_owned(),
        resume: false,
        h2: false,
    }
}

/// Runs `lb-bench tls-client` in the workload's client namespace (see [`super::tls_client`]).
fn tls_connections(env: &Env, workload: Workload, args: &TlsClientArgs) -> anyhow::Result<Sample> {
    let bench = std::env::current_exe().context("locating the lb-bench binary")?;
    let mut command = env.topology(workload.layout()).client.command(&bench);
    command
        .arg("tls-client")
        .args(args.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = procs::spawn(&mut command)?;
    let limit = Duration::from_secs_f64(args.duration) + Duration::from_secs(60);
    procs::wait(&mut child, limit, "lb-bench tls-client")?;
    let output = child
        .wait_with_output()
        .context("reading lb-bench tls-client's output")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(r) = wrk::parse_line(&stdout, "LOAD-RESULT") else {
        bail!(
            "lb-bench tls-client printed no result ({}):\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let negotiated = stdout.lines().find_map(|line| {
        let rest = line.strip_prefix(tls_client::NEGOTIATED)?;
        Some(rest.trim().to_owned())
    });
    let errors = r.errors + r.status_errors;
    let sample = Sample::measured(r.requests, r.seconds, r.bytes, errors);
    Ok(Sample {
        negotiated,
        ..sample.with_latency(r.p50_us, r.p99_us)
    })
}

/// 8 characters that start the cookies of a run and phase (0 warm-up, 1 measurement).
fn cookie_prefix(run: u32, phase: u32) -> String {
    format!("{:06x}{phase:02x}", run % 0x0100_0000)
}

fn wrk_spec<'a>(
    env: &Env,
    workload: Workload,
    base: &'a str,
    prefix: &'a str,
    duration: Duration,
) -> WrkSpec<'a> {
    let plan = &env.plan;
    let (connections, pool, close) = match workload {
        Workload::NewConnUnique => (plan.new_conn_connections, 0, true),
        Workload::NewConnRepeat => (plan.new_conn_connections, plan.cookie_pool, true),
        // A pool of one cookie per wrk thread: every connection keeps its session's cookie on
        // all its requests, as a browser does (wrk's scripts cannot tell connections apart).
        _ => (
            plan.keep_alive_connections,
            u64::from(plan.wrk_threads),
            false,
        ),
    };
    WrkSpec {
        threads: plan.wrk_threads,
        connections,
        duration,
        url: base,
        prefix,
        pool,
        close,
    }
}

/// `connections` bulk clients at once (see [`super::client`]), each on its own keep-alive
/// connection with its own cookie: a small request, a pause, then a download of `bytes`.
/// Throughput is all downloaded bytes over the time from the first download's start to the last
/// one's end.
fn download(
    env: &Env,
    base: &str,
    prefix: &str,
    connections: u32,
    bytes: u64,
) -> anyhow::Result<Sample> {
    let addr = base.trim_start_matches("http://");
    // This binary, as `lb-bench client`.
    let bench = std::env::current_exe().context("locating the lb-bench binary")?;
    let mut children: Vec<Child> = Vec::new();
    for i in 0..connections {
        let mut client = env
            .topology(Workload::Download.layout())
            .client
            .command(&bench);
        client
            .args(["client", "--addr", addr, "--bytes", &bytes.to_string()])
            .arg("--session")
            .arg(format!("{prefix}{i:024}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push(procs::spawn(&mut client)?);
    }
    let (mut received, mut errors) = (0u64, 0u64);
    let (mut first_start, mut last_end) = (u64::MAX, 0u64);
    for mut child in children {
        procs::wait(&mut child, Duration::from_secs(300), "a download")?;
        let output = child
            .wait_with_output()
            .context("reading the bulk client's output")?;
        match client::parse_line(&String::from_utf8_lossy(&output.stdout)) {
            Some(bulk) if bulk.status == 200 && bulk.bytes == bytes => {
                received += bulk.bytes;
                first_start = first_start.min(bulk.start_ns);
                last_end = last_end.max(bulk.end_ns);
            }
            _ => {
                errors += 1;
                println!(
                    "bench: a bulk client failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
        }
    }
    let seconds = if last_end > first_start {
        (last_end - first_start) as f64 / 1e9
    } else {
        f64::NAN
    };
    Ok(Sample::measured(
        u64::from(connections),
        seconds,
        received,
        errors,
    ))
}

/// `connections` HTTPS downloads of `bytes` at once, over HTTP/1.1 (h2load `--h1`) for
/// `tls-download`, over HTTP/2 for `tls-h2-download`, each on its own connection with its own
/// cookie. Throughput is all bytes received over the longest download's time. A download that
/// stops for 10 s counts as failed.
fn tls_download(
    env: &Env,
    workload: Workload,
    base: &str,
    prefix: &str,
    (connections, bytes): (u32, u64),
) -> anyhow::Result<Sample> {
    let path = format!("/bytes/{bytes}");
    let spec = H2loadSpec {
        sessions: connections,
        connections,
        streams: 1,
        duration: Duration::from_secs(240),
        requests: Some(1),
        h1: workload == Workload::TlsDownload,
        url: base,
        path: &path,
        prefix,
        log_dir: &env.work_dir,
    };
    let r = h2load::run(&env.topology(workload.layout()).client, &spec)?;
    let f = r.figures;
    let sample = Sample::measured(f.requests, f.seconds, f.bytes, f.errors + f.status_errors);
    Ok(Sample {
        negotiated: r.negotiated,
        ..sample
    })
}

#[cfg(test)]
mod tests {
    use super::{cookie_prefix, Contender, Frontend, Workload};

    #[test]
    fn tls_workloads_run_against_the_two_load_balancers_only() {
        let tls: Vec<&str> = Workload::ALL
            .into_iter()
            .filter(|w| w.frontend() == Frontend::Https)
            .map(Workload::id)
            .collect();
        assert_eq!(
            tls,
            [
                "tls-new-conn",
                "tls-keep-alive",
                "tls-h2-keep-alive",
                "tls-churn",
                "tls-h2-churn",
                "tls-download",
                "tls-h2-download"
            ]
        );
        for workload in Workload::ALL {
            let https = workload.frontend() == Frontend::Https;
            assert!(workload.runs_against(Contender::Haproxy));
            assert!(workload.runs_against(Contender::Stickylb));
            assert_eq!(workload.runs_against(Contender::Direct), !https);
            assert_eq!(workload.runs_against(Contender::StickylbFastPath), !https);
        }
    }

    #[test]
    fn workload_ids_round_trip() {
        for workload in Workload::ALL {
            assert_eq!(Workload::from_id(workload.id()), Some(workload));
        }
        assert_eq!(Workload::from_id("nope"), None);
    }

    #[test]
    fn cookie_prefixes_are_eight_characters_and_differ_by_run_and_phase() {
        assert_eq!(cookie_prefix(0, 1), "00000001");
        assert_eq!(cookie_prefix(7, 0).len(), 8);
        assert_ne!(cookie_prefix(1, 1), cookie_prefix(2, 1));
        assert_ne!(cookie_prefix(1, 0), cookie_prefix(1, 1));
    }
}
