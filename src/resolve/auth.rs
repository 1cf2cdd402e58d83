//! Registry authentication: `WWW-Authenticate` challenges (parsed by the `http-auth` crate),
//! Basic credentials, and Bearer tokens from the challenge's realm, reused until they expire.
//!
//! Tokens are keyed by registry, repository and the credential's identity, so two tenants never
//! share one: a token got with one tenant's pull secret never answers for another's request.
//! Both caches here are moka caches, bounded in size and time: the hosts they are keyed by come
//! from pod specs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use reqwest::header::{HeaderMap, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde::Deserialize;

use super::credentials::{json_reason, Credential, Secret};
use super::http::{describe, read_limited, status_error, Http, RegistryError};
use crate::reference::ImageRef;

const MAX_TOKEN_BYTES: usize = 1 << 20;

/// A challenge a registry sent, reduced to what tagpin answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// The challenges of every `WWW-Authenticate` header, Bearer first. Unparseable headers and
    /// other schemes are left out.
    pub fn from_headers(headers: &HeaderMap) -> Vec<Challenge> {
        let mut out: Vec<Challenge> = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| http_auth::parse_challenges(v).ok())
            .flatten()
            .filter_map(|c| Self::from_ref(&c))
            .collect();
        out.sort_by_key(|c| matches!(c, Challenge::Basic));
        out
    }

    fn from_ref(c: &http_auth::ChallengeRef<'_>) -> Option<Self> {
        let param = |name: &str| {
            c.params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_unescaped())
        };
        if c.scheme.eq_ignore_ascii_case("basic") {
            Some(Self::Basic)
        } else if c.scheme.eq_ignore_ascii_case("bearer") {
            Some(Self::Bearer {
                realm: param("realm")?,
                service: param("service"),
            })
        } else {
            None
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct TokenKey {
    /// `registry/repository`.
    scope: Box<str>,
    credential: Arc<str>,
}

#[derive(Clone)]
struct Token {
    header: Arc<str>,
    life: Duration,
}

struct TokenLife;

impl moka::Expiry<TokenKey, Token> for TokenLife {
    fn expire_after_create(&self, _: &TokenKey, t: &Token, _: Instant) -> Option<Duration> {
        Some(t.life)
    }
}

/// What has been learnt about authenticating to registries.
pub struct Auth {
    tokens: Cache<TokenKey, Token>,
    /// Registries that answered with a Basic challenge: Basic is then sent up front.
    basic_hosts: Cache<Box<str>, ()>,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            tokens: Cache::builder()
                .name("registry-tokens")
                .max_capacity(10_000)
                .expire_after(TokenLife)
                .build(),
            basic_hosts: Cache::builder()
                .name("basic-auth-registries")
                .max_capacity(4_096)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        }
    }
}

fn token_key(image: &ImageRef, cred: &Credential) -> TokenKey {
    TokenKey {
        scope: format!("{}/{}", image.registry(), image.repository()).into(),
        credential: cred.shared_id(),
    }
}

