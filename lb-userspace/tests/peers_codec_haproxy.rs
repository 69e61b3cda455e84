//! The peers codec against a real HAProxy (Debian's 2.6 package): handshakes both ways,
//! definitions, live and timed updates with server keys, acks and a full resync.
//!
//! Each test runs its own HAProxy on loopback ports picked by binding port 0, with its config
//! and stats socket in a fresh temporary directory, so tests run in parallel. Without an
//! HAProxy binary the tests skip with a message, except under `CI` or
//! `STICKYLB_REQUIRE_PRIVILEGED`, where they fail. `STICKYLB_HAPROXY` overrides the binary.
//!
//! With `STICKYLB_RECORD_PEERS=<dir>`, the sessions of the first test write their transcripts
//! (every message each way, as bytes) to `<dir>`: that is how the fixtures the session's unit
//! tests replay, `tests/fixtures/peers/`, were recorded.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

use std::{
    fs,
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use stickylb::peers::{
    accept_hello, decode_status,
    message::{DataTypes, KeyType},
    Decoder, Encoder, Hello, Message, ServerKey, Status, TableDefinition, Update, UpdateKind,
    Version,
};

/// How long any single expected event may take. HAProxy reacts in milliseconds; its own
/// timers (heartbeat 3 s, reconnect 5 s) stay below this.
const STEP: Duration = Duration::from_secs(10);
/// We send a heartbeat after this much silence: HAProxy drops a session silent for 5 s.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

const TABLE: &str = "back-session";
/// Our peer name and HAProxy's, as declared in the peers section.
const US: &str = "us";
const HAP: &str = "hap";
const MEMBERS: [&str; 2] = [HAP, US];
/// Our id for the table: deliberately not HAProxy's (1), so that acks, which name the table
/// by the id its updates' sender gave it, show which side's id they carry.
const OUR_TABLE_ID: u64 = 5;

/// The HAProxy binary, or `None` (after saying why) when the tests may skip.
fn haproxy_binary() -> Option<PathBuf> {
    let path = std::env::var_os("STICKYLB_HAPROXY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"));
    if path.exists() {
        return Some(path);
    }
    let required = ["CI", "STICKYLB_REQUIRE_PRIVILEGED"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false"));
    assert!(
        !required,
        "{} not found and CI requires the HAProxy interop tests",
        path.display()
    );
    eprintln!(
        "skipping: {} not found (apt-get install haproxy; CI makes this a failure)",
        path.display()
    );
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tiny HTTP server answering 200 to anything: a real server, so that HAProxy completes
/// the request and stores the stick entry.
fn spawn_backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    port
}

/// A running HAProxy, killed on drop; its output is printed if the test failed.
struct Haproxy {
    child: Child,
    dir: tempfile::TempDir,
    /// HAProxy's own peer listener ("hap").
    peer_addr: SocketAddr,
    /// Our peer listener ("us"), bound before HAProxy starts so its dial finds it.
    our_listener: Option<TcpListener>,
    frontend_addr: SocketAddr,
}

impl Haproxy {
    fn start(binary: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let our_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let our_port = our_listener.local_addr().unwrap().port();
        let (peer_port, frontend_port) = (free_port(), free_port());
        let (be1, be2) = (spawn_backend(), spawn_backend());
        let sock = dir.path().join("admin.sock");
        let config = format!(
            "global\n\
             \x20   stats socket {sock} level admin\n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 2s\n\
             \x20   timeout client 10s\n\
             \x20   timeout server 10s\n\
             peers mypeers\n\
             \x20   peer {HAP} 127.0.0.1:{peer_port}\n\
             \x20   peer {US} 127.0.0.1:{our_port}\n\
             backend {TABLE}\n\
             \x20   stick-table type string len 32 size 1m expire 30m peers mypeers\n\
             \x20   stick on req.cook(JSESSIONID)\n\
             \x20   stick store-response res.cook(JSESSIONID)\n\
             \x20   server be1 127.0.0.1:{be1}\n\
             \x20   server be2 127.0.0.1:{be2}\n\
             frontend fe\n\
             \x20   bind 127.0.0.1:{frontend_port}\n\
             \x20   default_backend {TABLE}\n",
            sock = sock.display(),
        );
        let config_path = dir.path().join("haproxy.cfg");
        fs::write(&config_path, config).unwrap();
        let log = fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new(binary)
            .arg("-f")
            .arg(&config_path)
            .args(["-L", HAP, "-db"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            dir,
            peer_addr: SocketAddr::from(([127, 0, 0, 1], peer_port)),
            our_listener: Some(our_listener),
            frontend_addr: SocketAddr::from(([127, 0, 0, 1], frontend_port)),
        }
    }

    /// Waits for HAProxy to dial us as a peer.
    fn accept_peer(&mut self) -> TcpStream {
        let listener = self.our_listener.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(listener.accept().map(|(conn, _)| conn));
        });
        rx.recv_timeout(STEP)
            .expect("HAProxy did not dial its peer \"us\"")
            .unwrap()
    }

    /// Runs one command on the stats socket and returns its output. Retries while HAProxy is
    /// still starting and the socket is not there yet.
    fn cli(&self, command: &str) -> String {
        let sock = self.dir.path().join("admin.sock");
        let deadline = Instant::now() + STEP;
        let mut conn = loop {
            match UnixStream::connect(&sock) {
                Ok(conn) => break conn,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Err(err) => panic!("stats socket {}: {err}", sock.display()),
            }
        };
        conn.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).unwrap();
        out
    }

    /// The `show table` line of `key` once it satisfies `wanted`.
    fn wait_entry(&self, key: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let table = self.cli(&format!("show table {TABLE}"));
            let line = table
                .lines()
                .find(|line| line.contains(&format!(" key={key} ")))
                .map(str::to_owned);
            match line {
                Some(line) if wanted(&line) => return line,
                _ if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => panic!("HAProxy's table never showed the wanted {key}:\n{table}"),
            }
        }
    }

    /// Waits until `show peers` says our session acked HAProxy's updates up to `update_id`
    /// (the `update=` of the shared table under peer "us").
    fn wait_acked(&self, update_id: u32) {
        let deadline = Instant::now() + STEP;
        let wanted = format!(" update={update_id}");
        loop {
            let peers = self.cli("show peers");
            let ours = peers
                .split("id=us(")
                .nth(1)
                .and_then(|block| block.lines().find(|line| line.contains("last_acked=")));
            match ours {
                Some(line) if line.trim_end().ends_with(&wanted) => return,
                _ if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => panic!("HAProxy never recorded our ack of {update_id}:\n{peers}"),
            }
        }
    }

    /// Sends a request stuck by cookie `JSESSIONID=<session>`.
    fn request(&self, session: &str) {
        let mut conn = TcpStream::connect(self.frontend_addr).unwrap();
        conn.set_read_timeout(Some(STEP)).unwrap();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: test\r\nCookie: JSESSIONID={session}\r\nConnection: close\r\n\r\n"
        );
        conn.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let log = fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default();
            eprintln!("--- haproxy output ---\n{log}");
        }
    }
}

