//! Where registry credentials come from. Today: a Docker `config.json` (`--docker-config`) and
//! anonymous access. Pull secrets and credential-provider plugins plug into [`CredentialSet`].
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

impl Credential {
    pub fn anonymous() -> Self {
        Self {
            id: "anonymous".into(),
            source: "anonymous".into(),
            secret: Secret::Anonymous,
        }
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
                reason: e.to_string(),
            })?;
        let mut entries = Vec::new();
        for (key, e) in cfg.auths {
            let secret = if let (Some(u), Some(p)) = (&e.username, &e.password) {
                Secret::Basic {
                    username: u.clone(),
                    password: p.clone(),
                }
            } else if let Some(auth) = e.auth.as_deref().filter(|a| !a.is_empty()) {
                let bad = || CredentialError::BadAuth {
                    path: origin.to_path_buf(),
                    registry: key.clone(),
                };
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|_| bad())?;
                let text = String::from_utf8(raw).map_err(|_| bad())?;
                let (u, p) = text.split_once(':').ok_or_else(bad)?;
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
            let credential = Credential::new(format!("{} entry {key:?}", origin.display()), secret);
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
        let host = normalize_host(registry);
        self.entries
            .iter()
            .filter(|e| e.host == host)
            .filter(|e| {
                e.path.is_empty()
                    || repository == e.path
                    || repository
                        .strip_prefix(&e.path)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .map(|e| e.credential.clone())
            .collect()
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

fn normalize_host(host: &str) -> String {
    let h = host.to_ascii_lowercase();
    match h.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => h,
    }
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
}
