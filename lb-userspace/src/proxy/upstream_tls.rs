//! Requests to servers reached over TLS (`tls = true`): hyper's client over a connector that
//! dials TCP and makes the TLS handshake with the server's own settings (its CAs and the name
//! it is verified by, see [`ServerTls`]), keeping idle connections pooled like the cleartext
//! client's.
//!
//! Each server's settings get a client of their own (a pool keyed by settings, not only by
//! address: two servers at one address verified differently never share a connection). The
//! relay and the kernel fast path never see these servers (see docs/PIPELINE.md).

use std::{
    future::Future,
    io,
    pin::Pin,
    ptr,
    sync::{Arc, Mutex, PoisonError, Weak},
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use hyper::{
    rt::{Read, ReadBufCursor, Write},
    Uri,
};
use hyper_util::{
    client::legacy::{
        connect::{Connected, Connection, HttpConnector},
        Client,
    },
    rt::{TokioExecutor, TokioIo},
};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower_service::Service;

use super::RequestBody;
use crate::config::ServerTls;

/// hyper's client to one server over TLS.
pub(super) type TlsClient = Client<TlsConnector, RequestBody>;

/// The clients to servers reached over TLS, one per server's settings, made on first use.
pub(super) struct TlsClients {
    /// Bounds the TCP connect, and the TLS handshake after it.
    connect_timeout: Duration,
    clients: ArcSwap<Vec<Entry>>,
    /// Held while a client is added (lookups do not wait on it).
    adding: Mutex<()>,
}

#[derive(Clone)]
struct Entry {
    /// The settings the client is for; once no server holds them (a reload replaced the
    /// server), the entry and its idle connections are dropped when another is added.
    settings: Weak<ClientConfig>,
    client: TlsClient,
}

impl TlsClients {
    pub(super) fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            clients: ArcSwap::from_pointee(Vec::new()),
            adding: Mutex::new(()),
        }
    }

    /// The client to the server with settings `tls`.
    pub(super) fn client(&self, tls: &ServerTls) -> TlsClient {
        if let Some(client) = find(&self.clients.load(), tls) {
            return client;
        }
        let _adding = self.adding.lock().unwrap_or_else(PoisonError::into_inner);
        let entries = self.clients.load_full();
        if let Some(client) = find(&entries, tls) {
            return client;
        }
        let client = self.build(tls);
        let mut next: Vec<Entry> = entries
            .iter()
            .filter(|entry| entry.settings.strong_count() > 0)
            .cloned()
            .collect();
        next.push(Entry {
            settings: Arc::downgrade(&tls.client),
            client: client.clone(),
        });
        self.clients.store(Arc::new(next));
        client
    }

    fn build(&self, tls: &ServerTls) -> TlsClient {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(self.connect_timeout));
        http.set_nodelay(true);
        // The URIs are `https://ADDR/...`: the scheme is ours to handle.
        http.enforce_http(false);
        let connector = TlsConnector {
            http,
            settings: Arc::downgrade(&tls.client),
            name: tls.name.clone(),
            handshake_timeout: self.connect_timeout,
        };
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector)
    }
}

fn find(entries: &[Entry], tls: &ServerTls) -> Option<TlsClient> {
    entries
        .iter()
        .find(|entry| ptr::eq(entry.settings.as_ptr(), Arc::as_ptr(&tls.client)))
        .map(|entry| entry.client.clone())
}

/// Why a connection to a TLS server could not be made: logged with the server's name (see
/// [`super::ProxyError::Upstream`]), the handshake's cause included (e.g. `invalid peer
/// certificate: UnknownIssuer`).
#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamTlsError {
    #[error("connecting failed")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("TLS handshake with {name} failed")]
    Handshake {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("TLS handshake with {name} did not finish within {ms} ms")]
    HandshakeTimeout { name: String, ms: u128 },
    /// A connection was asked for settings no server holds any more (cannot happen while a
    /// request to the server is in flight, which holds them).
    #[error("the server's TLS settings were replaced")]
    Replaced,
}

/// Dials a server and makes the TLS handshake: hyper's connector (a `Service<Uri>`).
#[derive(Clone)]
pub(super) struct TlsConnector {
    http: HttpConnector,
    /// Weak: the server's state holds them (see [`Entry::settings`]).
    settings: Weak<ClientConfig>,
    /// The identity verified (and sent as SNI when it is a DNS name).
    name: ServerName<'static>,
    handshake_timeout: Duration,
}

