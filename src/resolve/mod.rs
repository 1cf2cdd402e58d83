//! The `Resolver` the rest of tagpin sees: tag → digest through a cache (TTL, capacity, one
//! registry request per key however many ask at once), a credential chain, a circuit breaker per
//! registry, a long-lived last-known-good digest per key, and one deadline for a whole batch.

pub mod breaker;
pub mod credentials;
pub mod provider;
pub mod registry;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use serde_json::Value;

use crate::cluster::{self, Cluster, Fetched};
use crate::metrics::{LookupLabels, Metrics, RegistryLabel};
use crate::reference::{Digest, ImageRef};
use breaker::Breakers;
use credentials::{Credential, CredentialSet};
use provider::Providers;
use registry::{RegistryClient, RegistryError, RegistryOptions};

#[derive(Clone, Debug)]
pub struct ResolverConfig {
    pub registry: RegistryOptions,
    /// Static credentials (`--docker-config`).
    pub docker_config: CredentialSet,
    pub cache_ttl: Duration,
    pub cache_capacity: u64,
    /// How long a last known digest is kept for stale-on-error; `None` turns it off.
    pub stale_ttl: Option<Duration>,
    /// Bound on one lookup (all its requests). A lookup outliving an admission's deadline goes on
    /// in the background up to this long and fills the cache.
    pub lookup_timeout: Duration,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
    /// Pull secrets and service accounts are read through this (`None`: `--no-kube`, or no
    /// cluster to talk to).
    pub cluster: Option<Cluster>,
    /// Credential-provider plugins (`--image-credential-provider-config`).
    pub providers: Option<Arc<Providers>>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            registry: RegistryOptions {
                insecure: Vec::new(),
                extra_ca_pem: None,
                connect_timeout: Duration::from_secs(3),
                request_timeout: Duration::from_secs(10),
            },
            docker_config: CredentialSet::default(),
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 10_000,
            stale_ttl: Some(Duration::from_secs(24 * 3600)),
            lookup_timeout: Duration::from_secs(10),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            cluster: None,
            providers: None,
        }
    }
}

/// Why one lookup failed. One error type for the cache (moka groups waiters by it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("circuit breaker open for registry {registry} after repeated failures (retrying in {}s)", remaining.as_secs())]
    BreakerOpen {
        registry: String,
        remaining: Duration,
    },
    #[error("registry {registry} timed out after {}", humantime::format_duration(*after))]
    Deadline { registry: String, after: Duration },
    #[error("registry {registry} refused every credential tried: {}", refusals.join("; "))]
    AllRefused {
        registry: String,
        refusals: Vec<String>,
    },
    #[error("lookup task failed: {0}")]
    Internal(String),
}

impl LookupError {
    /// A failure of the registry rather than an answer about the image.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Registry(e) => e.is_outage(),
            Self::AllRefused { .. } => false,
            Self::BreakerOpen { .. } | Self::Deadline { .. } | Self::Internal(_) => true,
        }
    }
}

/// What became of one image.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Resolved now (or from the fresh cache).
    Pinned(Digest),
    /// The registry failed; this is the last digest it gave for the tag.
    Stale {
        digest: Digest,
        error: LookupError,
    },
    Failed(LookupError),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    registry: Arc<str>,
    repository: Arc<str>,
    tag: Arc<str>,
    credential: Arc<str>,
}

impl Key {
    fn new(image: &ImageRef, cred: &Credential) -> Self {
        Self {
            registry: image.registry().into(),
            repository: image.repository().into(),
            tag: image.tag().into(),
            credential: cred.id().into(),
        }
    }
}

struct Inner {
    client: RegistryClient,
    docker_config: CredentialSet,
    cache: Cache<Key, Digest>,
    last_good: Option<Cache<Key, Digest>>,
    breakers: Breakers,
    metrics: Arc<Metrics>,
    lookup_timeout: Duration,
    cluster: Option<Cluster>,
    providers: Option<Arc<Providers>>,
}

/// Where the pod spec of an object being admitted is, for credentials.
#[derive(Clone, Copy, Debug, Default)]
pub struct CredentialRequest<'a> {
    pub namespace: Option<&'a str>,
    /// The pod spec (`spec` of a Pod, `spec.template.spec` of a Deployment, ...).
    pub pod_spec: Option<&'a Value>,
    /// A pod template rather than a Pod: the ServiceAccount admission plugin has not yet copied
    /// the service account's pull secrets into it, so tagpin reads them when the spec names none.
    pub template: bool,
}