/// One peers session, past the handshake.
struct Session {
    conn: TcpStream,
    inbuf: Vec<u8>,
    decoder: Decoder,
    encoder: Encoder,
    last_sent: Instant,
    transcript: Transcript,
}

/// The messages of a session, each way, for `STICKYLB_RECORD_PEERS`; written on drop.
#[derive(Default)]
struct Transcript {
    path: Option<PathBuf>,
    lines: Vec<String>,
}

impl Transcript {
    /// A transcript to `$STICKYLB_RECORD_PEERS/<name>.txt`, or one that records nothing.
    fn new(name: &str) -> Self {
        let path = std::env::var_os("STICKYLB_RECORD_PEERS")
            .map(|dir| Path::new(&dir).join(format!("{name}.txt")));
        Self {
            path,
            lines: Vec::new(),
        }
    }

    /// `from_haproxy` says which way `bytes` went; `what` is a readable comment.
    fn add(&mut self, from_haproxy: bool, bytes: &[u8], what: &str) {
        if self.path.is_some() {
            let way = if from_haproxy { '<' } else { '>' };
            self.lines.push(format!("{way} {}  # {what}", hex(bytes)));
        }
    }
}

impl Drop for Transcript {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let head = "# One peers session with HAProxy 2.6, recorded by tests/peers_codec_haproxy.rs\n\
                        # (STICKYLB_RECORD_PEERS). `<` HAProxy sent, `>` we sent; one message a line.\n";
            let _ = fs::write(path, format!("{head}{}\n", self.lines.join("\n")));
        }
    }
}

