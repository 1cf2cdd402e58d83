//! One audit run: list the pods page by page (one paged list per namespace, or one for all),
//! read whether their namespaces opted in, resolve each distinct tag once per asker through the
//! webhook's resolver (pull secrets, plugins and `--docker-config` apply as they do there), and
//! build the report. Nothing is written to the cluster and nothing outlives the run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Semaphore;

use super::report::{Report, Requests, Summary, Unreachable};
use super::{Answers, Asker, Inventory, Namespaces};
use crate::cluster::{Cluster, Fetched, ReadError};
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::resolve::{BatchRequest, Budget, CredentialRequest, ImageOutcome, Resolver};
use crate::tree::Kept;

/// Which pods to audit.
#[derive(Clone, Debug)]
pub struct Scope {
    /// `None`: every namespace (`-A`).
    pub namespace: Option<String>,
    /// A label selector (`-l`).
    pub selector: Option<String>,
    /// Pods per list page (`--chunk-size`).
    pub chunk_size: u32,
}

impl Scope {
    fn describe(&self) -> String {
        let mut s = match &self.namespace {
            Some(ns) => format!("in namespace {ns}"),
            None => "in all namespaces".to_string(),
        };
        if let Some(sel) = &self.selector {
            s.push_str(&format!(" matching {sel:?}"));
        }
        s
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// `--skip-prefix`: such images are not audited (they are never pinned).
    pub skip_prefixes: Vec<String>,
    /// Bound on one registry lookup (`--lookup-timeout`).
    pub lookup_timeout: Duration,
    /// Lookups in flight to one registry (`--max-lookups-per-registry`).
    pub lookups_per_registry: usize,
    /// Askers (namespace and pull secrets) resolved at once.
    pub concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot list pods {scope}: {source}; {hint}")]
    List {
        scope: String,
        source: ReadError,
        hint: &'static str,
    },
}

fn hint(e: &ReadError) -> &'static str {
    match e {
        ReadError::Api { code: 403, .. } => {
            "the kubeconfig's user needs list on pods (manifests/audit/ has a read-only ClusterRole), or audit a namespace it may list with -n"
        }
        ReadError::Api { code: 401, .. } => {
            "the API server refused the kubeconfig's credentials; refresh them (kubectl get pods shows the same)"
        }
        ReadError::Api { code: 410, .. } => {
            "the listing took longer than the API server keeps a continue token; run again, with a larger --chunk-size"
        }
        ReadError::Api { .. } => "the API server refused the list; see its message",
        ReadError::Timeout { .. } => {
            "the API server did not answer in time; check it is reachable, or raise --kube-timeout"
        }
        ReadError::Transport(_) => {
            "check the kubeconfig's server address and that the API server is reachable"
        }
    }
}

/// Counters the progress line reads while the run goes on.
#[derive(Debug, Default)]
struct State {
    pods: AtomicUsize,
    pages: AtomicUsize,
    lookups: AtomicUsize,
    done: Arc<AtomicUsize>,
}

impl State {
    fn line(&self) -> String {
        let (pods, pages) = (
            self.pods.load(Ordering::Relaxed),
            self.pages.load(Ordering::Relaxed),
        );
        let mut s = format!(
            "audit: listed {pods} pod{} ({pages} page{})",
            if pods == 1 { "" } else { "s" },
            if pages == 1 { "" } else { "s" }
        );
        let lookups = self.lookups.load(Ordering::Relaxed);
        if lookups > 0 {
            let done = self.done.load(Ordering::Relaxed).min(lookups);
            s.push_str(&format!("; resolved {done} of {lookups} tags"));
        }
        s
    }
}

/// Runs the audit; `progress` gets a line every second once the run has taken more than one.
pub async fn run(
    cluster: &Cluster,
    resolver: &Resolver,
    scope: &Scope,
    opts: &Options,
    progress: Progress<'_>,
) -> Result<Report, AuditError> {
    let state = Arc::new(State::default());
    let work = audit(cluster, resolver, scope, opts, &state);
    crate::progress::report_while(work, || state.line(), progress).await
}

