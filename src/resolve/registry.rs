//! Manifest requests: one HEAD per tag (GET and hash only when the registry sends no digest).
//! Authentication (challenges, tokens) is in `auth.rs`.
//!
//! This speaks the distribution API over reqwest directly rather than through
//! `oci_client::Client::fetch_manifest_digest`, because tagpin needs what that call hides: the
//! `Retry-After` of a 429 (it sets the breaker's cool-down), a 401 told apart from a 403 and a
//! 404 (the credential chain moves on only on 401/403), token-endpoint failures reported rather
//! than swallowed, and tokens keyed by credential so two tenants never share one (crate-apis W4).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};

use super::auth::Auth;
use super::credentials::Credential;
use super::netpolicy::{AddressPolicy, NotAllowed, PolicyResolver};
use crate::reference::{Digest, ImageRef};

/// Every manifest type a tag may point to. The digest of a multi-platform tag is the index's.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifests larger than this are refused (distribution's own limit is 4 MiB).
const MAX_MANIFEST_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry} did not answer within {after:?}")]
    Timeout { registry: String, after: Duration },
    #[error("cannot connect to registry {registry}: {reason}")]
    Connect { registry: String, reason: String },
    #[error("TLS with registry {registry} failed: {reason}; trust its CA with --registry-ca, or list it with --insecure-registry if it speaks plain HTTP")]
    Tls { registry: String, reason: String },
    #[error("request to registry {registry} failed: {reason}")]
    Transport { registry: String, reason: String },
    #[error("manifest not found (404) in {registry}: check the image name and tag")]
    NotFound { registry: String },
    #[error("registry {registry} refused {credential} (401): give tagpin credentials that can pull this image")]
    Unauthorized {
        registry: String,
        credential: String,
    },
    #[error("registry {registry} denied {credential} access (403): give tagpin credentials that can pull this image")]
    Forbidden {
        registry: String,
        credential: String,
    },
    #[error("registry {registry} is rate limiting (429){}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        registry: String,
        retry_after: Option<Duration>,
    },
    #[error("registry {registry} answered {status}")]
    Server { registry: String, status: u16 },
    #[error("registry {registry} sent a bad answer: {reason}")]
    BadAnswer { registry: String, reason: String },
    #[error("token endpoint for {registry} failed: {reason}")]
    Token { registry: String, reason: String },
    #[error("registry {registry}: address not allowed ({kind}); allow it with --allow-registry-cidr or name it in --insecure-registry")]
    NotAllowed {
        registry: String,
        kind: &'static str,
    },
    #[error("cannot reach registry {registry}: {reason} (a limit of tagpin's own, not the registry's fault)")]
    Local {
        registry: String,
        reason: &'static str,
    },
    #[error("registry {registry}: redirect refused ({reason})")]
    Redirect {
        registry: String,
        reason: &'static str,
    },
}

impl RegistryError {
    /// A failure of the registry itself (as opposed to an answer about this image): these open
    /// the circuit breaker and allow a last known digest to be served.
    pub fn is_outage(&self) -> bool {
        !matches!(
            self,
            Self::NotFound { .. }
                | Self::Unauthorized { .. }
                | Self::Forbidden { .. }
                | Self::NotAllowed { .. }
                | Self::Redirect { .. }
                | Self::Local { .. }
        )
    }

    /// Whether the next credential in the chain should be tried.
    pub fn is_auth_refusal(&self) -> bool {
        matches!(self, Self::Unauthorized { .. } | Self::Forbidden { .. })
    }

    /// Short outcome label for metrics (bounded set).
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Connect { .. } | Self::Transport { .. } => "unreachable",
            Self::Tls { .. } => "tls_error",
            Self::NotFound { .. } => "not_found",
            Self::Unauthorized { .. } | Self::Forbidden { .. } | Self::Token { .. } => "denied",
            Self::RateLimited { .. } => "rate_limited",
            Self::Server { .. } => "server_error",
            Self::BadAnswer { .. } => "bad_answer",
            Self::NotAllowed { .. } | Self::Redirect { .. } => "not_allowed",
            Self::Local { .. } => "local_limit",
        }
    }
}

