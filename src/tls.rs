//! Serving certificates: PEM files reloaded when their content changes (including the `..data`
//! symlink swap of a Kubernetes Secret volume, which per-file inotify misses), or a self-signed
//! certificate for localhost made in memory when none is given; [`for_reviews`] chooses. The
//! certificate in use has its `notAfter` in a gauge (`tagpin_tls_certificate_expiry_timestamp_seconds`),
//! set at load and at every reload, so an alert can warn before it expires.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use prometheus_client::metrics::gauge::Gauge;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}; check --tls-cert/--tls-key")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} holds no PEM certificate: {reason}")]
    NoCert { what: String, reason: String },
    #[error("{what} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}")]
    NoKey { what: String, reason: String },
    #[error("certificate {cert} and key {key} do not form a usable pair: {reason}")]
    Pair {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("--client-ca {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("--tls-cert and --tls-key go together: give both or neither")]
    HalfPair,
}

/// The review listener's TLS: the `cert` and `key` files (reloaded every `reload_every` when
/// they change), or, with neither, a self-signed certificate for localhost made in memory; with
/// `client_ca`, clients must present a certificate it signed. Half a pair is refused. Spawns
/// the reload loop, so it runs inside the runtime. `expiry` gets the `notAfter` of the
/// certificate in use, now and after every reload.
pub fn for_reviews(
    cert: Option<&Path>,
    key: Option<&Path>,
    reload_every: Duration,
    client_ca: Option<&Path>,
    expiry: Gauge,
) -> Result<RustlsConfig, TlsError> {
    let client_ca = match client_ca {
        Some(path) => {
            let v = client_verifier(path)?;
            tracing::info!(ca = %path.display(), "review listener requires client certificates signed by this CA");
            Some(v)
        }
        None => None,
    };
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let (server_cfg, hash) = load(cert, key, client_ca.clone(), &expiry)?;
            let tls = RustlsConfig::from_config(server_cfg);
            tokio::spawn(reload_loop(
                tls.clone(),
                cert.to_path_buf(),
                key.to_path_buf(),
                reload_every,
                hash,
                client_ca,
                expiry,
            ));
            tracing::info!(cert = %cert.display(), key = %key.display(), every = ?reload_every, "serving certificate loaded; reloaded when the files change");
            Ok(tls)
        }
        (None, None) => {
            let (c, k) = self_signed()?;
            record_expiry(&expiry, &c, Path::new("generated"));
            tracing::warn!("no --tls-cert/--tls-key given: serving a self-signed certificate for localhost made in memory (fine on a laptop; a cluster needs a real one)");
            Ok(RustlsConfig::from_config(server_config_with(
                &c,
                &k,
                ("generated", "generated"),
                client_ca,
            )?))
        }
        _ => Err(TlsError::HalfPair),
    }
}

/// Verifies client certificates against the CA certificates in `path` (PEM): with it, a client
/// that presents no certificate, or one not signed by these CAs, fails the handshake.
pub fn client_verifier(path: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let bad = |reason: String| TlsError::ClientCa {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| bad(format!("not PEM certificates: {e}")))?;
        roots
            .add(c)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no CERTIFICATE block".into()));
    }
    WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| bad(e.to_string()))
}

/// A rustls server config from a PEM chain (leaf first) and a PEM key. `names` label messages.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    names: (&str, &str),
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(cert_pem, key_pem, names, None)
}

