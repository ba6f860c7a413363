//! A throw-away PKI for test servers: one self-signed CA and one leaf certificate for a
//! list of host names, made in memory on each call.
//!
//! The mock provider serves its TLS with it (`sluice-mock --tls-hosts`, the demo), and the
//! benchmark harness gives the same kind of certificate to its fixed-certificate peers
//! (nginx, HAProxy, the bare Pingora proxy). It is the only place where the project's test
//! tools mint certificates; the product's own CA lives in `sluice::ca`.
//!
//! What it is **not**: an organisation CA. Keys are never persisted unless a caller
//! writes the PEMs out, and nothing here is meant for production.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA and one leaf it signed for a set of host names.
pub struct TestPki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    leaf_pem: String,
    leaf_der: CertificateDer<'static>,
    leaf_key_pem: String,
    leaf_key_der: Vec<u8>,
}

impl TestPki {
    /// Mints a CA named `ca_name` and a leaf whose subject alternative names are `hosts`.
    ///
    /// # Errors
    /// When a host name is not a valid DNS name or IP address, or key generation fails.
    pub fn mint(ca_name: &str, hosts: &[String]) -> anyhow::Result<TestPki> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate()?;
        let leaf = CertificateParams::new(hosts.to_vec())
            .with_context(|| format!("the host names {hosts:?} cannot name a certificate"))?
            .signed_by(&leaf_key, &issuer)?;
        Ok(TestPki {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            leaf_pem: leaf.pem(),
            leaf_der: leaf.der().clone(),
            leaf_key_pem: leaf_key.serialize_pem(),
            leaf_key_der: leaf_key.serialize_der(),
        })
    }

    /// The CA certificate (PEM) that clients should trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A rustls server configuration presenting the leaf (and the CA after it), with
    /// `alpn` protocols offered in that order.
    ///
    /// # Errors
    /// When rustls rejects the key (it cannot: it was made above).
    pub fn server_config(&self, alpn: Vec<Vec<u8>>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        // Whichever crate links first installs the process default; ours is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key_der.clone()));
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf_der.clone(), self.ca_der.clone()], key)?;
        config.alpn_protocols = alpn;
        Ok(Arc::new(config))
    }

    /// Writes the CA (PEM), the leaf chain (leaf then CA, PEM) and the leaf key (PKCS#8
    /// PEM) to three files, for servers configured by file (nginx, HAProxy, Pingora).
    ///
    /// # Errors
    /// When a file cannot be written; the message names it.
    pub fn write_files(&self, ca: &Path, chain: &Path, key: &Path) -> anyhow::Result<()> {
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
        };
        write(ca, &self.ca_pem)?;
        write(chain, &format!("{}{}", self.leaf_pem, self.ca_pem))?;
        write(key, &self.leaf_key_pem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;

    #[test]
    fn the_leaf_names_the_hosts_and_chains_to_the_ca() {
        let pki = TestPki::mint("test CA", &["api.openai.com".into(), "127.0.0.1".into()]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        for name in ["api.openai.com", "127.0.0.1"] {
            let name = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(
                    &pki.leaf_der,
                    std::slice::from_ref(&pki.ca_der),
                    &name,
                    &[],
                    now,
                )
                .unwrap();
        }
        let other = rustls::pki_types::ServerName::try_from("example.org").unwrap();
        assert!(verifier
            .verify_server_cert(&pki.leaf_der, &[], &other, &[], now)
            .is_err());
    }
}