/// Settings for reaching registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// `host[:port]` of registries spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Extra CA certificates (PEM bundle) trusted besides the system's.
    pub extra_ca_pem: Option<Vec<u8>>,
    pub connect_timeout: Duration,
    /// Upper bound for one HTTP request.
    pub request_timeout: Duration,
    /// Which addresses may be connected to (`serve` refuses loopback, link-local, metadata).
    pub policy: Arc<AddressPolicy>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("the registry CA bundle holds no usable PEM certificate: {0}")]
    BadCa(String),
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// The HTTP side every registry request shares: the client, which registries are plain HTTP,
/// and how a transport failure is described.
pub struct Http {
    client: reqwest::Client,
    insecure: HashSet<String>,
    timeout: Duration,
    policy: Arc<AddressPolicy>,
}

impl Http {
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Whether `registry` (`host[:port]`) is spoken to over plain HTTP.
    pub fn is_insecure(&self, registry: &str) -> bool {
        self.insecure.contains(&registry.to_ascii_lowercase())
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends a request (after checking its host against the address policy), describing a
    /// transport failure for `registry`.
    pub async fn send(
        &self,
        registry: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let req = req
            .build()
            .map_err(|e| classify(registry, &e, self.timeout))?;
        if let Some(host) = req.url().host_str() {
            self.policy
                .check_host(host, req.url().port())
                .map_err(|kind| RegistryError::NotAllowed {
                    registry: registry.to_string(),
                    kind,
                })?;
        }
        self.client
            .execute(req)
            .await
            .map_err(|e| classify(registry, &e, self.timeout))
    }

    fn base_url(&self, registry: &str) -> String {
        let scheme = if self.is_insecure(registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{registry}")
    }
}

pub struct RegistryClient {
    http: Http,
    auth: Auth,
}

impl RegistryClient {
    pub fn new(opts: &RegistryOptions) -> Result<Self, ClientBuildError> {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("tagpin/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(opts.connect_timeout)
            .timeout(opts.request_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .dns_resolver(Arc::new(PolicyResolver(opts.policy.clone())))
            .redirect(redirect_policy(opts.policy.clone(), &opts.insecure));
        if let Some(pem) = &opts.extra_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientBuildError::BadCa(e.to_string()))?;
            if certs.is_empty() {
                return Err(ClientBuildError::BadCa("no CERTIFICATE block".into()));
            }
            b = b.tls_certs_merge(certs);
        }
        let client = b
            .build()
            .map_err(|e| ClientBuildError::Build(error_chain(&e)))?;
        Ok(Self {
            http: Http {
                client,
                insecure: opts
                    .insecure
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                timeout: opts.request_timeout,
                policy: opts.policy.clone(),
            },
            auth: Auth::default(),
        })
    }

    /// The digest the tag of `image` points to, asked with `cred`: a HEAD, answering one 401
    /// challenge; a GET only when the HEAD carries no digest.
    pub async fn manifest_digest(
        &self,
        image: &ImageRef,
        cred: &Credential,
    ) -> Result<Digest, RegistryError> {
        let registry = image.registry();
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.http.base_url(registry),
            image.repository(),
            image.tag()
        );
        let mut auth = self.auth.preemptive(image, cred).await;
        let mut challenged = false;
        loop {
            let req = with_auth(self.http.client.head(&url), auth.as_deref());
            let resp = self
                .http
                .send(registry, req.header(ACCEPT, ACCEPT_MANIFESTS))
                .await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let answer = self.auth.answer(&self.http, image, cred, resp.headers());
                auth = Some(answer.await?);
                continue;
            }
            return match status {
                StatusCode::OK => match resp.headers().get("docker-content-digest") {
                    Some(v) if !v.is_empty() => header_digest(registry, v),
                    _ => {
                        self.get_and_hash(registry, &url, auth.as_deref(), cred)
                            .await
                    }
                },
                // A registry that does not take HEAD (405, 400…) answers a GET: not an outage.
                s if s.is_client_error()
                    && !matches!(
                        s,
                        StatusCode::UNAUTHORIZED
                            | StatusCode::FORBIDDEN
                            | StatusCode::NOT_FOUND
                            | StatusCode::TOO_MANY_REQUESTS
                    ) =>
                {
                    self.get_and_hash(registry, &url, auth.as_deref(), cred)
                        .await
                }
                s => Err(status_error(registry, s, resp.headers(), cred)),
            };
        }
    }

