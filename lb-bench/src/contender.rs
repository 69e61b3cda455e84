//! What is measured: the direct path (no load balancer), HAProxy 2.6 and stickylb, each with
//! the same sticky configuration (round robin, stick table on JSESSIONID, same timeouts, no
//! per-request log, no health checks), and the process each runs as.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde::Serialize;

use super::{bpfstats, hosts::Addrs, logtail::LogTail, procs, tls::TlsFiles};

/// Backend servers: one `stickylb-backend` process listening on these ports.
pub(super) const BACKEND_PORTS: [u16; 4] = [8081, 8082, 8083, 8084];
/// The load balancers' frontend port (only one load balancer runs at a time).
pub(super) const FRONTEND_PORT: u16 = 80;
/// Their HTTPS frontend's port, configured for the TLS workloads only.
pub(super) const TLS_FRONTEND_PORT: u16 = 443;
/// stickylb's monitor, where the bench reads the table size.
pub(super) const MONITOR_PORT: u16 = 8404;
/// Entries of the stick table in both load balancers (HAProxy's `size 1m`).
pub(super) const TABLE_SIZE: u64 = 1 << 20;
/// The HAProxy backend (and stickylb backend) name.
pub(super) const BACKEND_NAME: &str = "web";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Contender {
    /// Client straight to a backend through the lb namespace's routing: the physical limit.
    Direct,
    Haproxy,
    /// stickylb as it is: the userspace proxy.
    Stickylb,
    /// stickylb with the kernel fast path on (`fastpath = "splice"`): keep-alive connections
    /// are handed to its TC program after their first exchange.
    StickylbFastPath,
    /// The same with `[fastpath] xdp = "auto"`: the spliced flows' packets are translated at
    /// XDP (docs/SPLICE.md, "At XDP"), with GRO on the far ends of the load balancer's veths
    /// (which redirected frames need) while it runs. Not in the default runs: ask for it with
    /// `--contender stickylb-fast-path-xdp` (beside `stickylb-fast-path` for XDP vs TC in one
    /// run).
    StickylbFastPathXdp,
    /// stickylb as [`Self::Stickylb`] with the shield on at its default limit (200 SYNs/s and
    /// 400 at once per source; its refund makes the SYNs of completed connections free): the
    /// shield's cost on ordinary traffic, against `stickylb` (shield off) in the same run. Not
    /// in the default runs: ask for it with `--contender stickylb-shield`.
    StickylbShield,
}

impl Contender {
    /// What this contender is compared with run by run (`Summary::paired`): stickylb with a
    /// feature on against stickylb without it; stickylb against HAProxy.
    pub(super) fn baseline(self) -> Option<Self> {
        match self {
            Self::StickylbFastPath | Self::StickylbFastPathXdp | Self::StickylbShield => {
                Some(Self::Stickylb)
            }
            Self::Stickylb => Some(Self::Haproxy),
            Self::Direct | Self::Haproxy => None,
        }
    }

