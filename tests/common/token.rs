//! A registry token server for tests: the Docker Hub / GHCR / Harbor flow. A real
//! `docker-registry` configured with `auth: token` answers 401 with a Bearer challenge naming
//! this server; this server checks Basic credentials and issues a JWT (ES256) for the scope
//! asked, signed by a key whose self-signed certificate is the registry's `rootcertbundle` and
//! travels in the token's `x5c` header (distribution 2.8 verifies the chain to that bundle).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

pub const SERVICE: &str = "tagpin-test-registry";
pub const ISSUER: &str = "tagpin-test-token-issuer";

struct Inner {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    /// user → (password, repositories the user may pull)
    users: HashMap<String, (String, Vec<String>)>,
    requests: AtomicUsize,
    jti: AtomicUsize,
    /// The `expires_in` the token responses say (300 unless set).
    expires_in: std::sync::atomic::AtomicU64,
}

pub struct TokenServer {
    inner: Arc<Inner>,
    /// `http://127.0.0.1:PORT/token`
    pub realm: String,
    /// PEM of the signing certificate: the registry's `rootcertbundle`.
    pub cert_pem: String,
    pub users: Vec<(String, String)>,
}

impl TokenServer {
    /// `users`: (name, password, repositories it may pull).
    pub fn start(users: &[(&str, &str, &[&str])]) -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["tagpin-token-issuer".into()]).unwrap();
        let cert = params.self_signed(&kp).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &kp.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let inner = Arc::new(Inner {
            key,
            cert_der: cert.der().to_vec(),
            users: users
                .iter()
                .map(|(u, p, repos)| {
                    (
                        u.to_string(),
                        (p.to_string(), repos.iter().map(|r| r.to_string()).collect()),
                    )
                })
                .collect(),
            requests: AtomicUsize::new(0),
            jti: AtomicUsize::new(0),
            expires_in: std::sync::atomic::AtomicU64::new(300),
        });
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .with_state(inner.clone());
        let addr = super::fake_kube::serve_in_thread(app);
        Self {
            inner,
            realm: format!("http://{addr}/token"),
            cert_pem: cert.pem(),
            users: users
                .iter()
                .map(|(u, p, _)| (u.to_string(), p.to_string()))
                .collect(),
        }
    }

    /// A token for `repository` with `actions` (the tests push with `["pull", "push"]`).
    pub fn mint(&self, subject: &str, repository: &str, actions: &[&str]) -> String {
        self.inner.jwt(subject, repository, actions)
    }

    /// The lifetime (`expires_in`, seconds) the token responses from now on give their tokens.
    pub fn set_expires_in(&self, seconds: u64) {
        self.inner.expires_in.store(seconds, Ordering::SeqCst);
    }

    /// Token requests served (any outcome).
    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// The registry's `auth:` section.
    pub fn registry_auth_yaml(&self, dir: &std::path::Path) -> String {
        let bundle = dir.join("token-root.pem");
        std::fs::write(&bundle, &self.cert_pem).unwrap();
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm,
            bundle.display()
        )
    }
}

impl Inner {
    fn jwt(&self, subject: &str, repository: &str, actions: &[&str]) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let header = json!({
            "typ": "JWT", "alg": "ES256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let access: Vec<Value> = if actions.is_empty() {
            Vec::new()
        } else {
            vec![json!({"type": "repository", "name": repository, "actions": actions})]
        };
        let claims = json!({
            "iss": ISSUER, "sub": subject, "aud": SERVICE,
            "exp": now + 300, "nbf": now - 60, "iat": now - 60,
            "jti": format!("jti-{}", self.jti.fetch_add(1, Ordering::SeqCst)),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .unwrap();
        format!("{signing_input}.{}", b64(sig.as_ref()))
    }
}

async fn token(
    State(inner): State<Arc<Inner>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    inner.requests.fetch_add(1, Ordering::SeqCst);
    let denied = || {
        (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}),
            ),
        )
            .into_response()
    };
    let Some((user, password)) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        })
    else {
        return denied();
    };
    let Some((want, repos)) = inner.users.get(&user) else {
        return denied();
    };
    if *want != password {
        return denied();
    }
    if q.get("service").map(String::as_str) != Some(SERVICE) {
        return (StatusCode::BAD_REQUEST, "unknown service").into_response();
    }
    // scope=repository:NAME:pull — grant pull when the user may pull NAME, else nothing.
    let (repository, granted) = match q
        .get("scope")
        .and_then(|s| s.strip_prefix("repository:"))
        .and_then(|s| s.rsplit_once(':'))
    {
        Some((name, actions)) if actions.split(',').any(|a| a == "pull") => {
            let ok = repos.iter().any(|r| r == name);
            (name.to_string(), if ok { vec!["pull"] } else { vec![] })
        }
        _ => (String::new(), vec![]),
    };
    let token = inner.jwt(&user, &repository, &granted);
    let expires_in = inner.expires_in.load(Ordering::SeqCst);
    Json(json!({"token": token, "access_token": token, "expires_in": expires_in})).into_response()
}
