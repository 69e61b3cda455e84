//! A closed-loop HTTP/1.1 load generator for the bench and the tests, for the traffic wrk cannot
//! shape: browser-like connections that carry a few requests and close, sessions that keep one
//! cookie per connection, many client addresses, pauses between requests.
//!
//! Each of `--connections` loops until `--duration` is over: connect (from the next
//! `--source` address, if any), send `--per-connection` requests one after another (the last
//! one says `Connection: close`; 0: keep the connection until the end), pausing `--think-ms`
//! between them, then close and start over with the next session. Every request of a connection
//! carries that connection's session cookie, drawn from a pool of `--pool` sessions (0: a new
//! session per connection). With `--session-per-request`, every request starts a new session
//! instead (as sessions reach a load balancer through a proxy or CDN tier that keeps its
//! connections open).
//!
//! With `--rate`, requests are paced instead (an open loop, as users send them): each
//! connection sends at its share of the rate, and a request's latency is measured from when it
//! was due, so a stall delays the requests behind it (no coordinated omission). With `--tunnel`,
//! each connection is a WebSocket-like tunnel instead: an upgrade request, the `101`, a few
//! bytes echoed, and a close (the rate is then in connections per second).
//!
//! It prints one line: `LOAD-RESULT key=value ...` (requests, bytes, errors by kind, latency
//! percentiles in microseconds, the run's duration).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::Parser;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

#[derive(Parser, Clone)]
struct Args {
    /// host:port to send requests to.
    #[arg(long)]
    target: SocketAddr,
    /// Concurrent connections (each a closed loop).
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Threads, each with its own event loop.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Length of the run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Requests per connection; the last says `Connection: close`. 0: keep-alive to the end.
    #[arg(long, default_value_t = 0)]
    per_connection: u32,
    /// Pause between the requests of a connection, in milliseconds.
    #[arg(long, default_value_t = 0)]
    think_ms: u64,
    /// Sessions (cookies) in the pool; 0: a new session for every connection.
    #[arg(long, default_value_t = 1000)]
    pool: u64,
    /// Every request carries a new session's cookie (the pool is not used).
    #[arg(long)]
    session_per_request: bool,
    /// Characters that start every cookie of this run.
    #[arg(long, default_value = "load")]
    prefix: String,
    /// Source address for the connections, repeatable: connections take them in turn.
    #[arg(long = "source")]
    sources: Vec<IpAddr>,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Time allowed for connecting and for each response, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Requests (with `--tunnel`: connections) per second, all connections together; 0: each
    /// connection sends its next request as soon as it has the answer.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Each connection is a tunnel: upgrade, `101`, echo `--tunnel-bytes`, close.
    #[arg(long)]
    tunnel: bool,
    /// Bytes echoed through each tunnel.
    #[arg(long, default_value_t = 64)]
    tunnel_bytes: usize,
}

/// Counters shared by every connection.
#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    bytes: AtomicU64,
    connections: AtomicU64,
    connect_errors: AtomicU64,
    io_errors: AtomicU64,
    timeouts: AtomicU64,
    status_errors: AtomicU64,
    /// Connections the other side closed before the last requested answer.
    closed_early: AtomicU64,
    next_session: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.connections == 0 || args.threads == 0 {
        bail!("--connections and --threads must be at least 1");
    }
    let totals = Arc::new(Totals::default());
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let mut handles = Vec::new();
    for thread in 0..args.threads {
        let (args, totals) = (args.clone(), Arc::clone(&totals));
        // Connections are dealt to threads as evenly as they go.
        let mine: Vec<u32> = (0..args.connections)
            .filter(|c| c % args.threads == thread)
            .collect();
        handles.push(std::thread::spawn(move || -> anyhow::Result<Vec<u32>> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a runtime")?;
            runtime.block_on(async move {
                let args = Arc::new(args);
                let mut tasks = tokio::task::JoinSet::new();
                for connection in mine {
                    let (args, totals) = (Arc::clone(&args), Arc::clone(&totals));
                    tasks.spawn(client(args, totals, connection, deadline));
                }
                let mut latencies = Vec::new();
                while let Some(done) = tasks.join_next().await {
                    latencies.extend(done.context("a client task failed")?);
                }
                Ok(latencies)
            })
        }));
    }
    let mut latencies = Vec::new();
    for handle in handles {
        match handle.join() {
            Ok(result) => latencies.extend(result?),
            Err(_) => bail!("a load thread panicked"),
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let percentile = |p: f64| -> u32 {
        if latencies.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1]
    };
    let t = &totals;
    println!(
        "LOAD-RESULT requests={} duration_us={} bytes={} errors={} status_errors={} \
         p50_us={} p99_us={} p999_us={} max_us={} connections={} connect_errors={} io_errors={} \
         timeouts={} closed_early={}",
        t.requests.load(Relaxed),
        elapsed.as_micros(),
        t.bytes.load(Relaxed),
        t.connect_errors.load(Relaxed)
            + t.io_errors.load(Relaxed)
            + t.timeouts.load(Relaxed)
            + t.closed_early.load(Relaxed),
        t.status_errors.load(Relaxed),
        percentile(50.0),
        percentile(99.0),
        percentile(99.9),
        latencies.last().copied().unwrap_or(0),
        t.connections.load(Relaxed),
        t.connect_errors.load(Relaxed),
        t.io_errors.load(Relaxed),
        t.timeouts.load(Relaxed),
        t.closed_early.load(Relaxed),
    );
    Ok(())
}

