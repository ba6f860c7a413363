//! The organisation CA: creating it (`sluice ca init`), loading it, and minting the
//! per-host leaf certificates that downstream TLS is terminated with.
//!
//! Leaves are ECDSA P-256, valid for a short, configurable window, cached in a bounded LRU
//! and re-minted once half their life has passed. Minting happens inside the rustls
//! certificate resolver (synchronous, about a millisecond), so only the first handshake
//! for a host pays for it; configured provider hosts are minted at start-up.
//!
//! This module never writes over an existing CA: rotation is an explicit operation.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics;

/// Problems with the CA or a leaf certificate.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// `ca init` found an existing CA.
    #[error("a CA already exists at {0}; refusing to overwrite it (move it away first to rotate)")]
    Exists(PathBuf),
    /// The CA files are missing.
    #[error("no CA at {cert} / {key}: create one with `sluice ca init --config FILE`")]
    Missing { cert: PathBuf, key: PathBuf },
    /// Reading or writing a CA file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The key file is readable by others.
    #[error("CA key {path} has mode {mode:o}; restrict it with `chmod 600 {path}`")]
    KeyMode { path: PathBuf, mode: u32 },
    /// The PEM content could not be used.
    #[error("CA material at {path} is not usable: {why}")]
    Invalid { path: PathBuf, why: String },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused a minted key.
    #[error("minted key rejected by rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Create a new CA certificate and 0600 key at the given paths.
///
/// # Errors
/// [`CaError::Exists`] when either file exists; I/O and generation errors otherwise.
pub fn init(cert_path: &Path, key_path: &Path, common_name: &str) -> Result<String, CaError> {
    for p in [cert_path, key_path] {
        if p.exists() {
            return Err(CaError::Exists(p.to_path_buf()));
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Sluice");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.self_signed(&key)?;

    for p in [cert_path, key_path] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
    }
    write_private(key_path, key.serialize_pem().as_bytes())?;
    let pem = cert.pem();
    std::fs::write(cert_path, &pem).map_err(io_err(cert_path))?;
    Ok(pem)
}

/// Write a file readable only by its owner, refusing to replace an existing one.
fn write_private(path: &Path, data: &[u8]) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// The loaded CA, able to sign leaves.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// Load the CA certificate and key.
    ///
    /// # Errors
    /// [`CaError::Missing`] when absent, [`CaError::KeyMode`] when the key is group/world
    /// accessible, [`CaError::Invalid`] when the PEM cannot be parsed.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Ca, CaError> {
        if !cert_path.exists() || !key_path.exists() {
            return Err(CaError::Missing {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            });
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_path)
            .map_err(io_err(key_path))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(CaError::KeyMode {
                path: key_path.to_path_buf(),
                mode,
            });
        }
        let cert_pem = std::fs::read_to_string(cert_path).map_err(io_err(cert_path))?;
        let key_pem = std::fs::read_to_string(key_path).map_err(io_err(key_path))?;
        Ca::from_pem(&cert_pem, &key_pem).map_err(|why| CaError::Invalid {
            path: cert_path.to_path_buf(),
            why,
        })
    }

    /// Build from PEM text: the certificate, and its key as PKCS#8 (`PRIVATE KEY`, what
    /// `sluice ca init` writes), SEC1 (`EC PRIVATE KEY`: Helm's `genPrivateKey "ecdsa"`,
    /// OpenSSL's `ecparam -genkey`) or PKCS#1 (`RSA PRIVATE KEY`: Helm's `genCA`).
    ///
    /// # Errors
    /// A description of what could not be parsed.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, String> {
        let key = match rustls_pemfile::private_key(&mut key_pem.as_bytes()) {
            Ok(Some(PrivateKeyDer::Sec1(sec1))) => sec1_to_pkcs8(sec1.secret_sec1_der())
                .ok_or("key: not an EC private key of P-256 or P-384")?,
            Ok(Some(PrivateKeyDer::Pkcs1(rsa))) => pkcs1_to_pkcs8(rsa.secret_pkcs1_der()),
            Ok(Some(PrivateKeyDer::Pkcs8(der))) => der.secret_pkcs8_der().to_vec(),
            Ok(Some(_)) | Ok(None) => return Err("key: no PEM private key in it".into()),
            Err(e) => return Err(format!("key: {e}")),
        };
        let key = KeyPair::try_from(key.as_slice()).map_err(|e| format!("key: {e}"))?;
        let cert_der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .ok_or_else(|| "no CERTIFICATE block".to_string())?
            .map_err(|e| format!("certificate: {e}"))?;
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| format!("certificate: {e}"))?;
        Ok(Ca {
            issuer,
            cert_der,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate as PEM, for distribution to clients.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Mint a leaf for `host` valid for `validity`.
    ///
    /// # Errors
    /// Generation errors (invalid host name for a SAN, key generation failure).
    pub fn mint(&self, host: &str, validity: Duration) -> Result<CertifiedKey, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![host.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        // Back-date a little for clients with skewed clocks.
        params.not_before = now - time::Duration::minutes(10);
        params.not_after = now + time::Duration::seconds(validity.as_secs() as i64);
        let leaf = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)?;
        Ok(CertifiedKey::new(
            vec![leaf.der().clone(), self.cert_der.clone()],
            signing,
        ))
    }
}

