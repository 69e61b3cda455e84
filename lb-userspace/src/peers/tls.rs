//! Peer sessions over mutual TLS (docs/PEERS.md, "Peers over TLS"): the layer under the
//! handshake. [`PeerStream`] is what [`super::connect`] and [`super::driver`] read and write,
//! cleartext or TLS, so that the protocol code is the same for both.
//!
//! Both sides present the certificate of `[peers] tls` and accept only a chain to its `ca`.
//! Dialling, we also check the name in the peer's certificate: see [`server_name`].

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use rustls::{
    client::ResolvesClientCert,
    pki_types::ServerName,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
    ClientConfig, ServerConfig, SignatureScheme,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config;

/// A peer connection: cleartext, or TLS over TCP.
pub enum PeerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

/// Both ends of mutual TLS for peer sessions, built once from `[peers] tls`.
#[derive(Clone)]
pub struct PeerTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

/// Why `[peers] tls` cannot be set up (the files were checked when the configuration was
/// loaded, so only a CA rustls refuses as a trust anchor gets here).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot verify peers' certificates with {}", ca.display())]
    Verifier {
        ca: std::path::PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("no TLS protocol version in common with the crypto provider")]
    Versions(#[source] rustls::Error),
}

impl PeerTls {
    pub fn new(tls: &config::PeersTls) -> Result<Self, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ours = Arc::new(Ours(Arc::clone(&tls.certificate.loaded)));
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&tls.roots),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|source| TlsSetupError::Verifier {
            ca: tls.ca.clone(),
            source,
        })?;
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsSetupError::Versions)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::clone(&ours) as Arc<dyn ResolvesServerCert>);
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsSetupError::Versions)?
            .with_root_certificates(Arc::clone(&tls.roots))
            .with_client_cert_resolver(ours);
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The server side of the TLS handshake on a connection accepted on the peers port.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<PeerStream> {
        let tls = self.acceptor.accept(stream).await?;
        Ok(PeerStream::Tls(Box::new(tls.into())))
    }

    /// The client side on a connection we dialled to peer `name` at `addr`.
    pub async fn connect(
        &self,
        stream: TcpStream,
        name: &str,
        addr: SocketAddr,
    ) -> io::Result<PeerStream> {
        let tls = self
            .connector
            .connect(server_name(name, addr), stream)
            .await?;
        Ok(PeerStream::Tls(Box::new(tls.into())))
    }
}

/// The name a dialled peer's certificate must hold, also sent as SNI: the member's name when
/// it is a DNS name (`lb-2`, `lb-2.example.net`), else its IP address (an IP SAN). Peer
/// names are identities in the protocol already (each hello carries both), so the certificate
/// vouches for the same thing; an address-only check would trust whoever holds the address.
pub fn server_name(name: &str, addr: SocketAddr) -> ServerName<'static> {
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(dns)) => ServerName::DnsName(dns.to_owned()),
        _ => ServerName::IpAddress(addr.ip().into()),
    }
}

/// Our one certificate, for both sides of the handshake.
#[derive(Debug)]
struct Ours(Arc<CertifiedKey>);

impl ResolvesServerCert for Ours {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

impl ResolvesClientCert for Ours {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl PeerStream {
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nodelay(on)
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => tcp,
            Self::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::PrivateKeyDer;
    use tokio::net::TcpListener;

    use super::*;
    use crate::peers::connect::{answer, dial, ConnectError};

