//! Kubernetes reads, each bounded by a timeout and counted in `tagpin_kube_reads_total`: for the
//! webhook, pull secrets and service accounts with `get` only (no list, no watch); for `tagpin
//! audit`, pages of pods and the namespaces' labels (`list`, and `get` of one namespace). A missing
//! or forbidden object is an answer ([`Fetched`]), not an error.
//!
//! This module returns raw data: what a secret means as registry credentials is decided in
//! `resolve/credentials.rs`, and the caching of reads lives with the resolver
//! (`resolve/sources.rs`), so imports run one way only (resolve → cluster).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::api::ListParams;

use crate::metrics::{KubeReadLabels, Metrics};

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

impl<T> Fetched<T> {
    /// The same answer with the found value turned into another.
    pub fn map_found<U>(self, f: impl FnOnce(T) -> U) -> Fetched<U> {
        match self {
            Fetched::Found(v) => Fetched::Found(f(v)),
            Fetched::NotFound => Fetched::NotFound,
            Fetched::Forbidden => Fetched::Forbidden,
            Fetched::Unusable(m) => Fetched::Unusable(m),
        }
    }
}

/// A secret as the API returns it: its `type` and its `data` (values base64-decoded).
#[derive(Clone, Debug, Default)]
pub struct RawSecret {
    pub type_: String,
    pub data: BTreeMap<String, Vec<u8>>,
}

/// One page of a pod list, and the token for the next one (`None`: that was the last).
#[derive(Debug, Default)]
pub struct PodPage {
    pub pods: Vec<Pod>,
    pub next: Option<String>,
}

/// A namespace's name and labels.
pub type NamespaceLabels = (String, BTreeMap<String, String>);

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