/// When a paced client's next request is due: its share of `--rate`, starting at a random-ish
/// offset so that the clients do not all send at once.
struct Pacer {
    interval: Option<Duration>,
    next: Instant,
}

impl Pacer {
    fn new(args: &Args, index: u32) -> Self {
        let interval = (args.rate > 0.0)
            .then(|| Duration::from_secs_f64(f64::from(args.connections) / args.rate));
        let offset = interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(f64::from(index) / f64::from(args.connections))
        });
        Self {
            interval,
            next: Instant::now() + offset,
        }
    }

    /// Waits until the next request is due and returns when it was due (now, unpaced).
    async fn due(&mut self) -> Instant {
        let Some(interval) = self.interval else {
            return Instant::now();
        };
        let due = self.next;
        self.next += interval;
        tokio::time::sleep_until(due.into()).await;
        due
    }
}

/// One client: connections one after another until the deadline. Returns the latency of each
/// answered request, in microseconds.
async fn client(args: Arc<Args>, totals: Arc<Totals>, index: u32, deadline: Instant) -> Vec<u32> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut latencies = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut round = 0u64;
    let mut pacer = Pacer::new(&args, index);
    while Instant::now() < deadline {
        let source = (!args.sources.is_empty()).then(|| {
            let i = (u64::from(index) + round * u64::from(args.connections))
                % args.sources.len() as u64;
            args.sources[i as usize]
        });
        round += 1;
        let session = totals.next_session.fetch_add(1, Relaxed);
        let session = if args.pool == 0 {
            session
        } else {
            session % args.pool
        };
        let cookie = session_cookie(&args, session);
        let tunnel_due = if args.tunnel {
            Some(pacer.due().await)
        } else {
            None
        };
        if Instant::now() >= deadline {
            break;
        }
        let stream = match tokio::time::timeout(timeout, connect(args.target, source)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(_)) => {
                totals.connect_errors.fetch_add(1, Relaxed);
                pause_after_error(deadline).await;
                continue;
            }
            Err(_) => {
                totals.timeouts.fetch_add(1, Relaxed);
                continue;
            }
        };
        totals.connections.fetch_add(1, Relaxed);
        let outcome = match tunnel_due {
            Some(due) => tunnel(stream, &args, &totals, &cookie, due, &mut latencies).await,
            None => {
                let session = Session {
                    args: &args,
                    totals: &totals,
                    cookie: &cookie,
                    deadline,
                };
                connection(stream, &session, &mut pacer, &mut buf, &mut latencies).await
            }
        };
        match outcome {
            Ok(()) => {}
            Err(Failure::Io) => {
                totals.io_errors.fetch_add(1, Relaxed);
                pause_after_error(deadline).await;
            }
            Err(Failure::Timeout) => {
                totals.timeouts.fetch_add(1, Relaxed);
            }
            Err(Failure::ClosedEarly) => {
                totals.closed_early.fetch_add(1, Relaxed);
            }
        }
    }
    latencies
}

/// The cookie of session number `session`.
fn session_cookie(args: &Args, session: u64) -> String {
    format!("{}{session:024}", args.prefix)
}

/// A failed connection is not retried in a tight loop (a refused port would spin).
async fn pause_after_error(deadline: Instant) {
    let pause = Duration::from_millis(10);
    if Instant::now() + pause < deadline {
        tokio::time::sleep(pause).await;
    }
}

async fn connect(target: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

enum Failure {
    Io,
    Timeout,
    ClosedEarly,
}

/// What the requests of one connection share.
struct Session<'a> {
    args: &'a Args,
    totals: &'a Totals,
    cookie: &'a str,
    deadline: Instant,
}

