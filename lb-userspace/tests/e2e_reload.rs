//! Reloads under load, in namespaces (client, lb, backends): while clients send sticky requests
//! as fast as they can, the daemon is reloaded in place five times and upgraded (a new process
//! takes over the listening sockets) five times: no request fails and no session moves. Then a
//! kill -9 and a start: the sessions are where they were.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use common::{
    demo_cookie, http, privileged, start_daemon, stickylb_bin, wait_until, write_temp, PinDir,
    Proc, Topology,
};

fn servers() -> Vec<(String, u16)> {
    (1..=7).map(|n| (format!("be{n}"), 8080 + n)).collect()
}

fn config(
    topo: &Topology,
    pin: &PinDir,
    control: &Path,
    connect: &str,
    extra_server: bool,
) -> String {
    let mut servers: String = servers()
        .iter()
        .map(|(name, port)| {
            format!(
                "  {{ name = \"{name}\", addr = \"{}:{port}\" }},\n",
                topo.backend_addr()
            )
        })
        .collect();
    if extra_server {
        servers.push_str(&format!(
            "  {{ name = \"be8\", addr = \"{}:8088\" }},\n",
            topo.backend_addr()
        ));
    }
    format!(
        r#"
[instance]
name = "lb-reload"
pin_dir = "{pin}"
control_socket = "{control}"

[[frontend]]
name = "www"
bind = "{lb}:80"
backend = "back-session"

[[backend]]
name = "back-session"
health_check = {{ path = "/", interval = "1s", timeout = "2s", rise = 1, fall = 3 }}
servers = [
{servers}]

[monitor]
bind = "{lb}:8404"

[timeouts]
connect = "{connect}"
drain = "5s"
"#,
        pin = pin.0.display(),
        control = control.display(),
        lb = topo.lb_addr(),
    )
}

/// What the load generator saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    failures: Mutex<Vec<String>>,
    moved: Mutex<Vec<String>>,
    /// The longest time one request took, connect to last byte, in µs.
    longest_us: AtomicU64,
}

