//! The `Resolver` the rest of tagpin sees, with one way through it:
//! [`Resolver::resolve_batch`] classifies images (skip prefix, digest, tag, invalid), dedupes
//! them, gathers the request's credentials and resolves every tag concurrently under one
//! deadline. The webhook, `tagpin resolve` and `tagpin pin` all call it.
//!
//! Underneath: a digest cache (fresh within `--cache-ttl`, last known within `--stale-ttl`, one
//! registry request per key however many ask at once), a credential chain, and a circuit breaker
//! per registry.

pub mod auth;
pub mod breaker;
pub mod cache;
pub mod credentials;
mod distinct;
pub mod http;
pub mod netpolicy;
pub mod provider;
pub mod registry;
pub mod sources;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cluster::Cluster;
use crate::metrics::{LookupLabels, Metrics, RegistryLabel};
use crate::reference::{Digest, ImageRef, ReferenceError};
use breaker::Breakers;
use cache::{DigestCache, Key};
use credentials::{Credential, CredentialSet};
use distinct::Numbering;
use http::{RegistryError, RegistryOptions};
use provider::Providers;
use registry::RegistryClient;
use sources::Sources;
pub use sources::{CredentialRequest, Gathered};

#[derive(Clone, Debug)]
pub struct ResolverConfig {
    pub registry: RegistryOptions,
    /// Static credentials (`--docker-config`).
    pub docker_config: CredentialSet,
    /// Images starting with one of these are never looked up (`--skip-prefix`).
    pub skip_prefixes: Vec<String>,
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
    /// Most distinct tags one batch resolves (`--max-images-per-review`); `None`: no limit.
    pub max_images_per_batch: Option<usize>,
    /// Registry lookups in flight at once, in all (`--max-concurrent-lookups`) and per
    /// registry host (`--max-lookups-per-registry`). A lookup beyond them waits.
    pub max_lookups: usize,
    pub max_lookups_per_registry: usize,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            registry: RegistryOptions {
                insecure: Vec::new(),
                extra_ca_pem: None,
                connect_timeout: Duration::from_secs(3),
                request_timeout: Duration::from_secs(10),
                policy: Default::default(),
            },
            docker_config: CredentialSet::default(),
            skip_prefixes: Vec::new(),
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 10_000,
            stale_ttl: Some(Duration::from_secs(24 * 3600)),
            lookup_timeout: Duration::from_secs(10),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            cluster: None,
            providers: None,
            max_images_per_batch: None,
            max_lookups: 256,
            max_lookups_per_registry: 16,
        }
    }
}

/// How many times one lookup asks again after a 429 whose `Retry-After` ends within its time.
pub const MAX_RATE_LIMIT_RETRIES: u32 = 3;

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
    /// Waited for a lookup slot (`--max-concurrent-lookups`, `--max-lookups-per-registry`) until
    /// the time ran out: tagpin's own limit, not the registry's failure.
    #[error("registry {registry} not asked: tagpin already has {limit} lookups in flight and none finished in time (--max-concurrent-lookups, --max-lookups-per-registry)")]
    Busy { registry: String, limit: usize },
}

impl LookupError {
    /// A failure of the registry rather than an answer about the image.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Registry(e) => e.is_outage(),
            Self::AllRefused { .. } | Self::Busy { .. } => false,
            Self::BreakerOpen { .. } | Self::Deadline { .. } | Self::Internal(_) => true,
        }
    }

    /// How a refused credential is listed in [`LookupError::AllRefused`].
    fn refusal(&self) -> String {
        match self {
            Self::Registry(RegistryError::Unauthorized { credential, .. }) => {
                format!("{credential} (401)")
            }
            Self::Registry(RegistryError::Forbidden { credential, .. }) => {
                format!("{credential} (403)")
            }
            other => other.to_string(),
        }
    }
}

/// What became of one tag.
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

/// What an image string is, before any lookup. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Starts with a `--skip-prefix`: left alone.
    Skipped,
    /// Already carries a digest: left alone.
    HasDigest,
    /// Not a valid image reference: never sent anywhere, reported.
    Invalid(ReferenceError),
    /// A tag to resolve.
    Tag(ImageRef),
}

