//! A rig for the daemon with the kernel fast path: a client, the load balancer and the backends
//! (servers `s1` and `s2`) as separate hosts, either routed (client and servers on two
//! interfaces of the load balancer) or one-armed (all three on one LAN, as in `vagrant/`'s
//! network); the daemon's metrics and pinned flow map; a small HTTP client.
//!
//! With `STICKYLB_TEST_XDP=1` every rig runs the fast path with `[fastpath] xdp = "auto"`
//! (docs/SPLICE.md, "At XDP"), so that the whole fast path suite runs with the XDP translation
//! on; [`Rig::routed_xdp`] turns it on for one test whatever the variable says.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    time::Duration,
};

use lb_common::{SpliceEntry, SpliceKey, SPLICE_STATE_ARMED, SPLICE_STATE_SPLICE};
use stickylb::{dataplane::pin_root, fastpath::program::open_pinned_flows};

use super::{
    netns::{Exec as _, Lan, NetNs, Topology},
    wait_until, PinDir, Proc,
};

/// The hosts of a rig.
pub enum Hosts {
    Routed(Topology),
    OneArmed(Lan),
}

pub struct Rig {
    pub hosts: Hosts,
    pub pins: PinDir,
    pub config: PathBuf,
    /// `<pin_dir>/<instance>/v1`.
    pub root: PathBuf,
    _backend: Proc,
}

impl Rig {
    /// Client 10.<net>.1.2, lb 10.<net>.1.1 and 10.<net>.2.1, backends 10.<net>.2.2.
    pub fn routed(tag: &str, net: u8, extra: &str) -> Rig {
        Rig::new(tag, Hosts::Routed(Topology::new(tag, net)), extra, xdp_on())
    }

    /// [`Rig::routed`] with the XDP translation on.
    pub fn routed_xdp(tag: &str, net: u8, extra: &str) -> Rig {
        Rig::new(tag, Hosts::Routed(Topology::new(tag, net)), extra, true)
    }

    /// [`Rig::routed_xdp`], but the far ends of the load balancer's veths keep GRO off: no
    /// interface can take redirected frames.
    pub fn routed_xdp_without_gro(tag: &str, net: u8, extra: &str) -> Rig {
        Rig::new(
            tag,
            Hosts::Routed(Topology::new(tag, net)),
            &with_xdp(extra),
            false,
        )
    }

    /// Client 10.<net>.0.100, lb 10.<net>.0.11, backends 10.<net>.0.2, on one bridge.
    pub fn one_armed(tag: &str, net: u8, extra: &str) -> Rig {
        Rig::new(tag, Hosts::OneArmed(Lan::new(tag, net, 1)), extra, xdp_on())
    }

    /// `extra`: more configuration, appended (e.g. a `[fastpath]` section); `xdp`: with
    /// `[fastpath] xdp = "auto"`, and GRO on the far ends of the load balancer's veths so that
    /// they take the frames the XDP program redirects.
    fn new(tag: &str, hosts: Hosts, extra: &str, xdp: bool) -> Rig {
        let pins = PinDir::new(&format!("fastpath-rig-{tag}"));
        let (backends, lb, b) = match &hosts {
            Hosts::Routed(t) => (&t.backends, t.lb_addr(), t.backend_addr()),
            Hosts::OneArmed(l) => (&l.backends, l.lb_addr(0), l.backend_addr()),
        };
        let backend = spawn_servers(backends, &b);
        let extra = if xdp {
            match &hosts {
                Hosts::Routed(t) => {
                    enable_gro(&t.client, netns_kit::Routed::CLIENT_IF);
                    enable_gro(&t.backends, netns_kit::Routed::BACKENDS_IF);
                }
                Hosts::OneArmed(l) => {
                    let [.., host] = l.addrs.lb(0).octets();
                    enable_gro(l.switch.netns(), &format!("p{host}"));
                }
            }
            with_xdp(extra)
        } else {
            extra.to_owned()
        };
        let text = format!(
            r#"[instance]
name = "rig"
pin_dir = "{pin}"
control_socket = "{control}"

[[frontend]]
name = "www"
bind = "{lb}:8080"
backend = "web"

[[backend]]
name = "web"
health_check = {{ enabled = false }}
servers = [ {{ name = "s1", addr = "{b}:8001" }}, {{ name = "s2", addr = "{b}:8002" }} ]

[monitor]
bind = "{lb}:8404"

[timeouts]
drain = "1s"

{extra}
"#,
            pin = pins.0.display(),
            control = pins.control_socket().display(),
        );
        let config = super::write_temp(&format!("rig-{tag}.toml"), &text);
        let root = pin_root(&pins.0, "rig");
        Rig {
            hosts,
            pins,
            config,
            root,
            _backend: backend,
        }
    }

