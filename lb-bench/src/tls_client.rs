//! The TLS workloads' connection client (`lb-bench tls-client`, run by the bench inside its
//! client namespace): `connections` threads, each opening a TLS connection, sending
//! `per_connection` HTTP/1.1 requests on it (the last with `Connection: close`), and opening the
//! next, until the duration is over. With `--h2` a connection speaks HTTP/2 (ALPN `h2`, the `h2`
//! crate as the client) as a browser loads a page: the first request alone, then the others at
//! once on their own streams, the cookie in separate `cookie` fields as browsers send it; then
//! the connection is closed (`GOAWAY`). With `--resume` the threads share one session cache, so a
//! new connection resumes an earlier session as a returning browser does; without, every
//! connection is a full handshake (ECDHE and the server's ECDSA signature).
//!
//! wrk and h2load cannot do either: both resume sessions when they reconnect, and neither can
//! close a connection after a few requests. The client checks the server's handshake signature
//! but not its certificate's chain (the bench's certificate is self-signed; the other clients
//! do not check it either).
//!
//! It prints one `LOAD-RESULT` line, as `stickylb-load` does. A request's latency runs from
//! writing it to the end of its response; a connection's first request's also includes the
//! TCP and TLS handshakes, which is what a new connection costs its user.

use std::{
    io::Write as _,
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        Resumption,
    },
    crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, SignatureScheme,
    StreamOwned,
};

use crate::{client, stats::nearest_rank};

/// Starts the line that says what the first handshake negotiated.
pub(crate) const NEGOTIATED: &str = "TLS-NEGOTIATED";

#[derive(Debug, Clone, PartialEq, clap::Args)]
pub(crate) struct TlsClientArgs {
    /// host:port of the HTTPS frontend.
    #[arg(long)]
    pub(crate) addr: String,
    /// The name the client asks for (SNI).
    #[arg(long)]
    pub(crate) server_name: String,
    /// Connections open at once (one thread each).
    #[arg(long)]
    pub(crate) connections: u32,
    /// Seconds during which new connections are opened.
    #[arg(long)]
    pub(crate) duration: f64,
    /// Requests per connection, the last one closing it.
    #[arg(long, default_value_t = 1)]
    pub(crate) per_connection: u32,
    /// Sessions the cookies cycle through, one per connection; 0: a new one per connection.
    #[arg(long, default_value_t = 0)]
    pub(crate) pool: u64,
    /// Characters that start every cookie of the run.
    #[arg(long)]
    pub(crate) prefix: String,
    /// Resume earlier TLS sessions (a shared session cache) instead of full handshakes.
    #[arg(long)]
    pub(crate) resume: bool,
    /// HTTP/2: the first request, then the others at once on one connection.
    #[arg(long)]
    pub(crate) h2: bool,
}

impl TlsClientArgs {
    /// The command line that parses back into these arguments.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--addr={}", self.addr),
            format!("--server-name={}", self.server_name),
            format!("--connections={}", self.connections),
            format!("--duration={}", self.duration),
            format!("--per-connection={}", self.per_connection),
            format!("--pool={}", self.pool),
            format!("--prefix={}", self.prefix),
        ];
        if self.resume {
            args.push("--resume".into());
        }
        if self.h2 {
            args.push("--h2".into());
        }
        args
    }
}

/// What one thread measured.
#[derive(Default)]
struct Tally {
    /// What its first complete handshake negotiated.
    negotiated: Option<String>,
    /// Connections whose handshake completed, and those of them that resumed a session.
    handshakes: u64,
    resumed: u64,
    requests: u64,
    bytes: u64,
    errors: u64,
    status_errors: u64,
    latencies_us: Vec<u64>,
}

pub(crate) fn run(args: &TlsClientArgs) -> anyhow::Result<()> {
    let config = Arc::new(client_config(args.resume, args.h2)?);
    let server_name = ServerName::try_from(args.server_name.clone())
        .with_context(|| format!("{:?} is not a server name", args.server_name))?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration.max(0.0));
    let threads: Vec<_> = (0..args.connections.max(1))
        .map(|index| {
            let (config, name, args) = (config.clone(), server_name.clone(), args.clone());
            std::thread::spawn(move || client_thread(&args, &config, &name, index, deadline))
        })
        .collect();
    let mut all = Tally::default();
    for thread in threads {
        let Ok(tally) = thread.join() else {
            bail!("a client thread panicked");
        };
        all.requests += tally.requests;
        all.bytes += tally.bytes;
        all.errors += tally.errors;
        all.status_errors += tally.status_errors;
        all.latencies_us.extend(tally.latencies_us);
        all.negotiated = all.negotiated.or(tally.negotiated);
        all.handshakes += tally.handshakes;
        all.resumed += tally.resumed;
    }
    let elapsed = started.elapsed();
    all.latencies_us.sort_unstable();
    let percentile = |p: f64| nearest_rank(&all.latencies_us, p).unwrap_or(0);
    if let Some(negotiated) = &all.negotiated {
        println!(
            "{NEGOTIATED} {negotiated}; {} of {} handshakes resumed a session",
            all.resumed, all.handshakes
        );
    }
    println!(
        "LOAD-RESULT requests={} duration_us={} bytes={} errors={} status_errors={} p50_us={} \
         p99_us={}",
        all.requests,
        elapsed.as_micros(),
        all.bytes,
        all.errors,
        all.status_errors,
        percentile(50.0),
        percentile(99.0)
    );
    Ok(())
}