// === impl LeafResolver ===

/// rustls certificate resolver minting (and caching) a leaf per SNI.
pub struct LeafResolver {
    ca: Arc<Ca>,
    validity: Duration,
    cache: Mutex<lru::LruCache<String, (Arc<CertifiedKey>, Instant)>>,
}

impl std::fmt::Debug for LeafResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafResolver")
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

impl LeafResolver {
    /// A resolver holding at most `capacity` leaves.
    pub fn new(ca: Arc<Ca>, validity: Duration, capacity: usize) -> LeafResolver {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        LeafResolver {
            ca,
            validity,
            cache: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    /// The leaf for `host`, from the cache or freshly minted.
    ///
    /// # Errors
    /// Minting errors.
    pub fn leaf_for(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        {
            let mut cache = self.cache.lock();
            if let Some((key, minted)) = cache.get(&host) {
                // Re-mint after half the validity, so a cached leaf never nears expiry.
                if minted.elapsed() < self.validity / 2 {
                    metrics::CERT_CACHE.with_label_values(&["hit"]).inc();
                    return Ok(key.clone());
                }
            }
        }
        metrics::CERT_CACHE.with_label_values(&["miss"]).inc();
        let key = Arc::new(self.ca.mint(&host, self.validity)?);
        self.cache.lock().put(host, (key.clone(), Instant::now()));
        Ok(key)
    }
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name()?;
        match self.leaf_for(sni) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(sni, error = %e, "cannot mint a leaf certificate");
                None
            }
        }
    }
}

const OID_EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];
const OID_RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
const CURVES: &[&[u64]] = &[&[1, 2, 840, 10045, 3, 1, 7], &[1, 3, 132, 0, 34]];

/// PKCS#8 (RFC 5208) around an SEC1 (RFC 5915) EC key. The curve comes from the key's
/// parameters; the inner key is written without them, as ring expects.
fn sec1_to_pkcs8(sec1: &[u8]) -> Option<Vec<u8>> {
    use yasna::models::ObjectIdentifier;
    let (private, curve, public) = yasna::parse_der(sec1, |r| {
        r.read_sequence(|r| {
            let _version = r.next().read_u8()?;
            let private = r.next().read_bytes()?;
            let curve =
                r.read_optional(|r| r.read_tagged(yasna::Tag::context(0), |r| r.read_oid()))?;
            let public = r.read_optional(|r| {
                r.read_tagged(yasna::Tag::context(1), |r| r.read_bitvec_bytes())
            })?;
            Ok((private, curve, public))
        })
    })
    .ok()?;
    let curve = curve?;
    if !CURVES.iter().any(|c| curve.components().as_slice() == *c) {
        return None;
    }
    let (public, public_bits) = public?;
    let inner = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_u8(1);
            w.next().write_bytes(&private);
            w.next().write_tagged(yasna::Tag::context(1), |w| {
                w.write_bitvec_bytes(&public, public_bits)
            });
        })
    });
    Some(pkcs8(
        |w| {
            w.write_sequence(|w| {
                w.next()
                    .write_oid(&ObjectIdentifier::from_slice(OID_EC_PUBLIC_KEY));
                w.next().write_oid(&curve);
            })
        },
        &inner,
    ))
}