/// The requests of one connection.
async fn connection(
    mut stream: TcpStream,
    session: &Session<'_>,
    pacer: &mut Pacer,
    buf: &mut [u8],
    latencies: &mut Vec<u32>,
) -> Result<(), Failure> {
    let (args, totals) = (session.args, session.totals);
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut sent = 0u32;
    loop {
        sent += 1;
        let last = args.per_connection != 0 && sent >= args.per_connection;
        let fresh;
        let cookie = if args.session_per_request {
            fresh = session_cookie(args, totals.next_session.fetch_add(1, Relaxed));
            fresh.as_str()
        } else {
            session.cookie
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: load\r\nCookie: c1=1; c2=2; JSESSIONID={}\r\n{}\r\n",
            args.path,
            cookie,
            if last { "Connection: close\r\n" } else { "" }
        );
        let started = pacer.due().await;
        let exchange = async {
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|_| Failure::Io)?;
            read_response(&mut stream, buf).await
        };
        let response = match tokio::time::timeout(timeout, exchange).await {
            Ok(response) => response?,
            Err(_) => return Err(Failure::Timeout),
        };
        let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        latencies.push(micros);
        totals.requests.fetch_add(1, Relaxed);
        totals.bytes.fetch_add(response.bytes, Relaxed);
        if !(200..400).contains(&response.status) {
            totals.status_errors.fetch_add(1, Relaxed);
        }
        if last || Instant::now() >= session.deadline {
            return Ok(());
        }
        if response.close {
            // The server ended the connection before the client meant to.
            return Err(Failure::ClosedEarly);
        }
        if args.think_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.think_ms)).await;
        }
    }
}

/// One tunnel: an upgrade request, its `101` head, the server's greeting line, then
/// `--tunnel-bytes` echoed, then a close (the client's FIN first; the server's FIN waited for).
/// Its latency, from when it was due, covers all of that.
async fn tunnel(
    mut stream: TcpStream,
    args: &Args,
    totals: &Totals,
    cookie: &str,
    due: Instant,
    latencies: &mut Vec<u32>,
) -> Result<(), Failure> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let exchange = async {
        let request = format!(
            "GET /tunnel HTTP/1.1\r\nHost: load\r\nCookie: JSESSIONID={cookie}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|_| Failure::Io)?;
        // The head and the greeting ("NAME\n") may come in one read or several.
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let greeted = |got: &[u8]| {
            let head = got.windows(4).position(|w| w == b"\r\n\r\n")?;
            got[head + 4..]
                .iter()
                .position(|b| *b == b'\n')
                .map(|_| head)
        };
        let head = loop {
            if let Some(head) = greeted(&got) {
                break head;
            }
            let n = stream.read(&mut chunk).await.map_err(|_| Failure::Io)?;
            if n == 0 {
                return Err(Failure::ClosedEarly);
            }
            got.extend_from_slice(&chunk[..n]);
        };
        if !got.starts_with(b"HTTP/1.1 101") {
            totals.status_errors.fetch_add(1, Relaxed);
            return Ok(0);
        }
        let greeting = got.len() - head - 4;
        let payload = vec![b'x'; args.tunnel_bytes];
        stream.write_all(&payload).await.map_err(|_| Failure::Io)?;
        let mut echoed = 0usize;
        while echoed < payload.len() {
            let n = stream.read(&mut chunk).await.map_err(|_| Failure::Io)?;
            if n == 0 {
                return Err(Failure::ClosedEarly);
            }
            echoed += n;
        }
        stream.shutdown().await.map_err(|_| Failure::Io)?;
        while stream.read(&mut chunk).await.map_err(|_| Failure::Io)? != 0 {}
        Ok((greeting + echoed) as u64)
    };
    let bytes = match tokio::time::timeout(timeout, exchange).await {
        Ok(bytes) => bytes?,
        Err(_) => return Err(Failure::Timeout),
    };
    latencies.push(u32::try_from(due.elapsed().as_micros()).unwrap_or(u32::MAX));
    totals.requests.fetch_add(1, Relaxed);
    totals.bytes.fetch_add(bytes, Relaxed);
    Ok(())
}

struct Response {
    status: u16,
    bytes: u64,
    close: bool,
}

/// Reads one response framed by Content-Length (what the bench's backends send).
async fn read_response(stream: &mut TcpStream, buf: &mut [u8]) -> Result<Response, Failure> {
    let mut filled = 0usize;
    let head_end = loop {
        if filled == buf.len() {
            return Err(Failure::Io);
        }
        let n = stream
            .read(&mut buf[filled..])
            .await
            .map_err(|_| Failure::Io)?;
        if n == 0 {
            return Err(if filled == 0 {
                Failure::ClosedEarly
            } else {
                Failure::Io
            });
        }
        filled += n;
        if let Some(i) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| Failure::Io)?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(Failure::Io)?;
    let mut length = None;
    let mut close = false;
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<u64>().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let length = length.ok_or(Failure::Io)?;
    let mut received = (filled - head_end) as u64;
    while received < length {
        let n = stream.read(buf).await.map_err(|_| Failure::Io)?;
        if n == 0 {
            return Err(Failure::Io);
        }
        received += n as u64;
    }
    if received != length {
        return Err(Failure::Io);
    }
    Ok(Response {
        status,
        bytes: head_end as u64 + length,
        close,
    })
}
