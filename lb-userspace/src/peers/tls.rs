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
    use super::*;

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
