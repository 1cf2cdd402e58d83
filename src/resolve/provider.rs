//! Kubelet credential-provider plugins, configured exactly as the kubelet's
//! (`--image-credential-provider-config`, `--image-credential-provider-bin-dir`).
//!
//! For an image matching a provider's `matchImages`, the binary `<bin-dir>/<name>` runs with the
//! provider's `args` and `env`, a `CredentialProviderRequest` on stdin, and answers a
//! `CredentialProviderResponse` on stdout. Answers are cached per `cacheKeyType` (`Image`,
//! `Registry`, `Global`) for `cacheDuration`, else the provider's `defaultCacheDuration`.
//! A plugin that times out, exits non-zero or answers something else is skipped for that image
//! and reported; it never fails the process. Parsing is pure ([`parse_config`],
//! [`parse_response`], [`parse_go_duration`]); only [`Providers::credentials`] runs processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;

use super::credentials::{image_matches, CredentialSet};
use crate::metrics::{Metrics, PluginRunLabels};
use crate::reference::ImageRef;

/// Largest plugin answer read.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

const PROVIDER_API_VERSIONS: [&str; 3] = [
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
];

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot read --image-credential-provider-config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--image-credential-provider-config {path} is not a CredentialProviderConfig: {reason}"
    )]
    Config { path: PathBuf, reason: String },
    #[error("credential provider {name:?}: no executable at {path}; put the plugin binary in --image-credential-provider-bin-dir")]
    Missing { name: String, path: PathBuf },
    #[error("credential provider {name:?} could not be started for {image}: {reason}")]
    Spawn {
        name: String,
        image: String,
        reason: String,
    },
    #[error("credential provider {name:?} timed out after {} for {image}", humantime::format_duration(*after))]
    Timeout {
        name: String,
        image: String,
        after: Duration,
    },
    #[error("credential provider {name:?} exited with {status} for {image}: {stderr}")]
    Exit {
        name: String,
        image: String,
        status: String,
        /// The last line it wrote to stderr.
        stderr: String,
    },
    #[error("credential provider {name:?} gave a bad answer for {image}: {reason}")]
    Response {
        name: String,
        image: String,
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    providers: Vec<SpecFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    name: String,
    #[serde(default)]
    match_images: Vec<String>,
    #[serde(default)]
    default_cache_duration: Option<String>,
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
}

#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// One provider of the config, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderSpec {
    pub name: String,
    pub match_images: Vec<String>,
    pub default_cache_duration: Duration,
    pub api_version: String,
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
}

/// Parses a `CredentialProviderConfig` (YAML or JSON) and checks it as the kubelet does.
/// `origin` names the file in messages.
pub fn parse_config(text: &str, origin: &Path) -> Result<Vec<ProviderSpec>, ProviderError> {
    let bad = |reason: String| ProviderError::Config {
        path: origin.to_path_buf(),
        reason,
    };
    // Only the first line of a YAML error: the rest quotes the file, whose `env` may hold secrets.
    let file: ConfigFile = serde_saphyr::from_str(text)
        .map_err(|e| bad(e.to_string().lines().next().unwrap_or("").to_string()))?;
    if !matches!(
        file.api_version.as_str(),
        "kubelet.config.k8s.io/v1"
            | "kubelet.config.k8s.io/v1beta1"
            | "kubelet.config.k8s.io/v1alpha1"
    ) {
        return Err(bad(format!(
            "apiVersion {:?}, expected kubelet.config.k8s.io/v1",
            file.api_version
        )));
    }
    if file.kind != "CredentialProviderConfig" {
        return Err(bad(format!(
            "kind {:?}, expected CredentialProviderConfig",
            file.kind
        )));
    }
    let mut out: Vec<ProviderSpec> = Vec::new();
    for p in file.providers {
        let name = p.name;
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(bad(format!(
                "provider name {name:?} must be a plain file name in the bin dir"
            )));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(bad(format!("provider {name:?} is listed twice")));
        }
        if p.match_images.is_empty() {
            return Err(bad(format!("provider {name:?} has no matchImages")));
        }
        let d = p
            .default_cache_duration
            .ok_or_else(|| bad(format!("provider {name:?} has no defaultCacheDuration")))?;
        let default_cache_duration = parse_go_duration(&d).ok_or_else(|| {
            bad(format!(
                "provider {name:?}: defaultCacheDuration {d:?} is not a duration such as 10m or 1h30m"
            ))
        })?;
        if !PROVIDER_API_VERSIONS.contains(&p.api_version.as_str()) {
            return Err(bad(format!(
                "provider {name:?}: apiVersion {:?}, expected credentialprovider.kubelet.k8s.io/v1",
                p.api_version
            )));
        }
        out.push(ProviderSpec {
            name,
            match_images: p.match_images,
            default_cache_duration,
            api_version: p.api_version,
            args: p.args,
            env: p.env,
        });
    }
    Ok(out)
}

