//! `BENCHMARKS.md`: the machine, the setup, the results tables, the targets, the profile, and
//! how to reproduce. The tables' columns are shared with `check`, which parses them back.

use std::fmt::Write as _;

use super::{Report, Summary};
use crate::{
    contender::{Contender, Frontend},
    profile::Profile,
    workload::Workload,
};

/// Heading and columns of the results table.
pub(crate) const RESULTS_HEADING: &str = "## Results";
pub(crate) const RESULT_COLUMNS: [&str; 14] = [
    "workload",
    "contender",
    "runs",
    "spread %",
    "req/s",
    "p50 ms",
    "p99 ms",
    "MB/s",
    "LB CPU µs/req",
    "LB CPU s/GB",
    "LB peak RSS MB",
    "errors",
    "vs HAProxy",
    "vs direct",
];

/// Heading and columns of the table-scale table.
pub(crate) const SCALE_HEADING: &str = "## Table scale";
pub(crate) const SCALE_COLUMNS: [&str; 10] = [
    "contender",
    "entries",
    "fill s",
    "entries/s",
    "RSS MB",
    "map MB",
    "total MB",
    "restart s",
    "entries after restart",
    "RSS after restart MB",
];

/// What a cell without a figure shows (the direct path has no load balancer to measure).
pub(crate) const NONE: &str = "-";

pub(crate) fn render(report: &Report) -> String {
    let mut out = String::new();
    let plan = &report.plan;
    let mode = if plan.quick {
        "`--quick` (development figures)"
    } else {
        "full"
    };
    let _ = writeln!(
        out,
        "# Benchmarks\n\n\
         <!-- Written by `cargo xtask bench`: run it again rather than editing. -->\n\n\
         stickylb against HAProxy 2.6 with the equivalent sticky configuration, and against no load \
         balancer at all (\"direct\": the physical limit of this machine), in network namespaces. \
         Run: {mode}, {}, {} run(s) per cell, {:.0} s in all. Every run's figures are in \
         [`{}`]({}).\n",
        report.machine.date,
        plan.runs,
        report.duration_s,
        super::JSON_FILE,
        super::JSON_FILE,
    );
    machine(&mut out, report);
    setup(&mut out, report);
    results(&mut out, report);
    paired(&mut out, report);
    tls(&mut out, report);
    handoffs(&mut out, report);
    scale(&mut out, report);
    splice_rate(&mut out, report);
    program_costs(&mut out, report);
    crate::cluster::render::section(&mut out, report.cluster.as_ref());
    targets(&mut out, report);
    if !report.profiles.is_empty() {
        profiles(&mut out, &report.profiles);
    }
    reproduce(&mut out);
    out
}

fn machine(out: &mut String, report: &Report) {
    let m = &report.machine;
    let _ = writeln!(
        out,
        "## Machine\n\n\
         | | |\n|---|---|\n\
         | CPU | {} ({} CPUs) |\n| memory | {:.1} GiB |\n| kernel | Linux {} |\n| OS | {} |\n\
         | stickylb | {} |\n| HAProxy | {} |\n| wrk | {} |\n| h2load | {} |\n| curl | {} |\n\
         | rustc | {} |\n\
         | load average before the run (1, 5, 15 min) | {} |\n",
        m.cpu_model,
        m.cpus,
        m.memory_gib,
        m.kernel,
        m.os,
        m.stickylb,
        m.haproxy,
        m.wrk,
        m.h2load,
        m.curl,
        m.rustc,
        m.load_average,
    );
}