    pub fn client(&self) -> &NetNs {
        match &self.hosts {
            Hosts::Routed(t) => &t.client,
            Hosts::OneArmed(l) => &l.client,
        }
    }

    pub fn lb(&self) -> &NetNs {
        match &self.hosts {
            Hosts::Routed(t) => &t.lb,
            Hosts::OneArmed(l) => &l.lbs[0],
        }
    }

    pub fn lb_addr(&self) -> String {
        match &self.hosts {
            Hosts::Routed(t) => t.lb_addr(),
            Hosts::OneArmed(l) => l.lb_addr(0),
        }
    }

    /// The frontend, as the client reaches it.
    pub fn frontend(&self) -> String {
        format!("{}:8080", self.lb_addr())
    }

    /// Starts the daemon and waits until it serves.
    pub fn start(&self) -> Proc {
        super::start_daemon(self.lb().name(), &self.config)
    }

    /// The daemon's `/metrics`, fetched from the client.
    pub fn metrics(&self) -> String {
        let url = format!("http://{}:8404/metrics", self.lb_addr());
        self.client()
            .try_exec(&["curl", "-s", "--max-time", "5", &url])
            .1
    }

    /// Every entry of the pinned flow map.
    pub fn entries(&self) -> Vec<(SpliceKey, SpliceEntry)> {
        open_pinned_flows(&self.root)
            .expect("pinned flows")
            .entries()
            .expect("entries")
    }

    /// Entries of spliced flows (ARMED: the client's direction of a hand-off its next packet
    /// completes).
    pub fn spliced(&self) -> Vec<(SpliceKey, SpliceEntry)> {
        self.entries()
            .into_iter()
            .filter(|(_, e)| matches!(e.state, SPLICE_STATE_SPLICE | SPLICE_STATE_ARMED))
            .collect()
    }

    /// Waits until the map holds `n` entries of spliced flows.
    pub fn wait_spliced(&self, n: usize) -> bool {
        wait_until(Duration::from_secs(10), || self.spliced().len() == n)
    }

    /// Sockets of the lb namespace (`ss -tanH` with `filter`).
    pub fn lb_sockets(&self, filter: &[&str]) -> String {
        let mut argv = vec!["ss", "-tanH"];
        argv.extend_from_slice(filter);
        self.lb().try_exec(&argv).1
    }
}

/// Whether the fast path tests run with the XDP translation on (`STICKYLB_TEST_XDP=1`).
pub fn xdp_on() -> bool {
    std::env::var("STICKYLB_TEST_XDP").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `extra` with `xdp = "auto"` in its `[fastpath]` section (added when it has none; as it is
/// when it has the key).
pub fn with_xdp(extra: &str) -> String {
    const SECTION: &str = "[fastpath]\n";
    if extra.contains("xdp = \"auto\"") {
        return extra.to_owned();
    }
    match extra.find(SECTION) {
        Some(at) => {
            let (head, tail) = extra.split_at(at + SECTION.len());
            format!("{head}xdp = \"auto\"\n{tail}")
        }
        None => format!("{extra}\n{SECTION}xdp = \"auto\"\n"),
    }
}

/// Turns GRO on for `dev` in `ns`: a veth whose peer has GRO on (or an XDP program) takes the
/// frames an XDP program redirects to the peer's other end.
pub fn enable_gro(ns: &NetNs, dev: &str) {
    if let Err(error) = ns.set_gro(dev, true) {
        panic!("{error}");
    }
}

/// The SHA-256 of the backend's `/bytes/N` body: 64 KiB frames of `i % 251`.
pub fn backend_body_sha256(len: u64) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let block: Vec<u8> = (0..65536).map(|i| (i % 251) as u8).collect();
    let mut hash = Sha256::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(65536) as usize;
        hash.update(&block[..n]);
        left -= n as u64;
    }
    hash.finalize().into()
}

