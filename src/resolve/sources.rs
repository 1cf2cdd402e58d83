//! Where a request's own credentials come from, in the kubelet's order: the pod spec's
//! `imagePullSecrets` (for a template without any, its service account's), then the
//! credential-provider plugins matching each image. `--docker-config` and anonymous are added per
//! image by the resolver.
//!
//! Kubernetes reads are cached here (moka, one read per object however many ask at once): found
//! objects for `--kube-cache-ttl`, "not found", "forbidden" and unusable ones briefly, failures
//! not at all. Nothing here fails a request: a missing secret, a forbidden read or a failed plugin
//! becomes a warning and resolution goes on without it. Reads and plugin runs go on in the
//! background past the deadline and fill their caches.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;

use super::credentials::CredentialSet;
use super::provider::Providers;
use crate::cluster::{Cluster, Fetched, ReadError};
use crate::podspec;
use crate::reference::ImageRef;
use crate::tree::Kept;

/// Where the pod spec of an object being admitted is, for credentials.
#[derive(Clone, Copy, Debug, Default)]
pub struct CredentialRequest<'a> {
    pub namespace: Option<&'a str>,
    /// The pod spec (`spec` of a Pod, `spec.template.spec` of a Deployment, ...), as the
    /// admission request keeps it.
    pub pod_spec: Option<&'a Kept<'a>>,
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

type ObjectKey = (String, String);

/// Keeps found objects for `found`, every other answer for `negative` (at most `found`).
struct Ttl {
    found: Duration,
    negative: Duration,
}

impl<T> moka::Expiry<ObjectKey, Fetched<T>> for Ttl {
    fn expire_after_create(&self, _: &ObjectKey, v: &Fetched<T>, _: Instant) -> Option<Duration> {
        Some(match v {
            Fetched::Found(_) => self.found,
            _ => self.negative.min(self.found),
        })
    }
}

fn object_cache<T: Clone + Send + Sync + 'static>(
    name: &str,
    found: Duration,
    negative: Duration,
) -> Cache<ObjectKey, Fetched<T>> {
    Cache::builder()
        .name(name)
        .max_capacity(10_000)
        .expire_after(Ttl { found, negative })
        .build()
}

/// The cluster's pull secrets (parsed) and service accounts, cached.
struct Kube {
    cluster: Cluster,
    secrets: Cache<ObjectKey, Fetched<CredentialSet>>,
    accounts: Cache<ObjectKey, Fetched<Arc<Vec<String>>>>,
}

impl Kube {
    fn new(cluster: Cluster) -> Self {
        let o = cluster.options().clone();
        Self {
            secrets: object_cache("pull-secrets", o.cache_ttl, o.negative_ttl),
            accounts: object_cache("service-accounts", o.cache_ttl, o.negative_ttl),
            cluster,
        }
    }

    async fn secret(&self, ns: &str, name: &str) -> Result<Fetched<CredentialSet>, ReadError> {
        let key = (ns.to_string(), name.to_string());
        let read = async {
            let raw = self.cluster.secret(ns, name).await?;
            Ok(match raw {
                Fetched::Found(s) => {
                    match CredentialSet::from_secret(&format!("{ns}/{name}"), &s.type_, &s.data) {
                        Ok(set) => Fetched::Found(set),
                        Err(e) => Fetched::Unusable(e.to_string()),
                    }
                }
                other => other.map_found(|_| CredentialSet::default()),
            })
        };
        let got = self.secrets.try_get_with(key, read).await;
        got.map_err(|e: Arc<ReadError>| ReadError::clone(&e))
    }

    async fn service_account(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Fetched<Arc<Vec<String>>>, ReadError> {
        let key = (ns.to_string(), name.to_string());
        let read = async {
            let raw = self.cluster.service_account(ns, name).await?;
            Ok(raw.map_found(Arc::new))
        };
        let got = self.accounts.try_get_with(key, read).await;
        got.map_err(|e: Arc<ReadError>| ReadError::clone(&e))
    }
}

/// How a bounded read ended when it gave nothing usable.
enum Failure {
    Read(String),
    Deadline,
}

/// Runs `read` in its own task (so it finishes, and fills its cache, past the deadline) and
/// waits for it until `deadline`.
async fn bounded<T: Send + 'static>(
    deadline: Instant,
    read: impl Future<Output = Result<T, ReadError>> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::time::timeout_at(deadline.into(), tokio::spawn(read)).await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(Failure::Read(e.to_string())),
        Ok(Err(join)) => Err(Failure::Read(join.to_string())),
        Err(_) => Err(Failure::Deadline),
    }
}