    /// In the order each workload runs them (alternating within every repetition).
    pub(super) const ALL: [Self; 4] = [
        Self::Direct,
        Self::Haproxy,
        Self::Stickylb,
        Self::StickylbFastPath,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct (no LB)",
            Self::Haproxy => "HAProxy 2.6",
            Self::Stickylb => "stickylb",
            Self::StickylbFastPath => "stickylb + fast path",
            Self::StickylbFastPathXdp => "stickylb + fast path at XDP",
            Self::StickylbShield => "stickylb + shield",
        }
    }

    /// The name on the command line and in JSON.
    pub(super) fn id(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Haproxy => "haproxy",
            Self::Stickylb => "stickylb",
            Self::StickylbFastPath => "stickylb-fast-path",
            Self::StickylbFastPathXdp => "stickylb-fast-path-xdp",
            Self::StickylbShield => "stickylb-shield",
        }
    }

    /// Contenders that run only when named (`--contender`).
    pub(super) const EXTRA: [Self; 2] = [Self::StickylbFastPathXdp, Self::StickylbShield];

    pub(super) fn from_id(id: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .chain(Self::EXTRA)
            .find(|contender| contender.id() == id)
    }

    /// Why this contender cannot run on this machine, if it cannot.
    pub(super) fn unavailable(self) -> Option<&'static str> {
        match self {
            // The fast path attaches its program with TCX (Linux 6.6).
            Self::StickylbFastPath | Self::StickylbFastPathXdp
                if !kernel_at_least(&kernel_release(), (6, 6)) =>
            {
                Some("the kernel fast path attaches with TCX, which needs Linux 6.6 or later")
            }
            Self::Direct
            | Self::Haproxy
            | Self::Stickylb
            | Self::StickylbFastPath
            | Self::StickylbFastPathXdp
            | Self::StickylbShield => None,
        }
    }

    /// The default contenders that can run here, in [`Self::ALL`]'s order.
    pub(super) fn available() -> Vec<Self> {
        Self::ALL
            .into_iter()
            .filter(|contender| contender.unavailable().is_none())
            .collect()
    }

    /// Every contender that can run here: [`Self::available`], then [`Self::EXTRA`]'s.
    pub(super) fn available_with_extra() -> Vec<Self> {
        let mut all = Self::available();
        all.extend(
            Self::EXTRA
                .into_iter()
                .filter(|contender| contender.unavailable().is_none()),
        );
        all
    }

    pub(super) fn is_stickylb(self) -> bool {
        matches!(
            self,
            Self::Stickylb
                | Self::StickylbFastPath
                | Self::StickylbFastPathXdp
                | Self::StickylbShield
        )
    }

    /// Whether it runs stickylb's kernel fast path (at TC, or at XDP in front of it).
    pub(super) fn is_fast_path(self) -> bool {
        matches!(self, Self::StickylbFastPath | Self::StickylbFastPathXdp)
    }

    /// Where the client sends its requests, in the layout at `addrs`.
    pub(super) fn base_url(self, addrs: &Addrs) -> String {
        match self {
            Self::Direct => format!("http://{}:{}", addrs.backends, BACKEND_PORTS[0]),
            _ => format!("http://{}:{FRONTEND_PORT}", addrs.lb),
        }
    }

    /// Where the client sends its requests on `frontend`: the direct path has no HTTPS (the
    /// backends speak cleartext), so it has no URL there.
    pub(super) fn url(self, addrs: &Addrs, frontend: Frontend) -> Option<String> {
        match (frontend, self) {
            (Frontend::Http, _) => Some(self.base_url(addrs)),
            (Frontend::Https, Self::Direct) => None,
            (Frontend::Https, _) => Some(format!("https://{}:{TLS_FRONTEND_PORT}", addrs.lb)),
        }
    }
}

/// Which frontends a load balancer serves in a run: cleartext only, or also HTTPS on
/// [`TLS_FRONTEND_PORT`] (the TLS workloads; the other workloads run without it, as before).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Frontend {
    Http,
    Https,
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default()
}

/// Whether `release` (`6.18.44-foo`) is at least `major.minor`; an unreadable one is not.
fn kernel_at_least(release: &str, wanted: (u32, u32)) -> bool {
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= wanted,
        _ => false,
    }
}

/// stickylb's monitor, as the client reaches it.
pub(super) fn monitor_url(addrs: &Addrs) -> String {
    format!("http://{}:{MONITOR_PORT}", addrs.lb)
}

