//! Where registry credentials come from, as sets looked up by image: a Docker `config.json`
//! (`--docker-config`), pull secrets (`kubernetes.io/dockerconfigjson` and the legacy
//! `kubernetes.io/dockercfg`), and the `auth` map of a credential-provider plugin's answer.
//! Registry keys match the kubelet's way: a key may be a URL, `*` matches one DNS label, a port
//! must match, and a path is a prefix (whole segments).
//!
//! A credential's secret never leaves this module in a printable form: `Debug` redacts, and the
//! cache identity is a hash.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read docker config {path}: {source}; check --docker-config")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("docker config {path} is not valid JSON ({reason}); it must look like {{\"auths\":{{\"registry\":{{\"auth\":\"…\"}}}}}}")]
    Parse { path: PathBuf, reason: String },
    #[error("docker config {path}: entry {registry:?} has an \"auth\" that is not base64 of user:password")]
    BadAuth { path: PathBuf, registry: String },
    #[error("pull secret {secret} has type {type_:?}; tagpin reads only kubernetes.io/dockerconfigjson and kubernetes.io/dockercfg secrets")]
    SecretType { secret: String, type_: String },
    #[error("pull secret {secret} has no {key:?} key; recreate it with kubectl create secret docker-registry")]
    SecretMissingKey { secret: String, key: &'static str },
    #[error("pull secret {secret}: {key} is not a valid docker config ({reason}); recreate it with kubectl create secret docker-registry")]
    SecretParse {
        secret: String,
        key: &'static str,
        reason: String,
    },
    #[error("pull secret {secret}: entry {registry:?} has an \"auth\" that is not base64 of user:password")]
    SecretBadAuth { secret: String, registry: String },
}

/// A JSON error described without the input's text: serde_json quotes offending values, and
/// those may be passwords.
pub(crate) fn json_reason(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected structure",
        serde_json::error::Category::Eof => "unexpected end",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// What is sent to a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A registry token sent as `Authorization: Bearer` as is.
    Bearer(String),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Anonymous => f.write_str("Anonymous"),
            Secret::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Secret::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// A credential with a stable identity: the cache keys digests and tokens by `id`, so a result
/// obtained with one tenant's secret never answers a request made with another's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    id: Arc<str>,
    /// Where it came from, for messages (`docker config entry "my.reg"`); never the secret.
    pub source: Arc<str>,
    pub secret: Secret,
}

static ANONYMOUS: std::sync::LazyLock<Credential> = std::sync::LazyLock::new(|| Credential {
    id: "anonymous".into(),
    source: "anonymous".into(),
    secret: Secret::Anonymous,
});

impl Credential {
    /// No credential. Every call shares one identity (the digest cache keys hold it, once).
    pub fn anonymous() -> Self {
        ANONYMOUS.clone()
    }