/// The warning for a read of `what` (`pull secret ns/name`) that gave nothing usable.
/// `resource` is what RBAC must allow; `without` says how resolution goes on.
fn read_warning<T>(
    what: &str,
    resource: &str,
    without: &str,
    got: Result<Fetched<T>, Failure>,
) -> Option<String> {
    Some(match got {
        Ok(Fetched::Found(_)) => return None,
        Ok(Fetched::NotFound) => format!("tagpin: {what} not found; {without}"),
        Ok(Fetched::Forbidden) => format!(
            "tagpin: not allowed to read {what} (403); grant tagpin get on {resource}; {without}"
        ),
        Ok(Fetched::Unusable(m)) => format!("tagpin: {m}; {without}"),
        Err(Failure::Read(e)) => format!("tagpin: reading {what} failed: {e}; {without}"),
        Err(Failure::Deadline) => format!(
            "tagpin: reading {what} did not finish within the admission deadline; {without}"
        ),
    })
}

/// Pull secrets, service accounts and plugins. Share one per process (the resolver holds it).
pub struct Sources {
    kube: Option<Arc<Kube>>,
    providers: Option<Arc<Providers>>,
}

impl Sources {
    pub fn new(cluster: Option<Cluster>, providers: Option<Arc<Providers>>) -> Self {
        Self {
            kube: cluster.map(|c| Arc::new(Kube::new(c))),
            providers,
        }
    }

    /// The request's own credential sets for `images`, in the kubelet's order.
    pub async fn gather(
        &self,
        req: &CredentialRequest<'_>,
        images: &[ImageRef],
        deadline: Instant,
    ) -> Gathered {
        let mut out = Gathered::default();
        if images.is_empty() {
            return out;
        }
        // Boxed: their futures are large (Kubernetes reads, plugin runs) and a resolver without
        // a cluster or plugins never polls them; left inline, every admission's future would
        // carry (and move) their space.
        if let (Some(kube), Some(ns), Some(spec)) = (&self.kube, req.namespace, req.pod_spec) {
            Box::pin(self.pull_secrets(kube, ns, spec, req.template, deadline, &mut out)).await;
        }
        if let Some(providers) = &self.providers {
            Box::pin(Self::plugins(providers, images, deadline, &mut out)).await;
        }
        out
    }

    async fn pull_secrets(
        &self,
        kube: &Arc<Kube>,
        ns: &str,
        spec: &Kept<'_>,
        template: bool,
        deadline: Instant,
        out: &mut Gathered,
    ) {
        let mut names = podspec::pull_secret_names(spec);
        if names.is_empty() && template {
            let sa = podspec::service_account_name(spec);
            let read = {
                let (k, ns, sa) = (kube.clone(), ns.to_string(), sa.clone());
                async move { k.service_account(&ns, &sa).await }
            };
            let got = bounded(deadline, read).await;
            if let Ok(Fetched::Found(secrets)) = &got {
                names = secrets.to_vec();
            }
            let what = format!("service account {ns}/{sa}");
            let without = "resolving without its pull secrets";
            out.warnings
                .extend(read_warning(&what, "serviceaccounts", without, got));
        }
        // All secrets are read at once; their order is kept.
        let reads: Vec<_> = names
            .iter()
            .map(|name| {
                let (k, ns, name) = (kube.clone(), ns.to_string(), name.clone());
                tokio::spawn(bounded(deadline, async move { k.secret(&ns, &name).await }))
            })
            .collect();
        for (name, read) in names.iter().zip(reads) {
            let got = match read.await {
                Ok(r) => r,
                Err(join) => Err(Failure::Read(join.to_string())),
            };
            if let Ok(Fetched::Found(set)) = &got {
                out.sets.push(set.clone());
            }
            let what = format!("pull secret {ns}/{name}");
            out.warnings
                .extend(read_warning(&what, "secrets", "resolving without it", got));
        }
    }

    async fn plugins(
        providers: &Arc<Providers>,
        images: &[ImageRef],
        deadline: Instant,
        out: &mut Gathered,
    ) {
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
                    let warn = |e| format!("tagpin: {e}; resolving without it");
                    out.warnings.extend(errors.iter().map(warn));
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
}
