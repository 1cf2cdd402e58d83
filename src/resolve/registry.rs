//! Talks to registries: one manifest HEAD per tag (GET and hash only when the registry sends no
//! digest), Basic and Bearer-token auth, tokens reused until they expire.
//!
//! This speaks the distribution API over reqwest directly rather than through
//! `oci_client::Client::fetch_manifest_digest`, because tagpin needs what that call hides: the
//! `Retry-After` of a 429 (it sets the breaker's cool-down), a 401 told apart from a 403 and a
//! 404 (the credential chain moves on only on 401/403), token-endpoint failures reported rather
//! than swallowed, and tokens keyed by credential so two tenants never share one (crate-apis W4).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde::Deserialize;

use super::credentials::{Credential, Secret};
use crate::reference::{Digest, ImageRef};

/// Every manifest type a tag may point to. The digest of a multi-platform tag is the index's.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifests larger than this are refused (distribution's own limit is 4 MiB).
const MAX_MANIFEST_BYTES: usize = 4 << 20;
const MAX_TOKEN_BYTES: usize = 1 << 20;

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
}

impl RegistryError {
    /// A failure of the registry itself (as opposed to an answer about this image): these open
    /// the circuit breaker and allow a last known digest to be served.
    pub fn is_outage(&self) -> bool {
        !matches!(
            self,
            Self::NotFound { .. } | Self::Unauthorized { .. } | Self::Forbidden { .. }
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
}

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("the registry CA bundle holds no usable PEM certificate: {0}")]
    BadCa(String),
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

#[derive(Hash, PartialEq, Eq, Clone)]
struct TokenKey {
    registry: String,
    repository: String,
    credential: String,
}

struct CachedToken {
    token: String,
    expires: Instant,
}

pub struct RegistryClient {
    http: reqwest::Client,
    insecure: HashSet<String>,
    tokens: Mutex<HashMap<TokenKey, CachedToken>>,
    /// Registries that answered with a Basic challenge: Basic is then sent up front.
    basic_hosts: Mutex<HashSet<String>>,
    request_timeout: Duration,
}

impl RegistryClient {
    pub fn new(opts: &RegistryOptions) -> Result<Self, ClientBuildError> {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("tagpin/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(opts.connect_timeout)
            .timeout(opts.request_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(pem) = &opts.extra_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientBuildError::BadCa(e.to_string()))?;
            if certs.is_empty() {
                return Err(ClientBuildError::BadCa("no CERTIFICATE block".into()));
            }
            b = b.tls_certs_merge(certs);
        }
        let http = b
            .build()
            .map_err(|e| ClientBuildError::Build(error_chain(&e)))?;
        Ok(Self {
            http,
            insecure: opts
                .insecure
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            tokens: Mutex::new(HashMap::new()),
            basic_hosts: Mutex::new(HashSet::new()),
            request_timeout: opts.request_timeout,
        })
    }

    fn base_url(&self, registry: &str) -> String {
        let scheme = if self.insecure.contains(&registry.to_ascii_lowercase()) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{registry}")
    }