/// `threads` clients, each sending one request per new connection (as the original demo's curl does),
/// cycling through `sessions`, until `stop`.
fn load(
    ns: &str,
    lb: &str,
    sessions: Arc<HashMap<String, String>>,
    threads: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<thread::JoinHandle<()>> {
    (0..threads)
        .map(|t| {
            let (ns, addr) = (ns.to_owned(), format!("{lb}:80"));
            let (sessions, stop, tally) =
                (Arc::clone(&sessions), Arc::clone(&stop), Arc::clone(&tally));
            thread::spawn(move || {
                http::in_netns(&ns, move || {
                    let keys: Vec<&String> = sessions.keys().collect();
                    let mut i = t;
                    while !stop.load(Relaxed) {
                        let session = keys[i % keys.len()];
                        i += 1;
                        let started = Instant::now();
                        let outcome = one_request(&addr, session);
                        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                        tally.longest_us.fetch_max(us, Relaxed);
                        tally.requests.fetch_add(1, Relaxed);
                        match outcome {
                            Ok(body) if body == sessions[session] => {}
                            Ok(body) => tally.moved.lock().unwrap().push(format!(
                                "{session}: {body} instead of {}",
                                sessions[session]
                            )),
                            Err(error) => tally.failures.lock().unwrap().push(error),
                        }
                    }
                });
            })
        })
        .collect()
}

fn one_request(addr: &str, session: &str) -> Result<String, String> {
    let mut conn = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let request = format!("GET / HTTP/1.1\r\nHost: t\r\nCookie: c1=1; c2=2; JSESSIONID={session}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    conn.read_to_end(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    if !out.starts_with(b"HTTP/1.1 200") {
        return Err(format!("answer: {}", String::from_utf8_lossy(&out)));
    }
    Ok(http::parse(&out).text().trim().to_owned())
}

struct Rig {
    _backends: Vec<Proc>,
    cfg: PathBuf,
    control: PathBuf,
    pin: PinDir,
    topo: Topology,
}

impl Rig {
    fn new(tag: &str, net: u8) -> Rig {
        let topo = Topology::new(tag, net);
        let pin = PinDir::new(tag);
        let mut backends: Vec<Proc> = servers()
            .iter()
            .chain([&("be8".to_owned(), 8088)])
            .map(|(name, port)| {
                let listen = format!("{}:{port}=Backend {}", topo.backend_addr(), &name[2..]);
                let proc = Proc::spawn(
                    name,
                    topo.backends.name(),
                    &[common::backend_bin(), "--listen", &listen],
                );
                proc.wait_for_output("ready", Duration::from_secs(10));
                proc
            })
            .collect();
        backends.shrink_to_fit();
        let control = PathBuf::from(format!(
            "/run/stickylb-test/{tag}-{}.sock",
            std::process::id()
        ));
        let cfg = write_temp(
            &format!("{tag}.toml"),
            &config(&topo, &pin, &control, "5s", false),
        );
        Rig {
            _backends: backends,
            cfg,
            control,
            pin,
            topo,
        }
    }

    fn write_config(&self, connect: &str, extra_server: bool) {
        std::fs::write(
            &self.cfg,
            config(&self.topo, &self.pin, &self.control, connect, extra_server),
        )
        .unwrap();
    }

    /// Runs `stickylb reload [args]` in the lb's namespace; returns the process (an upgrade
    /// leaves the new daemon's output on its pipes).
    fn reload(&self, args: &[&str]) -> Proc {
        let mut argv = vec![
            stickylb_bin(),
            "--log",
            "info",
            "reload",
            "--config",
            self.cfg.to_str().unwrap(),
        ];
        argv.extend_from_slice(args);
        Proc::spawn("reload", self.topo.lb.name(), &argv)
    }

    /// The pid answering on the control socket.
    fn daemon_pid(&self) -> Option<i32> {
        stickylb::control::running_pid(&self.control).and_then(|pid| i32::try_from(pid).ok())
    }
}

/// Every datagram waiting on `socket`.
fn notifications(socket: &std::os::unix::net::UnixDatagram) -> Vec<String> {
    socket.set_nonblocking(true).unwrap();
    let mut notes = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = socket.recv(&mut buf) {
        notes.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    notes
}

fn wait_exit(proc: &mut Proc) -> bool {
    wait_until(Duration::from_secs(60), || {
        matches!(proc.child.try_wait(), Ok(Some(_)))
    })
}

#[test]
fn reloads_and_upgrades_under_load_fail_no_request_and_move_no_session() {
    if !privileged() {
        return;
    }
    let rig = Rig::new("rl", 227);
    // systemd's side of Type=notify: every daemon of this test reports to this socket.
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    // The only test of this binary: no other test sees this variable. The daemons inherit it.
    std::env::set_var("NOTIFY_SOCKET", &notify_path);
    let first = start_daemon(rig.topo.lb.name(), &rig.cfg);
    let client = rig.topo.client.name().to_owned();
    let lb = rig.topo.lb_addr();
    let sessions: HashMap<String, String> = (1..=100)
        .map(|n| {
            let session = demo_cookie(n);
            let (client, lb, s) = (client.clone(), lb.clone(), session.clone());
            let body =
                http::in_netns(&client, move || one_request(&format!("{lb}:80"), &s)).unwrap();
            (session, body)
        })
        .collect();
    let sessions = Arc::new(sessions);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = load(
        &client,
        &lb,
        Arc::clone(&sessions),
        8,
        Arc::clone(&stop),
        Arc::clone(&tally),
    );

    let started = Instant::now();
    let mut upgrades = Vec::new();
    let mut in_place = 0;
    // Ten steps a second apart: the load runs through 10 s of reloads.
    for round in 0..5 {
        thread::sleep(Duration::from_secs(1));
        // In place: a server added or removed and a timeout changed; the first by SIGHUP, the
        // others through `stickylb reload`.
        rig.write_config(if round % 2 == 0 { "4s" } else { "5s" }, round % 2 == 0);
        if round == 0 {
            first.signal(libc::SIGHUP);
            first.wait_for_output("reloaded configuration", Duration::from_secs(10));
        } else {
            let mut reload = rig.reload(&[]);
            assert!(wait_exit(&mut reload));
            // The pipe may still hold the last line when the process is gone.
            reload.wait_for_output("reloaded", Duration::from_secs(5));
        }
        in_place += 1;
        thread::sleep(Duration::from_secs(1));
        // Upgrade: a new process takes the sockets, the old drains and exits.
        let before = rig.daemon_pid().expect("a daemon answers");
        let mut upgrade = rig.reload(&["--upgrade"]);
        upgrade.assert_exits_ok(Duration::from_secs(60), "reload --upgrade");
        let after = rig
            .daemon_pid()
            .expect("a daemon answers after the upgrade");
        assert_ne!(before, after, "{}", upgrade.output());
        upgrades.push(upgrade);
    }
    let elapsed = started.elapsed();
    stop.store(true, Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let requests = tally.requests.load(Relaxed);
    let longest = Duration::from_micros(tally.longest_us.load(Relaxed));
    eprintln!(
        "{in_place} in-place reloads and {} upgrades in {elapsed:?}: {requests} requests, longest request {longest:?}",
        upgrades.len()
    );
    let failures = tally.failures.lock().unwrap().clone();
    let moved = tally.moved.lock().unwrap().clone();
    let logs: String = upgrades.iter().map(Proc::output).collect();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}\n{}{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        first.output(),
        logs
    );
    assert!(
        moved.is_empty(),
        "{} sessions moved: {:?}",
        moved.len(),
        &moved[..moved.len().min(10)]
    );
    assert!(requests > 1000, "only {requests} requests");
    assert!(
        first.output().contains("successor is ready"),
        "{}",
        first.output()
    );
    // systemd heard READY from every process with its own MAINPID, and never STOPPING: the
    // service went on through every upgrade.
    let notes = notifications(&notify);
    let ready: Vec<&String> = notes.iter().filter(|n| n.starts_with("READY=1")).collect();
    assert_eq!(ready.len(), 6, "{notes:?}");
    assert!(
        ready[0].contains(&format!("MAINPID={}", first.child.id())),
        "{notes:?}"
    );
    let last = rig.daemon_pid().unwrap();
    assert!(ready[5].contains(&format!("MAINPID={last}")), "{notes:?}");
    assert!(!notes.iter().any(|n| n.contains("STOPPING=1")), "{notes:?}");

    // A crash under load, then a start: requests fail while nobody listens, but afterwards every
    // session is served where it was.
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(
        &client,
        &lb,
        Arc::clone(&sessions),
        4,
        Arc::clone(&stop),
        Arc::clone(&tally),
    );
    thread::sleep(Duration::from_millis(300));
    let pid = rig.daemon_pid().unwrap();
    // SAFETY: kill(2) takes plain integers; the pid is the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(5), || rig
        .daemon_pid()
        .is_none()));
    let restarted = start_daemon(rig.topo.lb.name(), &rig.cfg);
    thread::sleep(Duration::from_millis(1000));
    stop.store(true, Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let moved = tally.moved.lock().unwrap().clone();
    eprintln!(
        "kill -9 and start under load: {} requests, {} failed while down, {} moved",
        tally.requests.load(Relaxed),
        tally.failures.lock().unwrap().len(),
        moved.len()
    );
    assert!(
        moved.is_empty(),
        "sessions moved after the restart: {moved:?}"
    );
    assert!(
        restarted.output().contains("adopted"),
        "{}",
        restarted.output()
    );
}