/// PKCS#8 around a PKCS#1 (RFC 8017) RSA key.
fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    pkcs8(
        |w| {
            w.write_sequence(|w| {
                w.next()
                    .write_oid(&yasna::models::ObjectIdentifier::from_slice(
                        OID_RSA_ENCRYPTION,
                    ));
                w.next().write_null();
            })
        },
        pkcs1,
    )
}

fn pkcs8(algorithm: impl FnOnce(yasna::DERWriter<'_>), key: &[u8]) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_u8(0);
            algorithm(w.next());
            w.next().write_bytes(key);
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-ca-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// CA keys as Helm's `genCA` (PKCS#1 RSA) and `genCAWithKey … (genPrivateKey "ecdsa")`
    /// (SEC1 P-256) write them: the chart makes the org CA this way.
    #[test]
    fn sec1_and_pkcs1_keys_are_accepted_and_mint_leaves() {
        for kind in ["ec", "rsa"] {
            let cert =
                std::fs::read_to_string(format!("tests/fixtures/helm-ca-{kind}.crt")).unwrap();
            let key =
                std::fs::read_to_string(format!("tests/fixtures/helm-ca-{kind}.key")).unwrap();
            let ca = Ca::from_pem(&cert, &key).unwrap_or_else(|e| panic!("{kind}: {e}"));
            ca.mint("api.openai.com", Duration::from_secs(3600))
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
        }
        let cert = std::fs::read_to_string("tests/fixtures/helm-ca-ec.crt").unwrap();
        assert!(Ca::from_pem(
            &cert,
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"
        )
        .is_err());
        assert!(Ca::from_pem(&cert, "no key").is_err());
    }

    #[test]
    fn init_writes_a_private_key_and_refuses_to_overwrite() {
        let d = temp_dir("init");
        let (c, k) = (d.join("ca.crt"), d.join("ca.key"));
        let pem = init(&c, &k, "Test CA").unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(init(&c, &k, "again"), Err(CaError::Exists(_))));
        let ca = Ca::load(&c, &k).unwrap();
        assert_eq!(ca.cert_pem(), pem);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn load_rejects_a_world_readable_key() {
        let d = temp_dir("mode");
        let (c, k) = (d.join("ca.crt"), d.join("ca.key"));
        init(&c, &k, "Test CA").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Ca::load(&c, &k), Err(CaError::KeyMode { .. })));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn leaves_chain_to_the_ca_and_are_cached() {
        let d = temp_dir("leaf");
        let (c, k) = (d.join("ca.crt"), d.join("ca.key"));
        init(&c, &k, "Test CA").unwrap();
        let ca = Arc::new(Ca::load(&c, &k).unwrap());
        let resolver = LeafResolver::new(ca.clone(), Duration::from_secs(3600), 2);
        let a = resolver.leaf_for("API.OpenAI.com.").unwrap();
        let b = resolver.leaf_for("api.openai.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "second lookup must be a cache hit");
        assert_eq!(a.cert.len(), 2, "leaf + CA");
        assert_eq!(a.cert[1], ca.cert_der);

        // The leaf verifies against the CA as a root, for the host it was minted for.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from("api.openai.com").unwrap();
        verifier
            .verify_server_cert(
                &a.cert[0],
                &a.cert[1..],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        let other = rustls::pki_types::ServerName::try_from("api.anthropic.com").unwrap();
        assert!(verifier
            .verify_server_cert(
                &a.cert[0],
                &a.cert[1..],
                &other,
                &[],
                rustls::pki_types::UnixTime::now()
            )
            .is_err());
        std::fs::remove_dir_all(d).unwrap();
    }
}
