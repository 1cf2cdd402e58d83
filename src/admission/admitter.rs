//! The admitter: answers one review body with the resolver, and logs and counts the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::decide::{decide, response, Decision, Endpoint};
use super::logline::{self, AdmissionLine};
use super::plan::{credential_request, plan, Plan};
use super::review::{parse_review, parse_review_header, AdmissionRequest, ReviewError, ReviewOut};
use crate::logging::Escaped;
use crate::metrics::Metrics;
use crate::resolve::{BatchRequest, Budget, Resolver};
use crate::tree::Tree;

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
    let meta = req.object.as_ref().and_then(|o| o.field("metadata"));
    let field = |f: &str| {
        meta.and_then(|m| m.field(f))
            .and_then(Tree::as_str)
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
        if tracing::enabled!(target: logline::TARGET, tracing::Level::INFO) {
            let mut line = AdmissionLine::new(
                &req.uid,
                req.namespace.as_deref().unwrap_or(""),
                &request_name(&req),
                &req.kind.kind,
                &req.operation,
                path,
                outcome,
                plan.ignored.unwrap_or(""),
            );
            line.dry_run = req.dry_run.unwrap_or(false);
            line.pinned = decision.pinned;
            line.left = decision.left;
            line.warnings = decision.warnings.len();
            line.duration = started.elapsed();
            if let Err(line) = crate::logging::defer(line) {
                line.log();
            }
        }
        Ok(response(api_version, req.uid, &decision))
    }

    /// Resolves the plan's sites with the request's credentials and decides. Limit warnings
    /// come first, then credential warnings.
    async fn resolve_and_decide(
        &self,
        req: &AdmissionRequest<'_>,
        plan: &Plan,
        endpoint: Endpoint,
        started: Instant,
    ) -> Decision {
        let images: Vec<&str> = plan.sites.iter().map(|s| s.image.as_str()).collect();
        let batch_req = BatchRequest {
            credentials: credential_request(req, plan),
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
            .count_admission(path, outcome, started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{mpsc, Mutex};

    use super::*;
    use crate::logging::NonBlocking;
    use crate::resolve::ResolverConfig;

    /// A log sink whose first write blocks until the test ends.
    struct Stuck {
        entered: mpsc::Sender<()>,
        release: Mutex<Option<mpsc::Receiver<()>>>,
    }

    impl Write for Stuck {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Some(release) = self.release.lock().map(|mut r| r.take()).unwrap_or(None) {
                let _ = self.entered.send(());
                let _ = release.recv();
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn review(uid: &str) -> Vec<u8> {
        let image = format!("app@sha256:{}", "1".repeat(64));
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "ns", "operation": "CREATE", "userInfo": {"username": "u"},
                "object": {"metadata": {"name": "p"},
                    "spec": {"containers": [{"name": "c", "image": image}]}}}
        }))
        .unwrap()
    }

    #[test]
    fn a_stuck_log_sink_does_not_hold_up_admissions_and_their_lines_are_counted_as_dropped() {
        crate::install_crypto_provider();
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let sink = Stuck {
            entered: entered_tx,
            release: Mutex::new(Some(release_rx)),
        };
        let (writer, _flush) = NonBlocking::new(sink, 8);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer.clone())
            .finish();
        let metrics = Arc::new(Metrics::new());
        let admitter = Admitter {
            resolver: Resolver::new(ResolverConfig::default(), metrics.clone()).unwrap(),
            config: Arc::new(AdmissionConfig {
                keep_tag: false,
                resolve_timeout: Duration::from_secs(5),
                stale_on_error: true,
            }),
            metrics,
        };
        tracing::subscriber::with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                // The first admission's line reaches the sink, which never returns.
                admitter
                    .review(&review("u0"), Endpoint::Mutate)
                    .await
                    .unwrap();
                entered.recv().unwrap();
                for i in 1..=50 {
                    let uid = format!("u{i}");
                    let out = admitter
                        .review(&review(&uid), Endpoint::Mutate)
                        .await
                        .unwrap();
                    assert_eq!(out.response.uid, uid);
                    assert!(out.response.allowed);
                }
            });
        });
        // 8 lines wait in the queue; the other 42 were dropped and counted.
        assert_eq!(writer.dropped(), 42);
        drop(release);
    }
}