    /// The digest the tag of `image` points to, asked with `cred`.
    pub async fn manifest_digest(
        &self,
        image: &ImageRef,
        cred: &Credential,
    ) -> Result<Digest, RegistryError> {
        let registry = image.registry();
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.base_url(registry),
            image.repository(),
            image.tag()
        );
        let mut auth = self.preemptive_auth(image, cred);
        let mut challenged = false;
        loop {
            let mut req = self.http.head(&url).header(ACCEPT, ACCEPT_MANIFESTS);
            if let Some(a) = &auth {
                req = req.header(AUTHORIZATION, a);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| classify(registry, &e, self.request_timeout))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                auth = Some(self.answer_challenge(image, cred, resp.headers()).await?);
                continue;
            }
            return match status {
                StatusCode::OK => match resp.headers().get("docker-content-digest") {
                    Some(v) if !v.is_empty() => {
                        let raw = v.to_str().unwrap_or("<not text>");
                        Digest::parse(raw.trim()).ok_or_else(|| RegistryError::BadAnswer {
                            registry: registry.to_string(),
                            reason: format!("Docker-Content-Digest {raw:?} is not a valid digest"),
                        })
                    }
                    _ => self.get_and_hash(registry, &url, auth.as_deref()).await,
                },
                s => Err(status_error(registry, s, resp.headers(), cred)),
            };
        }
    }

    /// No digest header on HEAD: GET the manifest and hash the exact bytes served.
    async fn get_and_hash(
        &self,
        registry: &str,
        url: &str,
        auth: Option<&str>,
    ) -> Result<Digest, RegistryError> {
        let mut req = self.http.get(url).header(ACCEPT, ACCEPT_MANIFESTS);
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| classify(registry, &e, self.request_timeout))?;
        if resp.status() != StatusCode::OK {
            let anon = Credential::anonymous();
            return Err(status_error(registry, resp.status(), resp.headers(), &anon));
        }
        let body = read_limited(registry, resp, MAX_MANIFEST_BYTES, self.request_timeout).await?;
        if body.is_empty() {
            return Err(RegistryError::BadAnswer {
                registry: registry.to_string(),
                reason: "empty manifest body and no Docker-Content-Digest".into(),
            });
        }
        Ok(Digest::sha256_of(&body))
    }

    fn token_key(image: &ImageRef, cred: &Credential) -> TokenKey {
        TokenKey {
            registry: image.registry().to_string(),
            repository: image.repository().to_string(),
            credential: cred.id().to_string(),
        }
    }

    fn preemptive_auth(&self, image: &ImageRef, cred: &Credential) -> Option<String> {
        let key = Self::token_key(image, cred);
        if let Ok(tokens) = self.tokens.lock() {
            if let Some(t) = tokens.get(&key).filter(|t| t.expires > Instant::now()) {
                return Some(format!("Bearer {}", t.token));
            }
        }
        match &cred.secret {
            Secret::Bearer(t) => Some(format!("Bearer {t}")),
            Secret::Basic { username, password }
                if self
                    .basic_hosts
                    .lock()
                    .is_ok_and(|h| h.contains(image.registry())) =>
            {
                Some(basic(username, password))
            }
            _ => None,
        }
    }

    async fn answer_challenge(
        &self,
        image: &ImageRef,
        cred: &Credential,
        headers: &HeaderMap,
    ) -> Result<String, RegistryError> {
        let registry = image.registry();
        let unauthorized = || RegistryError::Unauthorized {
            registry: registry.to_string(),
            credential: describe(cred),
        };
        let Some(challenge) = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(Challenge::parse)
            .min_by_key(|c| if c.scheme == "bearer" { 0 } else { 1 })
        else {
            return Err(unauthorized());
        };
        match (challenge.scheme.as_str(), &cred.secret) {
            ("basic", Secret::Basic { username, password }) => {
                if let Ok(mut h) = self.basic_hosts.lock() {
                    h.insert(registry.to_string());
                }
                Ok(basic(username, password))
            }
            ("bearer", _) => self.fetch_token(image, cred, &challenge).await,
            _ => Err(unauthorized()),
        }
    }

    async fn fetch_token(
        &self,
        image: &ImageRef,
        cred: &Credential,
        challenge: &Challenge,
    ) -> Result<String, RegistryError> {
        let registry = image.registry();
        let token_err = |reason: String| RegistryError::Token {
            registry: registry.to_string(),
            reason,
        };
        let realm = challenge
            .params
            .get("realm")
            .ok_or_else(|| token_err("Bearer challenge without a realm".into()))?;
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| token_err(format!("realm {realm:?} is not a URL: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = challenge.params.get("service") {
                q.append_pair("service", service);
            }
            q.append_pair("scope", &format!("repository:{}:pull", image.repository()));
        }
        let mut req = self.http.get(url);
        match &cred.secret {
            Secret::Basic { username, password } => {
                req = req.header(AUTHORIZATION, basic(username, password))
            }
            Secret::Bearer(t) => req = req.header(AUTHORIZATION, format!("Bearer {t}")),
            Secret::Anonymous => {}
        }
        let resp = req
            .send()
            .await
            .map_err(|e| classify(registry, &e, self.request_timeout))?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => {
                return Err(RegistryError::Unauthorized {
                    registry: registry.to_string(),
                    credential: describe(cred),
                })
            }
            StatusCode::FORBIDDEN => {
                return Err(RegistryError::Forbidden {
                    registry: registry.to_string(),
                    credential: describe(cred),
                })
            }
            s => return Err(status_error(registry, s, resp.headers(), cred)),
        }
        let body = read_limited(registry, resp, MAX_TOKEN_BYTES, self.request_timeout).await?;
        #[derive(Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| token_err(format!("token response is not JSON: {e}")))?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| token_err("token response holds no token".into()))?;
        // The distribution spec's default lifetime is 60 s; keep a margin for clock and latency.
        let life = Duration::from_secs(parsed.expires_in.unwrap_or(60).clamp(1, 86_400));
        let margin = (life / 10).min(Duration::from_secs(10));
        if let Ok(mut tokens) = self.tokens.lock() {
            if tokens.len() >= 10_000 {
                let now = Instant::now();
                tokens.retain(|_, t| t.expires > now);
                if tokens.len() >= 10_000 {
                    tokens.clear();
                }
            }
            tokens.insert(
                Self::token_key(image, cred),
                CachedToken {
                    token: token.clone(),
                    expires: Instant::now() + life - margin,
                },
            );
        }
        Ok(format!("Bearer {token}"))
    }
}

