//! End to end, in network namespaces (client, lb, backend): a log reader that stops reading
//! never stops the traffic. The daemon's standard error is a pipe this test holds without
//! reading while a client sends more requests than the pipe and the daemon's log buffer hold
//! lines for: every request is answered, the lines beyond the buffer are dropped and counted
//! on `/metrics`, and once the pipe is read again the log says how many were lost, so that
//! the access lines kept and the lines dropped add up to the requests served.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use common::{
    backend_bin, config_head, http, privileged, stickylb_bin, wait_until, write_temp, PinDir, Proc,
    Topology,
};

/// More access lines than the pipe (64 KiB) and the daemon's buffer (4 MiB) hold: about 200
/// bytes each.
const REQUESTS: u64 = 30_000;

/// The daemon, killed on drop (a failed assertion must not leave it running).
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
}

/// The count a "N log lines dropped" notice gives.
fn notice_count(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once(" WARN ")?;
    let (count, rest) = rest.split_once(' ')?;
    rest.starts_with("log lines dropped: ")
        .then(|| count.parse().ok())
        .flatten()
}

#[test]
fn a_log_reader_that_stops_reading_stops_no_request_and_the_lost_lines_are_counted() {
    if !privileged() {
        return;
    }
    let topo = Topology::new("logp", 246);
    let pin = PinDir::new("logp");
    let backend_listen = format!("{}:8080=b1", topo.backend_addr());
    let backend = Proc::spawn(
        "backend",
        topo.backends.name(),
        &[backend_bin(), "--listen", &backend_listen],
    );
    backend.wait_for_output("ready", Duration::from_secs(10));
    let lb = topo.lb_addr();
    let config = format!(
        r#"{head}fastpath = "off"

[[backend]]
name = "app"
stick_cookie = "JSESSIONID"
health_check = {{ enabled = false }}
servers = [{{ name = "b1", addr = "{backend}:8080" }}]

[monitor]
bind = "{lb}:8404"
"#,
        head = config_head("lb-logp", &pin, &lb, "app"),
        backend = topo.backend_addr(),
    );
    // Every request served in userspace, so that every one has its access line (a spliced
    // connection's requests have none).
    let cfg = write_temp("logp.toml", &config);
    let mut child = netns_kit::command_in(topo.lb.name(), stickylb_bin())
        .args(["--log", "info", "run", "--config", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting stickylb");
    // Held, not read, until the client is done.
    let stderr = child.stderr.take().expect("a pipe");
    let daemon = Daemon(child);

    let frontend = format!("{lb}:80");
    let up = {
        let frontend = frontend.clone();
        http::in_netns(topo.client.name(), move || {
            wait_until(Duration::from_secs(20), || {
                std::net::TcpStream::connect(&frontend).is_ok()
            })
        })
    };
    assert!(up, "stickylb never listened on {frontend}");

    // With a log written where it is made, this stalls once the pipe is full and the client's
    // read times out (10 s).
    let served = {
        let frontend = frontend.clone();
        http::in_netns(topo.client.name(), move || {
            let mut conn = http::KeepAlive::connect(&frontend);
            (0..REQUESTS)
                .filter(|_| conn.get("/flood", None).status == 200)
                .count() as u64
        })
    };
    assert_eq!(served, REQUESTS, "every request answered");
    let monitor = format!("{lb}:8404");
    let (metrics, page) = http::in_netns(topo.client.name(), move || {
        (
            http::get(&monitor, "/metrics", None).text(),
            http::get(&monitor, "/monitor", None).text(),
        )
    });
    let dropped = metric(&metrics, "stickylb_log_lines_dropped_total")
        .expect("stickylb_log_lines_dropped_total on /metrics");
    // The status page says it too.
    assert!(
        page.contains(&format!("id=\"log-dropped\" class=\"bad\">{dropped}</dd>")),
        "{page}"
    );
    assert!(
        dropped > 0,
        "{REQUESTS} access lines fit in the pipe and the buffer: the test proves nothing"
    );

    // Now read: the buffered lines come out whole, then the notice.
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let lines = Arc::clone(&lines);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
    }
    let said = || -> u64 {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| notice_count(l))
            .sum()
    };
    let complete = wait_until(Duration::from_secs(20), || said() >= dropped);
    let flood_lines = || {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(" path=\"/flood\""))
            .count() as u64
    };
    assert!(
        complete,
        "the log said {} of {dropped} dropped lines; last lines: {:?}",
        said(),
        lines
            .lock()
            .unwrap()
            .iter()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_eq!(said(), dropped, "the notices add up to the metric");
    // Only access lines were made during the flood, so those kept and those dropped are all.
    assert_eq!(flood_lines() + dropped, REQUESTS);
    // And the log goes on.
    let after = frontend.clone();
    let status = http::in_netns(topo.client.name(), move || {
        http::get(&after, "/after-the-stall", None).status
    });
    assert_eq!(status, 200);
    let logged = wait_until(Duration::from_secs(10), || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(" path=\"/after-the-stall\""))
    });
    assert!(logged, "no access line after the stall");
    drop(daemon);
}