fn setup(out: &mut String, report: &Report) {
    let plan = &report.plan;
    let program_time = if report.fastpath_program_time_counted {
        "plus, for the fast path, the run time of its TC program (BPF run-time statistics), \
         which runs on the packet path outside the process"
    } else {
        "(the fast path's TC program is not included: BPF run-time statistics were unavailable)"
    };
    let _ = writeln!(
        out,
        "## Setup\n\n\
         - Hosts, each a network namespace, in two layouts. **Routed** (every workload but the \
         one-armed ones): client (10.240.1.2, and 10.240.1.101-116 for the workload from many \
         addresses), lb (10.240.1.1 and 10.240.2.1, routing between the two) and backends \
         (10.240.2.2), joined by veth pairs. **One-armed** (as in `vagrant/`'s network): \
         client (10.241.0.100), lb (10.241.0.10) and backends (10.241.0.2) on one bridge, so both \
         legs of every connection cross the load balancer's one interface. The backends are one \
         `stickylb-backend` process per layout, 4 servers on ports 8081-8084. The load \
         generators, the load balancer and the backends share this machine's CPUs.\n\
         - Contenders: **direct** (client to one backend port, through the lb namespace's routing \
         (or the bridge), no load balancer); **HAProxy 2.6** (Debian's, `balance roundrobin`, \
         `stick-table type string len 32 size 1048576 expire 30m`, `stick on \
         req.cook(JSESSIONID)`, `stick store-response res.cook(JSESSIONID)`, `option redispatch`, \
         `option forwardfor`, `http-reuse always` (stickylb also sends any request over any idle \
         pooled server connection; HAProxy's default would open a server connection per client \
         connection), timeouts connect 5s / client 50s / server 50s, {haproxy_log}, no health checks, \
         default threads: one per CPU); **stickylb** (release build, the same settings, \
         {stickylb_log}, health checks off, a single-threaded runtime per CPU, `fastpath = \
         \"off\"`, and `[shield] enabled = false` written out, as in every contender but the \
         next: the shield is on by default beyond loopback, and these runs measure the proxy \
         alone); **stickylb + shield** (when named: the same with `[shield] enabled = true` at \
         its default limit, 200 SYNs/s and 400 at once per source, with the refund); \
         **stickylb + fast path** (the same with the default `fastpath = \"splice\"` \
         and the default hand-off policy: a connection is handed to the TC program with its 8th \
         answer, after its client paused 50 ms, after a 1 MiB body, or with the `101` of an \
         upgrade; until then it is served exactly as with the fast path off). Each run starts \
         the load balancer afresh with an empty table; repetitions alternate the contenders.\n\
         - TLS: for the tls- workloads both load balancers also serve HTTPS on port 443 with the \
         same self-signed ECDSA P-256 certificate, made when the run starts: HAProxy `bind ... \
         ssl crt tls.pem alpn h2,http/1.1` and `http-request set-header X-Forwarded-Proto https` \
         (stickylb sends it too), OpenSSL's and HAProxy's defaults otherwise; stickylb a \
         `[[frontend]]` with `tls = {{ cert, key }}` (rustls with ring), served in userspace \
         (`fastpath = \"off\"`). The tls- workloads run against these two only: the direct \
         path has no TLS (the backends speak cleartext; a TLS server there would measure another \
         server, not the path), and the fast path cannot take a TLS connection (the kernel \
         cannot splice TLS without kTLS), so it would measure stickylb again.\n\
         - Workloads (warm-up {warmup} s, then {measure} s measured; demo-like `Cookie: c1=1; \
         c2=2; JSESSIONID=<32 chars>`; wrk with `bench.lua` and {threads} threads, or \
         `stickylb-load`, lb-userspace's load generator, with 2 threads):\n  \
         - **new-conn-unique** (wrk): a new connection per request (`Connection: close`), \
         {new_conn} connections, a new cookie on every request (every request creates a \
         session);\n  \
         - **new-conn-repeat** (wrk): the same with cookies cycling through {pool} values (sticky \
         hits);\n  \
         - **keep-alive** (wrk): {keep_alive} keep-alive connections, small responses \
         (`beN\\n`), each sending its next request the moment it has the answer; each \
         connection keeps one session cookie on all its requests (one cookie per wrk thread: its \
         scripts cannot tell connections apart);\n  \
         - **download**: {downloads} keep-alive connections at once (`lb-bench client`), each \
         with its own session: a small request, a 100 ms pause (a person between a page and a \
         download link), then one download of {download_mb} MiB (`/bytes/N`), {total_mb} MiB in \
         all; MB/s over the downloads only (first start to last end);\n  \
         - **churn** (stickylb-load): browser-like connections, {keep_alive} at a time: each \
         carries {churn} requests, the last with `Connection: close`, one session per connection \
         drawn from {pool}, back to back;\n  \
         - **churn-16-clients**: the same from 16 client addresses in turn;\n  \
         - **port-reuse**: first (not measured) {keep_alive} keep-alive connections, each with its \
         own session, for {prelude} s, then closed; then a new connection per request, \
         {new_conn} at a time, measured: the client's ports soon come round to those of the \
         first connections, which the fast path had taken over (their flows linger in its map \
         after their FINs);\n  \
         - **paced-keep-alive**: {keep_alive} keep-alive connections sending {paced:.0} requests \
         per second in all (every contender sustains this): latency at equal load, measured from \
         when each request was due;\n  \
         - **one-armed-keep-alive** and **one-armed-churn**: keep-alive and churn through the \
         one-armed layout;\n  \
         - **tls-new-conn** (`lb-bench tls-client`, rustls, HTTPS, HTTP/1.1): a new TLS \
         connection per request, each a full handshake (no session resumption: ECDHE and the \
         server's ECDSA signature, which the client checks), {new_conn} connections at a time, a \
         new cookie on every request: handshakes per second; latency from the TCP connect to \
         the end of the response (wrk and h2load cannot do this: both resume sessions when they \
         reconnect);\n  \
         - **tls-keep-alive** (wrk, HTTPS, HTTP/1.1): as keep-alive;\n  \
         - **tls-h2-keep-alive** (h2load, HTTPS, HTTP/2): {h2_connections} connections with \
         {h2_streams} requests in flight on each ({h2_in_flight} in all, as keep-alive), from \
         {threads} h2load processes each with one session's cookie (h2load sends the same headers \
         on every request); latency from h2load's per-request log (a request's start to the end \
         of its response), as its summary has no percentiles;\n  \
         - **tls-churn** (`lb-bench tls-client`, HTTPS, HTTP/1.1): browser-like \
         connections, {keep_alive} at a time: each carries {churn} requests, the last with \
         `Connection: close`, one session per connection drawn from {pool}, and resumes an \
         earlier TLS session (shared session cache, as a returning browser); latency of a \
         connection's first request from its TCP connect;\n  \
         - **tls-h2-churn** (`lb-bench tls-client --h2`, HTTPS, HTTP/2): as tls-churn, as a \
         browser that speaks HTTP/2 loads a page: ALPN `h2`, the first request alone, then the \
         other {churn_rest} at once on their own streams, the cookie in separate `cookie` \
         fields, then `GOAWAY`; latency of the first request from its TCP connect, of the others \
         from when they were sent; bytes are response bodies only (HPACK headers not counted);\n  \
         - **table scale**: keep-alive requests with cookies cycling through {entries} values \
         until the table holds them all, then memory, then {restarts} restart(s) (SIGTERM, start \
         again);\n  \
         - **splice rate**: tunnels (an upgrade, its `101`, {tunnel_bytes} bytes echoed, a close) \
         all with one session's cookie, so all to one server, {splice_rate:.0} new connections \
         per second for {splice_s} s, against stickylb with the fast path only.\n\
         - Figures: req/s and latency percentiles from wrk, stickylb-load, h2load or \
         `lb-bench tls-client` (exact; \
         closed loops but for paced-keep-alive, so latency is mostly measured at saturation; \
         time from writing a request (or, paced, from when it was due) to its complete \
         response, connection setup not included; wrk corrects for coordinated omission, so one \
         request delayed by 200 ms adds samples from 200 ms down to the mean interval); MB/s of \
         response bytes received; LB CPU = user + system \
         time of the load balancer process (all threads, `/proc/PID/stat`) during the \
         measurement, {program_time}, per request or per GB. On veth the kernel work of \
         delivering a packet runs in the sender's context, so each process's CPU includes some of \
         its peers' receive path. LB peak RSS = `VmHWM`. Medians over the runs; spread = (max - \
         min) / median of req/s (MB/s for downloads) over the runs; ratios compare the medians of \
         req/s (MB/s for downloads) with HAProxy's and with direct's from the same run.\n",
        haproxy_log = if plan.access_log {
            "`option httplog`, logged to stderr (`log stderr format raw local0 info`), which the \
             bench copies into a file"
        } else {
            "no log"
        },
        stickylb_log = if plan.access_log {
            "`--log info` (its default): the access log to stderr, which the bench copies into a \
             file"
        } else {
            "`--log warn`: no access log"
        },
        threads = plan.wrk_threads,
        churn = plan.churn_requests,
        churn_rest = plan.churn_requests.saturating_sub(1),
        prelude = plan.port_reuse_prelude.as_secs(),
        paced = plan.paced_rate,
        tunnel_bytes = 64,
        splice_rate = plan.splice_rate,
        splice_s = plan.splice_rate_duration.as_secs(),
        warmup = plan.warmup.as_secs(),
        measure = plan.measure.as_secs(),
        new_conn = plan.new_conn_connections,
        pool = plan.cookie_pool,
        keep_alive = plan.keep_alive_connections,
        h2_connections = plan.h2_connections,
        h2_streams = plan.h2_streams,
        h2_in_flight = plan.h2_connections * plan.h2_streams,
        downloads = plan.download_connections,
        download_mb = plan.download_bytes >> 20,
        total_mb = (plan.download_bytes >> 20) * u64::from(plan.download_connections),
        entries = plan.table_entries,
        restarts = plan.restarts,
    );
}