/// Credentials gathered for one request, in the kubelet's order, and what went wrong on the way
/// (admission warnings, never holding a secret).
#[derive(Debug, Default)]
pub struct Gathered {
    pub sets: Vec<CredentialSet>,
    pub warnings: Vec<String>,
}

/// Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Resolver(Arc<Inner>);

impl Resolver {
    pub fn new(
        cfg: ResolverConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, registry::ClientBuildError> {
        let client = RegistryClient::new(&cfg.registry)?;
        let cache = Cache::builder()
            .name("digests")
            .max_capacity(cfg.cache_capacity)
            .time_to_live(cfg.cache_ttl)
            .build();
        let last_good = cfg.stale_ttl.map(|ttl| {
            Cache::builder()
                .name("last-known-digests")
                .max_capacity(cfg.cache_capacity.saturating_mul(2))
                .time_to_live(ttl)
                .build()
        });
        let cluster = cfg.cluster.inspect(|c| c.attach_metrics(metrics.clone()));
        let providers = cfg.providers.inspect(|p| p.attach_metrics(metrics.clone()));
        Ok(Self(Arc::new(Inner {
            client,
            docker_config: cfg.docker_config,
            cache,
            last_good,
            breakers: Breakers::new(cfg.breaker_threshold, cfg.breaker_cooldown, metrics.clone()),
            metrics,
            lookup_timeout: cfg.lookup_timeout,
            cluster,
            providers,
        })))
    }

    /// The request's own credential sets, in the kubelet's order: the pod spec's
    /// `imagePullSecrets` (for a template without any, its service account's), then the
    /// credential-provider plugins matching each image. `--docker-config` and anonymous are
    /// added per image by the resolver. Nothing here fails the request: a missing secret, a
    /// forbidden read or a failed plugin becomes a warning and resolution goes on without it.
    /// Reads and plugin runs go on in the background past `deadline` and fill their caches.
    pub async fn gather_credentials(
        &self,
        req: &CredentialRequest<'_>,
        images: &[ImageRef],
        deadline: Instant,
    ) -> Gathered {
        let mut out = Gathered::default();
        if images.is_empty() {
            return out;
        }
        if let (Some(cluster), Some(ns), Some(spec)) =
            (&self.0.cluster, req.namespace, req.pod_spec)
        {
            let mut names = cluster::pull_secret_names(spec);
            if names.is_empty() && req.template {
                let sa = cluster::service_account_name(spec);
                let read = {
                    let (c, ns, sa) = (cluster.clone(), ns.to_string(), sa.clone());
                    tokio::spawn(async move { c.service_account(&ns, &sa).await })
                };
                match tokio::time::timeout_at(deadline.into(), read).await {
                    Ok(Ok(Ok(Fetched::Found(secrets)))) => names = secrets.to_vec(),
                    Ok(Ok(Ok(Fetched::NotFound))) => out.warnings.push(format!(
                        "tagpin: service account {ns}/{sa} not found; resolving without its pull secrets"
                    )),
                    Ok(Ok(Ok(Fetched::Forbidden))) => out.warnings.push(format!(
                        "tagpin: not allowed to read service account {ns}/{sa} (403); grant tagpin get on serviceaccounts; resolving without its pull secrets"
                    )),
                    Ok(Ok(Ok(Fetched::Unusable(m)))) => out.warnings.push(format!("tagpin: {m}")),
                    Ok(Ok(Err(e))) => out.warnings.push(format!(
                        "tagpin: reading service account {ns}/{sa} failed: {e}; resolving without its pull secrets"
                    )),
                    Ok(Err(e)) => out.warnings.push(format!(
                        "tagpin: reading service account {ns}/{sa} failed: {e}; resolving without its pull secrets"
                    )),
                    Err(_) => out.warnings.push(format!(
                        "tagpin: reading service account {ns}/{sa} did not finish within the admission deadline; resolving without its pull secrets"
                    )),
                }
            }
            let reads: Vec<_> = names
                .iter()
                .map(|name| {
                    let (c, ns, name) = (cluster.clone(), ns.to_string(), name.clone());
                    tokio::spawn(async move { c.secret(&ns, &name).await })
                })
                .collect();
            for (name, read) in names.iter().zip(reads) {
                let without = "resolving without it";
                match tokio::time::timeout_at(deadline.into(), read).await {
                    Ok(Ok(Ok(Fetched::Found(set)))) => out.sets.push(set),
                    Ok(Ok(Ok(Fetched::NotFound))) => out.warnings.push(format!(
                        "tagpin: pull secret {ns}/{name} not found; {without}"
                    )),
                    Ok(Ok(Ok(Fetched::Forbidden))) => out.warnings.push(format!(
                        "tagpin: not allowed to read pull secret {ns}/{name} (403); grant tagpin get on secrets; {without}"
                    )),
                    Ok(Ok(Ok(Fetched::Unusable(m)))) => {
                        out.warnings.push(format!("tagpin: {m}; {without}"))
                    }
                    Ok(Ok(Err(e))) => out.warnings.push(format!(
                        "tagpin: reading pull secret {ns}/{name} failed: {e}; {without}"
                    )),
                    Ok(Err(e)) => out.warnings.push(format!(
                        "tagpin: reading pull secret {ns}/{name} failed: {e}; {without}"
                    )),
                    Err(_) => out.warnings.push(format!(
                        "tagpin: reading pull secret {ns}/{name} did not finish within the admission deadline; {without}"
                    )),
                }
            }
        }
        if let Some(providers) = &self.0.providers {
            let runs: Vec<_> = images
                .iter()
                .map(|image| {
                    let (p, image) = (providers.clone(), image.clone());
                    tokio::spawn(async move { p.credentials(&image).await })
                })
                .collect();
            for (image, run) in images.iter().zip(runs) {
                match tokio::time::timeout_at(deadline.into(), run).await {
                    Ok(Ok((sets, errors))) => {
                        out.sets.extend(sets);
                        out.warnings.extend(
                            errors
                                .iter()
                                .map(|e| format!("tagpin: {e}; resolving without it")),
                        );
                    }
                    Ok(Err(e)) => out.warnings.push(format!(
                        "tagpin: credential providers for {image} failed: {e}; resolving without them"
                    )),
                    Err(_) => out.warnings.push(format!(
                        "tagpin: credential providers for {image} did not finish within the admission deadline; resolving without them"
                    )),
                }
            }
        }
        out
    }

    /// Credentials to try for `image`, in order: those of the request (pull secrets, service
    /// account, plugins; see [`Resolver::gather_credentials`]), then `--docker-config`, then
    /// anonymous.
    fn candidates(&self, image: &ImageRef, request: &[CredentialSet]) -> Vec<Credential> {
        let mut out: Vec<Credential> = Vec::new();
        let sets = request.iter().chain(std::iter::once(&self.0.docker_config));
        for set in sets {
            for c in set.matching(image.registry(), image.repository()) {
                if !out.iter().any(|o| o.id() == c.id()) {
                    out.push(c);
                }
            }
        }
        out.push(Credential::anonymous());
        out
    }

    /// Resolves every image concurrently under one deadline (`started + timeout`). Images whose lookup outlives the
    /// deadline are answered as failed (or stale), while the lookup goes on and fills the cache.
    /// `allow_stale`: use the last known digest when the registry fails.
    pub async fn resolve_all(
        &self,
        images: &[ImageRef],
        request_credentials: &[CredentialSet],
        started: Instant,
        timeout: Duration,
        allow_stale: bool,
    ) -> Vec<Outcome> {
        let deadline = started + timeout;
        let mut handles = Vec::with_capacity(images.len());
        for image in images {
            let creds = self.candidates(image, request_credentials);
            let this = self.clone();
            let image = image.clone();
            handles.push(tokio::spawn(async move {
                this.resolve_one(&image, &creds).await
            }));
        }
        let mut out = Vec::with_capacity(images.len());
        for (image, handle) in images.iter().zip(handles) {
            let result = match tokio::time::timeout_at(deadline.into(), handle).await {
                Ok(Ok(r)) => r,
                Ok(Err(join)) => Err(LookupError::Internal(join.to_string())),
                Err(_) => Err(LookupError::Deadline {
                    registry: image.registry().to_string(),
                    after: timeout,
                }),
            };
            out.push(match result {
                Ok(d) => Outcome::Pinned(d),
                Err(e) if allow_stale && e.is_outage() => {
                    match self.last_known(image, request_credentials).await {
                        Some(digest) => {
                            self.0.metrics.stale_served.inc();
                            Outcome::Stale { digest, error: e }
                        }
                        None => Outcome::Failed(e),
                    }
                }
                Err(e) => Outcome::Failed(e),
            });
        }
        out
    }

    async fn last_known(&self, image: &ImageRef, request: &[CredentialSet]) -> Option<Digest> {
        let last_good = self.0.last_good.as_ref()?;
        for cred in self.candidates(image, request) {
            if let Some(d) = last_good.get(&Key::new(image, &cred)).await {
                return Some(d);
            }
        }
        None
    }

    /// One image through the credential chain: a 401/403 moves on to the next credential;
    /// anything else is the answer.
    async fn resolve_one(
        &self,
        image: &ImageRef,
        creds: &[Credential],
    ) -> Result<Digest, LookupError> {
        // A digest any of this request's own credentials already obtained answers it, before
        // a refused credential earlier in the list is tried again (a stale pull secret listed
        // first would otherwise cost a registry round trip on every admission).
        for cred in creds {
            if let Some(d) = self.0.cache.get(&Key::new(image, cred)).await {
                self.0.metrics.cache_hits.inc();
                return Ok(d);
            }
        }
        let mut refusals: Vec<LookupError> = Vec::new();
        for cred in creds {
            let key = Key::new(image, cred);
            self.0.metrics.cache_misses.inc();
            let loaded = self
                .0
                .cache
                .try_get_with(key.clone(), self.load(image, cred, key))
                .await;
            match loaded {
                Ok(d) => return Ok(d),
                Err(e) => {
                    let e = LookupError::clone(&e);
                    match &e {
                        LookupError::Registry(r) if r.is_auth_refusal() => refusals.push(e),
                        _ => return Err(e),
                    }
                }
            }
        }
        match refusals.len() {
            0 => Err(LookupError::Internal("no credential to try".into())),
            1 => Err(refusals.remove(0)),
            _ => Err(LookupError::AllRefused {
                registry: image.registry().to_string(),
                refusals: refusals
                    .iter()
                    .map(|e| match e {
                        LookupError::Registry(RegistryError::Unauthorized {
                            credential, ..
                        }) => {
                            format!("{credential} (401)")
                        }
                        LookupError::Registry(RegistryError::Forbidden { credential, .. }) => {
                            format!("{credential} (403)")
                        }
                        other => other.to_string(),
                    })
                    .collect(),
            }),
        }
    }

    /// The one registry request behind a cache miss.
    async fn load(
        &self,
        image: &ImageRef,
        cred: &Credential,
        key: Key,
    ) -> Result<Digest, LookupError> {
        let inner = &self.0;
        let registry = image.registry();
        if let Err(open) = inner.breakers.admit(registry, Instant::now()) {
            self.count_lookup(registry, "breaker_open");
            return Err(LookupError::BreakerOpen {
                registry: registry.to_string(),
                remaining: open.remaining,
            });
        }
        let started = Instant::now();
        let result = match tokio::time::timeout(
            inner.lookup_timeout,
            inner.client.manifest_digest(image, cred),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(RegistryError::Timeout {
                registry: registry.to_string(),
                after: inner.lookup_timeout,
            }),
        };
        inner
            .metrics
            .lookup_seconds
            .get_or_create(&RegistryLabel {
                registry: registry.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        self.count_lookup(registry, outcome);
        match &result {
            Err(e) if e.is_outage() => {
                let retry_after = match e {
                    RegistryError::RateLimited { retry_after, .. } => {
                        Some(retry_after.unwrap_or(Duration::ZERO))
                    }
                    _ => None,
                };
                inner
                    .breakers
                    .failure(registry, retry_after, Instant::now());
            }
            _ => inner.breakers.success(registry),
        }
        let digest = result?;
        if let Some(last_good) = &inner.last_good {
            last_good.insert(key, digest.clone()).await;
        }
        Ok(digest)
    }

    fn count_lookup(&self, registry: &str, outcome: &'static str) {
        self.0
            .metrics
            .lookups
            .get_or_create(&LookupLabels {
                registry: registry.to_string(),
                outcome,
            })
            .inc();
    }

    /// Drops every cached digest (tests and benchmarks measure cold paths with it).
    pub fn clear_cache(&self) {
        self.0.cache.invalidate_all();
    }

    /// The metrics this resolver records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }
}

/// Distinct images in first-seen order, and for each input the index of its distinct image.
pub fn dedupe(images: &[ImageRef]) -> (Vec<ImageRef>, Vec<usize>) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut distinct = Vec::new();
    let mut index = Vec::with_capacity(images.len());
    for im in images {
        let i = *seen.entry(im.original()).or_insert_with(|| {
            distinct.push(im.clone());
            distinct.len() - 1
        });
        index.push(i);
    }
    (distinct, index)
}