/// `Authorization: Basic …`.
pub fn basic(username: &str, password: &str) -> String {
    use base64::Engine as _;
    let raw = format!("{username}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn secret_header(secret: &Secret) -> Option<String> {
    match secret {
        Secret::Basic { username, password } => Some(basic(username, password)),
        Secret::Bearer(t) => Some(format!("Bearer {t}")),
        Secret::Anonymous => None,
    }
}

impl Auth {
    /// The `Authorization` to send before any challenge: a token obtained earlier for this
    /// repository and credential, a registry token as is, or Basic to a registry known to want it.
    pub async fn preemptive(&self, image: &ImageRef, cred: &Credential) -> Option<String> {
        if let Some(t) = self.tokens.get(&token_key(image, cred)).await {
            return Some(t.header.to_string());
        }
        match &cred.secret {
            Secret::Bearer(t) => Some(format!("Bearer {t}")),
            Secret::Basic { username, password }
                if self.basic_hosts.contains_key(image.registry()) =>
            {
                Some(basic(username, password))
            }
            _ => None,
        }
    }

    /// The `Authorization` answering a 401's challenges with `cred`.
    pub async fn answer(
        &self,
        http: &Http,
        image: &ImageRef,
        cred: &Credential,
        headers: &HeaderMap,
    ) -> Result<String, RegistryError> {
        let registry = image.registry();
        let unauthorized = || RegistryError::Unauthorized {
            registry: registry.to_string(),
            credential: describe(cred),
        };
        match (Challenge::from_headers(headers).first(), &cred.secret) {
            (Some(Challenge::Basic), Secret::Basic { username, password }) => {
                self.basic_hosts.insert(registry.into(), ()).await;
                Ok(basic(username, password))
            }
            (Some(Challenge::Bearer { realm, service }), _) => {
                let token = self
                    .fetch_token(http, image, cred, realm, service.as_deref())
                    .await?;
                Ok(token.to_string())
            }
            _ => Err(unauthorized()),
        }
    }

    /// A token from `realm` for pulling `image`'s repository, sent `cred`'s secret. The realm must
    /// be https unless the registry itself is spoken to over plain HTTP (`--insecure-registry`):
    /// a credential is never sent in clear text to a host the registry names.
    async fn fetch_token(
        &self,
        http: &Http,
        image: &ImageRef,
        cred: &Credential,
        realm: &str,
        service: Option<&str>,
    ) -> Result<Arc<str>, RegistryError> {
        let registry = image.registry();
        let token_err = |reason: String| RegistryError::Token {
            registry: registry.to_string(),
            reason,
        };
        let url = token_url(realm, service, image.repository()).map_err(token_err)?;
        if url.scheme() != "https" && !http.is_insecure(registry) {
            return Err(token_err(format!(
                "the token realm {} is not https; tagpin sends credentials only over https (list the registry with --insecure-registry if it is plain HTTP on purpose)",
                url.host_str().unwrap_or("?")
            )));
        }
        let mut req = http.client().get(url);
        if let Some(h) = secret_header(&cred.secret) {
            req = req.header(AUTHORIZATION, h);
        }
        let resp = http.send(registry, req).await?;
        if resp.status() != StatusCode::OK {
            return Err(status_error(registry, resp.status(), resp.headers(), cred));
        }
        let body = read_limited(registry, resp, MAX_TOKEN_BYTES, http.timeout()).await?;
        let (token, life) = parse_token(&body).map_err(token_err)?;
        let header: Arc<str> = format!("Bearer {token}").into();
        let t = Token {
            header: header.clone(),
            life,
        };
        self.tokens.insert(token_key(image, cred), t).await;
        Ok(header)
    }

    /// Forgets every token and Basic registry.
    pub fn clear(&self) {
        self.tokens.invalidate_all();
        self.basic_hosts.invalidate_all();
    }
}

/// The realm with `service` and the pull `scope` added to its query.
fn token_url(realm: &str, service: Option<&str>, repository: &str) -> Result<reqwest::Url, String> {
    let mut url =
        reqwest::Url::parse(realm).map_err(|e| format!("the token realm is not a URL ({e})"))?;
    {
        let mut q = url.query_pairs_mut();
        if let Some(service) = service {
            q.append_pair("service", service);
        }
        q.append_pair("scope", &format!("repository:{repository}:pull"));
    }
    Ok(url)
}

/// The token and how long to keep it: its `expires_in` (the distribution spec's default is 60 s)
/// less a margin for clock and latency.
fn parse_token(body: &[u8]) -> Result<(String, Duration), String> {
    #[derive(Deserialize)]
    struct TokenResponse {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
        #[serde(default)]
        expires_in: Option<u64>,
    }
    let parsed: TokenResponse = serde_json::from_slice(body)
        .map_err(|e| format!("token response is not JSON ({})", json_reason(&e)))?;
    let token = parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "token response holds no token".to_string())?;
    let life = Duration::from_secs(parsed.expires_in.unwrap_or(60).clamp(1, 86_400));
    let margin = (life / 10).min(Duration::from_secs(10));
    Ok((token, life - margin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(WWW_AUTHENTICATE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_challenges_with_commas_in_quotes_and_bearer_first() {
        let h = headers(&[
            r#"Basic realm="basic-realm""#,
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        ]);
        assert_eq!(
            Challenge::from_headers(&h),
            vec![
                Challenge::Bearer {
                    realm: "https://auth.example/token".into(),
                    service: Some("reg".into())
                },
                Challenge::Basic
            ]
        );
        assert!(Challenge::from_headers(&headers(&["", "Negotiate abc"])).is_empty());
        // A Bearer challenge without a realm cannot be answered.
        assert!(Challenge::from_headers(&headers(&[r#"Bearer service="x""#])).is_empty());
        // Escapes inside quoted strings are undone.
        assert_eq!(
            Challenge::from_headers(&headers(&[r#"Bearer realm="https://a/t\"x""#])),
            vec![Challenge::Bearer {
                realm: r#"https://a/t"x"#.into(),
                service: None
            }]
        );
    }

    #[test]
    fn token_url_adds_service_and_scope() {
        let u = token_url("https://auth.example/token?x=1", Some("reg"), "team/app").unwrap();
        assert_eq!(
            u.as_str(),
            "https://auth.example/token?x=1&service=reg&scope=repository%3Ateam%2Fapp%3Apull"
        );
        assert!(token_url("not a url", None, "a").is_err());
    }

    #[test]
    fn token_lifetimes_and_bad_answers() {
        let (t, life) = parse_token(br#"{"token":"abc","expires_in":300}"#).unwrap();
        assert_eq!((t.as_str(), life), ("abc", Duration::from_secs(290)));
        let (t, life) = parse_token(br#"{"access_token":"x"}"#).unwrap();
        assert_eq!((t.as_str(), life), ("x", Duration::from_secs(54)));
        assert_eq!(
            parse_token(br#"{"token":""}"#).unwrap_err(),
            "token response holds no token"
        );
        // Never quotes the body (it may be a token).
        let e = parse_token(b"secret-ish garbage").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }
}