fn results(out: &mut String, report: &Report) {
    let _ = writeln!(
        out,
        "{RESULTS_HEADING} (median of {} run(s))\n",
        report.plan.runs
    );
    header(out, &RESULT_COLUMNS);
    for workload in Workload::ALL {
        for summary in report.results.iter().filter(|s| s.workload == workload) {
            row(out, &result_row(summary));
        }
    }
    let samples = || report.runs.iter().flat_map(|cell| &cell.samples);
    let others_max = samples()
        .filter_map(|s| s.others_cpu_percent)
        .fold(0.0, f64::max);
    let repeated: u32 = samples().map(|s| s.attempts.saturating_sub(1)).sum();
    let left_out: usize = report
        .results
        .iter()
        .map(|s| s.disturbed_runs_left_out)
        .sum();
    let _ = writeln!(
        out,
        "\nOther processes on the machine used at most {others_max:.1}% of its CPUs during a \
         counted run. Before each run the bench waits for them to use no more than {limit}%, and \
         repeats a run during which they used more (at most {} tries, the last one counts; \
         {:.0} s in all for waiting and repeating): {repeated} run(s) were repeated. The medians \
         leave out the repetitions in which any contender's run was still disturbed, when a \
         workload has undisturbed ones ({left_out} runs left out; `runs` counts those kept; \
         every run is in the JSON).",
        report.plan.attempts,
        report.plan.patience.as_secs_f64(),
        limit = crate::others::LIMIT_PERCENT,
    );
    let _ = writeln!(
        out,
        "\n![stickylb with the fast path off and on, as ratios to HAProxy and to direct]({})",
        super::SVG_FILE
    );
    for not_run in &report.not_run {
        let _ = writeln!(
            out,
            "\nNot run: **{}**: {}.",
            not_run.contender.label(),
            not_run.reason
        );
    }
    out.push('\n');
}