/// ring's suites, versions and groups in rustls' default order; ALPN `http/1.1`, or `h2` and
/// `http/1.1` as a browser offers them; session resumption on or off.
fn client_config(resume: bool, h2: bool) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("rustls refused its default protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SignatureOnly(provider)))
        .with_no_client_auth();
    if !resume {
        config.resumption = Resumption::disabled();
    }
    // It speaks HTTP/1.1 and says so, as a client without HTTP/2 does.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if h2 {
        config.alpn_protocols.insert(0, b"h2".to_vec());
    }
    Ok(config)
}

/// Opens connection after connection until `deadline`.
fn client_thread(
    args: &TlsClientArgs,
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    index: u32,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut buf = vec![0u8; 16 * 1024];
    let runtime = match args.h2.then(h2_client::runtime).transpose() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lb-bench tls-client: no runtime for HTTP/2: {error:#}");
            tally.errors += 1;
            return tally;
        }
    };
    let mut opened: u64 = 0;
    while Instant::now() < deadline {
        let session = opened * u64::from(args.connections.max(1)) + u64::from(index);
        let session = if args.pool > 0 {
            session % args.pool
        } else {
            session
        };
        opened += 1;
        let cookie = format!("{}{session:024}", args.prefix);
        let done = match &runtime {
            Some(runtime) => runtime.block_on(h2_client::connection(
                args, config, name, &cookie, &mut tally,
            )),
            None => one_connection(args, config, name, &cookie, &mut buf, &mut tally),
        };
        if done.is_err() {
            tally.errors += 1;
            // A refused or reset connection: do not spin.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    tally
}

/// One connection's requests; an error ends it (and counts once, in the caller).
fn one_connection(
    args: &TlsClientArgs,
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    cookie: &str,
    buf: &mut [u8],
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let mut start = Instant::now();
    let tcp = TcpStream::connect(&args.addr)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let connection = ClientConnection::new(config.clone(), name.clone())?;
    let mut stream = StreamOwned::new(connection, tcp);
    let requests = args.per_connection.max(1);
    for n in 1..=requests {
        let close = if n == requests {
            "Connection: close\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nCookie: c1=1; c2=2; JSESSIONID={cookie}\r\n{close}\r\n",
            args.server_name
        );
        // The first write also drives the handshake.
        stream.write_all(request.as_bytes())?;
        let answer = read_response(&mut stream, buf)?;
        if n == 1 {
            handshake_done(tally, &stream.conn);
        }
        record(tally, answer, start.elapsed());
        start = Instant::now();
    }
    Ok(())
}

/// Counts one answered request: its latency, its bytes, and whether its status was a success.
fn record(tally: &mut Tally, (status, bytes): (u16, u64), latency: Duration) {
    tally.latencies_us.push(latency.as_micros() as u64);
    tally.bytes += bytes;
    if (200..400).contains(&status) {
        tally.requests += 1;
    } else {
        tally.status_errors += 1;
    }
}

/// Counts a completed handshake (and whether it resumed a session) and what the first one
/// negotiated.
fn handshake_done(tally: &mut Tally, connection: &ClientConnection) {
    tally.handshakes += 1;
    if connection.handshake_kind() == Some(HandshakeKind::Resumed) {
        tally.resumed += 1;
    }
    if tally.negotiated.is_none() {
        tally.negotiated = Some(negotiated(connection));
    }
}

/// `TLSv1_3, TLS13_AES_256_GCM_SHA384, X25519, http/1.1`: rustls' names, in h2load's order.
fn negotiated(connection: &ClientConnection) -> String {
    let alpn = connection.alpn_protocol().map_or("no ALPN".into(), |p| {
        String::from_utf8_lossy(p).into_owned()
    });
    format!(
        "{}, {}, {}, {alpn}",
        connection
            .protocol_version()
            .map_or("?".into(), |v| format!("{v:?}")),
        connection
            .negotiated_cipher_suite()
            .map_or("?".into(), |s| format!("{:?}", s.suite())),
        connection
            .negotiated_key_exchange_group()
            .map_or("?".into(), |g| format!("{:?}", g.name())),
    )
}

/// Reads one response (Content-Length framing, which both load balancers send for the
/// backends' answers); its status and size in bytes.
fn read_response(stream: &mut impl std::io::Read, buf: &mut [u8]) -> anyhow::Result<(u16, u64)> {
    let (status, head, body) = client::read_response(stream, buf)?;
    Ok((status, head + body))
}

/// Accepts any certificate but checks the handshake's signature with it, so the client does
/// a browser's signature work without a chain to a root.
#[derive(Debug)]
struct SignatureOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for SignatureOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The HTTP/2 side of the client (`--h2`).
mod h2_client {
    use std::{
        sync::Arc,
        time::{Duration, Instant},
    };

    use anyhow::{bail, Context as _};
    use bytes::Bytes;
    use rustls::{pki_types::ServerName, ClientConfig};
    use tokio_rustls::TlsConnector;

    use super::{handshake_done, record, Tally, TlsClientArgs};

    /// How long a connection may take, handshakes and requests together: a stalled one counts
    /// as an error, as a read timeout does over HTTP/1.1.
    const CONNECTION_LIMIT: Duration = Duration::from_secs(10);

    /// One thread's runtime: its connections run on it one after the other.
    pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building a runtime")
    }

    /// One connection: a TCP and TLS handshake, the page's request (its latency from the TCP
    /// connect), then the others at once (each from when it was sent), then `GOAWAY`.
    pub(super) async fn connection(
        args: &TlsClientArgs,
        config: &Arc<ClientConfig>,
        name: &ServerName<'static>,
        cookie: &str,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let requests = async {
            let tcp = tokio::net::TcpStream::connect(&args.addr).await?;
            tcp.set_nodelay(true)?;
            let tls = TlsConnector::from(Arc::clone(config))
                .connect(name.clone(), tcp)
                .await?;
            let (_, session) = tls.get_ref();
            handshake_done(tally, session);
            if session.alpn_protocol() != Some(b"h2") {
                bail!("the server did not choose h2");
            }
            let (client, connection) = h2::client::handshake(tls).await?;
            let driver = tokio::spawn(connection);
            let request = Request {
                authority: args.server_name.clone(),
                cookie: cookie.to_owned(),
            };
            let page = request.send(client.clone()).await?;
            record(tally, page, start.elapsed());
            let resources: Vec<_> = (1..args.per_connection.max(1))
                .map(|_| {
                    let (client, request) = (client.clone(), request.clone());
                    tokio::spawn(async move {
                        let sent = Instant::now();
                        let answer = request.send(client).await;
                        (answer, sent.elapsed())
                    })
                })
                .collect();
            drop(client);
            let mut failed = None;
            for resource in resources {
                match resource.await? {
                    (Ok(answer), latency) => record(tally, answer, latency),
                    (Err(error), _) => failed = Some(error),
                }
            }
            // The last handle gone and every stream done, the connection says GOAWAY and
            // closes.
            driver.await??;
            failed.map_or(Ok(()), Err)
        };
        tokio::time::timeout(CONNECTION_LIMIT, requests)
            .await
            .context("the connection took too long")?
    }

    /// A browser's request for the site's root.
    #[derive(Clone)]
    struct Request {
        authority: String,
        cookie: String,
    }

    impl Request {
        /// Sends it and reads the answer to its end: status and body bytes.
        async fn send(&self, client: h2::client::SendRequest<Bytes>) -> anyhow::Result<(u16, u64)> {
            let mut client = client.ready().await?;
            // Browsers send each cookie in a field of its own over HTTP/2 (RFC 9113 8.2.3).
            let request = http::Request::get(format!("https://{}/", self.authority))
                .header("cookie", "c1=1")
                .header("cookie", "c2=2")
                .header("cookie", format!("JSESSIONID={}", self.cookie))
                .body(())?;
            let (response, _) = client.send_request(request, true)?;
            let response = response.await?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut bytes = 0;
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                bytes += chunk.len() as u64;
                // Taken: the server may send as much again.
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            Ok((status, bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::{read_response, TlsClientArgs};
    use crate::client::parse_head;

    #[test]
    fn the_arguments_survive_the_command_line() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: TlsClientArgs,
        }
        let args = TlsClientArgs {
            addr: "10.240.1.1:443".into(),
            server_name: "bench.stickylb.test".into(),
            connections: 64,
            duration: 2.5,
            per_connection: 5,
            pool: 1000,
            prefix: "00000001".into(),
            resume: true,
            h2: true,
        };
        let parsed = Cli::try_parse_from(std::iter::once("x".to_owned()).chain(args.to_args()));
        assert_eq!(parsed.unwrap().args, args);
    }

    #[test]
    fn reads_a_response_with_its_body_and_not_past_it() {
        let wire = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nset-cookie: x=1\r\n\r\nbe1\n";
        let mut buf = [0u8; 8];
        let (status, bytes) = read_response(&mut &wire[..], &mut buf).unwrap();
        assert_eq!((status, bytes), (200, wire.len() as u64));
        let mut short = &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nbe1\n"[..];
        assert!(read_response(&mut short, &mut buf).is_err());
        assert!(parse_head(b"HTTP/1.1 503 Busy\r\n\r\n").is_err());
        assert_eq!(
            parse_head(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n").unwrap(),
            (503, 0)
        );
    }
}