/// stickylb's configuration for the bench. `control_socket` and `pin_dir` are the bench's own,
/// so a stickylb running on the host is never touched. With `tls`, a second frontend serves
/// HTTPS with that certificate, in userspace (`fastpath = "off"`: the kernel cannot splice TLS).
pub(super) fn stickylb_config(
    instance: &str,
    pin_dir: &str,
    control_socket: &str,
    fastpath: FastPathSetting,
    addrs: &Addrs,
    tls: Option<&TlsFiles>,
    shield: Option<SynLimit>,
) -> String {
    let (lb, backends) = (addrs.lb, addrs.backends);
    let xdp = match fastpath {
        FastPathSetting::Xdp => "[fastpath]\nxdp = \"auto\"\n\n",
        FastPathSetting::Off | FastPathSetting::Tc => "",
    };
    let fastpath = match fastpath {
        FastPathSetting::Off => "off",
        FastPathSetting::Tc | FastPathSetting::Xdp => "splice",
    };
    // Written out either way (the daemon's default is on beyond loopback): off unless asked
    // for, so the request workloads measure the proxy as they always have; the
    // `stickylb-shield` contender and the syn-flood measurement turn it on.
    let shield = shield.map_or_else(
        || "[shield]\nenabled = false\n".to_owned(),
        |limit| {
            format!(
                "[shield]\nenabled = true\nsyn_rate = {}\nsyn_burst = {}\nhook = \"{}\"\n",
                limit.rate, limit.burst, limit.hook
            )
        },
    );
    let servers: String = BACKEND_PORTS
        .iter()
        .enumerate()
        .map(|(i, port)| {
            format!(
                "  {{ name = \"be{}\", addr = \"{backends}:{port}\" }},\n",
                i + 1
            )
        })
        .collect();
    let tls_frontend = tls.map_or_else(String::new, |tls| {
        format!(
            "[[frontend]]\nname = \"secure\"\nbind = \"{lb}:{TLS_FRONTEND_PORT}\"\n\
             backend = \"{BACKEND_NAME}\"\nfastpath = \"off\"\n\
             tls = {{ cert = \"{}\", key = \"{}\" }}\n\n",
            tls.cert.display(),
            tls.key.display()
        )
    });
    format!(
        "# Written by `cargo xtask bench`.\n\
         [instance]\nname = \"{instance}\"\npin_dir = \"{pin_dir}\"\ncontrol_socket = \"{control_socket}\"\n\n\
         [[frontend]]\nname = \"www\"\nbind = \"{lb}:{FRONTEND_PORT}\"\nbackend = \"{BACKEND_NAME}\"\nfastpath = \"{fastpath}\"\n\n\
         {tls_frontend}\
         [[backend]]\nname = \"{BACKEND_NAME}\"\nbalance = \"roundrobin\"\nstick_cookie = \"JSESSIONID\"\n\
         table_size = {TABLE_SIZE}\nexpire = \"30m\"\nhealth_check = {{ enabled = false }}\n\
         servers = [\n{servers}]\n\n\
         [monitor]\nbind = \"{lb}:{MONITOR_PORT}\"\n\n\
         [timeouts]\nconnect = \"5s\"\nclient = \"50s\"\nserver = \"50s\"\ndrain = \"1s\"\n\n\
         {xdp}{shield}"
    )
}

/// The bench's stickylb's fast path: off, at TC, or at XDP in front of TC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FastPathSetting {
    Off,
    Tc,
    Xdp,
}

impl From<Contender> for FastPathSetting {
    fn from(contender: Contender) -> Self {
        match contender {
            Contender::StickylbFastPath => Self::Tc,
            Contender::StickylbFastPathXdp => Self::Xdp,
            Contender::Direct
            | Contender::Haproxy
            | Contender::Stickylb
            | Contender::StickylbShield => Self::Off,
        }
    }
}

/// The shield's default limit (`[shield]` without `syn_rate` and `syn_burst`), which the
/// `stickylb-shield` contender runs with.
pub(super) const DEFAULT_SHIELD: SynLimit = SynLimit {
    rate: 200,
    burst: 400,
    hook: "auto",
};

/// The shield of the bench's stickylb: its SYN limit (`[shield] syn_rate`, `syn_burst`) and
/// where it runs (`[shield] hook`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(super) struct SynLimit {
    pub(super) rate: u32,
    pub(super) burst: u32,
    pub(super) hook: &'static str,
}

/// HAProxy's equivalent of [`stickylb_config`]: the original demo's sticky setup, no logging, no checks,
/// `option forwardfor` as stickylb appends X-Forwarded-For, and `http-reuse always` as stickylb
/// sends any request over any idle pooled server connection (HAProxy's default, `safe`, opens a
/// new server connection for the first request of every client connection: with a new
/// connection per request, for every request). Threads: HAProxy's default, one per CPU, as
/// stickylb's runtime has one worker per CPU. With `tls`, a second frontend serves HTTPS with
/// that PEM file (certificate and key), offering h2 and http/1.1 as stickylb does, and tells
/// the servers `X-Forwarded-Proto: https` as stickylb does; TLS versions, ciphers and groups
/// are OpenSSL's and HAProxy's defaults (TLS 1.3 with the bench's clients).
pub(super) fn haproxy_config(
    stats_socket: &str,
    addrs: &Addrs,
    tls: Option<&Path>,
    access_log: bool,
) -> String {
    let (lb, backends) = (addrs.lb, addrs.backends);
    let servers: String = BACKEND_PORTS
        .iter()
        .enumerate()
        .map(|(i, port)| format!("    server be{} {backends}:{port}\n", i + 1))
        .collect();
    let tls_frontend = tls.map_or_else(String::new, |pem| {
        format!(
            "frontend secure\n    bind {lb}:{TLS_FRONTEND_PORT} ssl crt {} alpn h2,http/1.1\n\
             \x20   http-request set-header X-Forwarded-Proto https\n\
             \x20   default_backend {BACKEND_NAME}\n\n",
            pem.display()
        )
    });
    // HAProxy's own way to log to a pipe without blocking on it, one line per request.
    let (global_log, defaults_log) = if access_log {
        (
            "    log stderr format raw local0 info\n",
            "    log global\n    option httplog\n",
        )
    } else {
        ("", "")
    };
    format!(
        "# Written by `cargo xtask bench`.\n\
         global\n    maxconn 8192\n    stats socket {stats_socket} level admin\n{global_log}\n\
         defaults\n    mode http\n{defaults_log}    option redispatch\n    option forwardfor\n    http-reuse always\n\
         \x20   timeout connect 5s\n    timeout client 50s\n    timeout server 50s\n\n\
         frontend www\n    bind {lb}:{FRONTEND_PORT}\n    default_backend {BACKEND_NAME}\n\n\
         {tls_frontend}\
         backend {BACKEND_NAME}\n    balance roundrobin\n\
         \x20   stick-table type string len 32 size {TABLE_SIZE} expire 30m\n\
         \x20   stick on req.cook(JSESSIONID)\n    stick store-response res.cook(JSESSIONID)\n\
         {servers}"
    )
}