/// Classifies one image string. Pure.
pub fn classify(image: &str, skip_prefixes: &[String]) -> Class {
    if skip_prefixes.iter().any(|p| image.starts_with(p.as_str())) {
        return Class::Skipped;
    }
    match ImageRef::parse(image) {
        Ok(r) => Class::Tag(r),
        Err(ReferenceError::HasDigest { .. }) => Class::HasDigest,
        Err(e) => Class::Invalid(e),
    }
}

/// Parsed references kept, by image string (see [`Parsed`]).
const PARSED_CAPACITY: u64 = 4_096;
/// Longest image string whose parse is kept: longer ones (no valid reference is this long in
/// practice: a repository name is at most 255 characters) are parsed each time, so hostile
/// strings cannot make the kept parses large.
const PARSED_MAX_LEN: usize = 256;

/// Image strings already parsed, and what they parsed to: a cached admission classifies its
/// images by one lookup each, not a parse (the reference grammar is a regex; parsing was about a
/// tenth of the cached path's time, issue 25). Bounded in entries and in the length of a string
/// kept; what is evicted is parsed again when next seen.
struct Parsed {
    refs: quick_cache::sync::Cache<Box<str>, Result<ImageRef, ReferenceError>>,
}

impl Parsed {
    fn new() -> Self {
        Self {
            refs: quick_cache::sync::Cache::new(PARSED_CAPACITY as usize),
        }
    }

    /// Classifies `image` as [`classify`] does, parsing it only the first time it is seen.
    fn classify(&self, image: &str, skip_prefixes: &[String]) -> Class {
        if skip_prefixes.iter().any(|p| image.starts_with(p.as_str())) {
            return Class::Skipped;
        }
        // A digest is recognized without a parse (as `ImageRef::parse` does, first).
        if image.contains('@') {
            return Class::HasDigest;
        }
        let parsed = match self.refs.get(image) {
            Some(p) => p,
            None => {
                let p = ImageRef::parse(image);
                if image.len() <= PARSED_MAX_LEN {
                    self.refs.insert(image.into(), p.clone());
                }
                p
            }
        };
        match parsed {
            Ok(r) => Class::Tag(r),
            Err(ReferenceError::HasDigest { .. }) => Class::HasDigest,
            Err(e) => Class::Invalid(e),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.refs.len()
    }
}

/// What became of one image of a batch.
#[derive(Debug, Clone)]
pub enum ImageOutcome {
    Skipped,
    HasDigest,
    Invalid(ReferenceError),
    Resolved(ImageRef, Outcome),
    /// A tag past the batch's limit of distinct images: not looked up.
    OverLimit(ImageRef),
}

/// The time a batch may take: all its lookups end by `started + timeout`.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub started: Instant,
    pub timeout: Duration,
}

impl Budget {
    /// `timeout` from now.
    pub fn from_now(timeout: Duration) -> Self {
        Self {
            started: Instant::now(),
            timeout,
        }
    }

    /// For a command line run rather than an admission: `n` lookups that go `per_wave` at a
    /// time, each within `lookup_timeout`, however many queue.
    pub fn for_queue(n: usize, per_wave: usize, lookup_timeout: Duration) -> Self {
        let waves = u32::try_from(n.div_ceil(per_wave.max(1)).max(1)).unwrap_or(u32::MAX);
        Self::from_now(lookup_timeout.saturating_mul(waves))
    }

    pub fn deadline(&self) -> Instant {
        self.started + self.timeout
    }
}

/// Who asks: where their credentials are, and whether a last known digest may stand in for one
/// the registry cannot give now.
#[derive(Clone, Debug, Default)]
pub struct BatchRequest<'a> {
    pub credentials: CredentialRequest<'a>,
    pub allow_stale: bool,
    /// Counts distinct tags resolved so far (for a progress line).
    pub progress: Option<Arc<AtomicUsize>>,
}

/// The answer for a batch: one outcome per image given, in order, and what went wrong while
/// gathering credentials (warnings for the person who asked, never holding a secret).
#[derive(Debug, Default)]
pub struct Batch {
    pub outcomes: Vec<ImageOutcome>,
    pub warnings: Vec<String>,
}

/// Lookup slots: one for all registries, one per registry host.
struct Slots {
    all: Arc<Semaphore>,
    per_registry: moka::sync::Cache<Box<str>, Arc<Semaphore>>,
    per_registry_n: usize,
}