    /// [`Self::anonymous`], borrowed: no reference counts touched (they would be shared by
    /// every thread answering reviews).
    pub fn anonymous_ref() -> &'static Self {
        &ANONYMOUS
    }

    pub fn new(source: impl Into<Arc<str>>, secret: Secret) -> Self {
        let mut h = Sha256::new();
        match &secret {
            Secret::Anonymous => return Self::anonymous(),
            Secret::Basic { username, password } => {
                h.update(b"basic\0");
                h.update(username.as_bytes());
                h.update(b"\0");
                h.update(password.as_bytes());
            }
            Secret::Bearer(t) => {
                h.update(b"bearer\0");
                h.update(t.as_bytes());
            }
        }
        let id = format!("cred-{}", hex::encode(&h.finalize()[..12]));
        Self {
            id: id.into(),
            source: source.into(),
            secret,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The identity as a shared string (cache keys hold this, not a copy).
    pub fn shared_id(&self) -> Arc<str> {
        self.id.clone()
    }

    pub fn is_anonymous(&self) -> bool {
        matches!(self.secret, Secret::Anonymous)
    }
}

/// One `auths` entry after normalization: the registry host (`docker.io` for Docker Hub), an
/// optional repository path prefix, and the credential.
#[derive(Clone, Debug)]
struct Entry {
    host: String,
    path: String,
    credential: Credential,
}

/// A set of credentials from one source, looked up by image.
#[derive(Clone, Debug, Default)]
pub struct CredentialSet {
    entries: Vec<Entry>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

impl CredentialSet {
    /// Reads a Docker `config.json`.
    pub fn from_docker_config_file(path: &Path) -> Result<Self, CredentialError> {
        let bytes = std::fs::read(path).map_err(|source| CredentialError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_docker_config(&bytes, path)
    }

    /// Parses the bytes of a Docker `config.json` (`{"auths": {...}}`); `origin` names it in
    /// messages.
    pub fn from_docker_config(bytes: &[u8], origin: &Path) -> Result<Self, CredentialError> {
        let cfg: DockerConfig =
            serde_json::from_slice(bytes).map_err(|e| CredentialError::Parse {
                path: origin.to_path_buf(),
                reason: json_reason(&e),
            })?;
        Self::from_auths(cfg.auths, &origin.display().to_string()).map_err(|registry| {
            CredentialError::BadAuth {
                path: origin.to_path_buf(),
                registry,
            }
        })
    }

    /// Reads a pull secret's `type` and `data` (values already base64-decoded, as the API's
    /// `ByteString` gives them). `secret` is `namespace/name`, for messages.
    pub fn from_secret(
        secret: &str,
        type_: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, CredentialError> {
        let (key, legacy) = match type_ {
            "kubernetes.io/dockerconfigjson" => (".dockerconfigjson", false),
            "kubernetes.io/dockercfg" => (".dockercfg", true),
            other => {
                return Err(CredentialError::SecretType {
                    secret: secret.to_string(),
                    type_: other.to_string(),
                })
            }
        };
        let bytes = data.get(key).ok_or(CredentialError::SecretMissingKey {
            secret: secret.to_string(),
            key,
        })?;
        let parse_err = |e: serde_json::Error| CredentialError::SecretParse {
            secret: secret.to_string(),
            key,
            reason: json_reason(&e),
        };
        let auths = if legacy {
            // `.dockercfg`: the registry map itself, without the `auths` wrapper.
            serde_json::from_slice::<BTreeMap<String, AuthEntry>>(bytes).map_err(parse_err)?
        } else {
            serde_json::from_slice::<DockerConfig>(bytes)
                .map_err(parse_err)?
                .auths
        };
        Self::from_auths(auths, &format!("pull secret {secret}")).map_err(|registry| {
            CredentialError::SecretBadAuth {
                secret: secret.to_string(),
                registry,
            }
        })
    }

    /// A credential-provider plugin's `auth` map: match pattern → (username, password).
    /// `origin` names the plugin in messages.
    pub fn from_provider_auth(
        auth: impl IntoIterator<Item = (String, String, String)>,
        origin: &str,
    ) -> Self {
        let mut entries: Vec<Entry> = auth
            .into_iter()
            .map(|(key, username, password)| {
                let (host, path) = normalize_key(&key);
                Entry {
                    host,
                    path,
                    credential: Credential::new(
                        format!("{origin} entry {key:?}"),
                        Secret::Basic { username, password },
                    ),
                }
            })
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.path.len()));
        Self { entries }
    }

    /// `Err(key)` names an entry whose `auth` is not base64 of `user:password`.
    fn from_auths(auths: BTreeMap<String, AuthEntry>, origin: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (key, e) in auths {
            let secret = if let (Some(u), Some(p)) = (&e.username, &e.password) {
                Secret::Basic {
                    username: u.clone(),
                    password: p.clone(),
                }
            } else if let Some(auth) = e.auth.as_deref().filter(|a| !a.is_empty()) {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|_| key.clone())?;
                let text = String::from_utf8(raw).map_err(|_| key.clone())?;
                let (u, p) = text.split_once(':').ok_or_else(|| key.clone())?;
                Secret::Basic {
                    username: u.to_string(),
                    password: p.to_string(),
                }
            } else if let Some(t) = e.registrytoken.filter(|t| !t.is_empty()) {
                Secret::Bearer(t)
            } else {
                continue; // e.g. an entry that only names a credential helper
            };
            let (host, path) = normalize_key(&key);
            let credential = Credential::new(format!("{origin} entry {key:?}"), secret);
            entries.push(Entry {
                host,
                path,
                credential,
            });
        }
        // Most specific first, as the kubelet's keyring orders them.
        entries.sort_by_key(|e| std::cmp::Reverse(e.path.len()));
        Ok(Self { entries })
    }

    /// Credentials that apply to an image at `registry` (the API host, as
    /// [`crate::reference::ImageRef::registry`] gives it) and `repository`, most specific first.
    pub fn matching(&self, registry: &str, repository: &str) -> Vec<Credential> {
        // Most sets are empty (no docker config, no pull secrets): no host to spell out.
        if self.entries.is_empty() {
            return Vec::new();
        }
        let host = normalize_host(registry);
        self.entries
            .iter()
            .filter(|e| host_matches(&e.host, &host) && path_matches(&e.path, repository))
            .map(|e| e.credential.clone())
            .collect()
    }

    /// Appends `other`'s entries after this set's (a later source, tried later).
    pub fn extend(&mut self, other: &CredentialSet) {
        self.entries.extend(other.entries.iter().cloned());
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `https://index.docker.io/v1/` → (`docker.io`, ``); `my.reg:5000/team` → (`my.reg:5000`, `team`).
fn normalize_key(key: &str) -> (String, String) {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let (host, path) = k.split_once('/').unwrap_or((k, ""));
    let path = path.trim_matches('/');
    // `/v1/` and `/v2/` in keys are API versions, not repository paths.
    let path = if matches!(path, "v1" | "v2") {
        ""
    } else {
        path
    };
    (normalize_host(host), path.to_string())
}

/// Whether `repository` lies under the key's path (whole segments; empty matches all).
fn path_matches(prefix: &str, repository: &str) -> bool {
    prefix.is_empty()
        || repository == prefix
        || repository
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The kubelet's host rule: same number of DNS labels, each matched as a glob (`*` stays inside
/// one label), and the same port (or none on both sides).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let (p_host, p_port) = split_port(pattern);
    let (h_host, h_port) = split_port(host);
    if p_port != h_port {
        return false;
    }
    let p: Vec<&str> = p_host.split('.').collect();
    let h: Vec<&str> = h_host.split('.').collect();
    p.len() == h.len()
        && p.iter()
            .zip(&h)
            .all(|(p, h)| glob(p.as_bytes(), h.as_bytes()))
}

/// Whether a `matchImages` pattern (`*.dkr.ecr.*.amazonaws.com`, `my.reg:5000/team`) covers an
/// image at `registry`/`repository`.
pub fn image_matches(pattern: &str, registry: &str, repository: &str) -> bool {
    let (host, path) = normalize_key(pattern);
    host_matches(&host, &normalize_host(registry)) && path_matches(&path, repository)
}

fn split_port(host: &str) -> (&str, Option<&str>) {
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (host, None),
    }
}

/// `*` (any run of characters) and `?` (one character), as Go's `filepath.Match` within a label.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

fn normalize_host(host: &str) -> String {
    crate::reference::canonical_host(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(json: &str) -> CredentialSet {
        CredentialSet::from_docker_config(json.as_bytes(), Path::new("cfg.json")).unwrap()
    }

    #[test]
    fn docker_hub_url_key_matches_docker_io_images() {
        let s = set(r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"}}}"#);
        let c = s.matching("index.docker.io", "library/nginx");
        assert_eq!(c.len(), 1);
        assert_eq!(
            c[0].secret,
            Secret::Basic {
                username: "user".into(),
                password: "pass".into()
            }
        );
        assert!(s.matching("ghcr.io", "x/y").is_empty());
    }

    #[test]
    fn username_password_and_ports_and_paths() {
        let s = set(r#"{"auths":{
                "https://my.reg:5000":{"username":"a","password":"p:w"},
                "my.reg:5000/team":{"auth":"dGVhbTpzZWNyZXQ="},
                "other.reg":{"registrytoken":"tok"},
                "helper.only":{}
            }}"#);
        let c = s.matching("my.reg:5000", "team/app");
        assert_eq!(c.len(), 2);
        assert!(matches!(&c[0].secret, Secret::Basic { username, .. } if username == "team"));
        assert!(
            matches!(&c[1].secret, Secret::Basic { username, password } if username == "a" && password == "p:w")
        );
        // A path prefix matches whole segments only.
        assert_eq!(s.matching("my.reg:5000", "teamster/app").len(), 1);
        // The port is part of the registry.
        assert!(s.matching("my.reg", "team/app").is_empty());
        assert!(matches!(
            s.matching("other.reg", "x")[0].secret,
            Secret::Bearer(_)
        ));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn identity_depends_on_secret_and_debug_redacts() {
        let a = Credential::new(
            "x",
            Secret::Basic {
                username: "u".into(),
                password: "one".into(),
            },
        );
        let b = Credential::new(
            "y",
            Secret::Basic {
                username: "u".into(),
                password: "two".into(),
            },
        );
        let a2 = Credential::new(
            "z",
            Secret::Basic {
                username: "u".into(),
                password: "one".into(),
            },
        );
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id(), a2.id());
        assert_eq!(Credential::anonymous().id(), "anonymous");
        let dbg = format!(
            "{a:?}{:?}",
            Credential::new("t", Secret::Bearer("tok-secret".into()))
        );
        assert!(!dbg.contains("one") && !dbg.contains("tok-secret"), "{dbg}");
    }

    #[test]
    fn bad_configs_name_the_file() {
        let e =
            CredentialSet::from_docker_config(b"{nope", Path::new("/etc/cfg.json")).unwrap_err();
        assert!(e.to_string().contains("/etc/cfg.json"), "{e}");
        let e = CredentialSet::from_docker_config(
            br#"{"auths":{"r":{"auth":"!!!"}}}"#,
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"r\""), "{e}");
    }

    fn data(key: &str, json: &str) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([(key.to_string(), json.as_bytes().to_vec())])
    }

    #[test]
    fn pull_secrets_of_both_types_are_read() {
        let json = data(
            ".dockerconfigjson",
            r#"{"auths":{"https://my.reg:5000":{"username":"u","password":"p"}}}"#,
        );
        let s =
            CredentialSet::from_secret("team-a/regcred", "kubernetes.io/dockerconfigjson", &json)
                .unwrap();
        let c = s.matching("my.reg:5000", "app");
        assert_eq!(c.len(), 1);
        assert_eq!(
            &*c[0].source,
            "pull secret team-a/regcred entry \"https://my.reg:5000\""
        );
        // Legacy: the registry map itself, no "auths" wrapper; "auth" is base64(user:pass).
        let cfg = data(
            ".dockercfg",
            r#"{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz","email":"x@y"}}"#,
        );
        let s = CredentialSet::from_secret("team-a/old", "kubernetes.io/dockercfg", &cfg).unwrap();
        assert!(matches!(
            &s.matching("index.docker.io", "library/nginx")[0].secret,
            Secret::Basic { username, password } if username == "user" && password == "pass"
        ));
        // The wrong key for the type, another type, a bad auth: each names the secret.
        let e = CredentialSet::from_secret("team-a/old", "kubernetes.io/dockerconfigjson", &cfg)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "pull secret team-a/old has no \".dockerconfigjson\" key; recreate it with kubectl create secret docker-registry"
        );
        let e = CredentialSet::from_secret("team-a/tls", "kubernetes.io/tls", &cfg).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("pull secret team-a/tls has type \"kubernetes.io/tls\""),
            "{e}"
        );
        let bad = data(".dockercfg", r#"{"r":{"auth":"!!!"}}"#);
        let e = CredentialSet::from_secret("ns/b", "kubernetes.io/dockercfg", &bad).unwrap_err();
        assert!(e.to_string().contains("ns/b: entry \"r\""), "{e}");
    }

    #[test]
    fn parse_errors_never_quote_the_secret() {
        // serde_json would say `invalid type: string "hunter2-secret"`.
        let json = data(".dockerconfigjson", r#"{"auths":{"r":"hunter2-secret"}}"#);
        let e = CredentialSet::from_secret("ns/s", "kubernetes.io/dockerconfigjson", &json)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("unexpected structure at line 1"), "{e}");
        let e = CredentialSet::from_docker_config(
            br#"{"auths":{"r":"hunter2-secret"}}"#,
            Path::new("c.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("hunter2") && e.contains("c.json"), "{e}");
    }

    #[test]
    fn globs_follow_the_kubelet() {
        assert!(image_matches(
            "*.dkr.ecr.*.amazonaws.com",
            "123.dkr.ecr.eu-west-1.amazonaws.com",
            "app"
        ));
        // `*` is one label: it does not swallow dots.
        assert!(!image_matches(
            "*.amazonaws.com",
            "123.dkr.ecr.eu-west-1.amazonaws.com",
            "app"
        ));
        assert!(image_matches("*.gcr.io", "eu.gcr.io", "p/app"));
        assert!(!image_matches("*.gcr.io", "gcr.io", "p/app"));
        assert!(image_matches("gcr.io", "gcr.io", "p/app"));
        assert!(image_matches(
            "reg-*.example.com",
            "reg-eu.example.com",
            "x"
        ));
        // Port must match exactly, including its absence.
        assert!(image_matches("127.0.0.1:5000", "127.0.0.1:5000", "x"));
        assert!(!image_matches("127.0.0.1:5000", "127.0.0.1:5001", "x"));
        assert!(!image_matches("127.0.0.1", "127.0.0.1:5000", "x"));
        assert!(image_matches("127.0.0.*:5000", "127.0.0.1:5000", "x"));
        // Path is a prefix, by whole segments.
        assert!(image_matches("my.reg/team", "my.reg", "team/app"));
        assert!(!image_matches("my.reg/team", "my.reg", "other/app"));
        assert!(image_matches("https://my.reg/team/", "my.reg", "team"));
        // Docker Hub aliases.
        assert!(image_matches(
            "docker.io",
            "index.docker.io",
            "library/nginx"
        ));
        assert!(glob(b"a*b?c", b"axxbyc") && !glob(b"a*b?c", b"axxbc"));
    }

    #[test]
    fn provider_auth_keys_are_globs() {
        let s = CredentialSet::from_provider_auth(
            [(
                "*.example.com".to_string(),
                "u".to_string(),
                "p".to_string(),
            )],
            "credential provider \"test\"",
        );
        assert_eq!(s.matching("reg.example.com", "a/b").len(), 1);
        assert!(s.matching("example.com", "a/b").is_empty());
        assert_eq!(
            &*s.matching("reg.example.com", "a")[0].source,
            "credential provider \"test\" entry \"*.example.com\""
        );
    }
}
