//! Manifest requests: one HEAD per tag (GET and hash only when the registry sends no digest).
//! Authentication (challenges, tokens) is in `auth.rs`; the HTTP client, its errors and its
//! limits, which both use, are in `http.rs`.
//!
//! This speaks the distribution API over reqwest directly rather than through
//! `oci_client::Client::fetch_manifest_digest`, because tagpin needs what that call hides: the
//! `Retry-After` of a 429 (it sets the breaker's cool-down), a 401 told apart from a 403 and a
//! 404 (the credential chain moves on only on 401/403), token-endpoint failures reported rather
//! than swallowed, and tokens keyed by credential so two tenants never share one (oci-client keeps one
//! credential per registry, the first one stored, and shares its token cache across them).

use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};

use super::auth::Auth;
use super::credentials::Credential;
use super::http::{
    response_too_large, status_error, transport_error, ClientBuildError, Http, RegistryError,
    RegistryOptions,
};
use crate::reference::{Digest, ImageRef};

/// Every manifest type a tag may point to. The digest of a multi-platform tag is the index's.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifests larger than this are refused (distribution's own limit is 4 MiB).
const MAX_MANIFEST_BYTES: usize = 4 << 20;

pub struct RegistryClient {
    http: Http,
    auth: Auth,
}

impl RegistryClient {
    pub fn new(opts: &RegistryOptions) -> Result<Self, ClientBuildError> {
        Ok(Self {
            http: Http::new(opts)?,
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
            let req = with_auth(self.http.client().head(&url), auth.as_deref());
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
        let req = with_auth(self.http.client().get(url), auth);
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
            .map_err(|e| transport_error(registry, &e, self.http.timeout()))?
        {
            len += chunk.len();
            if len > MAX_MANIFEST_BYTES {
                return Err(response_too_large(registry, MAX_MANIFEST_BYTES));
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
