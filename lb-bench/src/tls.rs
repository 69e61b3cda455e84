//! The TLS workloads' certificate: one self-signed ECDSA P-256 certificate made when the bench
//! starts, served by both load balancers (stickylb reads the certificate and key files,
//! HAProxy one PEM file holding both). The clients do not verify it: the bench measures the
//! handshake and the traffic, not a chain.

use std::{fs, path::PathBuf};

use anyhow::Context as _;

/// The name in the certificate (and the SNI nobody checks).
pub(crate) const NAME: &str = "bench.stickylb.test";

/// Where the certificate and its key are, in the forms each load balancer reads.
pub(crate) struct TlsFiles {
    /// PEM certificate (stickylb's `tls.cert`).
    pub(crate) cert: PathBuf,
    /// PEM PKCS#8 key (stickylb's `tls.key`).
    pub(crate) key: PathBuf,
    /// The certificate followed by its key (HAProxy's `crt`).
    pub(crate) combined: PathBuf,
}

impl TlsFiles {
    /// Makes a new key pair and certificate and writes them into `dir`.
    pub(crate) fn make(dir: &std::path::Path) -> anyhow::Result<Self> {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("could not make the TLS workloads' ECDSA P-256 key")?;
        let params = rcgen::CertificateParams::new(vec![NAME.to_owned()])
            .context("could not describe the TLS workloads' certificate")?;
        let cert = params
            .self_signed(&key_pair)
            .context("could not sign the TLS workloads' certificate")?;
        let (cert_pem, key_pem) = (cert.pem(), key_pair.serialize_pem());
        let files = Self {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            combined: dir.join("tls.pem"),
        };
        for (path, text) in [
            (&files.cert, cert_pem.clone()),
            (&files.key, key_pem.clone()),
            (&files.combined, cert_pem + &key_pem),
        ] {
            fs::write(path, text).with_context(|| format!("could not write {}", path.display()))?;
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::TlsFiles;

    #[test]
    fn writes_an_ecdsa_certificate_its_key_and_both_together() {
        let dir = std::env::temp_dir().join(format!("lb-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = TlsFiles::make(&dir).unwrap();
        let cert = std::fs::read_to_string(&files.cert).unwrap();
        let key = std::fs::read_to_string(&files.key).unwrap();
        let combined = std::fs::read_to_string(&files.combined).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(combined, format!("{cert}{key}"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