fn describe(cred: &Credential) -> String {
    if cred.is_anonymous() {
        "anonymous access".to_string()
    } else {
        format!("the credential from {}", cred.source)
    }
}

fn basic(username: &str, password: &str) -> String {
    use base64::Engine as _;
    let raw = format!("{username}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn status_error(
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

async fn read_limited(
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
            return Err(RegistryError::BadAnswer {
                registry: registry.to_string(),
                reason: format!("response larger than {limit} bytes"),
            });
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

fn classify(registry: &str, e: &reqwest::Error, timeout: Duration) -> RegistryError {
    let registry = registry.to_string();
    // io::Error::source() skips the error it wraps, so look inside io errors explicitly.
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut tls = false;
    while let Some(s) = cur {
        let inner = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        if s.downcast_ref::<rustls::Error>().is_some()
            || inner.is_some_and(|i| i.downcast_ref::<rustls::Error>().is_some())
        {
            tls = true;
        }
        cur = s.source();
    }
    // reqwest's own top line repeats the URL ("error sending request for url (…)"), and
    // hyper-util adds "client error (Connect)"; the registry is named already, keep the causes.
    let full = error_chain(e);
    let reason = full
        .split(": ")
        .filter(|p| !p.starts_with("error sending request") && !p.starts_with("client error ("))
        .collect::<Vec<_>>()
        .join(": ");
    let reason = if reason.is_empty() { full } else { reason };
    // Some layers (hyper-util's connect error) hide the typed rustls error behind a boxed
    // wrapper; its rendering is distinctive enough to recognise.
    let lower = reason.to_ascii_lowercase();
    tls |= lower.contains("peer certificate")
        || lower.contains("certificate verify")
        || lower.contains("handshake")
        || lower.contains("tls");
    if e.is_timeout() {
        RegistryError::Timeout {
            registry,
            after: timeout,
        }
    } else if tls {
        RegistryError::Tls { registry, reason }
    } else if e.is_connect() {
        RegistryError::Connect { registry, reason }
    } else {
        RegistryError::Transport { registry, reason }
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: HashMap<String, String>,
}

impl Challenge {
    fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.is_empty() {
            return None;
        }
        let mut params = HashMap::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                value = chars.by_ref().take_while(|c| *c != ',').collect();
            }
            params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
        Some(Self {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge_with_commas_in_quotes() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["service"], "reg");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
        let c = Challenge::parse(r#"Basic realm="basic-realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert!(Challenge::parse("").is_none());
    }

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
