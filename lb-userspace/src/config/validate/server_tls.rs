//! A server's `tls`, `sni` and `ca`: the CA bundle is read here and the client settings every
//! connection to the server uses are built once, so that a bad file stops a start (or a
//! reload) like any other problem and names the file.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;

use super::{tls::load_roots, Checker};
use crate::config::{raw::RawServer, ServerTls};

impl Checker<'_> {
    /// The TLS settings of server `key` (address `addr`, when it is valid): `Some(None)` for a
    /// cleartext server.
    pub(super) fn server_tls(
        &mut self,
        key: &str,
        raw: &RawServer,
        addr: Option<SocketAddr>,
    ) -> Option<Option<ServerTls>> {
        let Some(tls) = raw.tls.as_ref().filter(|tls| *tls.get_ref()) else {
            // `sni` or `ca` without `tls = true` would be silently unused.
            let mut alone = [("sni", &raw.sni), ("ca", &raw.ca)]
                .into_iter()
                .filter_map(|(field, value)| Some((field, value.as_ref()?)))
                .peekable();
            let clean = alone.peek().is_none();
            for (field, value) in alone {
                let msg = "is only used with tls = true";
                self.report(Some(value.span()), &format!("{key}.{field}"), msg);
            }
            return clean.then_some(None);
        };
        let sni = match &raw.sni {
            None => Some(None),
            Some(sni) => match ServerName::try_from(sni.get_ref().clone()) {
                Ok(name) => Some(Some((sni.get_ref().clone(), name))),
                Err(_) => {
                    let msg = format!("{:?} is not a DNS name or an IP address", sni.get_ref());
                    self.report(Some(sni.span()), &format!("{key}.sni"), msg);
                    None
                }
            },
        };
        let ca_key = format!("{key}.ca");
        let ca = match &raw.ca {
            Some(ca) => self
                .absolute(ca, &ca_key)
                .map(|(path, span)| (path, span, ca_key)),
            None => Some((
                PathBuf::from(ServerTls::SYSTEM_CA),
                tls.span(),
                format!("{key}.tls"),
            )),
        };
        let (sni, (ca, ca_span, ca_key), addr) = (sni?, ca?, addr?);
        let loaded = load_roots(&ca).and_then(|roots| Ok((client_config(&roots)?, roots)));
        let (client, roots) = match loaded {
            Ok(loaded) => loaded,
            Err(msg) if raw.ca.is_none() => {
                let msg = format!(
                    "the server is verified with the system's CAs by default, and {msg}; \
                     install them or set ca"
                );
                self.report(Some(ca_span), &ca_key, msg);
                return None;
            }
            Err(msg) => {
                self.report(Some(ca_span), &ca_key, msg);
                return None;
            }
        };
        let (sni, name) = match sni {
            Some((sni, name)) => (Some(sni), name),
            None => (None, ServerName::IpAddress(addr.ip().into())),
        };
        Some(Some(ServerTls {
            sni,
            ca,
            name,
            client: Arc::new(client),
            roots,
        }))
    }
}

/// The client settings of a server verified with `roots` (rustls with the `ring` provider, as
/// the frontends; TLS 1.2 and 1.3; ALPN `http/1.1`, the only protocol servers are spoken to
/// with).
fn client_config(roots: &Arc<RootCertStore>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| format!("TLS client settings: {error}"))?
        .with_root_certificates(Arc::clone(roots))
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(client)
}