    /// No digest header on HEAD: GET the manifest and hash the exact bytes served, as they
    /// arrive (the body is never held: a registry trickling large manifests to many lookups
    /// costs no memory).
    async fn get_and_hash(
        &self,
        registry: &str,
        url: &str,
        auth: Option<&str>,
        cred: &Credential,
    ) -> Result<Digest, RegistryError> {
        let req = with_auth(self.http.client.get(url), auth);
        let mut resp = self
            .http
            .send(registry, req.header(ACCEPT, ACCEPT_MANIFESTS))
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(status_error(registry, resp.status(), resp.headers(), cred));
        }
        let mut hasher = Sha256::new();
        let mut len = 0usize;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| classify(registry, &e, self.http.timeout))?
        {
            len += chunk.len();
            if len > MAX_MANIFEST_BYTES {
                return Err(too_large(registry, MAX_MANIFEST_BYTES));
            }
            hasher.update(&chunk);
        }
        if len == 0 {
            return Err(RegistryError::BadAnswer {
                registry: registry.to_string(),
                reason: "empty manifest body and no Docker-Content-Digest".into(),
            });
        }
        Ok(Digest::Sha256(hasher.finalize().into()))
    }

    /// Forgets tokens and what was learnt about registries' auth schemes.
    pub fn clear(&self) {
        self.auth.clear();
    }
}

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 3;

/// Why a redirect was not followed (the short cause in [`RegistryError::Redirect`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RedirectRefused(&'static str);

/// Redirects: at most 3, to https only (or to a registry named in `--insecure-registry`), each
/// target checked against the address policy. reqwest drops `Authorization` when a redirect
/// leaves the host, so a credential never follows one.
fn redirect_policy(policy: Arc<AddressPolicy>, insecure: &[String]) -> reqwest::redirect::Policy {
    let insecure: HashSet<String> = insecure.iter().map(|h| h.to_ascii_lowercase()).collect();
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(RedirectRefused("more than 3 redirects"));
        }
        let url = attempt.url();
        let host = url.host_str().unwrap_or("");
        let hostport = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        if url.scheme() != "https" && !insecure.contains(&hostport.to_ascii_lowercase()) {
            return attempt.error(RedirectRefused("not https"));
        }
        if let Err(kind) = policy.check_host(host, url.port()) {
            return attempt.error(NotAllowed { kind });
        }
        attempt.follow()
    })
}

fn with_auth(req: reqwest::RequestBuilder, auth: Option<&str>) -> reqwest::RequestBuilder {
    match auth {
        Some(a) => req.header(AUTHORIZATION, a),
        None => req,
    }
}

fn header_digest(
    registry: &str,
    v: &reqwest::header::HeaderValue,
) -> Result<Digest, RegistryError> {
    let raw = v.to_str().unwrap_or("<not text>");
    Digest::parse(raw.trim()).ok_or_else(|| RegistryError::BadAnswer {
        registry: registry.to_string(),
        reason: format!(
            "Docker-Content-Digest {:?} is not a valid digest",
            raw.chars().take(80).collect::<String>()
        ),
    })
}

fn too_large(registry: &str, limit: usize) -> RegistryError {
    RegistryError::BadAnswer {
        registry: registry.to_string(),
        reason: format!("response larger than {limit} bytes"),
    }
}

/// How a credential is named in messages (never its secret).
pub fn describe(cred: &Credential) -> String {
    if cred.is_anonymous() {
        "anonymous access".to_string()
    } else {
        format!("the credential from {}", cred.source)
    }
}

/// The error for a non-success status answered to `cred`.
pub fn status_error(
    registry: &str,
    status: StatusCode,
    headers: &HeaderMap,
    cred: &Credential,
) -> RegistryError {
    let registry = registry.to_string();
    match status {
        StatusCode::NOT_FOUND => RegistryError::NotFound { registry },
        StatusCode::UNAUTHORIZED => RegistryError::Unauthorized {
            registry,
            credential: describe(cred),
        },
        StatusCode::FORBIDDEN => RegistryError::Forbidden {
            registry,
            credential: describe(cred),
        },
        StatusCode::TOO_MANY_REQUESTS => RegistryError::RateLimited {
            registry,
            retry_after: headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now())),
        },
        s if s.is_server_error() => RegistryError::Server {
            registry,
            status: s.as_u16(),
        },
        s => RegistryError::BadAnswer {
            registry,
            reason: format!("unexpected status {s}"),
        },
    }
}