async fn audit(
    cluster: &Cluster,
    resolver: &Resolver,
    scope: &Scope,
    opts: &Options,
    state: &Arc<State>,
) -> Result<Report, AuditError> {
    let mut requests = Requests::default();
    let inventory = list(cluster, scope, state, &mut requests).await?;
    let mut warnings = Vec::new();
    let namespaces = namespaces(cluster, scope, &inventory, &mut requests, &mut warnings).await;
    let wanted = inventory.wanted(&opts.skip_prefixes);
    // Distinct tags as the registry sees them (`app` and `app:latest` are one).
    requests.tags_resolved = wanted
        .values()
        .flatten()
        .filter_map(|t| ImageRef::parse(t).ok())
        .map(|r| {
            (
                r.registry().to_string(),
                r.repository().to_string(),
                r.tag().to_string(),
            )
        })
        .collect::<BTreeSet<_>>()
        .len();
    state
        .lookups
        .store(wanted.values().map(Vec::len).sum(), Ordering::Relaxed);
    let answers = resolve(resolver, wanted, opts, state, &mut warnings).await;
    let (findings, gaps) = inventory.findings(&answers, &namespaces, &opts.skip_prefixes);
    let mut summary = Summary {
        namespaces: inventory
            .pods
            .iter()
            .map(|p| p.namespace.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        pods: inventory.pods.len(),
        containers: inventory.containers(),
        ..Summary::default()
    };
    for f in &findings {
        summary.count(f.kind);
    }
    warnings.extend(gaps.warnings);
    Ok(Report {
        findings,
        summary,
        registries_unreachable: gaps
            .unreachable
            .into_iter()
            .map(|(registry, error)| Unreachable { registry, error })
            .collect(),
        warnings,
        requests,
    })
}

/// Every pod in scope, page by page; each page is reduced to its facts as it arrives.
async fn list(
    cluster: &Cluster,
    scope: &Scope,
    state: &State,
    requests: &mut Requests,
) -> Result<Inventory, AuditError> {
    let mut inventory = Inventory::default();
    let mut token: Option<String> = None;
    loop {
        let page = cluster
            .list_pods(
                scope.namespace.as_deref(),
                scope.selector.as_deref(),
                scope.chunk_size,
                token.as_deref(),
            )
            .await
            .map_err(|source| AuditError::List {
                scope: scope.describe(),
                hint: hint(&source),
                source,
            })?;
        requests.pod_list_pages += 1;
        inventory.add(&page.pods);
        state.pages.fetch_add(1, Ordering::Relaxed);
        state.pods.fetch_add(page.pods.len(), Ordering::Relaxed);
        token = page.next;
        if token.is_none() {
            return Ok(inventory);
        }
    }
}

/// Whether the namespaces opted in: one read of the namespace (`-n`), or one list of all. A
/// refused read is a warning; the rows then say "unknown".
async fn namespaces(
    cluster: &Cluster,
    scope: &Scope,
    inventory: &Inventory,
    requests: &mut Requests,
    warnings: &mut Vec<String>,
) -> Namespaces {
    if inventory.pods.is_empty() {
        return Namespaces::default();
    }
    let fix =
        "whether it has opted in is shown as unknown; allow get and list on namespaces to see it";
    match &scope.namespace {
        Some(ns) => {
            requests.namespace_reads += 1;
            match cluster.namespace_labels(ns).await {
                Ok(Fetched::Found(labels)) => Namespaces::new([(ns.clone(), labels)]),
                Ok(other) => {
                    warnings.push(format!(
                        "cannot read namespace {ns} ({}): {fix}",
                        fetched_word(&other)
                    ));
                    Namespaces::default()
                }
                Err(e) => {
                    warnings.push(format!("cannot read namespace {ns} ({e}): {fix}"));
                    Namespaces::default()
                }
            }
        }
        None => {
            let (result, pages) = cluster.all_namespace_labels(500).await;
            requests.namespace_reads += pages;
            match result {
                Ok(Fetched::Found(all)) => Namespaces::new(all),
                Ok(other) => {
                    warnings.push(format!(
                        "cannot list namespaces ({}): for each namespace, {fix}",
                        fetched_word(&other)
                    ));
                    Namespaces::default()
                }
                Err(e) => {
                    warnings.push(format!(
                        "cannot list namespaces ({e}): for each namespace, {fix}"
                    ));
                    Namespaces::default()
                }
            }
        }
    }
}

fn fetched_word<T>(f: &Fetched<T>) -> &str {
    match f {
        Fetched::Found(_) => "found",
        Fetched::NotFound => "not found",
        Fetched::Forbidden => "forbidden",
        Fetched::Unusable(m) => m,
    }
}

/// Resolves each asker's tags with its credentials, `opts.concurrency` askers at once. The
/// resolver's cache and in-flight coalescing make a tag asked by many askers one registry request
/// (when they use the same credential).
async fn resolve(
    resolver: &Resolver,
    wanted: BTreeMap<Asker, Vec<String>>,
    opts: &Options,
    state: &Arc<State>,
    warnings: &mut Vec<String>,
) -> Answers {
    let gate = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (asker, images) in wanted {
        let (resolver, gate, done) = (resolver.clone(), gate.clone(), state.done.clone());
        let budget =
            Budget::for_queue(images.len(), opts.lookups_per_registry, opts.lookup_timeout);
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await.ok();
            let secrets: Vec<_> = asker
                .pull_secrets
                .iter()
                .map(|n| json!({ "name": n }))
                .collect();
            let spec = Kept::from_value(&json!({ "imagePullSecrets": secrets }));
            let req = BatchRequest {
                credentials: CredentialRequest {
                    namespace: Some(&asker.namespace),
                    pod_spec: Some(&spec),
                    template: false,
                },
                allow_stale: false,
                progress: Some(done),
            };
            let batch = resolver.resolve_batch(&req, &images, budget).await;
            let answers: BTreeMap<_, _> = images
                .into_iter()
                .zip(batch.outcomes)
                .filter_map(|(image, o)| match o {
                    ImageOutcome::Resolved(_, outcome) => Some((image, outcome)),
                    _ => None,
                })
                .collect();
            (asker, answers, batch.warnings)
        });
    }
    let mut answers = Answers::new();
    let mut seen = BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((asker, a, w)) => {
                answers.insert(asker, a);
                warnings.extend(w.into_iter().filter(|w| seen.insert(w.clone())));
            }
            // A task that panicked answers nothing: its rows show no stale/moved check.
            Err(e) => warnings.push(format!("a resolution task failed: {e}")),
        }
    }
    answers
}
