//! The HTTP side that manifest requests (`registry.rs`) and token requests (`auth.rs`) share:
//! the client (address policy on every name and redirect, extra CA), the errors a registry
//! answer or a transport failure becomes, and bounded reads of response bodies.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use super::credentials::Credential;
use super::netpolicy::{AddressPolicy, NotAllowed, PolicyResolver};

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

/// How long a connection idle in the pool is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The HTTP side every registry request shares: the client (its pool holds the connections to
/// each registry: one per request in flight over HTTP/1.1, one shared by all over HTTP/2), which
/// registries are plain HTTP, and how a transport failure is described.
pub struct Http {
    client: reqwest::Client,
    insecure: HashSet<String>,
    timeout: Duration,
    policy: Arc<AddressPolicy>,
}

impl Http {
    /// The client for `opts`: the address policy checks every name resolved and every redirect;
    /// `--registry-ca` is trusted besides the system's roots.
    pub fn new(opts: &RegistryOptions) -> Result<Self, ClientBuildError> {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("tagpin/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(opts.connect_timeout)
            .timeout(opts.request_timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
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
            client,
            insecure: opts
                .insecure
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            timeout: opts.request_timeout,
            policy: opts.policy.clone(),
        })
    }

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
    /// transport failure for `registry`. It goes at once: lookups to one registry are not held
    /// back behind each other (on a cold HTTP/2 registry each may open its own connection; the
    /// pool keeps one of them, see docs/operations.md).
    pub async fn send(
        &self,
        registry: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let req = req
            .build()
            .map_err(|e| transport_error(registry, &e, self.timeout))?;
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
            .map_err(|e| transport_error(registry, &e, self.timeout))
    }

    pub fn base_url(&self, registry: &str) -> String {
        let scheme = if self.is_insecure(registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{registry}")
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

/// A response over `limit` bytes.
pub fn response_too_large(registry: &str, limit: usize) -> RegistryError {
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
        .map_err(|e| transport_error(registry, &e, timeout))?
    {
        if body.len() + chunk.len() > limit {
            return Err(response_too_large(registry, limit));
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
pub fn transport_error(registry: &str, e: &reqwest::Error, timeout: Duration) -> RegistryError {
    let registry = registry.to_string();
    let c = Causes::of(e);
    if let Some(kind) = c.refused_address {
        return RegistryError::NotAllowed { registry, kind };
    }
    if let Some(reason) = c.redirect {
        return RegistryError::Redirect { registry, reason };
    }
    if c.no_fds {
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
    if let Some(cause) = c.tls {
        return RegistryError::Tls {
            registry,
            reason: cause.to_string(),
        };
    }
    let reason = match c.io_kind {
        _ if c.dns => "name not resolved",
        Some(std::io::ErrorKind::ConnectionRefused) => "connection refused",
        Some(std::io::ErrorKind::ConnectionReset) => "connection reset",
        Some(std::io::ErrorKind::TimedOut) => "timed out",
        _ if e.is_connect() => "cannot connect",
        _ => "connection failed",
    };
    if e.is_connect() || c.dns {
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

/// What the cause chain of a transport failure says, from every level of it.
#[derive(Default)]
struct Causes {
    refused_address: Option<&'static str>,
    redirect: Option<&'static str>,
    tls: Option<&'static str>,
    io_kind: Option<std::io::ErrorKind>,
    no_fds: bool,
    dns: bool,
}

impl Causes {
    fn of(e: &reqwest::Error) -> Self {
        let mut c = Causes::default();
        // io::Error::source() skips the error it wraps, so look inside io errors explicitly,
        // however deeply they nest (hyper-util wraps tokio-rustls's io::Error, which wraps
        // rustls's error).
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            let mut inside = vec![err];
            while let Some(io) = inside
                .last()
                .and_then(|x| x.downcast_ref::<std::io::Error>())
            {
                c.io_kind.get_or_insert(io.kind());
                // EMFILE, ENFILE: out of file descriptors, here.
                c.no_fds |= matches!(io.raw_os_error(), Some(23 | 24));
                match io.get_ref() {
                    Some(i) if inside.len() < 8 => inside.push(i),
                    _ => break,
                }
            }
            for x in inside {
                if let Some(n) = x.downcast_ref::<NotAllowed>() {
                    c.refused_address = Some(n.kind);
                }
                if let Some(r) = x.downcast_ref::<RedirectRefused>() {
                    c.redirect = Some(r.0);
                }
                if let Some(t) = x.downcast_ref::<rustls::Error>() {
                    c.tls = Some(tls_cause(t));
                }
            }
            let text = err.to_string().to_ascii_lowercase();
            c.dns |= text.contains("dns error") || text.contains("failed to lookup address");
            if c.tls.is_none() && (text.contains("certificate") || text.contains("handshake")) {
                c.tls = Some("TLS handshake failed");
            }
            cur = err.source();
        }
        c
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