type Connecting = Pin<Box<dyn Future<Output = Result<TlsConnection, UpstreamTlsError>> + Send>>;

impl Service<Uri> for TlsConnector {
    type Response = TlsConnection;
    type Error = UpstreamTlsError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http
            .poll_ready(cx)
            .map_err(|error| UpstreamTlsError::Connect(error.into()))
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let connecting = self.http.call(uri);
        let (settings, name, limit) = (
            self.settings.clone(),
            self.name.clone(),
            self.handshake_timeout,
        );
        Box::pin(async move {
            let tcp = connecting
                .await
                .map_err(|error| UpstreamTlsError::Connect(error.into()))?
                .into_inner();
            let settings = settings.upgrade().ok_or(UpstreamTlsError::Replaced)?;
            let shown = name.to_str().into_owned();
            let handshake = tokio_rustls::TlsConnector::from(settings).connect(name, tcp);
            match tokio::time::timeout(limit, handshake).await {
                Ok(Ok(stream)) => Ok(TlsConnection(TokioIo::new(stream))),
                Ok(Err(source)) => Err(UpstreamTlsError::Handshake {
                    name: shown,
                    source,
                }),
                Err(_) => Err(UpstreamTlsError::HandshakeTimeout {
                    name: shown,
                    ms: limit.as_millis(),
                }),
            }
        })
    }
}

/// A TLS connection to a server, as hyper's client reads and writes it.
pub(super) struct TlsConnection(TokioIo<TlsStream<TcpStream>>);

impl Connection for TlsConnection {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl Write for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Empty};
    use hyper::{server::conn::http1, service::service_fn, Request, Response};
    use tokio::net::TcpListener;

    use super::*;
    use crate::{config::Config, proxy::ProxyError};

    /// A CA, and a certificate it signed for 127.0.0.1 (an IP SAN) with its key, as PEM.
    fn pki() -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
    }

    /// An HTTPS server on 127.0.0.1 answering `hello`; counts the TCP connections it accepted.
    async fn server(cert: &str, key: &str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
        let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Relaxed);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(|_| async {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"hello"),
                        )))
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    /// The TLS settings of a server at `addr` verified with the CA in `ca` (PEM).
    fn settings(addr: std::net::SocketAddr, ca: &str, dir: &std::path::Path) -> ServerTls {
        let path = dir.join(format!("ca-{}.pem", addr.port()));
        std::fs::write(&path, ca).unwrap();
        let config = Config::from_toml(&format!(
            "[instance]\nname = \"lb\"\n\n[[frontend]]\nname = \"www\"\nbind = \"127.0.0.1:1\"\nbackend = \"web\"\n\n\
             [[backend]]\nname = \"web\"\nservers = [ {{ name = \"s1\", addr = \"{addr}\", tls = true, ca = \"{}\" }} ]\n",
            path.display()
        ))
        .unwrap();
        config.backends[0].servers[0].tls.clone().unwrap()
    }

    fn get(addr: std::net::SocketAddr) -> Request<RequestBody> {
        let body = Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed();
        Request::get(format!("https://{addr}/")).body(body).unwrap()
    }

    /// Requests to a server that verifies reuse one connection; a server whose certificate
    /// another CA signed fails with the handshake's reason, charged to the server.
    #[tokio::test]
    async fn verified_servers_are_pooled_and_others_fail_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = pki();
        let (addr, accepted) = server(&cert, &key).await;
        let clients = TlsClients::new(Duration::from_secs(2));
        let tls = settings(addr, &ca, dir.path());
        for _ in 0..3 {
            let response = clients.client(&tls).request(get(addr)).await.unwrap();
            assert_eq!(response.status(), 200);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello");
        }
        assert_eq!(accepted.load(Relaxed), 1, "one pooled connection");

        let (other_ca, _, _) = pki();
        let untrusted = settings(addr, &other_ca, dir.path());
        let error = clients
            .client(&untrusted)
            .request(get(addr))
            .await
            .unwrap_err();
        let error = ProxyError::upstream(&Arc::from("s1"), error);
        assert!(error.charges_server());
        let logged = crate::error_chain(&error);
        assert!(
            logged.contains("server s1 failed")
                && logged.contains("TLS handshake with 127.0.0.1 failed")
                && logged.contains("invalid peer certificate"),
            "{logged}"
        );
    }
}