/// Heading and columns of the run-by-run table.
pub(crate) const PAIRED_HEADING: &str = "## Run by run";
const PAIRED_COLUMNS: [&str; 6] = [
    "workload",
    "contender",
    "against",
    "pairs",
    "ratio (geometric mean) [95% interval]",
    "difference",
];

/// Each contender against its baseline in the same repetitions (`Summary::paired`).
fn paired(out: &mut String, report: &Report) {
    let rows: Vec<&Summary> = report
        .results
        .iter()
        .filter(|s| s.paired.is_some())
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "{PAIRED_HEADING}\n\n\
         Each run of a contender against the run of its baseline in the same repetition (the \
         contenders alternate within each): the geometric mean of those ratios, req/s (MB/s for \
         downloads), with its 95% confidence interval (Student's t on the logarithms). \
         \"lower\" or \"higher\" when the whole interval is on one side of 1.0; otherwise \
         the runs' scatter is as large as the difference. A single pair has no interval.\n"
    );
    header(out, &PAIRED_COLUMNS);
    for summary in rows {
        let Some(paired) = &summary.paired else {
            continue;
        };
        row(
            out,
            &[
                summary.workload.id().to_owned(),
                summary.contender.label().to_owned(),
                paired.baseline.label().to_owned(),
                paired.ratio.runs.to_string(),
                paired_ratio(&paired.ratio),
                paired.ratio.verdict().to_owned(),
            ],
        );
    }
    out.push('\n');
}