/// The test backend in `ns` with servers `s1` on `addr:8001` and `s2` on `addr:8002`, ready.
pub fn spawn_servers(ns: &NetNs, addr: &str) -> Proc {
    let backend = Proc::spawn(
        "backend",
        ns.name(),
        &[
            super::backend_bin(),
            "--listen",
            &format!("{addr}:8001=s1"),
            "--listen",
            &format!("{addr}:8002=s2"),
        ],
    );
    backend.wait_for_output("ready", Duration::from_secs(10));
    backend
}

/// The value of the first `/metrics` line that starts with `line_start` (0 if none).
pub fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A hand-off outcome counter.
pub fn outcome(text: &str, outcome: &str) -> u64 {
    metric(
        text,
        &format!("stickylb_fastpath_handoffs_total{{outcome=\"{outcome}\"}}"),
    )
}

/// Requests the proxy forwarded to servers of backend `web`.
pub fn proxied(text: &str) -> u64 {
    ["s1", "s2"]
        .iter()
        .map(|s| {
            metric(
                text,
                &format!("stickylb_server_requests_total{{backend=\"web\",server=\"{s}\"}}"),
            )
        })
        .sum()
}

/// A keep-alive HTTP/1.1 client connection (responses framed by Content-Length, as the test
/// backend sends them), with its session cookie.
pub struct Client {
    pub conn: TcpStream,
    buf: Vec<u8>,
    cookie: String,
}

impl Client {
    /// Connects to `addr`; every request carries `JSESSIONID=<session>`.
    pub fn connect(addr: &str, session: &str) -> std::io::Result<Client> {
        let conn = TcpStream::connect(addr)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client {
            conn,
            buf: Vec::new(),
            cookie: session.to_owned(),
        })
    }

    /// GET `path`; `close` asks the server to close after answering. Returns the server that
    /// answered (`X-Served-By`), or the error.
    pub fn get(&mut self, path: &str, close: bool) -> std::io::Result<String> {
        self.fetch(path, close, &mut |_| {})
    }

    /// GET `path` (keep-alive): the server that answered and the SHA-256 of the body.
    pub fn get_sha256(&mut self, path: &str) -> std::io::Result<(String, [u8; 32])> {
        use sha2::{Digest as _, Sha256};
        let mut hash = Sha256::new();
        let server = self.fetch(path, false, &mut |chunk| hash.update(chunk))?;
        Ok((server, hash.finalize().into()))
    }

    /// GET `path`, handing the body to `body` as it comes.
    fn fetch(
        &mut self,
        path: &str,
        close: bool,
        body: &mut dyn FnMut(&[u8]),
    ) -> std::io::Result<String> {
        let close = if close { "Connection: close\r\n" } else { "" };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nCookie: JSESSIONID={}\r\n{close}\r\n",
            self.cookie
        );
        self.conn.write_all(request.as_bytes())?;
        let head = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..i + 4]).into_owned();
                self.buf.drain(..i + 4);
                break head;
            }
            self.fill()?;
        };
        let invalid =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        if !head.starts_with("HTTP/1.1 200") {
            return Err(invalid(&head));
        }
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let len: usize = header("content-length")
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| invalid("no content-length"))?;
        let mut left = len;
        loop {
            let n = left.min(self.buf.len());
            body(&self.buf[..n]);
            self.buf.drain(..n);
            left -= n;
            if left == 0 {
                break;
            }
            self.fill()?;
        }
        header("x-served-by").ok_or_else(|| invalid("no x-served-by"))
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 65536];
        let n = self.conn.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// After a request that closes the connection: waits for the other side's FIN, so that
    /// it closes first (and this client leaves no TIME_WAIT behind).
    pub fn finish(mut self) -> std::io::Result<()> {
        let mut rest = Vec::new();
        self.conn.read_to_end(&mut rest)?;
        Ok(())
    }

    /// Closes: FIN, then waits for the server's (a clean EOF, not an RST).
    pub fn close(mut self) -> std::io::Result<()> {
        self.conn.shutdown(std::net::Shutdown::Write)?;
        let mut rest = Vec::new();
        self.conn.read_to_end(&mut rest)?;
        Ok(())
    }
}
