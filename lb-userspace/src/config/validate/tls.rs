//! A frontend's `tls`, and the certificate files of `[peers] tls`: they are read and checked
//! here (PEM that parses, a key that matches its certificate, a CA that is a certificate), so
//! that a bad file stops a start like any other problem and names the file.

use std::{
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{sign::CertifiedKey, RootCertStore};
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use toml::Spanned;

use super::Checker;
use crate::config::{
    raw::{RawCertificate, RawTls},
    Tls, TlsCertificate,
};

impl Checker<'_> {
    /// The certificates of frontend `key` (whose table is at `span`).
    pub(super) fn tls(&mut self, key: &str, span: Range<usize>, raw: &RawTls) -> Option<Tls> {
        let tls_key = format!("{key}.tls");
        let certificates = match (&raw.cert, &raw.key, &raw.certificates) {
            (None, None, None) => {
                let msg = "needs cert and key, or certificates = [{ cert, key }, ...]";
                self.report(Some(span), &tls_key, msg);
                None
            }
            (None, None, Some(list)) => self.certificate_list(&tls_key, list),
            (cert, key_file, None) => {
                let pair = self.certificate(&tls_key, Some(&span), cert, key_file);
                pair.map(|pair| vec![pair])
            }
            (_, _, Some(list)) => {
                let msg = "has both cert/key and certificates; list every certificate in \
                           certificates (the first is the default)";
                self.report(Some(list.span()), &tls_key, msg);
                None
            }
        };
        Some(Tls {
            certificates: certificates?,
        })
    }

    fn certificate_list(
        &mut self,
        tls_key: &str,
        list: &Spanned<Vec<Spanned<RawCertificate>>>,
    ) -> Option<Vec<TlsCertificate>> {
        let list_key = format!("{tls_key}.certificates");
        if list.get_ref().is_empty() {
            self.report(Some(list.span()), &list_key, "must not be empty");
            return None;
        }
        let loaded: Vec<_> = list
            .get_ref()
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let raw = item.get_ref();
                let item_key = format!("{list_key}[{i}]");
                self.certificate(&item_key, Some(&item.span()), &raw.cert, &raw.key)
            })
            .collect();
        loaded.into_iter().collect()
    }

    /// One `{ cert, key }` at `key`: both files read, parsed and matched.
    pub(super) fn certificate(
        &mut self,
        key: &str,
        span: Option<&Range<usize>>,
        cert: &Option<Spanned<String>>,
        private_key: &Option<Spanned<String>>,
    ) -> Option<TlsCertificate> {
        // An inline table has no span here (see `raw`): a missing key is reported on the line
        // of the other one.
        let line_of = |other: &Option<Spanned<String>>| other.as_ref().map(Spanned::span);
        let near_cert = line_of(private_key).or_else(|| span.cloned());
        let near_key = line_of(cert).or_else(|| span.cloned());
        let cert = self
            .required(cert, near_cert.as_ref(), key, "cert")
            .and_then(|cert| self.absolute(cert, &format!("{key}.cert")));
        let private_key = self
            .required(private_key, near_key.as_ref(), key, "key")
            .and_then(|file| self.absolute(file, &format!("{key}.key")));
        let ((cert, cert_span), (private_key, key_span)) = (cert?, private_key?);
        match load(&cert, &private_key) {
            Ok(loaded) => Some(TlsCertificate {
                cert,
                key: private_key,
                loaded,
            }),
            Err(LoadError::Cert(msg)) => {
                self.report(Some(cert_span), &format!("{key}.cert"), msg);
                None
            }
            Err(LoadError::Key(msg)) => {
                self.report(Some(key_span), &format!("{key}.key"), msg);
                None
            }
        }
    }

    pub(super) fn absolute(
        &mut self,
        value: &Spanned<String>,
        key: &str,
    ) -> Option<(PathBuf, Range<usize>)> {
        let path = PathBuf::from(value.get_ref());
        if path.is_absolute() {
            return Some((path, value.span()));
        }
        let msg = format!("{} must be an absolute path", path.display());
        self.report(Some(value.span()), key, msg);
        None
    }
}

/// Which file a loading problem is about, and what it is.
#[derive(Debug)]
pub(crate) enum LoadError {
    Cert(String),
    Key(String),
}

/// Reads the PEM chain at `cert` and the PEM key at `key`, and checks that the key is the
/// certificate's (rustls with the `ring` provider, the one the frontends use).
pub(crate) fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, LoadError> {
    let (cert_name, key_name) = (cert.display(), key.display());
    let chain = read_certificates(cert).map_err(LoadError::Cert)?;
    let Some(end_entity) = chain.first() else {
        let msg = format!("{cert_name} holds no PEM CERTIFICATE");
        return Err(LoadError::Cert(msg));
    };
    webpki::EndEntityCert::try_from(end_entity).map_err(|error| {
        LoadError::Cert(format!(
            "{cert_name}: not a valid X.509 certificate ({error})"
        ))
    })?;
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|error| match error {
        rustls_pki_types::pem::Error::NoItemsFound => {
            LoadError::Key(format!("{key_name} holds no PEM PRIVATE KEY"))
        }
        error => LoadError::Key(format!("cannot read {key_name}: {error}")),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, private_key, &provider)
        .map(Arc::new)
        .map_err(|error| match error {
            rustls::Error::InconsistentKeys(_) => LoadError::Key(format!(
                "the key in {key_name} is not the key of the certificate in {cert_name}"
            )),
            error => LoadError::Key(format!("{key_name}: unusable private key ({error})")),
        })
}

/// Reads the PEM CA certificates at `ca`: the roots a peer's or a server's certificate must
/// chain to.
pub(crate) fn load_roots(ca: &Path) -> Result<Arc<RootCertStore>, String> {
    let name = ca.display();
    let certs = read_certificates(ca)?;
    if certs.is_empty() {
        return Err(format!("{name} holds no PEM CERTIFICATE"));
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|error| {
            format!(
                "{name}: certificate {} is not a usable CA certificate ({error})",
                i + 1
            )
        })?;
    }
    Ok(Arc::new(roots))
}

/// Every PEM `CERTIFICATE` in the file at `path` (none is not an error here), or why it cannot
/// be read, naming the file.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))
}