/// `Retry-After` is either delay-seconds or an HTTP date.
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A response body up to `limit` bytes.
pub async fn read_limited(
    registry: &str,
    mut resp: reqwest::Response,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| classify(registry, &e, timeout))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large(registry, limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The whole cause chain of an error, one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// A transport failure as a short cause: never the raw error text, which can quote what the
/// other end sent (a certificate's names, an internal host's banner).
fn classify(registry: &str, e: &reqwest::Error, timeout: Duration) -> RegistryError {
    let registry = registry.to_string();
    let mut refused_address = None;
    let mut redirect = None;
    let mut tls = None;
    let mut io_kind = None;
    let mut no_fds = false;
    let mut dns = false;
    // io::Error::source() skips the error it wraps, so look inside io errors explicitly, however
    // deeply they nest (hyper-util wraps tokio-rustls's io::Error, which wraps rustls's error).
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let mut inside = vec![err];
        while let Some(io) = inside
            .last()
            .and_then(|x| x.downcast_ref::<std::io::Error>())
        {
            io_kind.get_or_insert(io.kind());
            // EMFILE, ENFILE: out of file descriptors, here.
            no_fds |= matches!(io.raw_os_error(), Some(23 | 24));
            match io.get_ref() {
                Some(i) if inside.len() < 8 => inside.push(i),
                _ => break,
            }
        }
        for x in inside {
            if let Some(n) = x.downcast_ref::<NotAllowed>() {
                refused_address = Some(n.kind);
            }
            if let Some(r) = x.downcast_ref::<RedirectRefused>() {
                redirect = Some(r.0);
            }
            if let Some(t) = x.downcast_ref::<rustls::Error>() {
                tls = Some(tls_cause(t));
            }
        }
        let text = err.to_string().to_ascii_lowercase();
        dns |= text.contains("dns error") || text.contains("failed to lookup address");
        if tls.is_none() && (text.contains("certificate") || text.contains("handshake")) {
            tls = Some("TLS handshake failed");
        }
        cur = err.source();
    }
    if let Some(kind) = refused_address {
        return RegistryError::NotAllowed { registry, kind };
    }
    if let Some(reason) = redirect {
        return RegistryError::Redirect { registry, reason };
    }
    if no_fds {
        return RegistryError::Local {
            registry,
            reason: "no file descriptors left",
        };
    }
    if e.is_timeout() {
        return RegistryError::Timeout {
            registry,
            after: timeout,
        };
    }
    if let Some(cause) = tls {
        return RegistryError::Tls {
            registry,
            reason: cause.to_string(),
        };
    }
    let reason = match io_kind {
        _ if dns => "name not resolved",
        Some(std::io::ErrorKind::ConnectionRefused) => "connection refused",
        Some(std::io::ErrorKind::ConnectionReset) => "connection reset",
        Some(std::io::ErrorKind::TimedOut) => "timed out",
        _ if e.is_connect() => "cannot connect",
        _ => "connection failed",
    };
    if e.is_connect() || dns {
        RegistryError::Connect {
            registry,
            reason: reason.into(),
        }
    } else {
        RegistryError::Transport {
            registry,
            reason: reason.into(),
        }
    }
}

fn tls_cause(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
            ..
        }) => "TLS certificate not valid for this host",
        rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
        | rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. }) => {
            "TLS certificate expired"
        }
        rustls::Error::InvalidCertificate(_) => "TLS certificate not trusted",
        _ => "TLS handshake failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn outage_classification() {
        let r = || "r".to_string();
        assert!(!RegistryError::NotFound { registry: r() }.is_outage());
        assert!(RegistryError::Server {
            registry: r(),
            status: 503
        }
        .is_outage());
        assert!(RegistryError::Unauthorized {
            registry: r(),
            credential: r()
        }
        .is_auth_refusal());
        assert!(!RegistryError::Timeout {
            registry: r(),
            after: Duration::ZERO
        }
        .is_auth_refusal());
    }
}