    /// A CA and `PeersTls` for members `names` at 127.0.0.1, all signed by it.
    fn pki(names: &[&str]) -> Vec<config::PeersTls> {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let roots = Arc::new(roots);
        let provider = rustls::crypto::ring::default_provider();
        names
            .iter()
            .map(|name| {
                let key = rcgen::KeyPair::generate().unwrap();
                let cert = rcgen::CertificateParams::new(vec![(*name).to_owned()])
                    .unwrap()
                    .signed_by(&key, &ca, &ca_key)
                    .unwrap();
                let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
                let loaded =
                    CertifiedKey::from_der(vec![cert.der().clone()], der, &provider).unwrap();
                config::PeersTls {
                    certificate: config::TlsCertificate {
                        cert: format!("/{name}.pem").into(),
                        key: format!("/{name}.key").into(),
                        loaded: Arc::new(loaded),
                    },
                    ca: "/ca.pem".into(),
                    roots: Arc::clone(&roots),
                }
            })
            .collect()
    }

    /// lb-1 dials `callee` over TLS on loopback, with `dialling`'s files; the answering side
    /// has `answering`'s. The caller's name as answered, and whether the dial opened.
    async fn session(
        callee: &str,
        answering: &config::PeersTls,
        dialling: &config::PeersTls,
    ) -> (Result<String, ConnectError>, Result<(), ConnectError>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let members = ["lb-1".to_owned(), "lb-2".to_owned()];
        let (server, client) = (
            PeerTls::new(answering).unwrap(),
            PeerTls::new(dialling).unwrap(),
        );
        let accepted = async {
            let (tcp, remote) = listener.accept().await.unwrap();
            answer(tcp, remote, callee, &members, Some(&server))
                .await
                .map(|(caller, _)| caller)
        };
        let dialled = async { dial(addr, callee, "lb-1", Some(&client)).await.map(|_| ()) };
        tokio::join!(accepted, dialled)
    }

    #[tokio::test]
    async fn members_with_certificates_from_the_ca_open_a_session_over_tls() {
        let tls = pki(&["lb-1", "lb-2"]);
        let (accepted, dialled) = session("lb-2", &tls[1], &tls[0]).await;
        assert_eq!(accepted.unwrap(), "lb-1");
        dialled.unwrap();
    }

    #[tokio::test]
    async fn a_dialled_peer_whose_certificate_lacks_its_name_is_refused() {
        // lb-2 answers with lb-1's certificate: signed by the CA, but not for "lb-2".
        let tls = pki(&["lb-1", "lb-2"]);
        let (accepted, dialled) = session("lb-2", &tls[0], &tls[0]).await;
        let error = crate::error_chain(&dialled.unwrap_err());
        assert!(
            error.starts_with("TLS handshake failed") && error.contains("lb-2"),
            "{error}"
        );
        assert!(accepted.is_err());
    }

    #[tokio::test]
    async fn a_certificate_from_another_ca_is_refused_by_the_answering_side() {
        let ours = pki(&["lb-2"]);
        let theirs = pki(&["lb-1"]);
        let mut dialling = theirs[0].clone();
        // The caller trusts our CA (so it accepts us) but presents its own CA's certificate.
        dialling.roots = Arc::clone(&ours[0].roots);
        let (accepted, dialled) = session("lb-2", &ours[0], &dialling).await;
        let error = crate::error_chain(&accepted.unwrap_err());
        assert!(
            // Both test CAs have the same (empty) name: the signature gives it away.
            error.contains("TLS handshake failed: invalid peer certificate"),
            "{error}"
        );
        let error = crate::error_chain(&dialled.unwrap_err());
        assert!(error.starts_with("TLS handshake failed"), "{error}");
    }

    #[test]
    fn a_dns_like_member_name_is_checked_else_the_address() {
        let addr: SocketAddr = "10.0.0.2:1024".parse().unwrap();
        for (name, expected) in [
            ("lb-2", "lb-2"),
            ("lb2.example.net", "lb2.example.net"),
            ("10.0.0.9", "10.0.0.2"),
        ] {
            let got = match server_name(name, addr) {
                ServerName::DnsName(dns) => dns.as_ref().to_owned(),
                ServerName::IpAddress(ip) => std::net::IpAddr::from(ip).to_string(),
                other => panic!("{other:?}"),
            };
            assert_eq!(got, expected, "{name}");
        }
    }
}