/// A Kubernetes client for the two kinds tagpin reads. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    metrics: Arc<Metrics>,
    opts: ClusterOptions,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A client from a kubeconfig file (its current context).
    pub async fn from_kubeconfig(
        path: &Path,
        opts: ClusterOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ClusterError> {
        // Only the first line: parse errors go on to quote the file, which holds credentials.
        let bad = |reason: String| ClusterError::Kubeconfig {
            path: path.to_path_buf(),
            reason: reason.lines().next().unwrap_or("").to_string(),
        };
        let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| bad(e.to_string()))?;
        Self::from_config(config, opts, metrics)
    }

    /// A client from the pod's service account, when running in a cluster; `Ok(None)` when not
    /// in one (no `KUBERNETES_SERVICE_HOST` or no token file).
    pub fn in_cluster(
        opts: ClusterOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, ClusterError> {
        let token = Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token");
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() || !token.exists() {
            return Ok(None);
        }
        let config =
            kube::Config::incluster().map_err(|e| ClusterError::InCluster(e.to_string()))?;
        Self::from_config(config, opts, metrics).map(Some)
    }

    pub fn from_config(
        mut config: kube::Config,
        opts: ClusterOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ClusterError> {
        config.read_timeout = Some(opts.timeout);
        config.connect_timeout = Some(opts.timeout);
        let client =
            kube::Client::try_from(config).map_err(|e| ClusterError::Client(e.to_string()))?;
        Ok(Self {
            client,
            metrics,
            opts,
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
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, ClusterError> {
        if no_kube {
            tracing::info!("--no-kube: pull secrets and service accounts are not read");
            return Ok(None);
        }
        if let Some(path) = kubeconfig {
            let c = Self::from_kubeconfig(path, opts, metrics).await?;
            tracing::info!(kubeconfig = %path.display(), "reading pull secrets and service accounts through the kubeconfig");
            return Ok(Some(c));
        }
        match Self::in_cluster(opts, metrics) {
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

    /// The cluster `tagpin audit` reads, with the user's own credentials as kubectl finds them:
    /// `--kubeconfig` (else `$KUBECONFIG`, else `~/.kube/config`, else the in-cluster service
    /// account), its `--context` (else the current one). Also returns the context's namespace
    /// (`default` when it names none).
    pub async fn for_audit(
        kubeconfig: Option<&Path>,
        context: Option<&str>,
        opts: ClusterOptions,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, String), ClusterError> {
        let options = kube::config::KubeConfigOptions {
            context: context.map(str::to_string),
            ..Default::default()
        };
        let first_line =
            |e: &dyn std::fmt::Display| e.to_string().lines().next().unwrap_or("").to_string();
        let config = match kubeconfig {
            Some(path) => {
                let bad = |reason: String| ClusterError::Kubeconfig {
                    path: path.to_path_buf(),
                    reason,
                };
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| bad(first_line(&e)))?;
                kube::Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| bad(first_line(&e)))?
            }
            None => match kube::Config::from_kubeconfig(&options).await {
                Ok(c) => c,
                Err(e) if context.is_some() => {
                    return Err(ClusterError::Client(format!(
                        "cannot use context {:?} of the kubeconfig ($KUBECONFIG or ~/.kube/config): {}",
                        context.unwrap_or_default(),
                        first_line(&e)
                    )))
                }
                Err(kc) => kube::Config::incluster().map_err(|ic| {
                    ClusterError::Client(format!(
                        "no usable kubeconfig ({}) and not in a cluster ({}); pass --kubeconfig FILE",
                        first_line(&kc),
                        first_line(&ic)
                    ))
                })?,
            },
        };
        let namespace = config.default_namespace.clone();
        Ok((Self::from_config(config, opts, metrics)?, namespace))
    }

    /// One page of pods: of `namespace` (all namespaces when `None`), matching the label
    /// `selector`, at most `limit`, from `continue_token` on.
    pub async fn list_pods(
        &self,
        namespace: Option<&str>,
        selector: Option<&str>,
        limit: u32,
        continue_token: Option<&str>,
    ) -> Result<PodPage, ReadError> {
        let api = match namespace {
            Some(ns) => kube::Api::<Pod>::namespaced(self.client.clone(), ns),
            None => kube::Api::<Pod>::all(self.client.clone()),
        };
        let mut lp = ListParams::default().limit(limit);
        if let Some(s) = selector {
            lp = lp.labels(s);
        }
        if let Some(t) = continue_token {
            lp = lp.continue_token(t);
        }
        let list = self.list("pod_list", api.list(&lp)).await?;
        Ok(PodPage {
            next: list.metadata.continue_.filter(|t| !t.is_empty()),
            pods: list.items,
        })
    }

    /// The labels of namespace `name`.
    pub async fn namespace_labels(
        &self,
        name: &str,
    ) -> Result<Fetched<BTreeMap<String, String>>, ReadError> {
        let api = kube::Api::<Namespace>::all(self.client.clone());
        Ok(self
            .read("namespace", api.get_opt(name))
            .await?
            .map_found(|n| n.metadata.labels.unwrap_or_default()))
    }

    /// Every namespace with its labels (one list, paged by `limit`), and the pages it took.
    /// `Forbidden` when the user may not list namespaces.
    pub async fn all_namespace_labels(
        &self,
        limit: u32,
    ) -> (Result<Fetched<Vec<NamespaceLabels>>, ReadError>, usize) {
        let api = kube::Api::<Namespace>::all(self.client.clone());
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut lp = ListParams::default().limit(limit);
            if let Some(t) = &token {
                lp = lp.continue_token(t);
            }
            pages += 1;
            let list = match self.list("namespace_list", api.list(&lp)).await {
                Ok(l) => l,
                Err(ReadError::Api { code: 403, .. }) => return (Ok(Fetched::Forbidden), pages),
                Err(e) => return (Err(e), pages),
            };
            out.extend(list.items.into_iter().map(|n| {
                (
                    n.metadata.name.unwrap_or_default(),
                    n.metadata.labels.unwrap_or_default(),
                )
            }));
            token = list.metadata.continue_.filter(|t| !t.is_empty());
            if token.is_none() {
                return (Ok(Fetched::Found(out)), pages);
            }
        }
    }

    /// A list call, bounded and counted like a read; every API error is an error here.
    async fn list<T>(
        &self,
        kind: &'static str,
        call: impl std::future::Future<Output = kube::Result<T>>,
    ) -> Result<T, ReadError> {
        let result = match tokio::time::timeout(self.opts.timeout, call).await {
            Err(_) => Err(ReadError::Timeout {
                after: self.opts.timeout,
            }),
            Ok(Ok(v)) => Ok(v),
            // The message says who may not do what ("User \"x\" cannot list resource ...").
            Ok(Err(kube::Error::Api(status))) => Err(ReadError::Api {
                code: status.code,
                reason: match status.message.lines().next().filter(|m| !m.is_empty()) {
                    Some(m) => format!("{} ({m})", status.reason),
                    None => status.reason.clone(),
                },
            }),
            Ok(Err(e)) => Err(ReadError::Transport(e.to_string())),
        };
        self.count(
            kind,
            match &result {
                Ok(_) => "found",
                Err(ReadError::Api { code: 403, .. }) => "forbidden",
                Err(e) => failure(e),
            },
        );
        result
    }

    fn count(&self, kind: &'static str, outcome: &'static str) {
        self.metrics
            .kube_reads
            .get_or_create(&KubeReadLabels { kind, outcome })
            .inc();
    }

    /// How long found and missing objects may be reused (the resolver caches reads).
    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// Pull secret `namespace/name`, raw.
    pub async fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Fetched<RawSecret>, ReadError> {
        let api = kube::Api::<Secret>::namespaced(self.client.clone(), namespace);
        Ok(self
            .read("secret", api.get_opt(name))
            .await?
            .map_found(|s| RawSecret {
                type_: s.type_.unwrap_or_default(),
                data: s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect(),
            }))
    }

    /// The `imagePullSecrets` names of service account `namespace/name`.
    pub async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Fetched<Vec<String>>, ReadError> {
        let api = kube::Api::<ServiceAccount>::namespaced(self.client.clone(), namespace);
        Ok(self
            .read("serviceaccount", api.get_opt(name))
            .await?
            .map_found(|sa| {
                sa.image_pull_secrets
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| r.name)
                    .filter(|n| !n.is_empty())
                    .collect()
            }))
    }

    async fn read<T>(
        &self,
        kind: &'static str,
        get: impl std::future::Future<Output = kube::Result<Option<T>>>,
    ) -> Result<Fetched<T>, ReadError> {
        let result = self.read_uncounted(get).await;
        self.count(
            kind,
            match &result {
                Ok(Fetched::Found(_) | Fetched::Unusable(_)) => "found",
                Ok(Fetched::NotFound) => "not_found",
                Ok(Fetched::Forbidden) => "forbidden",
                Err(e) => failure(e),
            },
        );
        result
    }

    async fn read_uncounted<T>(
        &self,
        get: impl std::future::Future<Output = kube::Result<Option<T>>>,
    ) -> Result<Fetched<T>, ReadError> {
        match tokio::time::timeout(self.opts.timeout, get).await {
            Err(_) => Err(ReadError::Timeout {
                after: self.opts.timeout,
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
}

/// The metric outcome of a failed read.
fn failure(e: &ReadError) -> &'static str {
    match e {
        ReadError::Timeout { .. } => "timeout",
        _ => "error",
    }
}