/// A Go `time.Duration` string (`10m`, `1h30m`, `0s`, `1.5s`, `0`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += n * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// How a plugin's answer is cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheKeyType {
    Image,
    Registry,
    Global,
}

/// A checked `CredentialProviderResponse`.
#[derive(Clone, Debug)]
pub struct ProviderResponse {
    pub cache_key_type: CacheKeyType,
    pub cache_duration: Option<Duration>,
    pub credentials: CredentialSet,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseFile {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    cache_key_type: String,
    #[serde(default)]
    cache_duration: Option<String>,
    #[serde(default)]
    auth: BTreeMap<String, AuthConfig>,
}

#[derive(Deserialize)]
struct AuthConfig {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// Parses a plugin's stdout. The reason on error never quotes the input (it holds passwords).
pub fn parse_response(
    bytes: &[u8],
    expected_api_version: &str,
    provider: &str,
) -> Result<ProviderResponse, String> {
    let r: ResponseFile = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "not a CredentialProviderResponse JSON ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    if r.kind != "CredentialProviderResponse" {
        return Err(format!(
            "kind {:?}, expected CredentialProviderResponse",
            r.kind
        ));
    }
    if r.api_version != expected_api_version {
        return Err(format!(
            "apiVersion {:?}, expected {expected_api_version:?} as configured",
            r.api_version
        ));
    }
    let cache_key_type = match r.cache_key_type.as_str() {
        "Image" => CacheKeyType::Image,
        "Registry" => CacheKeyType::Registry,
        "Global" => CacheKeyType::Global,
        other => {
            return Err(format!(
                "cacheKeyType {other:?}, expected Image, Registry or Global"
            ))
        }
    };
    let cache_duration = match r.cache_duration.as_deref() {
        None | Some("") => None,
        Some(d) => Some(
            parse_go_duration(d).ok_or_else(|| format!("cacheDuration {d:?} is not a duration"))?,
        ),
    };
    let credentials = CredentialSet::from_provider_auth(
        r.auth.into_iter().map(|(k, a)| (k, a.username, a.password)),
        &format!("credential provider {provider:?}"),
    );
    Ok(ProviderResponse {
        cache_key_type,
        cache_duration,
        credentials,
    })
}

/// A plugin's answer, kept for its `cacheDuration`.
#[derive(Clone)]
struct Answer {
    credentials: CredentialSet,
    life: Duration,
}

struct AnswerLife;

impl moka::Expiry<(CacheKeyType, String), Answer> for AnswerLife {
    fn expire_after_create(
        &self,
        _: &(CacheKeyType, String),
        a: &Answer,
        _: Instant,
    ) -> Option<Duration> {
        Some(a.life)
    }
}

struct Provider {
    spec: ProviderSpec,
    path: PathBuf,
    /// `(cacheKeyType, key)` → answer.
    answers: Cache<(CacheKeyType, String), Answer>,
    /// Runs under way, by image: concurrent requests for one image share one run; different
    /// images run in parallel. An entry lives only while its run does.
    runs: Cache<String, CredentialSet>,
}

/// The configured plugins. Share one per process (behind an `Arc`).
pub struct Providers {
    providers: Vec<Provider>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.providers.iter().map(|p| &p.spec.name))
            .finish()
    }
}

/// Answers (and runs) held per provider at once.
const MAX_ANSWERS: u64 = 10_000;