/// [`server_config`], requiring client certificates when `clients` is given.
pub fn server_config_with(
    cert_pem: &[u8],
    key_pem: &[u8],
    names: (&str, &str),
    clients: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NoCert {
            what: names.0.to_string(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            what: names.0.to_string(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::NoKey {
        what: names.1.to_string(),
        reason: e.to_string(),
    })?;
    // with_single_cert checks that the key matches the leaf certificate.
    let builder = ServerConfig::builder();
    let builder = match clients {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Pair {
            cert: names.0.to_string(),
            key: names.1.to_string(),
            reason: e.to_string(),
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A self-signed certificate and key (PEM) for localhost, 127.0.0.1 and ::1.
pub fn self_signed() -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let ck = rcgen::generate_simple_self_signed(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((
        ck.cert.pem().into_bytes(),
        ck.signing_key.serialize_pem().into_bytes(),
    ))
}

/// The `notAfter` of the first (leaf) certificate in a PEM chain, as Unix seconds; `None` when
/// the first block is not an X.509 certificate. Pure.
pub fn not_after(cert_pem: &[u8]) -> Option<i64> {
    let leaf = CertificateDer::pem_slice_iter(cert_pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Sets `expiry` to the leaf's `notAfter`; if it cannot be read (rustls accepted the pair, so
/// this is unexpected), says so and leaves the gauge as it was rather than invent a date.
fn record_expiry(expiry: &Gauge, cert_pem: &[u8], path: &Path) {
    match not_after(cert_pem) {
        Some(t) => {
            expiry.set(t);
        }
        None => {
            tracing::warn!(cert = %path.display(), "cannot read the serving certificate's notAfter: tagpin_tls_certificate_expiry_timestamp_seconds keeps its previous value; check that the first PEM block is the leaf certificate")
        }
    }
}

/// The bytes of a certificate and key file, and a hash identifying the pair's content.
pub struct PemPair {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub hash: [u8; 32],
}

/// Reads both files.
pub fn read_pair(cert: &Path, key: &Path) -> Result<PemPair, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let c = read(cert)?;
    let k = read(key)?;
    let mut h = Sha256::new();
    h.update((c.len() as u64).to_le_bytes());
    h.update(&c);
    h.update(&k);
    Ok(PemPair {
        cert: c,
        key: k,
        hash: h.finalize().into(),
    })
}

/// Loads the pair once, for start-up, and sets `expiry` to its certificate's `notAfter`.
pub fn load(
    cert: &Path,
    key: &Path,
    clients: Option<Arc<dyn ClientCertVerifier>>,
    expiry: &Gauge,
) -> Result<(Arc<ServerConfig>, [u8; 32]), TlsError> {
    let PemPair {
        cert: c,
        key: k,
        hash,
    } = read_pair(cert, key)?;
    let cfg = server_config_with(
        &c,
        &k,
        (&cert.display().to_string(), &key.display().to_string()),
        clients,
    )?;
    record_expiry(expiry, &c, cert);
    Ok((cfg, hash))
}

/// Polls the files every `interval`; on a content change that parses as a valid pair, new
/// handshakes get the new certificate (open connections keep theirs). A bad new pair is logged
/// once and the old one kept. Polling content, not inotify, is what sees a Secret volume's
/// atomic symlink swap. `expiry` follows the certificate in use.
pub async fn reload_loop(
    tls: RustlsConfig,
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    mut current: [u8; 32],
    clients: Option<Arc<dyn ClientCertVerifier>>,
    expiry: Gauge,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (c2, k2) = (cert.clone(), key.clone());
        let Ok(read) = tokio::task::spawn_blocking(move || read_pair(&c2, &k2)).await else {
            continue;
        };
        let PemPair {
            cert: c,
            key: k,
            hash,
        } = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "TLS reload: cannot read the certificate files; keeping the current certificate");
                continue;
            }
        };
        if hash == current {
            continue;
        }
        current = hash;
        match server_config_with(
            &c,
            &k,
            (&cert.display().to_string(), &key.display().to_string()),
            clients.clone(),
        ) {
            Ok(cfg) => {
                tls.reload_from_config(cfg);
                record_expiry(&expiry, &c, &cert);
                tracing::info!(cert = %cert.display(), "TLS certificate reloaded: new connections use it");
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload: the new certificate files are not a valid pair; keeping the current certificate");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    #[test]
    fn self_signed_pair_builds_and_mismatch_is_refused() {
        provider();
        let (c1, k1) = self_signed().unwrap();
        let (_c2, k2) = self_signed().unwrap();
        assert!(server_config(&c1, &k1, ("c", "k")).is_ok());
        let e = server_config(&c1, &k2, ("c.pem", "k.pem")).unwrap_err();
        assert!(matches!(e, TlsError::Pair { .. }), "{e}");
        assert!(e.to_string().contains("c.pem"));
        assert!(matches!(
            server_config(b"junk", &k1, ("c", "k")),
            Err(TlsError::NoCert { .. })
        ));
        assert!(matches!(
            server_config(&c1, b"junk", ("c", "k")),
            Err(TlsError::NoKey { .. })
        ));
    }

    #[test]
    fn not_after_reads_the_leaf_of_a_chain() {
        let leaf = |y, m, d| {
            let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            p.not_after = rcgen::date_time_ymd(y, m, d);
            let key = rcgen::KeyPair::generate().unwrap();
            p.self_signed(&key).unwrap().pem().into_bytes()
        };
        // 2031-05-17T00:00:00Z and 2040-01-01T00:00:00Z.
        let (a, b) = (leaf(2031, 5, 17), leaf(2040, 1, 1));
        assert_eq!(not_after(&a), Some(1_936_742_400));
        let mut chain = a.clone();
        chain.extend_from_slice(&b);
        assert_eq!(
            not_after(&chain),
            Some(1_936_742_400),
            "the first block counts"
        );
        assert_eq!(not_after(&b), Some(2_208_988_800));
        assert_eq!(not_after(b"junk"), None);
        assert_eq!(
            not_after(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            None,
            "a PEM block that is not X.509"
        );
    }

    #[test]
    fn chain_files_are_accepted() {
        provider();
        let (c1, k1) = self_signed().unwrap();
        let (c2, _) = self_signed().unwrap();
        let mut chain = c1.clone();
        chain.extend_from_slice(&c2);
        assert!(server_config(&chain, &k1, ("c", "k")).is_ok());
    }
}