/// `0.97x [0.93, 1.01]`, or the ratio alone without an interval.
pub(crate) fn paired_ratio(ratio: &crate::stats::PairedRatio) -> String {
    match (ratio.low, ratio.high) {
        (Some(low), Some(high)) => format!("{:.2}x [{low:.2}, {high:.2}]", ratio.geomean),
        _ => format!("{:.2}x", ratio.geomean),
    }
}

/// The default configuration's kernel programs per packet (`progcost`).
fn program_costs(out: &mut String, report: &Report) {
    if report.program_costs.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Kernel programs per packet\n\n\
         stickylb in its default configuration (fast path and shield on, the shield at its \
         default limit, both at TC on the frontend's veth), each attached program run by the \
         kernel's test run (`bpftool prog run`, 200000 times a round, median of 5 rounds) on a \
         packet built by the bench. An ACK is what every packet of an ordinary connection is \
         to both programs; the SYN flood repeats one source's SYN (the shield passes its \
         burst, then drops).\n"
    );
    header(
        out,
        &["program", "link", "packet", "ns per packet", "return code"],
    );
    for cost in &report.program_costs {
        row(
            out,
            &[
                cost.program.clone(),
                cost.link.clone(),
                cost.packet.to_owned(),
                format!("{:.0}", cost.ns_per_packet),
                cost.verdict.to_string(),
            ],
        );
    }
    out.push('\n');
}

/// Heading and columns of the TLS table.
pub(crate) const TLS_HEADING: &str = "## TLS";
const TLS_COLUMNS: [&str; 7] = [
    "workload",
    "stickylb req/s (MB/s)",
    "HAProxy req/s (MB/s)",
    "vs HAProxy",
    "stickylb p99 ms",
    "HAProxy p99 ms",
    "target (>= 1.0x, p99 <= HAProxy)",
];

