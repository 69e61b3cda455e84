//! A tiny HTTP backend for the demo and the tests: each `--listen ADDR=NAME` serves `NAME\n`.
//! Each `--forward LISTEN=TARGET` is a plain TCP port forward instead (the demo's stand-in for
//! Vagrant's forwarded ports: localhost:8080 -> lb-1:80). With `--tls CERT KEY` (PEM files),
//! every `--listen` serves HTTPS (HTTP/1.1) instead: a server the load balancer reaches over
//! TLS.
//!
//! Paths: `/` (or anything) -> the name; `/headers` -> the request headers; `/bytes/N` -> N bytes;
//! `/chunked/N` -> the same N bytes, chunked;
//! `/slow/MS` -> the name after MS milliseconds. `?setcookie=V` adds `Set-Cookie: JSESSIONID=V`.
//! Every response carries `X-Served-By: NAME` and `X-In-Flight: N`, the requests this listener
//! was handling when it received this one, itself included (tests check a `maxconn` with it).
//!
//! A request with `Upgrade: X` (any X) is answered `101 Switching Protocols`, and `CONNECT` is
//! answered `200`; the connection then becomes a tunnel whose server side says `NAME\n` and
//! echoes every byte it receives, until the client closes.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Frame, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Args {
    /// `ADDR=NAME`, repeatable: an HTTP backend on ADDR answering `NAME\n`.
    #[arg(long = "listen", required_unless_present = "forward")]
    listen: Vec<String>,
    /// `LISTEN=TARGET`, repeatable: forwards every TCP connection to LISTEN to TARGET, both
    /// directions, until either side closes.
    #[arg(long = "forward")]
    forward: Vec<String>,
    /// `CERT KEY`: PEM certificate chain and private key; the `--listen` ports speak TLS.
    #[arg(long = "tls", num_args = 2, value_names = ["CERT", "KEY"])]
    tls: Option<Vec<std::path::PathBuf>>,
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = args.tls.as_deref().map(acceptor).transpose()?;
    let mut tasks = Vec::new();
    for spec in &args.listen {
        let (addr, name) = spec.split_once('=').context("--listen wants ADDR=NAME")?;
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("bad address {addr}"))?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tasks.push(tokio::spawn(serve(listener, Arc::from(name), tls.clone())));
    }
    for spec in &args.forward {
        let (listen, target) = spec
            .split_once('=')
            .context("--forward wants LISTEN=TARGET")?;
        let listen: SocketAddr = listen
            .parse()
            .with_context(|| format!("bad address {listen}"))?;
        let target: SocketAddr = target
            .parse()
            .with_context(|| format!("bad address {target}"))?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        tasks.push(tokio::spawn(forward(listener, listen, target)));
    }
    println!("ready");
    for task in tasks {
        task.await?;
    }
    Ok(())
}

/// A TLS acceptor for the certificate chain and key in `files` (`[cert, key]`), HTTP/1.1 only.
fn acceptor(files: &[std::path::PathBuf]) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
    let [cert, key] = files else {
        anyhow::bail!("--tls wants CERT KEY");
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn serve(listener: TcpListener, name: Arc<str>, tls: Option<tokio_rustls::TlsAcceptor>) {
    let in_flight = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = Arc::clone(&name);
        let in_flight = Arc::clone(&in_flight);
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (name, in_flight) = (Arc::clone(&name), Arc::clone(&in_flight));
                async move {
                    let now = in_flight.fetch_add(1, Relaxed) + 1;
                    let response = respond(name, request).await;
                    in_flight.fetch_sub(1, Relaxed);
                    response.map(|mut response| {
                        response.headers_mut().insert("x-in-flight", now.into());
                        response
                    })
                }
            });
            let builder = http1::Builder::new();
            match tls {
                None => {
                    let io = TokioIo::new(stream);
                    let _ = builder.serve_connection(io, service).with_upgrades().await;
                }
                // A failed handshake (e.g. a client that does not trust the certificate) just
                // closes the connection.
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        let io = TokioIo::new(stream);
                        let _ = builder.serve_connection(io, service).with_upgrades().await;
                    }
                }
            }
        });
    }
}

/// Accepts on `listener` and copies each connection to and from a new one to `target`. A
/// failed connect closes the accepted connection (the client sees an empty reply), as a port
/// forward to a stopped guest does.
async fn forward(listener: TcpListener, listen: SocketAddr, target: SocketAddr) {
    loop {
        let Ok((mut inbound, client)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            match TcpStream::connect(target).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(error) => {
                    eprintln!("forward {listen} -> {target}: client {client}: connect: {error}");
                }
            }
        });
    }
}

async fn respond(
    name: Arc<str>,
    mut request: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let upgrade = request.headers().get(hyper::header::UPGRADE).cloned();
    if upgrade.is_some() || request.method() == hyper::Method::CONNECT {
        let upgraded = hyper::upgrade::on(&mut request);
        tokio::spawn(echo(upgraded, Arc::clone(&name)));
        let mut response = Response::new(full(String::new()));
        if let Some(protocol) = upgrade {
            *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert(hyper::header::UPGRADE, protocol);
            headers.insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("upgrade"),
            );
        }
        if let Ok(value) = name.parse() {
            response.headers_mut().insert("x-served-by", value);
        }
        return Ok(response);
    }
    let path = request.uri().path().to_owned();
    let set_cookie = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("setcookie=")))
        .map(str::to_owned);
    let body: Body = if path == "/headers" {
        let text: String = request
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        full(text)
    } else if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        pattern_body(n, true)
    } else if let Some(n) = path
        .strip_prefix("/chunked/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        pattern_body(n, false)
    } else {
        if let Some(ms) = path
            .strip_prefix("/slow/")
            .and_then(|n| n.parse::<u64>().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        full(format!("{name}\n"))
    };
    let mut response = Response::new(body);
    if let Ok(value) = name.parse() {
        response.headers_mut().insert("x-served-by", value);
    }
    if let Some(value) = set_cookie.and_then(|v| format!("JSESSIONID={v}; Path=/").parse().ok()) {
        response
            .headers_mut()
            .insert(hyper::header::SET_COOKIE, value);
    }
    Ok(response)
}

/// The server side of a tunnel: says its name, then echoes.
async fn echo(upgraded: hyper::upgrade::OnUpgrade, name: Arc<str>) {
    use tokio::io::AsyncWriteExt as _;
    let Ok(upgraded) = upgraded.await else {
        return;
    };
    let mut io = TokioIo::new(upgraded);
    if io.write_all(format!("{name}\n").as_bytes()).await.is_err() {
        return;
    }
    let (mut reader, mut writer) = tokio::io::split(io);
    let _ = tokio::io::copy(&mut reader, &mut writer).await;
    let _ = writer.shutdown().await;
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text)).boxed()
}

/// `len` bytes of a repeating pattern, produced in 64 KiB frames; without `exact` its size is
/// not announced, so hyper sends it chunked.
fn pattern_body(len: u64, exact: bool) -> Body {
    PatternBody {
        left: len,
        exact,
        block: (0..CHUNK)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into(),
    }
    .boxed()
}

const CHUNK: usize = 64 * 1024;

struct PatternBody {
    left: u64,
    exact: bool,
    block: Bytes,
}

impl hyper::body::Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let size = usize::try_from(self.left).map_or(CHUNK, |left| left.min(CHUNK));
        self.left -= size as u64;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.block.slice(..size)))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        if self.exact {
            hyper::body::SizeHint::with_exact(self.left)
        } else {
            hyper::body::SizeHint::default()
        }
    }
}