impl Slots {
    fn new(all: usize, per_registry: usize) -> Self {
        Self {
            all: Arc::new(Semaphore::new(all.max(1))),
            per_registry: moka::sync::Cache::builder()
                .max_capacity(4_096)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            per_registry_n: per_registry.max(1),
        }
    }

    async fn acquire(
        &self,
        registry: &str,
    ) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let n = self.per_registry_n;
        let host = self
            .per_registry
            .get_with(registry.into(), || Arc::new(Semaphore::new(n)));
        let one = host.acquire_owned().await.ok()?;
        let all = self.all.clone().acquire_owned().await.ok()?;
        Some((one, all))
    }
}

struct Inner {
    client: RegistryClient,
    slots: Slots,
    max_images_per_batch: Option<usize>,
    docker_config: CredentialSet,
    skip_prefixes: Vec<String>,
    parsed: Parsed,
    cache: DigestCache,
    breakers: Breakers,
    metrics: Arc<Metrics>,
    lookup_timeout: Duration,
    sources: Sources,
}

/// Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Resolver(Arc<Inner>);

impl Resolver {
    pub fn new(cfg: ResolverConfig, metrics: Arc<Metrics>) -> Result<Self, http::ClientBuildError> {
        Ok(Self(Arc::new(Inner {
            client: RegistryClient::new(&cfg.registry)?,
            slots: Slots::new(cfg.max_lookups, cfg.max_lookups_per_registry),
            max_images_per_batch: cfg.max_images_per_batch,
            docker_config: cfg.docker_config,
            skip_prefixes: cfg.skip_prefixes,
            parsed: Parsed::new(),
            cache: DigestCache::new(cfg.cache_capacity, cfg.cache_ttl, cfg.stale_ttl),
            breakers: Breakers::new(
                cfg.breaker_threshold,
                cfg.breaker_cooldown,
                cfg.lookup_timeout,
                metrics.clone(),
            ),
            metrics,
            lookup_timeout: cfg.lookup_timeout,
            sources: Sources::new(cfg.cluster, cfg.providers),
        })))
    }

    /// The one way through: classifies `images`, resolves each distinct tag once (concurrently,
    /// within `budget`) with the request's credentials, and answers one outcome per image.
    pub async fn resolve_batch<S: AsRef<str>>(
        &self,
        req: &BatchRequest<'_>,
        images: &[S],
        budget: Budget,
    ) -> Batch {
        let mut outcomes = Vec::with_capacity(images.len());
        let mut distinct: Vec<ImageRef> = Vec::new();
        let mut numbering = Numbering::default();
        // For each image: where its tag is in `distinct`, if it has one.
        let mut slots: Vec<Option<usize>> = Vec::with_capacity(images.len());
        for image in images {
            let image = image.as_ref();
            match self.classify(image) {
                Class::Tag(r) => {
                    let (i, new) = numbering.number(image);
                    if new {
                        distinct.push(r);
                    }
                    slots.push(Some(i));
                    outcomes.push(ImageOutcome::Skipped); // replaced below
                }
                other => {
                    slots.push(None);
                    outcomes.push(match other {
                        Class::Skipped => ImageOutcome::Skipped,
                        Class::HasDigest => ImageOutcome::HasDigest,
                        Class::Invalid(e) => ImageOutcome::Invalid(e),
                        Class::Tag(_) => unreachable!("handled above"),
                    });
                }
            }
        }
        let over = self.over_limit(&mut distinct);
        if distinct.is_empty() && over.is_empty() {
            return Batch {
                outcomes,
                warnings: Vec::new(),
            };
        }
        let gathered = self
            .0
            .sources
            .gather(&req.credentials, &distinct, budget.deadline())
            .await;
        let resolved = self
            .resolve_distinct(&distinct, &gathered.sets, budget, req)
            .await;
        for (out, slot) in outcomes.iter_mut().zip(&slots) {
            if let Some(i) = *slot {
                *out = match resolved.get(i) {
                    Some(r) => ImageOutcome::Resolved(distinct[i].clone(), r.clone()),
                    None => ImageOutcome::OverLimit(over[i - distinct.len()].clone()),
                };
            }
        }
        Batch {
            outcomes,
            warnings: gathered.warnings,
        }
    }