/// Handshake text, readable in a one-line comment.
fn text(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

/// Reads from `conn` into `buf` until `parse` finds something, sending nothing meanwhile
/// (handshake phase).
fn read_until<T>(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut parse: impl FnMut(&[u8]) -> Option<T>,
) -> T {
    conn.set_read_timeout(Some(STEP)).unwrap();
    loop {
        if let Some(found) = parse(buf) {
            return found;
        }
        let mut chunk = [0; 4096];
        let n = conn.read(&mut chunk).expect("handshake read");
        assert!(n > 0, "connection closed during the handshake; got {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl Session {
    /// We accept HAProxy's connection: check its hello with our code and answer 200.
    /// `name` names the transcript (`STICKYLB_RECORD_PEERS`).
    fn accept(mut conn: TcpStream, name: &str) -> Self {
        let mut transcript = Transcript::new(name);
        let mut buf = Vec::new();
        let (hello, used) = read_until(&mut conn, &mut buf, |buf| {
            accept_hello(buf, US, &MEMBERS).expect("HAProxy's hello refused")
        });
        eprintln!(
            "hello from HAProxy: {:?}",
            String::from_utf8_lossy(&buf[..used])
        );
        assert_eq!(
            (hello.version, hello.callee.as_str(), hello.caller.as_str()),
            (Version::V2_1, US, HAP)
        );
        let mut status = Vec::new();
        Status::Success.encode(&mut status);
        conn.write_all(&status).unwrap();
        transcript.add(true, &buf[..used], &format!("hello {}", text(&buf[..used])));
        transcript.add(false, &status, &format!("status {}", text(&status)));
        Self::new(conn, buf.split_off(used), transcript)
    }

    /// We dial HAProxy as "us" with our hello and read its status.
    fn connect(addr: SocketAddr, name: &str) -> Self {
        let mut transcript = Transcript::new(name);
        let mut conn = TcpStream::connect(addr).unwrap();
        let mut hello = Vec::new();
        Hello::new(HAP, US, std::process::id())
            .encode(&mut hello)
            .unwrap();
        conn.write_all(&hello).unwrap();
        let mut buf = Vec::new();
        let (status, used) = read_until(&mut conn, &mut buf, |buf| decode_status(buf).unwrap());
        assert_eq!(status, Status::Success);
        transcript.add(false, &hello, &format!("hello {}", text(&hello)));
        transcript.add(
            true,
            &buf[..used],
            &format!("status {}", text(&buf[..used])),
        );
        Self::new(conn, buf.split_off(used), transcript)
    }

    fn new(conn: TcpStream, inbuf: Vec<u8>, transcript: Transcript) -> Self {
        conn.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Self {
            conn,
            inbuf,
            decoder: Decoder::new(),
            encoder: Encoder::new(),
            last_sent: Instant::now(),
            transcript,
        }
    }

    fn send(&mut self, message: &Message) {
        let mut out = Vec::new();
        self.encoder.encode(message, &mut out).unwrap();
        self.transcript.add(false, &out, &format!("{message:?}"));
        self.write(&out);
    }

    /// Pushes an entry of our table; returns its update id and the bytes sent.
    fn push(&mut self, key: &str, server: (i64, &str), expire_ms: Option<u32>) -> (u32, Vec<u8>) {
        let server_key = ServerKey::new(server.1).unwrap();
        let mut out = Vec::new();
        let id = self
            .encoder
            .push(
                OUR_TABLE_ID,
                key.as_bytes(),
                Some(server.0),
                Some(&server_key),
                expire_ms,
                &mut out,
            )
            .unwrap();
        eprintln!("we push {key}: {}", hex(&out));
        let what = format!("update {id} of {key:?} to {server:?}, expire {expire_ms:?}");
        self.transcript.add(false, &out, &what);
        self.write(&out);
        (id, out)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.conn.write_all(bytes).unwrap();
        self.last_sent = Instant::now();
    }

    /// The next message and its raw bytes. Keeps the session alive with heartbeats; fails on
    /// timeout, close, undecodable bytes or an error message from HAProxy.
    fn recv(&mut self) -> (Message, Vec<u8>) {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some((message, used)) = self.decoder.decode(&self.inbuf).unwrap() {
                let raw: Vec<u8> = self.inbuf.drain(..used).collect();
                self.transcript.add(true, &raw, &format!("{message:?}"));
                assert!(
                    !matches!(message, Message::ProtocolError | Message::SizeLimit),
                    "HAProxy reported an error: {message:?}"
                );
                return (message, raw);
            }
            assert!(
                Instant::now() < deadline,
                "no message from HAProxy in {STEP:?}"
            );
            if self.last_sent.elapsed() >= HEARTBEAT_EVERY {
                self.send(&Message::Heartbeat);
            }
            let mut chunk = [0; 4096];
            match self.conn.read(&mut chunk) {
                Ok(0) => panic!("HAProxy closed the session"),
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(err) => panic!("peer session read: {err}"),
            }
        }
    }

    /// Messages up to and including the first that `last` accepts, heartbeats left out.
    fn recv_until(&mut self, last: impl Fn(&Message) -> bool) -> Vec<(Message, Vec<u8>)> {
        let mut seen = Vec::new();
        loop {
            let (message, raw) = self.recv();
            let done = last(&message);
            if message != Message::Heartbeat {
                eprintln!("HAProxy sent {}: {message:?}", hex(&raw));
                seen.push((message, raw));
            }
            if done {
                return seen;
            }
        }
    }

    /// The next update, after the definition(s) that may precede it.
    fn recv_update(&mut self) -> (Update, Vec<u8>) {
        let mut seen = self.recv_until(|m| matches!(m, Message::Update(_)));
        match seen.pop() {
            Some((Message::Update(update), raw)) => (update, raw),
            other => panic!("expected an update, got {other:?}"),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn our_table() -> TableDefinition {
    TableDefinition::sticky_string(OUR_TABLE_ID, TABLE, 32, 30 * 60 * 1000)
}

/// The `exp=<ms>` of a `show table` line.
fn expire_of(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("exp="))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no exp= in {line}"))
}

#[test]
fn peers_haproxy_learns_from_us_teaches_us_and_resyncs() {
    let Some(binary) = haproxy_binary() else {
        return;
    };
    let mut haproxy = Haproxy::start(&binary);

    // (1) HAProxy dials "us"; our acceptor checks its hello.
    let mut session = Session::accept(haproxy.accept_peer(), "haproxy-dials-us");

    // (2) A fresh HAProxy asks its peer for a full resync first, and pushes nothing until
    // that lesson is over. We teach with a definition and a timed update, then "finished".
    let first = session.recv_until(|m| *m == Message::ResyncRequest);
    assert_eq!(first.last().map(|(m, _)| m), Some(&Message::ResyncRequest));
    session.send(&Message::TableDefinition(our_table()));
    let (id, bytes) = session.push("abc123", (2, "be2"), Some(600_000));
    assert_eq!((id, bytes[1]), (1, 0x85));
    session.send(&Message::ResyncFinished);
    // HAProxy confirms the lesson and acks our update, naming the table by our id.
    let our_ack = Message::Ack {
        table_id: OUR_TABLE_ID,
        update_id: 1,
    };
    let mut answers = Vec::new();
    let start = Instant::now();
    while !(answers.contains(&Message::ResyncConfirm) && answers.contains(&our_ack)) {
        assert!(
            start.elapsed() < STEP,
            "no confirm and ack in {STEP:?}: {answers:?}"
        );
        answers.push(session.recv().0);
    }
    let line = haproxy.wait_entry("abc123", |line| line.contains("server_id=2 server_key=be2"));
    assert!(
        expire_of(&line) <= 600_000,
        "the timed update's expire was not applied: {line}"
    );

    // (3) HAProxy sticks a request and pushes the entry: definition first, then the update.
    haproxy.request("zzz9");
    let seen = session.recv_until(|m| matches!(m, Message::Update(_)));
    let (definition, definition_raw) = seen
        .iter()
        .find_map(|(m, raw)| match m {
            Message::TableDefinition(def) => Some((def.clone(), raw.clone())),
            _ => None,
        })
        .expect("no table definition before HAProxy's first update");
    eprintln!("HAProxy definition bytes: {}", hex(&definition_raw));
    assert_eq!(definition.name, TABLE);
    assert_eq!(
        (definition.key_type, definition.key_len),
        (KeyType::String, 33)
    );
    assert_eq!(definition.data_types, DataTypes::sticky());
    assert_eq!(definition.expire_ms, 1_800_000);
    assert!(definition.params.is_empty());
    assert_eq!(
        definition,
        TableDefinition {
            table_id: definition.table_id,
            ..our_table()
        }
    );
    let Some((Message::Update(update), update_raw)) = seen.last().cloned() else {
        panic!("expected an update last: {seen:?}");
    };
    eprintln!("HAProxy update bytes: {}", hex(&update_raw));
    assert_eq!(update.key, b"zzz9");
    assert_eq!(update.kind, UpdateKind::Explicit);
    assert_eq!(update.expire_ms, None);
    // Round robin starts with be1 (id 1).
    assert_eq!(
        update.server_key.as_ref().map(ServerKey::as_str),
        Some("be1")
    );
    assert_eq!(update.server_id, Some(1));
    haproxy.wait_entry("zzz9", |line| line.contains("server_id=1 server_key=be1"));
    session.send(&Message::Ack {
        table_id: definition.table_id,
        update_id: update.update_id,
    });

    // An entry set from the CLI has a server_id but no server_key.
    assert_eq!(
        haproxy
            .cli(&format!("set table {TABLE} key yyy8 data.server_id 2"))
            .trim(),
        ""
    );
    let (update, raw) = session.recv_update();
    eprintln!("HAProxy CLI-set update bytes: {}", hex(&raw));
    assert_eq!(
        (update.key.as_slice(), update.server_id, update.server_key),
        (&b"yyy8"[..], Some(2), None)
    );
    assert_eq!(
        Some(update.update_id),
        session.decoder.last_update_id(definition.table_id)
    );
    session.send(&Message::Ack {
        table_id: definition.table_id,
        update_id: update.update_id,
    });
    // HAProxy records our ack as the point its teaching to "us" has reached.
    haproxy.wait_acked(update.update_id);

    // (4) The session survived the acks: a live update (incremental, server key by dictionary
    // slot alone) still lands, with HAProxy's own table expire.
    let (id, bytes) = session.push("after-ack", (2, "be2"), None);
    assert_eq!((id, bytes[1]), (2, 0x81));
    assert!(bytes.ends_with(&[0x01, 0x01]), "be2 not sent by slot alone");
    let line = haproxy.wait_entry("after-ack", |line| {
        line.contains("server_id=2 server_key=be2")
    });
    assert!(expire_of(&line) > 600_000, "{line}");
    drop(session);

    // (5) We dial HAProxy and ask for a full resync: it teaches every entry, ours included,
    // with timed updates, then says finished.
    let mut session = Session::connect(haproxy.peer_addr, "we-dial-haproxy");
    session.send(&Message::ResyncRequest);
    let lesson =
        session.recv_until(|m| matches!(m, Message::ResyncFinished | Message::ResyncPartial));
    assert_eq!(
        lesson.last().map(|(m, _)| m),
        Some(&Message::ResyncFinished)
    );
    let updates: Vec<&Update> = lesson
        .iter()
        .filter_map(|(m, _)| match m {
            Message::Update(update) => Some(update),
            _ => None,
        })
        .collect();
    let mut keys: Vec<_> = updates
        .iter()
        .map(|u| String::from_utf8_lossy(&u.key).into_owned())
        .collect();
    keys.sort();
    assert_eq!(keys, ["abc123", "after-ack", "yyy8", "zzz9"]);
    for update in &updates {
        assert!(update.kind.is_timed(), "{update:?}");
        assert!(
            update.expire_ms.is_some_and(|ms| ms <= 1_800_000),
            "{update:?}"
        );
    }
    assert_eq!(updates.first().map(|u| u.kind), Some(UpdateKind::Timed));
    let abc = updates.iter().find(|u| u.key == b"abc123").unwrap();
    assert_eq!(
        (
            abc.server_id,
            abc.server_key.as_ref().map(ServerKey::as_str)
        ),
        (Some(2), Some("be2"))
    );
    session.send(&Message::ResyncConfirm);
    // Still alive after the confirm: one more update from HAProxy arrives on this session.
    haproxy.request("last1");
    let (update, _) = session.recv_update();
    assert_eq!(update.key, b"last1");
    let peers = haproxy.cli("show peers");
    let ours = peers.split("id=us(").nth(1).unwrap_or_default();
    assert!(
        ours.contains(" proto_err=0 "),
        "HAProxy counted protocol errors:\n{peers}"
    );
}

#[test]
fn peers_haproxy_sends_heartbeats_on_an_idle_session() {
    let Some(binary) = haproxy_binary() else {
        return;
    };
    let mut haproxy = Haproxy::start(&binary);
    let mut session = Session::accept(haproxy.accept_peer(), "haproxy-heartbeat");
    // Answer its resync request with an empty lesson, then stay idle: HAProxy has nothing to
    // push and keeps the session up with heartbeats (we send ours every second meanwhile).
    session.recv_until(|m| *m == Message::ResyncRequest);
    session.send(&Message::ResyncFinished);
    let idle = Instant::now();
    while session.recv().0 != Message::Heartbeat {
        assert!(
            idle.elapsed() < STEP,
            "no heartbeat from HAProxy in {STEP:?}"
        );
    }
}

#[test]
fn peers_haproxy_answers_hellos_as_accept_hello_does() {
    let Some(binary) = haproxy_binary() else {
        return;
    };
    let haproxy = Haproxy::start(&binary);
    // The stats socket answers once HAProxy runs, and by then its peer listener is bound.
    haproxy.cli("show info");
    let hellos: [&[u8]; 7] = [
        b"HAProxyX 2.1\nhap\nus 1 1\n",
        b"HAProxyS 3.0\nhap\nus 1 1\n",
        b"HAProxyS 2.2\nhap\nus 1 1\n",
        b"HAProxyS 2.1\nnot-hap\nus 1 1\n",
        b"HAProxyS 2.1\nhap\nus\n",
        b"HAProxyS 2.1\nhap\nnobody 1 1\n",
        b"HAProxyS 2.1\r\nhap\r\nus 1 1\r\n",
    ];
    for hello in hellos {
        let ours = match accept_hello(hello, HAP, &MEMBERS) {
            Ok(Some(_)) => Status::Success,
            Ok(None) => panic!("incomplete: {hello:?}"),
            Err(err) => err.status(),
        };
        let mut conn = TcpStream::connect(haproxy.peer_addr).unwrap();
        conn.write_all(hello).unwrap();
        let mut buf = Vec::new();
        let (theirs, _) = read_until(&mut conn, &mut buf, |buf| decode_status(buf).unwrap());
        eprintln!("{:?} -> {}", String::from_utf8_lossy(hello), theirs.code());
        assert_eq!(ours, theirs, "for {:?}", String::from_utf8_lossy(hello));
    }
}
