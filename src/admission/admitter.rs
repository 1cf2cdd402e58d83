//! The admitter: answers one review body with the resolver, and logs and counts the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::decide::{decide, response, Decision, Endpoint};
use super::plan::{credential_request, plan, Plan};
use super::review::{parse_review, parse_review_header, AdmissionRequest, ReviewError, ReviewOut};
use crate::logging::Escaped;
use crate::metrics::{AdmissionLabels, Metrics, PathLabel};
use crate::resolve::{BatchRequest, Budget, Resolver};

/// Settings that shape admission answers. (`--skip-prefix` is the resolver's: it classifies.)
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    pub keep_tag: bool,
    pub resolve_timeout: Duration,
    pub stale_on_error: bool,
}

/// The object's name for logs: the request's, else `metadata.name`, else `generateName` (pods
/// made by a ReplicaSet arrive with only that).
fn request_name(req: &AdmissionRequest) -> String {
    if let Some(n) = req.name.as_deref().filter(|n| !n.is_empty()) {
        return n.to_string();
    }
    let meta = req.object.as_ref().and_then(|o| o.get("metadata"));
    let field = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
    };
    match (field("name"), field("generateName")) {
        (Some(n), _) => n.to_string(),
        (None, Some(g)) => format!("{g}*"),
        _ => String::new(),
    }
}

/// Holds the resolver and answers reviews.
#[derive(Clone)]
pub struct Admitter {
    pub resolver: Resolver,
    pub config: Arc<AdmissionConfig>,
    pub metrics: Arc<Metrics>,
}

impl Admitter {
    /// Answers one review body. `Err` only for bodies that are not an AdmissionReview.
    pub async fn review(&self, body: &[u8], endpoint: Endpoint) -> Result<ReviewOut, ReviewError> {
        self.review_since(body, endpoint, Instant::now()).await
    }

    /// [`Self::review`] for a request that arrived at `started`: its deadline
    /// (`--resolve-timeout`) counts from then, time spent waiting for a slot included.
    pub async fn review_since(
        &self,
        body: &[u8],
        endpoint: Endpoint,
        started: Instant,
    ) -> Result<ReviewOut, ReviewError> {
        let path = endpoint.path();
        let (api_version, req) = self
            .counted(parse_review(body), path, started)
            .inspect_err(|e| {
                tracing::warn!(path, error = %Escaped(&e.to_string()), "rejected a body that is not an AdmissionReview");
            })?;
        let plan = plan(&req);
        let decision = self
            .resolve_and_decide(&req, &plan, endpoint, started)
            .await;
        let outcome = decision.outcome(plan.ignored);
        self.count(path, outcome, started);
        let name = request_name(&req);
        tracing::info!(
            uid = %Escaped(&req.uid),
            namespace = req.namespace.as_deref().unwrap_or(""),
            name,
            kind = %Escaped(&req.kind.kind),
            operation = %Escaped(&req.operation),
            path,
            dry_run = req.dry_run.unwrap_or(false),
            pinned = decision.pinned,
            left = decision.left,
            warnings = decision.warnings.len(),
            outcome,
            ignored = plan.ignored.unwrap_or(""),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "admission"
        );
        Ok(response(api_version, req.uid, &decision))
    }

    /// Resolves the plan's sites with the request's credentials and decides. Limit warnings
    /// come first, then credential warnings.
    async fn resolve_and_decide(
        &self,
        req: &AdmissionRequest,
        plan: &Plan,
        endpoint: Endpoint,
        started: Instant,
    ) -> Decision {
        let images: Vec<&str> = plan.sites.iter().map(|s| s.image.as_str()).collect();
        let batch_req = BatchRequest {
            credentials: credential_request(req),
            allow_stale: self.config.stale_on_error && endpoint == Endpoint::Mutate,
            progress: None,
        };
        let budget = Budget {
            started,
            timeout: self.config.resolve_timeout,
        };
        let batch = self
            .resolver
            .resolve_batch(&batch_req, &images, budget)
            .await;
        let mut decision = decide(plan, &batch.outcomes, endpoint, self.config.keep_tag);
        for w in &batch.warnings {
            tracing::warn!(uid = %Escaped(&req.uid), warning = %Escaped(w), "credential source skipped");
        }
        // Limit warnings first, then credential warnings, then per-image ones.
        let at = decision.limits;
        decision.warnings.splice(at..at, batch.warnings);
        decision
    }

    /// The answer to a review that waited too long for a slot (more than
    /// `--max-concurrent-reviews` in flight): allowed unchanged with a warning on `/mutate`,
    /// denied on `/enforce`. Reads only the review's uid.
    pub fn overloaded(
        &self,
        body: &[u8],
        endpoint: Endpoint,
        started: Instant,
        limit: usize,
    ) -> Result<ReviewOut, ReviewError> {
        let path = endpoint.path();
        let (api_version, uid) = self.counted(parse_review_header(body), path, started)?;
        let why = format!(
            "tagpin: limit: more than {limit} reviews in flight (--max-concurrent-reviews); no slot within {}",
            humantime::format_duration(started.elapsed())
        );
        let d = Decision::over_limit(why, endpoint);
        self.count(path, "overloaded", started);
        tracing::warn!(uid = %Escaped(&uid), path, "review answered without looking: too many in flight");
        Ok(response(api_version, uid, &d))
    }

    /// `parsed`, its error counted as an invalid body.
    fn counted<T>(
        &self,
        parsed: Result<T, ReviewError>,
        path: &'static str,
        started: Instant,
    ) -> Result<T, ReviewError> {
        parsed.inspect_err(|_| self.count(path, "invalid", started))
    }

    fn count(&self, path: &'static str, outcome: &'static str, started: Instant) {
        self.metrics
            .admissions
            .get_or_create(&AdmissionLabels { path, outcome })
            .inc();
        self.metrics
            .admission_seconds
            .get_or_create(&PathLabel { path })
            .observe(started.elapsed().as_secs_f64());
    }
}
