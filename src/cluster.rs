//! The Kubernetes side of credentials: pull secrets and service accounts, read with `get` only
//! (no list, no watch), each read bounded by a timeout and cached briefly, so a burst of pods
//! from one workload costs one read per object. A missing or forbidden object is an answer
//! (cached, briefly), not an error; timeouts and server failures are not cached.
//!
//! [`pull_secret_names`] and [`service_account_name`] are pure; [`Cluster`] does the reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use moka::future::Cache;
use serde_json::Value;

use crate::metrics::{KubeReadLabels, Metrics};
use crate::resolve::credentials::CredentialSet;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot use --kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("cannot use the in-cluster service account: {0}")]
    InCluster(String),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
}

/// Why one read gave nothing usable; `Display` is a sentence for an admission warning.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error("timed out after {}", humantime::format_duration(*after))]
    Timeout { after: Duration },
    #[error("the API server answered {code} {reason}")]
    Api { code: u16, reason: String },
    #[error("{0}")]
    Transport(String),
}

/// What a read found. Everything but `Found` is kept for a short while only.
#[derive(Clone, Debug)]
pub enum Fetched<T> {
    Found(T),
    NotFound,
    Forbidden,
    /// The object exists but cannot be used (a secret of another type, bad JSON); the message
    /// names it and says what to do.
    Unusable(String),
}

/// The secret names in a pod spec's `imagePullSecrets`, in order, duplicates and empty names
/// dropped. Pure.
pub fn pull_secret_names(pod_spec: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in pod_spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(n) = r
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            if !out.iter().any(|o| o == n) {
                out.push(n.to_string());
            }
        }
    }
    out
}

/// The service account a pod spec runs as: `serviceAccountName`, else the deprecated
/// `serviceAccount`, else `default`. Pure.
pub fn service_account_name(pod_spec: &Value) -> String {
    ["serviceAccountName", "serviceAccount"]
        .iter()
        .find_map(|f| {
            pod_spec
                .get(f)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .unwrap_or("default")
        .to_string()
}

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Bound on one API read.
    pub timeout: Duration,
    /// How long a found object is reused.
    pub cache_ttl: Duration,
    /// How long "not found", "forbidden" and "unusable" are reused.
    pub negative_ttl: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            cache_ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
        }
    }
}

type Key = (String, String);

struct Ttl {
    found: Duration,
    negative: Duration,
}

impl<T> moka::Expiry<Key, Fetched<T>> for Ttl {
    fn expire_after_create(&self, _: &Key, v: &Fetched<T>, _: Instant) -> Option<Duration> {
        Some(match v {
            Fetched::Found(_) => self.found,
            _ => self.negative.min(self.found),
        })
    }
}