/// A running load balancer process.
pub(super) struct LbProcess {
    pub(super) contender: Contender,
    child: Child,
    pub(super) log: LogTail,
    /// Where the fast path pins its program's links, whose run time counts as the daemon's.
    fastpath_links: Option<PathBuf>,
}

impl LbProcess {
    pub(super) fn new(
        contender: Contender,
        mut child: Child,
        log_path: &Path,
    ) -> anyhow::Result<Self> {
        let stderr = child.stderr.take();
        let log = match stderr {
            Some(stderr) => LogTail::follow(stderr, log_path),
            None => LogTail::follow(std::io::empty(), log_path),
        };
        match log {
            Ok(log) => Ok(Self {
                contender,
                child,
                log,
                fastpath_links: None,
            }),
            Err(error) => {
                procs::kill(&mut child);
                Err(error)
            }
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Counts the run time of the fast path's program pinned under `dir` as this process's.
    pub(super) fn with_fastpath_links(mut self, dir: PathBuf) -> Self {
        self.fastpath_links = Some(dir);
        self
    }

    /// CPU time so far: the process's, plus its fast path program's (see `bpfstats`).
    pub(super) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let program = match &self.fastpath_links {
            Some(dir) => bpfstats::fastpath_program_seconds(dir)?,
            None => 0.0,
        };
        Ok(procs::cpu_seconds(self.pid())? + program)
    }

    /// Resident memory now.
    pub(super) fn rss_bytes(&self) -> anyhow::Result<u64> {
        procs::status_bytes(self.pid(), "VmRSS")
    }

    /// Peak resident memory since start.
    pub(super) fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        procs::status_bytes(self.pid(), "VmHWM")
    }

    /// Whether it is still running (a crash shows up here, not as slow numbers).
    pub(super) fn check_running(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            anyhow::bail!(
                "{} exited ({status}):\n{}",
                self.contender.label(),
                self.log.tail()
            );
        }
        Ok(())
    }

    /// SIGTERM, then wait for the exit; returns how long stopping took.
    pub(super) fn stop(mut self) -> anyhow::Result<Duration> {
        procs::terminate(&mut self.child, Duration::from_secs(15))
    }
}

impl Drop for LbProcess {
    fn drop(&mut self) {
        procs::kill(&mut self.child);
    }
}

/// stderr piped (for the log), nothing on stdin, stdout discarded.
pub(super) fn lb_stdio(command: &mut Command) -> &mut Command {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
}

#[cfg(test)]
mod tests {
    use super::{haproxy_config, kernel_at_least, stickylb_config, FastPathSetting, SynLimit};
    use crate::tls::TlsFiles;