/// stickylb against HAProxy on the TLS workloads that ran, and the target on each.
fn tls(out: &mut String, report: &Report) {
    let find = |workload: Workload, contender: Contender| {
        report
            .results
            .iter()
            .find(|s| s.workload == workload && s.contender == contender)
    };
    let rows: Vec<(Workload, &Summary, &Summary)> = Workload::ALL
        .into_iter()
        .filter(|w| w.frontend() == Frontend::Https)
        .filter_map(|w| {
            Some((
                w,
                find(w, Contender::Stickylb)?,
                find(w, Contender::Haproxy)?,
            ))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "{TLS_HEADING}\n\n\
         HTTPS frontends, stickylb (userspace; the fast path does not apply) against HAProxy 2.6, \
         the same certificate (ECDSA P-256), medians from the table above. Target on each: req/s \
         >= 1.0x HAProxy's and p99 <= HAProxy's; for a download, MB/s >= 1.0x HAProxy's.\n"
    );
    header(out, &TLS_COLUMNS);
    for (workload, ours, theirs) in &rows {
        let download = workload.per_gigabyte();
        let met = ours.vs_haproxy.is_some_and(|r| r >= 1.0)
            && (download || matches!((ours.p99_ms, theirs.p99_ms), (Some(a), Some(b)) if a <= b));
        let merit = |s: &Summary| {
            if download {
                s.megabytes_per_s
            } else {
                s.requests_per_s
            }
        };
        row(
            out,
            &[
                workload.id().to_owned(),
                number(merit(ours), 0),
                number(merit(theirs), 0),
                ratio(ours.vs_haproxy),
                number(ours.p99_ms, 2),
                number(theirs.p99_ms, 2),
                if met { "**met**" } else { "**missed**" }.to_owned(),
            ],
        );
    }
    for contender in [Contender::Stickylb, Contender::Haproxy] {
        for cell in report
            .runs
            .iter()
            .filter(|c| c.contender == contender && c.workload.frontend() == Frontend::Https)
        {
            if let Some(negotiated) = cell.samples.iter().find_map(|s| s.negotiated.as_deref()) {
                let _ = writeln!(
                    out,
                    "\n{} on {} negotiated: {negotiated}.",
                    contender.label(),
                    cell.workload.id()
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\n(As the clients report it: h2load for tls-h2-keep-alive, `lb-bench tls-client` (rustls' \
         names) for tls-new-conn and tls-churn; wrk does not say.)\n"
    );
}

/// Heading and columns of the hand-offs table.
pub(crate) const HANDOFFS_HEADING: &str = "## Hand-offs";
const HANDOFF_COLUMNS: [&str; 9] = [
    "workload",
    "runs",
    "candidates",
    "attempts",
    "spliced",
    "kept in userspace",
    "no free port",
    "completed by the program",
    "dropped by the program",
];

/// What the fast path did in each workload, summed over its runs (warm-ups included).
fn handoffs(out: &mut String, report: &Report) {
    let _ = writeln!(
        out,
        "{HANDOFFS_HEADING}\n\n\
         stickylb + fast path, summed over each workload's runs (warm-ups included): connections \
         the policy picked (candidates), hand-off attempts, connections spliced, attempts that \
         left the connection in userspace (a request already there, legs that cannot be \
         translated), candidates left in userspace for want of a free source port, hand-offs \
         the program completed on the client's next packet, and packets the program dropped \
         (a packet of a translated flow it could not rewrite, or a stray packet of an orphaned \
         hand-off).\n"
    );
    header(out, &HANDOFF_COLUMNS);
    for cell in report
        .runs
        .iter()
        .filter(|c| c.contender == crate::contender::Contender::StickylbFastPath)
    {
        let counters: Vec<_> = cell
            .samples
            .iter()
            .filter_map(|s| s.fastpath.as_ref())
            .collect();
        let sum = |f: &dyn Fn(&crate::env::FastPathCounters) -> u64| {
            counters.iter().map(|c| f(c)).sum::<u64>().to_string()
        };
        let kept = |c: &crate::env::FastPathCounters| {
            c.outcomes
                .iter()
                .filter(|(name, _)| name.starts_with("kept_") || name == "refused_options")
                .map(|(_, v)| v)
                .sum::<u64>()
        };
        row(
            out,
            &[
                cell.workload.id().to_owned(),
                counters.len().to_string(),
                sum(&|c| c.candidates),
                sum(&|c| c.attempts),
                sum(&|c| c.outcome("spliced")),
                sum(&kept),
                sum(&|c| c.outcome("no_port")),
                sum(&|c| c.program("completed")),
                sum(&|c| c.program("dropped") + c.program("armed_dropped")),
            ],
        );
    }
    out.push('\n');
}

/// The source-port budget (see `bench::splice_rate`).
fn splice_rate(out: &mut String, report: &Report) {
    let Some(m) = &report.splice_rate else {
        return;
    };
    let _ = writeln!(
        out,
        "## Spliced connections per second\n\n\
         Tunnels to one server at {:.0} new connections per second for {:.0} s (stickylb with \
         the fast path): {} completed ({:.0}/s), {:.0}/s spliced, {} left in userspace for want \
         of a free source port, {} errors, p99 {:.1} ms. At most {} of the {} source ports \
         toward the server were held by spliced flows at once (sampled every second), so a \
         spliced connection held its port about {:.2} s: its life, the port's rest after the \
         flow ended (1 s, `[fastpath] port_reuse`) and up to a collector period (250 ms). What \
         bounds the rate is that: {} ports / {:.2} s = about {:.0} new spliced connections per \
         second to one server from one source address; more ports (`[fastpath] source_ports`) \
         or a shorter rest raise it.\n",
        m.offered_per_s,
        m.seconds,
        m.completed,
        m.completed as f64 / m.seconds,
        m.spliced_per_s(),
        m.fastpath.outcome("no_port"),
        m.errors,
        m.p99_ms,
        m.max_ports_spliced,
        m.ports_per_server,
        m.hold_seconds(),
        m.ports_per_server,
        m.hold_seconds(),
        m.bound_per_s(),
    );
}

fn result_row(s: &Summary) -> Vec<String> {
    vec![
        s.workload.id().to_owned(),
        s.contender.label().to_owned(),
        s.runs.to_string(),
        number(s.spread_percent, 1),
        number(s.requests_per_s, 0),
        number(s.p50_ms, 2),
        number(s.p99_ms, 2),
        number(s.megabytes_per_s, 1),
        number(s.lb_cpu_us_per_request, 1),
        number(s.lb_cpu_s_per_gb, 2),
        number(s.lb_peak_rss_mb, 1),
        s.errors.to_string(),
        ratio(s.vs_haproxy),
        ratio(s.vs_direct),
    ]
}

fn scale(out: &mut String, report: &Report) {
    let _ = writeln!(
        out,
        "{SCALE_HEADING}\n\n\
         Memory with the table full: RSS of the process, plus for stickylb the pinned BPF map \
         (the kernel's `memlock` for it, from `bpftool map show`; the map is preallocated at its \
         capacity, {} entries: the table size). The map is stickylb's table; the process keeps \
         only each backend's most recently used entries. Restart: from starting the new process \
         to stickylb's `stickylb started` (logged after it read the pinned map once), or to \
         HAProxy's first answer (HAProxy starts with an empty table).\n",
        crate::contender::TABLE_SIZE
    );
    header(out, &SCALE_COLUMNS);
    for s in &report.table_scale {
        row(
            out,
            &[
                s.contender.label().to_owned(),
                s.entries.to_string(),
                format!("{:.1}", s.fill_seconds),
                format!("{:.0}", s.fill_entries_per_s),
                format!("{:.1}", s.rss_mb),
                number(s.map_mb, 1),
                format!("{:.1}", s.total_mb),
                number(s.restart_seconds_median, 3),
                s.entries_after_restart.to_string(),
                format!("{:.1}", s.rss_after_restart_mb),
            ],
        );
    }
    out.push('\n');
}

fn targets(out: &mut String, report: &Report) {
    let _ = writeln!(
        out,
        "## Targets\n\nJudged from the medians above (same run).\n"
    );
    header(out, &["target", "stickylb", "HAProxy", "result"]);
    for t in &report.targets {
        row(
            out,
            &[
                t.target.clone(),
                t.stickylb.clone(),
                t.reference.clone(),
                format!("**{}**", t.result),
            ],
        );
    }
    out.push('\n');
}

fn profiles(out: &mut String, profiles: &[Profile]) {
    let _ = writeln!(
        out,
        "## Where the CPU time goes\n\n\
         `cargo xtask bench --perf`: one extra, unmeasured run per load balancer and workload, \
         sampled by `perf record -e cpu-clock --call-graph dwarf` (on-CPU time of the load \
         balancer process only). Shares are of all samples, by the innermost frame; kernel time is \
         attributed to the system call it runs under, or to softirq packet processing. Folded \
         stacks for flame graphs (`flamegraph.pl X.folded > X.svg`) and the perf data are in `{}/` \
         until the next `--perf` run.\n",
        profiles
            .first()
            .and_then(|p| p.folded_stacks.parent())
            .map(|dir| dir.strip_prefix(crate::workspace::root()).unwrap_or(dir))
            .map_or_else(String::new, |dir| dir.display().to_string()),
    );
    for p in profiles {
        let list = |shares: &[crate::profile::Share]| {
            shares
                .iter()
                .map(|s| format!("{} {:.1}%", s.name, s.percent))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "### {} on {} ({} samples)\n\n- by binary: {}\n- kernel by entry: {}",
            p.contender.label(),
            p.workload.id(),
            p.samples,
            list(&p.by_binary),
            list(&p.kernel_by_entry),
        );
        if !p.by_crate.is_empty() {
            let _ = writeln!(out, "- by Rust crate: {}", list(&p.by_crate));
        }
        let _ = writeln!(out, "- hottest functions:");
        for share in &p.top_functions {
            let _ = writeln!(out, "  - {:.1}% `{}`", share.percent, share.name);
        }
        out.push('\n');
    }
}

fn reproduce(out: &mut String) {
    let _ = writeln!(
        out,
        "## Reproduce\n\n\
         As root on Debian 12 with the repository's prerequisites:\n\n\
         ```sh\n\
         cargo xtask setup                # haproxy, wrk, h2load, curl, bpftool, perf, eBPF tools\n\
         cargo xtask bench                # release build, then everything: about 40 minutes\n\
         cargo xtask bench --perf         # the same plus the profile section: about 45 minutes\n\
         cargo xtask bench --quick --output /tmp/bench   # about 4 minutes, for development\n\
         cargo xtask bench --workload churn --contender stickylb-fast-path   # a part of it\n\
         ```\n\n\
         It creates its own namespaces (`slbbench-<pid>-*`), pins its table under \
         `/sys/fs/bpf/stickylb-bench/`, keeps the latest run's configurations and logs in \
         `target/bench/run-<pid>/` (and `--perf`'s profiles in `target/bench/profiles/`), and \
         removes namespaces, maps and sockets when it ends, also on Ctrl-C (and at the next \
         start, those of a run that was killed). Figures from another machine differ: compare \
         the ratios, which come from one run on one machine."
    );
}

fn header(out: &mut String, columns: &[&str]) {
    let _ = writeln!(out, "| {} |", columns.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        columns.iter().map(|_| "---|").collect::<String>()
    );
}

fn row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| NONE.into(), |v| format!("{v:.decimals$}"))
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| NONE.into(), |v| format!("{v:.2}x"))
}

#[cfg(test)]
mod tests {
    use super::{render, TLS_HEADING};
    use crate::report::tests::sample_report;

    #[test]
    fn the_tls_section_compares_stickylb_with_haproxy_and_judges_the_target() {
        let markdown = render(&sample_report());
        let section: Vec<&str> = markdown
            .lines()
            .skip_while(|line| !line.starts_with(TLS_HEADING))
            .take_while(|line| !line.starts_with("## Hand-offs"))
            .collect();
        // The made-up figures: stickylb 10000 req/s and p99 5 ms, HAProxy 15000 and 4 ms.
        for workload in [
            "tls-new-conn",
            "tls-keep-alive",
            "tls-h2-keep-alive",
            "tls-churn",
            "tls-h2-churn",
        ] {
            let row = format!("| {workload} | 10000 | 15000 | 0.67x | 5.00 | 4.00 | **missed** |");
            assert!(section.contains(&row.as_str()), "{section:#?}");
        }
        // Every made-up download is 1 GB in 2 s: MB/s equal, no p99.
        for workload in ["tls-download", "tls-h2-download"] {
            let row = format!("| {workload} | 500 | 500 | 1.00x | - | - | **met** |");
            assert!(section.contains(&row.as_str()), "{section:#?}");
        }
        assert!(!section.iter().any(|line| line.starts_with("| keep-alive")));
    }
}