/// A Kubernetes client with short caches for the two kinds tagpin reads. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    metrics: Arc<std::sync::OnceLock<Arc<Metrics>>>,
    timeout: Duration,
    secrets: Cache<Key, Fetched<CredentialSet>>,
    accounts: Cache<Key, Fetched<Arc<Vec<String>>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A client from a kubeconfig file (its current context).
    pub async fn from_kubeconfig(path: &Path, opts: ClusterOptions) -> Result<Self, ClusterError> {
        // Only the first line: parse errors go on to quote the file, which holds credentials.
        let bad = |reason: String| ClusterError::Kubeconfig {
            path: path.to_path_buf(),
            reason: reason.lines().next().unwrap_or("").to_string(),
        };
        let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| bad(e.to_string()))?;
        Self::from_config(config, opts)
    }

    /// A client from the pod's service account, when running in a cluster; `Ok(None)` when not
    /// in one (no `KUBERNETES_SERVICE_HOST` or no token file).
    pub fn in_cluster(opts: ClusterOptions) -> Result<Option<Self>, ClusterError> {
        let token = Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token");
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() || !token.exists() {
            return Ok(None);
        }
        let config =
            kube::Config::incluster().map_err(|e| ClusterError::InCluster(e.to_string()))?;
        Self::from_config(config, opts).map(Some)
    }

    pub fn from_config(
        mut config: kube::Config,
        opts: ClusterOptions,
    ) -> Result<Self, ClusterError> {
        config.read_timeout = Some(opts.timeout);
        config.connect_timeout = Some(opts.timeout);
        let client =
            kube::Client::try_from(config).map_err(|e| ClusterError::Client(e.to_string()))?;
        Ok(Self {
            client,
            metrics: Arc::default(),
            timeout: opts.timeout,
            secrets: cache("pull-secrets", &opts),
            accounts: cache("service-accounts", &opts),
        })
    }

    /// The cluster `tagpin serve` talks to: none with `--no-kube`; the `--kubeconfig` file when
    /// given (an unusable file is an error: it was asked for); else the in-cluster service
    /// account. Not in a cluster, or an unusable in-cluster setup, is logged once and tagpin runs
    /// without pull secrets and service accounts.
    pub async fn for_serve(
        no_kube: bool,
        kubeconfig: Option<&Path>,
        opts: ClusterOptions,
    ) -> Result<Option<Self>, ClusterError> {
        if no_kube {
            tracing::info!("--no-kube: pull secrets and service accounts are not read");
            return Ok(None);
        }
        if let Some(path) = kubeconfig {
            let c = Self::from_kubeconfig(path, opts).await?;
            tracing::info!(kubeconfig = %path.display(), "reading pull secrets and service accounts through the kubeconfig");
            return Ok(Some(c));
        }
        match Self::in_cluster(opts) {
            Ok(Some(c)) => {
                tracing::info!(
                    "reading pull secrets and service accounts with the in-cluster service account"
                );
                Ok(Some(c))
            }
            Ok(None) => {
                tracing::info!("not running in a cluster and no --kubeconfig: pull secrets and service accounts are not read (only plugins, --docker-config and anonymous access)");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(error = %e, "pull secrets and service accounts are not read; fix the pod's service account token or pass --kubeconfig");
                Ok(None)
            }
        }
    }

    /// The credentials in pull secret `namespace/name`. Concurrent callers share one read.
    pub async fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Fetched<CredentialSet>, ReadError> {
        let key = (namespace.to_string(), name.to_string());
        let this = self.clone();
        self.secrets
            .try_get_with(key, async move {
                let api = kube::Api::<Secret>::namespaced(this.client.clone(), namespace);
                Ok(match this.read("secret", api.get_opt(name)).await? {
                    Fetched::Found(s) => {
                        let id = format!("{namespace}/{name}");
                        let data = s
                            .data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0))
                            .collect();
                        match CredentialSet::from_secret(
                            &id,
                            s.type_.as_deref().unwrap_or(""),
                            &data,
                        ) {
                            Ok(set) => Fetched::Found(set),
                            Err(e) => Fetched::Unusable(e.to_string()),
                        }
                    }
                    Fetched::NotFound => Fetched::NotFound,
                    Fetched::Forbidden => Fetched::Forbidden,
                    Fetched::Unusable(m) => Fetched::Unusable(m),
                })
            })
            .await
            .map_err(|e: Arc<ReadError>| ReadError::clone(&e))
    }

    /// The `imagePullSecrets` names of service account `namespace/name`.
    pub async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Fetched<Arc<Vec<String>>>, ReadError> {
        let key = (namespace.to_string(), name.to_string());
        let this = self.clone();
        self.accounts
            .try_get_with(key, async move {
                let api = kube::Api::<ServiceAccount>::namespaced(this.client.clone(), namespace);
                Ok(
                    match this.read("serviceaccount", api.get_opt(name)).await? {
                        Fetched::Found(sa) => Fetched::Found(Arc::new(
                            sa.image_pull_secrets
                                .unwrap_or_default()
                                .into_iter()
                                .map(|r| r.name)
                                .filter(|n| !n.is_empty())
                                .collect(),
                        )),
                        Fetched::NotFound => Fetched::NotFound,
                        Fetched::Forbidden => Fetched::Forbidden,
                        Fetched::Unusable(m) => Fetched::Unusable(m),
                    },
                )
            })
            .await
            .map_err(|e: Arc<ReadError>| ReadError::clone(&e))
    }

    /// Counts reads in `tagpin_kube_reads_total` from now on (the resolver attaches its metrics).
    pub fn attach_metrics(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    async fn read<T>(
        &self,
        kind: &'static str,
        get: impl std::future::Future<Output = kube::Result<Option<T>>>,
    ) -> Result<Fetched<T>, ReadError> {
        let result = self.read_uncounted(get).await;
        if let Some(m) = self.metrics.get() {
            let outcome = match &result {
                Ok(Fetched::Found(_)) => "found",
                Ok(Fetched::NotFound) => "not_found",
                Ok(Fetched::Forbidden) => "forbidden",
                Ok(Fetched::Unusable(_)) => "found",
                Err(ReadError::Timeout { .. }) => "timeout",
                Err(_) => "error",
            };
            m.kube_reads
                .get_or_create(&KubeReadLabels { kind, outcome })
                .inc();
        }
        result
    }

    async fn read_uncounted<T>(
        &self,
        get: impl std::future::Future<Output = kube::Result<Option<T>>>,
    ) -> Result<Fetched<T>, ReadError> {
        match tokio::time::timeout(self.timeout, get).await {
            Err(_) => Err(ReadError::Timeout {
                after: self.timeout,
            }),
            Ok(Ok(Some(v))) => Ok(Fetched::Found(v)),
            Ok(Ok(None)) => Ok(Fetched::NotFound),
            Ok(Err(kube::Error::Api(status))) if status.code == 403 => Ok(Fetched::Forbidden),
            Ok(Err(kube::Error::Api(status))) => Err(ReadError::Api {
                code: status.code,
                reason: status.reason.clone(),
            }),
            Ok(Err(e)) => Err(ReadError::Transport(e.to_string())),
        }
    }

    /// Drops every cached object (tests measure cold paths with it).
    pub fn clear_cache(&self) {
        self.secrets.invalidate_all();
        self.accounts.invalidate_all();
    }
}

fn cache<T: Clone + Send + Sync + 'static>(
    name: &str,
    opts: &ClusterOptions,
) -> Cache<Key, Fetched<T>> {
    Cache::builder()
        .name(name)
        .max_capacity(10_000)
        .expire_after(Ttl {
            found: opts.cache_ttl,
            negative: opts.negative_ttl,
        })
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pull_secret_names_in_order_without_duplicates() {
        let spec = json!({"imagePullSecrets": [{"name": "a"}, {"name": ""}, {}, {"name": "b"}, {"name": "a"}, "junk"]});
        assert_eq!(pull_secret_names(&spec), vec!["a", "b"]);
        assert!(pull_secret_names(&json!({})).is_empty());
        assert!(pull_secret_names(&json!({"imagePullSecrets": "x"})).is_empty());
    }

    #[test]
    fn service_account_defaults() {
        assert_eq!(service_account_name(&json!({})), "default");
        assert_eq!(
            service_account_name(&json!({"serviceAccountName": ""})),
            "default"
        );
        assert_eq!(
            service_account_name(&json!({"serviceAccount": "old"})),
            "old"
        );
        assert_eq!(
            service_account_name(&json!({"serviceAccountName": "new", "serviceAccount": "old"})),
            "new"
        );
    }
}