    /// [`classify`] with this resolver's `--skip-prefix`es, parsing a string only the first time
    /// it is seen (within the bound of the kept parses).
    pub fn classify(&self, image: &str) -> Class {
        self.0.parsed.classify(image, &self.0.skip_prefixes)
    }

    /// Cuts `distinct` to the batch limit; returns the tags cut off, in order.
    fn over_limit(&self, distinct: &mut Vec<ImageRef>) -> Vec<ImageRef> {
        match self.0.max_images_per_batch {
            Some(max) if distinct.len() > max => distinct.split_off(max),
            _ => Vec::new(),
        }
    }

    /// Credentials to try for `image`, in order: those of the request (pull secrets, service
    /// account, plugins), then `--docker-config`, then anonymous.
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

    /// Resolves distinct tags under one deadline: a tag with a fresh cached digest is answered on
    /// the spot; the others are looked up concurrently, each in a task of its own. Lookups
    /// outliving the deadline are answered as failed (or stale) while they go on and fill the
    /// cache.
    async fn resolve_distinct(
        &self,
        images: &[ImageRef],
        request_credentials: &[CredentialSet],
        budget: Budget,
        req: &BatchRequest<'_>,
    ) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(images.len());
        let mut misses = Vec::new();
        // No credential for any image: each tries anonymous only, and a hit needs no list.
        let anonymous_only = self.0.docker_config.is_empty()
            && request_credentials.iter().all(CredentialSet::is_empty);
        for (i, image) in images.iter().enumerate() {
            let creds = (!anonymous_only).then(|| self.candidates(image, request_credentials));
            let tried = match &creds {
                Some(c) => c.as_slice(),
                None => std::slice::from_ref(Credential::anonymous_ref()),
            };
            if let Some(d) = self.fresh(image, tried) {
                if let Some(p) = &req.progress {
                    p.fetch_add(1, Ordering::Relaxed);
                }
                out.push(Outcome::Pinned(d));
                continue;
            }
            // Replaced below, once the lookup ends or the deadline passes.
            out.push(Outcome::Failed(LookupError::Internal(String::new())));
            let creds = creds.unwrap_or_else(|| vec![Credential::anonymous()]);
            let (this, image) = (self.clone(), image.clone());
            let progress = req.progress.clone();
            // Boxed: the lookup's future is large, and only a miss pays for it.
            let lookup = Box::pin(async move {
                let r = this.resolve_one(&image, &creds).await;
                if let Some(p) = progress {
                    p.fetch_add(1, Ordering::Relaxed);
                }
                r
            });
            misses.push((i, tokio::spawn(lookup)));
        }
        for (i, handle) in misses {
            let image = &images[i];
            let result = match tokio::time::timeout_at(budget.deadline().into(), handle).await {
                Ok(Ok(r)) => r,
                Ok(Err(join)) => Err(LookupError::Internal(join.to_string())),
                Err(_) => Err(LookupError::Deadline {
                    registry: image.registry().to_string(),
                    after: budget.timeout,
                }),
            };
            out[i] = match result {
                Ok(d) => Outcome::Pinned(d),
                Err(e) if req.allow_stale && e.is_outage() => {
                    // Boxed: rare (a failed lookup), and its future would enlarge every batch's.
                    match Box::pin(self.last_known(image, request_credentials)).await {
                        Some(digest) => {
                            self.0.metrics.stale_served.inc();
                            Outcome::Stale { digest, error: e }
                        }
                        None => Outcome::Failed(e),
                    }
                }
                Err(e) => Outcome::Failed(e),
            };
        }
        out
    }

    /// A digest any of `creds` already obtained for `image`, fresh: a cache hit, counted. In the
    /// order of `creds`, so a digest the request's own credentials obtained answers it before a
    /// refused credential earlier in the list is tried again.
    fn fresh(&self, image: &ImageRef, creds: &[Credential]) -> Option<Digest> {
        let d = creds
            .iter()
            .find_map(|cred| self.0.cache.fresh_now(image, cred))?;
        self.0.metrics.cache_hits.inc();
        Some(d)
    }

    async fn last_known(&self, image: &ImageRef, request: &[CredentialSet]) -> Option<Digest> {
        for cred in self.candidates(image, request) {
            if let Some(d) = self.0.cache.last_known(&Key::new(image, &cred)).await {
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
        // first would otherwise cost a registry round trip on every admission). Asked again
        // here: another lookup may have filled the cache since the batch looked.
        if let Some(d) = self.fresh(image, creds) {
            return Ok(d);
        }
        let mut refusals: Vec<LookupError> = Vec::new();
        for cred in creds {
            self.0.metrics.cache_misses.inc();
            let key = Key::new(image, cred);
            match self.0.cache.load(key, self.load(image, cred)).await {
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
                refusals: refusals.iter().map(LookupError::refusal).collect(),
            }),
        }
    }

    /// The registry request behind a cache miss, through the registry's breaker. All of it,
    /// waits included, ends within `lookup_timeout`: it waits behind a probe of a registry coming
    /// back for the probe's outcome, and when the registry answers 429 with a `Retry-After` that
    /// ends in time, waits that long and asks again (up to [`MAX_RATE_LIMIT_RETRIES`] times).
    async fn load(&self, image: &ImageRef, cred: &Credential) -> Result<Digest, LookupError> {
        let registry = image.registry();
        let wait_until = Instant::now() + self.0.lookup_timeout;
        let mut retries = 0;
        loop {
            if let Err(open) = self.0.breakers.admit_or_wait(registry, wait_until).await {
                self.count_lookup(registry, "breaker_open");
                return Err(LookupError::BreakerOpen {
                    registry: registry.to_string(),
                    remaining: open.remaining,
                });
            }
            match self.request(image, cred, wait_until).await {
                Err(LookupError::Registry(RegistryError::RateLimited {
                    retry_after: Some(after),
                    ..
                })) if retries < MAX_RATE_LIMIT_RETRIES
                    && Instant::now() + after.max(Duration::from_secs(1)) < wait_until =>
                {
                    // The breaker now holds the registry's pause; `admit_or_wait` waits it out.
                    retries += 1;
                }
                r => return r,
            }
        }
    }

    /// One request to the registry (within the per-registry slots, ending by `wait_until`), its
    /// outcome counted and recorded in the registry's breaker.
    async fn request(
        &self,
        image: &ImageRef,
        cred: &Credential,
        wait_until: Instant,
    ) -> Result<Digest, LookupError> {
        let inner = &self.0;
        let registry = image.registry();
        let started = Instant::now();
        let holding = AtomicBool::new(false);
        let lookup = async {
            let _slots = inner.slots.acquire(registry).await;
            holding.store(true, Ordering::Relaxed);
            inner.client.manifest_digest(image, cred).await
        };
        let result = match tokio::time::timeout_at(wait_until.into(), lookup).await {
            Ok(r) => r,
            Err(_) if !holding.load(Ordering::Relaxed) => {
                self.count_lookup(registry, "busy");
                return Err(LookupError::Busy {
                    registry: registry.to_string(),
                    limit: inner.slots.per_registry_n,
                });
            }
            Err(_) => Err(RegistryError::Timeout {
                registry: registry.to_string(),
                after: inner.lookup_timeout,
            }),
        };
        let label = RegistryLabel {
            registry: inner.metrics.registry_label(registry),
        };
        let seconds = started.elapsed().as_secs_f64();
        inner
            .metrics
            .lookup_seconds
            .get_or_create(&label)
            .observe(seconds);
        self.count_lookup(
            registry,
            result.as_ref().map_or_else(|e| e.outcome(), |_| "ok"),
        );
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
                    .failure(registry, retry_after, started, Instant::now());
            }
            _ => inner.breakers.success(registry, started),
        }
        Ok(result?)
    }

    fn count_lookup(&self, registry: &str, outcome: &'static str) {
        let m = &self.0.metrics;
        let labels = LookupLabels {
            registry: m.registry_label(registry),
            outcome,
        };
        m.lookups.get_or_create(&labels).inc();
    }

    /// Drops every cached digest and token (tests and benchmarks measure cold paths with it).
    pub fn clear_cache(&self) {
        self.0.cache.clear();
        self.0.client.clear();
    }

    /// The metrics this resolver records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future as _;

    #[test]
    fn classification() {
        let skip = vec!["kind.local/".to_string()];
        let d = format!("app@sha256:{}", "1".repeat(64));
        assert!(matches!(classify("nginx:1", &skip), Class::Tag(r) if r.tag() == "1"));
        assert_eq!(classify(&d, &skip), Class::HasDigest);
        assert_eq!(classify("kind.local/x:1", &skip), Class::Skipped);
        assert!(matches!(classify("Bad:Image", &skip), Class::Invalid(_)));
    }

    #[test]
    fn kept_parses_are_bounded_in_count_and_in_length() {
        let p = Parsed::new();
        let skip = Vec::new();
        for i in 0..3 * PARSED_CAPACITY {
            let image = format!("reg.example/app{i}:v1");
            assert!(matches!(p.classify(&image, &skip), Class::Tag(_)));
        }
        // quick_cache may hold a little more than asked for while it settles.
        assert!(
            p.len() as u64 <= PARSED_CAPACITY + PARSED_CAPACITY / 10,
            "{} kept for a bound of {PARSED_CAPACITY}",
            p.len()
        );
        let p = Parsed::new();
        let long = format!("reg.example/{}:v1", "a".repeat(PARSED_MAX_LEN));
        let invalid = format!("{}:v1", "A".repeat(PARSED_MAX_LEN));
        assert!(matches!(
            p.classify(&long, &skip),
            Class::Tag(_) | Class::Invalid(_)
        ));
        assert!(matches!(p.classify(&invalid, &skip), Class::Invalid(_)));
        assert_eq!(
            p.len(),
            0,
            "strings past {PARSED_MAX_LEN} bytes are not kept"
        );
        p.classify("nginx:1", &skip);
        p.classify(&format!("nginx@sha256:{}", "1".repeat(64)), &skip);
        assert_eq!(
            p.len(),
            1,
            "a digest is recognized without a parse, and not kept"
        );
    }

    #[tokio::test]
    async fn a_cached_tag_is_answered_without_a_task() {
        crate::install_crypto_provider();
        let r = Resolver::new(ResolverConfig::default(), Arc::new(Metrics::new())).unwrap();
        // 192.0.2.1 (TEST-NET-1) is refused by the address policy: a miss fails fast.
        let image = ImageRef::parse("192.0.2.1:5000/app:1").unwrap();
        let d = Digest::Sha256([7; 32]);
        r.0.cache
            .load(Key::new(&image, &Credential::anonymous()), async {
                Ok::<_, ()>(d.clone())
            })
            .await
            .unwrap();
        // The whole batch runs inside one poll: no task to wait for (a spawned lookup would
        // leave it pending on a current-thread runtime).
        let req = BatchRequest::default();
        let batch = r.resolve_batch(
            &req,
            &["192.0.2.1:5000/app:1"],
            Budget::from_now(Duration::from_secs(5)),
        );
        let mut batch = std::pin::pin!(batch);
        let waker = std::task::Waker::noop();
        let polled = batch
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        match polled {
            std::task::Poll::Ready(b) => assert!(matches!(
                b.outcomes.as_slice(),
                [ImageOutcome::Resolved(_, Outcome::Pinned(got))] if *got == d
            )),
            std::task::Poll::Pending => panic!("a cached tag waited for a task"),
        }
        assert_eq!(r.0.metrics.cache_hits.get(), 1);
        assert_eq!(r.0.metrics.cache_misses.get(), 0);
    }

    #[tokio::test]
    async fn a_batch_answers_every_image_in_order_and_resolves_nothing_it_need_not() {
        crate::install_crypto_provider();
        let r = Resolver::new(
            ResolverConfig {
                skip_prefixes: vec!["kind.local/".into()],
                ..ResolverConfig::default()
            },
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let d = format!("app@sha256:{}", "1".repeat(64));
        let b = r
            .resolve_batch(
                &BatchRequest::default(),
                &["kind.local/x:1", d.as_str(), "Bad:Image"],
                Budget::from_now(Duration::from_secs(1)),
            )
            .await;
        assert!(matches!(
            b.outcomes.as_slice(),
            [
                ImageOutcome::Skipped,
                ImageOutcome::HasDigest,
                ImageOutcome::Invalid(_)
            ]
        ));
        assert!(b.warnings.is_empty());
        assert_eq!(
            r.metrics()
                .encode()
                .matches("registry_lookups_total{")
                .count(),
            0
        );
    }
}
