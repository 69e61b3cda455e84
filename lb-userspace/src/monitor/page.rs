//! `/monitor`: the status page, after HAProxy's stats page. Self-contained (inline CSS, no
//! scripts); it reloads itself every 5 seconds like HAProxy's `stats refresh 5`. Every string
//! that comes from the configuration or from data goes through [`Html`].

mod peers;

use std::fmt::{self, Write as _};

use super::view::{
    BackendView, FastPathView, ServerView, ShieldView, Snapshot, State, RESPONSE_CLASSES,
};

const REFRESH_SECONDS: u32 = 5;

const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;background:#f3f4f6;color:#1f2937;font:13px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
.top{background:#1e293b;color:#f8fafc;padding:14px 24px;display:flex;flex-wrap:wrap;align-items:baseline;gap:8px 32px}
.top h1{margin:0;font-size:20px;font-weight:650;letter-spacing:.2px}
.top h1 small{font-weight:400;color:#94a3b8;font-size:13px;margin-left:6px}
.top dl{display:flex;flex-wrap:wrap;gap:4px 24px;margin:0}
.top dt{color:#94a3b8;display:inline}
.top dd{display:inline;margin:0 0 0 6px;font-weight:600}
.top dd.bad{background:#ff9090;color:#7f1010;padding:0 6px;border-radius:3px}
main{padding:18px 24px 8px}
section{background:#fff;border:1px solid #d1d5db;border-radius:6px;margin:0 0 18px;overflow:hidden}
section>h2{margin:0;padding:7px 12px;font-size:14px;background:#b00040;color:#ffff40;display:flex;gap:16px;align-items:baseline}
section>h2 span{color:#ffe4ec;font-weight:400;font-size:12px}
section.plain>h2{background:#334155;color:#f8fafc}
.cards{display:flex;flex-wrap:wrap;gap:0;border-bottom:1px solid #e5e7eb;background:#fafafa}
.card{padding:8px 16px;border-right:1px solid #e5e7eb;min-width:130px}
.card b{display:block;font-size:16px;font-variant-numeric:tabular-nums}
.card span{color:#6b7280;font-size:11px;text-transform:uppercase;letter-spacing:.4px}
.bar{height:4px;background:#e5e7eb;border-radius:2px;margin-top:4px;overflow:hidden}
.bar i{display:block;height:100%;background:#2563eb}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;text-align:right;white-space:nowrap;border-bottom:1px solid #e5e7eb}
th{background:#eef0f3;color:#374151;font-weight:600;font-size:12px}
tr.groups th{background:#e2e5ea;border-left:1px solid #d1d5db;text-align:center}
tr.groups th:first-child{border-left:0}
th.g,td.g{border-left:1px solid #e5e7eb}
.l{text-align:left}
tbody tr:hover td{filter:brightness(.97)}
tr.up td{background:#f1fdf1}
tr.down td{background:#fff1f1}
td.state{font-weight:700;text-align:center}
tr.up td.state{background:#c0ffc0;color:#065f16}
tr.down td.state{background:#ff9090;color:#7f1010}
tr.drain td{background:#eef6ff}
tr.drain td.state{background:#9fd0ff;color:#0b3a66}
tr.maint td{background:#f6efe6}
tr.maint td.state{background:#d6b48c;color:#5a3411}
tr.connecting td{background:#fffbeb}
tr.connecting td.state{background:#ffd97a;color:#7a4a00}
tfoot td{background:#e8e8d0;font-weight:600;border-bottom:0}
td.check{text-align:left;color:#374151}
td.check div{max-width:230px;overflow:hidden;text-overflow:ellipsis}
.scroll{overflow-x:auto}
.muted{color:#9ca3af}
.zero{color:#b6bcc6}
.empty{padding:12px;color:#6b7280;margin:0}
footer{padding:4px 24px 20px;color:#6b7280;font-size:12px}
a{color:#2563eb}
"#;

pub(super) fn render(snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = write_page(&mut out, snapshot);
    out
}

fn write_page(out: &mut String, s: &Snapshot) -> fmt::Result {
    write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>stickylb: {instance}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        instance = Html(&s.instance),
    )?;
    let live: usize = s.backends.iter().map(BackendView::servers_up).sum();
    let total: usize = s.backends.iter().map(|b| b.servers.len()).sum();
    write!(
        out,
        "<header class=\"top\"><h1>stickylb <small>statistics report</small></h1><dl>\
         <div><dt>Instance</dt><dd>{}</dd></div>\
         <div><dt>Uptime</dt><dd>{}</dd></div>\
         <div><dt>Version</dt><dd>{}</dd></div>\
         <div><dt>Servers up</dt><dd>{live} / {total}</dd></div>\
         {durable}{log}\
         </dl></header>\n<main>\n",
        Html(&s.instance),
        Uptime(s.uptime_ms),
        Html(s.version),
        durable = Durable(s.table_durable),
        log = LogDropped(s.log_dropped),
    )?;
    write_frontends(out, s)?;
    for backend in &s.backends {
        write_backend(out, backend)?;
    }
    peers::write_peers(out, &s.peers)?;
    if let Some(fastpath) = &s.fastpath {
        write_fastpath(out, fastpath)?;
    }
    if let Some(shield) = &s.shield {
        write_shield(out, shield)?;
    }
    write!(
        out,
        "</main>\n<footer>Refreshed every {REFRESH_SECONDS} s. Also: <a href=\"/metrics\">/metrics</a> \
         (Prometheus), <a href=\"/api/servers\">/api/servers</a>, <a href=\"/api/table\">/api/table</a>, \
         <a href=\"/api/peers\">/api/peers</a>, <a href=\"/api/status\">/api/status</a> (JSON).\
         </footer>\n</body>\n</html>\n"
    )
}

fn write_fastpath(out: &mut String, f: &FastPathView) -> fmt::Result {
    let s = &f.summary;
    let interfaces: Vec<String> = f
        .interfaces
        .iter()
        .map(|i| format!("{} ({})", i.name, i.xdp.translation()))
        .collect();
    let interfaces = if interfaces.is_empty() {
        // The program is attached for the first candidate on an interface, not at start.
        "none yet (attached for the first candidate)".to_owned()
    } else {
        interfaces.join(", ")
    };
    writeln!(
        out,
        "<section class=\"plain\" id=\"fastpath\"><h2>Kernel fast path</h2>\
         <p>Spliced connections skip L7 processing: their later requests are not logged or \
         rewritten, and these counters come from the flow map.</p>\
         <table><thead><tr><th class=\"l\">Interfaces</th><th>Spliced flows</th><th>Packets</th>\
         <th>Bytes</th><th>Observed</th><th>Candidates</th><th>Spliced (total)</th>\
         <th>Kept in userspace</th><th>Collected</th><th>Source ports in use</th></tr></thead><tbody>\
         <tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td title=\"relayed + spliced + resting, of {} per \
         server\">{} + {} + {}</td></tr></tbody></table></section>",
        Html(&interfaces),
        s.spliced,
        s.packets,
        s.bytes,
        s.observe_entries / 2,
        f.candidates,
        f.outcomes.first().map_or(0, |(_, v)| *v),
        f.outcomes.iter().skip(1).map(|(_, v)| v).sum::<u64>(),
        f.collected,
        f.ports_per_server,
        f.ports.relayed,
        f.ports.spliced,
        f.ports.resting,
    )
}

fn write_shield(out: &mut String, shield: &ShieldView) -> fmt::Result {
    let limit = shield.syn_limit.map_or_else(
        || "none".to_owned(),
        |(rate, burst)| format!("{rate}/s, {burst} at once"),
    );
    write!(
        out,
        "<section class=\"plain\" id=\"shield\"><h2>Shield<span>XDP &middot; SYN limit per \
         source {}</span></h2><div class=\"cards\">",
        Html(&limit)
    )?;
    match &shield.counters {
        Some(c) => {
            for (label, value) in [
                ("Dropped by rule", c.dropped_deny),
                ("Dropped by rate", c.dropped_rate),
                ("Passed", c.passed),
                ("SYNs refunded", c.refunded),
            ] {
                write!(
                    out,
                    "<div class=\"card\"><span>{label}</span><b>{value}</b></div>"
                )?;
            }
        }
        None => out.push_str("<div class=\"card\"><span>Counters</span><b>unreadable</b></div>"),
    }
    out.push_str(
        "</div><table><thead><tr><th class=\"l\">Interface</th><th class=\"l\">Mode</th>\
         </tr></thead><tbody>",
    );
    for (interface, mode) in &shield.interfaces {
        write!(
            out,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
            Html(interface),
            Html(mode)
        )?;
    }
    out.push_str("</tbody></table></section>\n");
    Ok(())
}

fn write_frontends(out: &mut String, s: &Snapshot) -> fmt::Result {
    out.push_str("<section class=\"plain\" id=\"frontends\"><h2>Frontends</h2>");
    if s.frontends.is_empty() {
        out.push_str("<p class=\"empty\">No frontends configured.</p></section>\n");
        return Ok(());
    }
    out.push_str("<table><thead><tr><th class=\"l\">Frontend</th><th class=\"l\">Serves</th><th class=\"l\">Backend</th><th>Connections</th><th class=\"l\">TLS handshakes</th></tr></thead><tbody>");
    for frontend in &s.frontends {
        write!(
            out,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\"><a href=\"#backend-{}\">{}</a></td><td>{}</td><td class=\"l\">",
            Html(&frontend.name),
            Html(&frontend.serves),
            Html(&frontend.backend),
            Html(&frontend.backend),
            frontend.connections
        )?;
        match &frontend.tls {
            Some(tls) => {
                write!(
                    out,
                    "{} done, {} failed, {} timed out",
                    tls.handshakes, tls.failed, tls.timed_out
                )?;
                let chosen = crate::proxy::ALPN_LABELS.iter().zip(tls.alpn);
                for (alpn, count) in chosen.filter(|(_, count)| *count > 0) {
                    write!(out, "; {alpn} {count}")?;
                }
            }
            None => out.push('-'),
        }
        out.push_str("</td></tr>");
    }
    out.push_str("</tbody></table></section>\n");
    Ok(())
}

fn write_backend(out: &mut String, b: &BackendView) -> fmt::Result {
    write!(
        out,
        "<section id=\"backend-{}\"><h2>{}<span>backend &middot; balance {} &middot; stick on cookie {} &middot; {} of {} servers up</span></h2>",
        Html(&b.name),
        Html(&b.name),
        b.balance,
        Html(&b.stick_cookie),
        b.servers_up(),
        b.servers.len()
    )?;
    write_cards(out, b)?;
    out.push_str(
        "<div class=\"scroll\"><table><thead><tr class=\"groups\"><th colspan=\"5\">Server</th><th colspan=\"2\">Sessions</th>\
         <th>Requests</th><th colspan=\"2\">Bytes</th><th colspan=\"6\">Responses</th>\
         <th>Errors</th><th colspan=\"4\">Health check</th></tr>\
         <tr><th class=\"l\">Name</th><th class=\"l\">Address</th><th>State</th>\
         <th title=\"weight in force (ramping: during slowstart)\">Weight</th><th title=\"requests in flight at most\">Max</th>\
         <th class=\"g\">In flight</th><th>Total</th><th class=\"g\">Total</th>\
         <th class=\"g\">In</th><th>Out</th>",
    );
    for (i, class) in page_order(&RESPONSE_CLASSES).enumerate() {
        let group = if i == 0 { " class=\"g\"" } else { "" };
        write!(out, "<th{group}>{class}</th>")?;
    }
    out.push_str(
        "<th class=\"g\">Failures</th><th class=\"g l\">Last result</th><th>OK</th><th>Failed</th>\
         <th title=\"UP/DOWN transitions\">Transitions</th></tr></thead><tbody>",
    );
    for server in &b.servers {
        write_server(out, server)?;
    }
    out.push_str("</tbody>");
    write_totals(out, b)?;
    out.push_str("</table></div></section>\n");
    Ok(())
}

fn write_cards(out: &mut String, b: &BackendView) -> fmt::Result {
    // Per mille of the table in use, for the bar; at least a sliver when not empty.
    let used = (b.table_size.saturating_mul(1000))
        .checked_div(b.table_capacity)
        .unwrap_or(0)
        .max(usize::from(b.table_size > 0));
    write!(
        out,
        "<div class=\"cards\"><div class=\"card\"><span>Stick table</span><b>{} / {}</b>\
         <div class=\"bar\" title=\"{}.{}% used\"><i style=\"width:{}.{}%\"></i></div></div>",
        Count(b.table_size as u64),
        Count(b.table_capacity as u64),
        used / 10,
        used % 10,
        used / 10,
        used % 10,
    )?;
    let stats = &b.stats;
    let cards = [
        ("Sticky hits", stats.sticky_hits),
        ("New sessions", stats.new_sessions),
        ("Redispatches", stats.redispatches),
        ("No cookie", stats.no_cookie),
        ("No server (503)", stats.no_server),
        ("Learned (Set-Cookie)", stats.learned),
        ("Queued now", stats.queued),
        ("Queue timeouts (503)", stats.queue_timeouts),
    ];
    for (label, value) in cards {
        write!(
            out,
            "<div class=\"card\"><span>{label}</span><b>{}</b></div>",
            Count(value)
        )?;
    }
    out.push_str("</div>");
    Ok(())
}

fn write_server(out: &mut String, s: &ServerView) -> fmt::Result {
    // As HAProxy's page: maintenance shows over everything, a drain over UP.
    let (row, state) = match (s.admin, s.state) {
        ("maint", _) => ("maint", "MAINT"),
        (_, State::Down) => ("down", State::Down.as_str()),
        ("drain", State::Up) => ("drain", "DRAIN"),
        (_, State::Up) => ("up", State::Up.as_str()),
    };
    let ramping = if s.slowstart { " (ramping)" } else { "" };
    let maxconn = if s.maxconn == 0 {
        "-".to_owned()
    } else {
        s.maxconn.to_string()
    };
    write!(
        out,
        "<tr class=\"{row}\"><td class=\"l\"><b>{}</b></td><td class=\"l\">{}</td><td class=\"state\">{state}</td>\
         <td>{}{ramping}</td><td>{maxconn}</td><td class=\"g\">{}</td><td>{}</td><td class=\"g\">{}</td><td class=\"g\">{}</td><td>{}</td>",
        Html(&s.name),
        s.addr,
        s.weight,
        Num(s.in_flight),
        Num(s.sessions_total),
        Num(s.requests_total),
        ByteSize(s.bytes_in),
        ByteSize(s.bytes_out),
    )?;
    write_responses(out, &s.responses.0)?;
    write!(out, "<td class=\"g\">{}</td>", Num(s.failures))?;
    let check = &s.check;
    if !check.enabled {
        out.push_str("<td class=\"g l muted\">checks disabled</td><td class=\"muted\">-</td><td class=\"muted\">-</td>");
    } else if check.last_result.is_empty() {
        out.push_str("<td class=\"g l muted\">not checked yet</td><td class=\"muted\">-</td><td class=\"muted\">-</td>");
    } else {
        write!(
            out,
            "<td class=\"g check\" title=\"{}\"><div>{}</div></td><td>{}</td><td>{}</td>",
            Html(&check.last_result),
            Html(&check.last_result),
            Num(u64::from(check.consecutive_ok)),
            Num(u64::from(check.consecutive_failed)),
        )?;
    }
    write!(out, "<td>{}</td></tr>", Num(s.check_transitions))
}

fn write_responses(out: &mut String, counts: &[u64; 6]) -> fmt::Result {
    for (i, count) in page_order(counts).enumerate() {
        let group = if i == 0 { " class=\"g\"" } else { "" };
        write!(out, "<td{group}>{}</td>", Num(*count))?;
    }
    Ok(())
}

/// Response columns in page order: 1xx..5xx, then other (index 0).
fn page_order<T>(by_class: &[T; 6]) -> impl Iterator<Item = &T> {
    let [other, classes @ ..] = by_class;
    classes.iter().chain([other])
}

fn write_totals(out: &mut String, b: &BackendView) -> fmt::Result {
    let sum =
        |value: fn(&ServerView) -> u64| b.servers.iter().map(value).fold(0u64, u64::saturating_add);
    let responses: [u64; 6] = std::array::from_fn(|i| {
        b.servers
            .iter()
            .filter_map(|s| s.responses.0.get(i))
            .fold(0u64, |a, c| a.saturating_add(*c))
    });
    write!(
        out,
        "<tfoot><tr><td class=\"l\" colspan=\"2\">Backend total</td><td class=\"state\">{} / {} up</td>\
         <td colspan=\"2\"></td><td class=\"g\">{}</td><td>{}</td><td class=\"g\">{}</td><td class=\"g\">{}</td><td>{}</td>",
        b.servers_up(),
        b.servers.len(),
        Num(sum(|s| s.in_flight)),
        Num(sum(|s| s.sessions_total)),
        Num(sum(|s| s.requests_total)),
        ByteSize(sum(|s| s.bytes_in)),
        ByteSize(sum(|s| s.bytes_out)),
    )?;
    write_responses(out, &responses)?;
    write!(
        out,
        "<td class=\"g\">{}</td><td class=\"g\" colspan=\"3\"></td><td>{}</td></tr></tfoot>",
        Num(sum(|s| s.failures)),
        Num(sum(|s| s.check_transitions)),
    )
}

/// The header's "Durable" item: red when a restart would lose the table.
struct Durable(bool);

impl fmt::Display for Durable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 {
            f.write_str(
                "<div title=\"the stick table is pinned on the host's bpffs: it outlives this \
                 process\"><dt>Durable</dt><dd id=\"durable\">yes</dd></div>",
            )
        } else {
            f.write_str(
                "<div title=\"the stick table is pinned on a bpffs private to this process's \
                 mount namespace: a restart starts with an empty table (see the log)\">\
                 <dt>Durable</dt><dd id=\"durable\" class=\"bad\">no</dd></div>",
            )
        }
    }
}

/// The log lines dropped, in the header only when there are some: lines the access log and
/// the daemon's messages did not keep (see `logging`).
struct LogDropped(u64);

impl fmt::Display for LogDropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return Ok(());
        }
        write!(
            f,
            "<div title=\"log lines dropped because stderr was read slower than they were \
             written (the traffic did not wait for them)\"><dt>Log lines dropped</dt>\
             <dd id=\"log-dropped\" class=\"bad\">{}</dd></div>",
            self.0
        )
    }
}

/// Text escaped for HTML element content and quoted attribute values.
pub(super) struct Html<'a>(pub(super) &'a str);

impl fmt::Display for Html<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            let (plain, tail) = rest.split_at(at);
            f.write_str(plain)?;
            let mut chars = tail.chars();
            f.write_str(match chars.next() {
                Some('&') => "&amp;",
                Some('<') => "&lt;",
                Some('>') => "&gt;",
                Some('"') => "&quot;",
                _ => "&#39;",
            })?;
            rest = chars.as_str();
        }
        f.write_str(rest)
    }
}

/// A count with thousands separators.
pub(super) struct Count(pub(super) u64);

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0.to_string();
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                f.write_char(',')?;
            }
            f.write_char(digit)?;
        }
        Ok(())
    }
}

/// A table cell count: zeros greyed out so the non-zero ones stand out, as HAProxy does.
struct Num(u64);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            f.write_str("<span class=\"zero\">0</span>")
        } else {
            Count(self.0).fmt(f)
        }
    }
}

/// A byte count in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub(super) struct ByteSize(pub(super) u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return if self.0 == 0 {
                f.write_str("<span class=\"zero\">0 B</span>")
            } else {
                write!(f, "{} B", self.0)
            };
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = UNITS[0];
        for next in &UNITS[1..] {
            if value < 1024.0 {
                break;
            }
            value /= 1024.0;
            unit = next;
        }
        write!(f, "{value:.1} {unit}")
    }
}

/// An uptime as HAProxy shows it: `2d 03h04m05s`.
pub(super) struct Uptime(pub(super) u64);

impl fmt::Display for Uptime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.0 / 1000;
        let (days, hours, minutes, seconds) = (
            seconds / 86_400,
            seconds / 3600 % 24,
            seconds / 60 % 60,
            seconds % 60,
        );
        write!(f, "{days}d {hours:02}h{minutes:02}m{seconds:02}s")
    }
}