impl Providers {
    /// Reads the config and checks that every provider's binary is in `bin_dir`.
    pub fn load(
        config: &Path,
        bin_dir: &Path,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ProviderError> {
        let text = std::fs::read_to_string(config).map_err(|source| ProviderError::Read {
            path: config.to_path_buf(),
            source,
        })?;
        Self::new(parse_config(&text, config)?, bin_dir, timeout, metrics)
    }

    pub fn new(
        specs: Vec<ProviderSpec>,
        bin_dir: &Path,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ProviderError> {
        let mut providers = Vec::with_capacity(specs.len());
        for spec in specs {
            let path = bin_dir.join(&spec.name);
            if !path.is_file() {
                return Err(ProviderError::Missing {
                    name: spec.name,
                    path,
                });
            }
            providers.push(Provider {
                spec,
                path,
                answers: Cache::builder()
                    .max_capacity(MAX_ANSWERS)
                    .expire_after(AnswerLife)
                    .build(),
                runs: Cache::builder()
                    .max_capacity(MAX_ANSWERS)
                    .time_to_live(timeout + Duration::from_secs(1))
                    .build(),
            });
        }
        Ok(Self {
            providers,
            timeout,
            metrics,
        })
    }

    /// Credentials of every provider whose `matchImages` covers `image`, in config order, and
    /// the failures of those that could not give any.
    pub async fn credentials(
        &self,
        image: &ImageRef,
    ) -> (Vec<CredentialSet>, Vec<Arc<ProviderError>>) {
        let mut sets = Vec::new();
        let mut errors = Vec::new();
        for p in &self.providers {
            let (registry, repository) = (image.registry(), image.repository());
            if !p
                .spec
                .match_images
                .iter()
                .any(|m| image_matches(m, registry, repository))
            {
                continue;
            }
            match p.get(image, self.timeout, &self.metrics).await {
                Ok(set) => sets.push(set),
                Err(e) => errors.push(e),
            }
        }
        (sets, errors)
    }
}

/// The image as the kubelet names it to a plugin: registry and repository, no tag.
fn request_image(image: &ImageRef) -> String {
    format!(
        "{}/{}",
        crate::reference::canonical_host(image.registry()),
        image.repository()
    )
}

/// What a run printed: stdout up to the answer limit, the tail of stderr.
struct Output {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Bytes of a plugin's stderr kept for its error message.
const MAX_STDERR_BYTES: usize = 4 << 10;

impl Provider {
    async fn cached(&self, image: &str, registry: &str) -> Option<CredentialSet> {
        for key in [
            (CacheKeyType::Image, image),
            (CacheKeyType::Registry, registry),
            (CacheKeyType::Global, ""),
        ] {
            if let Some(a) = self.answers.get(&(key.0, key.1.to_string())).await {
                return Some(a.credentials);
            }
        }
        None
    }

    async fn get(
        &self,
        image: &ImageRef,
        timeout: Duration,
        metrics: &Metrics,
    ) -> Result<CredentialSet, Arc<ProviderError>> {
        let name = request_image(image);
        let registry = name.split('/').next().unwrap_or("").to_string();
        if let Some(c) = self.cached(&name, &registry).await {
            return Ok(c);
        }
        let run = async {
            // A run for this image may have just finished.
            if let Some(c) = self.cached(&name, &registry).await {
                return Ok(c);
            }
            let resp = self.exec(&name, timeout).await;
            self.count(metrics, &resp);
            let resp = resp?;
            self.remember(&resp, &name, &registry).await;
            Ok(resp.credentials)
        };
        let got = self.runs.try_get_with(name.clone(), run).await;
        self.runs.invalidate(&name).await;
        got
    }

    fn count(&self, metrics: &Metrics, resp: &Result<ProviderResponse, ProviderError>) {
        let outcome = match resp {
            Ok(_) => "ok",
            Err(ProviderError::Timeout { .. }) => "timeout",
            Err(ProviderError::Exit { .. }) => "exit",
            Err(ProviderError::Spawn { .. }) => "spawn",
            Err(_) => "bad_response",
        };
        let labels = PluginRunLabels {
            provider: self.spec.name.clone(),
            outcome,
        };
        metrics.plugin_runs.get_or_create(&labels).inc();
    }

    async fn remember(&self, resp: &ProviderResponse, image: &str, registry: &str) {
        let life = resp
            .cache_duration
            .unwrap_or(self.spec.default_cache_duration);
        if life.is_zero() {
            return;
        }
        let key = match resp.cache_key_type {
            CacheKeyType::Image => image.to_string(),
            CacheKeyType::Registry => registry.to_string(),
            CacheKeyType::Global => String::new(),
        };
        let answer = Answer {
            credentials: resp.credentials.clone(),
            life,
        };
        self.answers
            .insert((resp.cache_key_type, key), answer)
            .await;
    }

    async fn exec(
        &self,
        image: &str,
        timeout: Duration,
    ) -> Result<ProviderResponse, ProviderError> {
        let name = &self.spec.name;
        // Written as the kubelet writes it, field by field in this order.
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Request<'a> {
            api_version: &'a str,
            kind: &'static str,
            image: &'a str,
        }
        let request = serde_json::to_string(&Request {
            api_version: &self.spec.api_version,
            kind: "CredentialProviderRequest",
            image,
        })
        .unwrap_or_default();
        let spawn_err = |e: std::io::Error| ProviderError::Spawn {
            name: name.clone(),
            image: image.to_string(),
            reason: e.to_string(),
        };
        let mut child = tokio::process::Command::new(&self.path)
            .args(&self.spec.args)
            .envs(self.spec.env.iter().map(|e| (&e.name, &e.value)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills whatever it started too.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        let group = child.id();
        let out = match tokio::time::timeout(timeout, communicate(&mut child, request)).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                kill_group(group);
                return Err(spawn_err(e));
            }
            Err(_) => {
                kill_group(group);
                return Err(ProviderError::Timeout {
                    name: name.clone(),
                    image: image.to_string(),
                    after: timeout,
                });
            }
        };
        let Some(out) = out else {
            kill_group(group);
            return Err(ProviderError::Response {
                name: name.clone(),
                image: image.to_string(),
                reason: format!("answer larger than {MAX_RESPONSE_BYTES} bytes"),
            });
        };
        if !out.status.success() {
            return Err(ProviderError::Exit {
                name: name.clone(),
                image: image.to_string(),
                status: out.status.to_string(),
                stderr: last_line(&out.stderr),
            });
        }
        parse_response(&out.stdout, &self.spec.api_version, name).map_err(|reason| {
            ProviderError::Response {
                name: name.clone(),
                image: image.to_string(),
                reason,
            }
        })
    }
}

/// Writes the request, reads stdout (up to the answer limit: `None` beyond it) and the tail of
/// stderr, and waits for the plugin to exit.
async fn communicate(
    child: &mut tokio::process::Child,
    request: String,
) -> std::io::Result<Option<Output>> {
    use tokio::io::AsyncReadExt as _;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let write = async move {
        if let Some(mut stdin) = stdin {
            // A plugin that exits without reading its stdin is judged by its answer.
            let _ = stdin.write_all(request.as_bytes()).await;
            let _ = stdin.shutdown().await;
        }
    };
    let read_out = async move {
        let mut buf = Vec::new();
        if let Some(s) = stdout {
            s.take(MAX_RESPONSE_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .await?;
        }
        Ok::<_, std::io::Error>(buf)
    };
    let read_err = async move {
        // Read to the end (a plugin blocked on a full pipe never exits) keeping only the tail.
        let mut tail: Vec<u8> = Vec::new();
        if let Some(mut s) = stderr {
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > MAX_STDERR_BYTES {
                    tail.drain(..tail.len() - MAX_STDERR_BYTES);
                }
            }
        }
        Ok::<_, std::io::Error>(tail)
    };
    let (_, stdout, stderr) = tokio::join!(write, read_out, read_err);
    let stdout = stdout?;
    if stdout.len() > MAX_RESPONSE_BYTES {
        return Ok(None);
    }
    let status = child.wait().await?;
    Ok(Some(Output {
        status,
        stdout,
        stderr: stderr.unwrap_or_default(),
    }))
}

/// The last non-empty line of a plugin's stderr, printable and at most 200 characters.
fn last_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let clean: String = line
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if clean.is_empty() {
        "nothing on stderr".into()
    } else {
        clean
    }
}

/// Kills a plugin's process group (the plugin and anything it started).
fn kill_group(group: Option<u32>) {
    let pid = group
        .and_then(|g| i32::try_from(g).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("5m0s"), Some(Duration::from_secs(300)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "10", "-1s", "1d", "m", "1h x"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    const YAML: &str = r#"
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: ecr-credential-provider
    matchImages:
      - "*.dkr.ecr.*.amazonaws.com"
    defaultCacheDuration: "12h"
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args: ["get-credentials"]
    env:
      - name: AWS_PROFILE
        value: temp
"#;

    #[test]
    fn config_yaml_and_json() {
        let p = parse_config(YAML, Path::new("cp.yaml")).unwrap();
        assert_eq!(
            p,
            vec![ProviderSpec {
                name: "ecr-credential-provider".into(),
                match_images: vec!["*.dkr.ecr.*.amazonaws.com".into()],
                default_cache_duration: Duration::from_secs(12 * 3600),
                api_version: "credentialprovider.kubelet.k8s.io/v1".into(),
                args: vec!["get-credentials".into()],
                env: vec![EnvVar {
                    name: "AWS_PROFILE".into(),
                    value: "temp".into()
                }],
            }]
        );
        let json = r#"{"apiVersion":"kubelet.config.k8s.io/v1","kind":"CredentialProviderConfig",
            "providers":[{"name":"p","matchImages":["reg.local"],"defaultCacheDuration":"1m",
            "apiVersion":"credentialprovider.kubelet.k8s.io/v1"}]}"#;
        let p = parse_config(json, Path::new("cp.json")).unwrap();
        assert_eq!(p[0].name, "p");
        assert!(p[0].args.is_empty() && p[0].env.is_empty());
    }

    #[test]
    fn bad_configs_name_the_file_and_the_problem() {
        let cases = [
            (
                YAML.replace("kind: CredentialProviderConfig", "kind: Other"),
                "kind \"Other\"",
            ),
            (
                YAML.replace(
                    "defaultCacheDuration: \"12h\"",
                    "defaultCacheDuration: soon",
                ),
                "defaultCacheDuration \"soon\"",
            ),
            (
                YAML.replace("    defaultCacheDuration: \"12h\"\n", ""),
                "has no defaultCacheDuration",
            ),
            (
                YAML.replace("ecr-credential-provider", "../bin/sh"),
                "plain file name",
            ),
            (
                YAML.replace(
                    "apiVersion: credentialprovider.kubelet.k8s.io/v1",
                    "apiVersion: v9",
                ),
                "apiVersion \"v9\"",
            ),
            ("providers: [".to_string(), "cp.yaml"),
        ];
        for (text, want) in cases {
            let e = parse_config(&text, Path::new("cp.yaml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("cp.yaml") && e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn responses() {
        let v1 = "credentialprovider.kubelet.k8s.io/v1";
        let r = parse_response(
            br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse",
                "cacheKeyType":"Registry","cacheDuration":"5m",
                "auth":{"*.example.com":{"username":"u","password":"top-secret"}}}"#,
            v1,
            "p",
        )
        .unwrap();
        assert_eq!(r.cache_key_type, CacheKeyType::Registry);
        assert_eq!(r.cache_duration, Some(Duration::from_secs(300)));
        assert_eq!(r.credentials.matching("a.example.com", "x").len(), 1);
        let r = parse_response(
            br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Global"}"#,
            v1,
            "p",
        )
        .unwrap();
        assert_eq!(r.cache_duration, None);
        assert!(r.credentials.is_empty());
        for (bad, want) in [
            (r#"{"auth": {"r": "top-secret"}"#.to_string(), "not a CredentialProviderResponse JSON"),
            (r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"X","cacheKeyType":"Image"}"#.into(), "kind \"X\""),
            (r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","kind":"CredentialProviderResponse","cacheKeyType":"Image"}"#.into(), "apiVersion"),
            (r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Pod"}"#.into(), "cacheKeyType \"Pod\""),
        ] {
            let e = parse_response(bad.as_bytes(), v1, "p").unwrap_err();
            assert!(e.contains(want) && !e.contains("top-secret"), "{want}: {e}");
        }
    }
}
