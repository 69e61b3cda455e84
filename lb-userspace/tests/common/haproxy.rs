//! HAProxy 2.6 as a peer of stickylb nodes in the e2e tests: started in a namespace with a
//! `peers mypeers` section the test writes, one backend that sticks on `JSESSIONID`, and a
//! frontend on port 80; read through its stats socket.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    time::Duration,
};

use super::{http, wait_until, Proc};

/// A running HAProxy and what the tests ask it.
pub struct HaproxyPeer {
    pub proc: Proc,
    dir: tempfile::TempDir,
    addr: String,
    backend: String,
}

impl HaproxyPeer {
    /// Its name among the peers (`-L`).
    pub const NAME: &'static str = "hap";

    /// Starts HAProxy in namespace `ns`, serving on `addr:80`: `peers` are the lines of its
    /// `peers mypeers` section, `servers` the `server` lines of backend `backend`.
    pub fn start(ns: &str, addr: &str, backend: &str, peers: &str, servers: &str) -> HaproxyPeer {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global\n    stats socket {sock} level admin\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\
             peers mypeers\n{peers}\
             backend {backend}\n    balance roundrobin\n    stick-table type string len 32 size 1m expire 30m peers mypeers\n    stick on req.cook(JSESSIONID)\n{servers}\
             frontend fe\n    bind {addr}:80\n    default_backend {backend}\n",
            sock = dir.path().join("admin.sock").display(),
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let argv = [
            "/usr/sbin/haproxy",
            "-f",
            path.to_str().unwrap(),
            "-L",
            Self::NAME,
            "-db",
        ];
        let haproxy = HaproxyPeer {
            proc: Proc::spawn("haproxy", ns, &argv),
            dir,
            addr: addr.to_owned(),
            backend: backend.to_owned(),
        };
        let up = wait_until(Duration::from_secs(10), || {
            haproxy.try_cli("show info").is_some()
        });
        assert!(up, "HAProxy did not start:\n{}", haproxy.proc.output());
        haproxy
    }

    /// One command on the stats socket, and its whole answer.
    pub fn try_cli(&self, command: &str) -> Option<String> {
        let mut conn =
            std::os::unix::net::UnixStream::connect(self.dir.path().join("admin.sock")).ok()?;
        conn.write_all(format!("{command}\n").as_bytes()).ok()?;
        let mut out = String::new();
        conn.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// `show table`: key -> server_key.
    pub fn table(&self) -> BTreeMap<String, String> {
        let out = self
            .try_cli(&format!("show table {}", self.backend))
            .unwrap_or_default();
        out.lines()
            .filter_map(|line| {
                let key = line.split(" key=").nth(1)?.split(' ').next()?;
                let server = line.split(" server_key=").nth(1)?.split(' ').next()?;
                Some((key.to_owned(), server.to_owned()))
            })
            .collect()
    }

    /// The body HAProxy answers `session`'s request with, from namespace `client_ns`.
    pub fn served_by(&self, client_ns: &str, session: &str) -> String {
        let addr = format!("{}:80", self.addr);
        let cookie = format!("JSESSIONID={session}");
        let response = http::in_netns(client_ns, move || http::get(&addr, "/", Some(&cookie)));
        assert_eq!(response.status, 200, "{}", response.text());
        response.text().trim().to_owned()
    }
}