    #[test]
    fn both_configurations_name_the_same_servers_and_table() {
        let addrs = crate::hosts::ROUTED;
        let stickylb = stickylb_config(
            "bench-1",
            "/sys/fs/bpf/x",
            "/run/x.sock",
            FastPathSetting::Off,
            &addrs,
            None,
            None,
        );
        let haproxy = haproxy_config("/run/h.sock", &addrs, None, false);
        for server in ["be1", "be4"] {
            assert!(stickylb.contains(&format!("name = \"{server}\"")));
            assert!(haproxy.contains(&format!("server {server} ")));
        }
        assert!(stickylb.contains("table_size = 1048576"));
        assert!(haproxy.contains("size 1048576 expire 30m"));
        assert!(haproxy.contains("stick on req.cook(JSESSIONID)"));
        assert!(haproxy.contains("    timeout connect 5s\n"));
        assert!(stickylb.contains("health_check = { enabled = false }"));
        assert!(stickylb.contains("fastpath = \"off\""));
        let fastpath = stickylb_config(
            "bench-1",
            "/sys/fs/bpf/x",
            "/run/x.sock",
            FastPathSetting::Tc,
            &addrs,
            None,
            Some(SynLimit {
                rate: 5000,
                burst: 10000,
                hook: "xdp",
            }),
        );
        assert!(fastpath.contains("fastpath = \"splice\""));
        // The shield is off but for the syn-flood measurement, which sets its limit.
        assert!(stickylb.ends_with("[shield]\nenabled = false\n"));
        assert!(fastpath.ends_with(
            "[shield]\nenabled = true\nsyn_rate = 5000\nsyn_burst = 10000\nhook = \"xdp\"\n"
        ));
        assert!(!stickylb.contains(":443") && !haproxy.contains(":443"));
        // The TC fast path sets no XDP translation (the shield's hook is its own setting).
        assert!(!fastpath.contains("xdp = "));
        let xdp = stickylb_config(
            "bench-1",
            "/sys/fs/bpf/x",
            "/run/x.sock",
            FastPathSetting::Xdp,
            &addrs,
            None,
            None,
        );
        assert!(xdp.contains("fastpath = \"splice\""));
        assert!(xdp.contains("[fastpath]\nxdp = \"auto\"\n"));
    }

    #[test]
    fn the_tls_frontends_serve_the_same_certificate_on_443() {
        let addrs = crate::hosts::ROUTED;
        let files = TlsFiles {
            cert: "/w/tls.crt".into(),
            key: "/w/tls.key".into(),
            combined: "/w/tls.pem".into(),
        };
        let stickylb = stickylb_config(
            "b",
            "/p",
            "/s",
            FastPathSetting::Tc,
            &addrs,
            Some(&files),
            None,
        );
        assert!(stickylb.contains(
            "name = \"secure\"\nbind = \"10.240.1.1:443\"\nbackend = \"web\"\nfastpath = \"off\"\n\
             tls = { cert = \"/w/tls.crt\", key = \"/w/tls.key\" }\n"
        ));
        // The cleartext frontend keeps its fast path setting.
        assert!(stickylb.contains("fastpath = \"splice\""));
        let haproxy = haproxy_config("/run/h.sock", &addrs, Some(&files.combined), false);
        assert!(haproxy.contains(
            "frontend secure\n    bind 10.240.1.1:443 ssl crt /w/tls.pem alpn h2,http/1.1\n"
        ));
        assert!(haproxy.contains("frontend www\n    bind 10.240.1.1:80\n"));
    }

    /// With `--access-log` HAProxy logs each request to stderr, and its configuration is one
    /// HAProxy accepts (`haproxy -c`).
    #[test]
    fn haproxy_logs_each_request_when_asked() {
        let addrs = crate::hosts::ROUTED;
        let quiet = haproxy_config("/run/h.sock", &addrs, None, false);
        let logging = haproxy_config("/run/h.sock", &addrs, None, true);
        assert!(!quiet.contains("log"), "{quiet}");
        assert!(logging.contains(
            "stats socket /run/h.sock level admin\n    log stderr format raw local0 info\n\n"
        ));
        assert!(logging.contains("defaults\n    mode http\n    log global\n    option httplog\n"));
        let path =
            std::env::temp_dir().join(format!("lb-bench-haproxy-{}.cfg", std::process::id()));
        std::fs::write(&path, &logging).expect("a temp file");
        let checked = std::process::Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output();
        let _ = std::fs::remove_file(&path);
        let out = checked.expect("haproxy (`cargo xtask setup` installs it)");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn reads_kernel_releases() {
        assert!(kernel_at_least("6.18.44-fc-v669\n", (6, 6)));
        assert!(kernel_at_least("7.0.1", (6, 6)));
        assert!(!kernel_at_least("6.1.0-21-amd64", (6, 6)));
        assert!(!kernel_at_least("", (6, 6)));
    }
}
