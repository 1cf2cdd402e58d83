//! AdmissionReview in, AdmissionReview out.
//!
//! [`parse_review`], [`plan`] and [`decide`] are pure; [`Admitter::review`] glues them to the
//! resolver. The response is written through our own struct so the patch is base64 with
//! `patchType: JSONPatch`, the documented form (kube's `AdmissionResponse` writes the patch as a
//! JSON array of numbers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::logging::Escaped;
use crate::metrics::{AdmissionLabels, Metrics, PathLabel};
use crate::podspec::{self, ImageSite};
use crate::prune::{Pruned, MAX_KEPT_NODES};
use crate::reference::ImageRef;
use crate::resolve::{BatchRequest, Budget, CredentialRequest, ImageOutcome, Outcome, Resolver};

/// `/mutate` pins what it can and never blocks; `/enforce` denies what it cannot pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Mutate,
    Enforce,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Mutate => "mutate",
            Endpoint::Enforce => "enforce",
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: String,
    pub kind: String,
    pub request: Option<AdmissionRequest>,
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    pub kind: String,
}

/// The parts of an AdmissionReview request tagpin reads. `object` and `oldObject` are pruned
/// while they are read ([`crate::prune`]): only image sites, the metadata the patch touches and
/// the pod spec's credential fields are kept, never a whole `Value` of the object.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase", from = "RequestIn")]
pub struct AdmissionRequest {
    pub uid: String,
    pub kind: GroupVersionKind,
    pub sub_resource: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub operation: String,
    pub object: Option<Value>,
    pub old_object: Option<Value>,
    pub dry_run: Option<bool>,
    /// `object` or `oldObject` held more than [`crate::prune::MAX_KEPT_NODES`] values worth
    /// keeping: it was not read whole and nothing in it is pinned.
    pub too_large: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    operation: String,
    #[serde(default)]
    object: Option<Pruned>,
    #[serde(default)]
    old_object: Option<Pruned>,
    #[serde(default)]
    dry_run: Option<bool>,
}

impl From<RequestIn> for AdmissionRequest {
    fn from(r: RequestIn) -> Self {
        let too_large = [&r.object, &r.old_object]
            .iter()
            .any(|o| o.as_ref().is_some_and(|p| p.over_budget));
        AdmissionRequest {
            uid: r.uid,
            kind: r.kind,
            sub_resource: r.sub_resource,
            name: r.name,
            namespace: r.namespace,
            operation: r.operation,
            object: r.object.map(|p| p.value),
            old_object: r.old_object.map(|p| p.value),
            dry_run: r.dry_run,
            too_large,
        }
    }
}

/// A body that is not an AdmissionReview.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("body is not an AdmissionReview: {0}")]
    Json(String),
    #[error(
        "unsupported AdmissionReview apiVersion {0:?}: configure admissionReviewVersions: [v1]"
    )]
    Version(String),
    #[error("kind is {0:?}, expected AdmissionReview")]
    Kind(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview request has an empty uid")]
    NoUid,
}

/// Parses and checks a review body.
pub fn parse_review(body: &[u8]) -> Result<(String, AdmissionRequest), ReviewError> {
    let review: AdmissionReview =
        serde_json::from_slice(body).map_err(|e| ReviewError::Json(e.to_string()))?;
    if !matches!(
        review.api_version.as_str(),
        "admission.k8s.io/v1" | "admission.k8s.io/v1beta1"
    ) {
        return Err(ReviewError::Version(review.api_version));
    }
    if review.kind != "AdmissionReview" {
        return Err(ReviewError::Kind(review.kind));
    }
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    if request.uid.is_empty() {
        return Err(ReviewError::NoUid);
    }
    Ok((review.api_version, request))
}

/// The apiVersion and uid of a review, reading nothing else.
pub fn parse_review_header(body: &[u8]) -> Result<(String, String), ReviewError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Header {
        api_version: String,
        kind: String,
        request: Option<RequestHeader>,
    }
    #[derive(Deserialize)]
    struct RequestHeader {
        uid: String,
    }
    let h: Header = serde_json::from_slice(body).map_err(|e| ReviewError::Json(e.to_string()))?;
    if !matches!(
        h.api_version.as_str(),
        "admission.k8s.io/v1" | "admission.k8s.io/v1beta1"
    ) {
        return Err(ReviewError::Version(h.api_version));
    }
    if h.kind != "AdmissionReview" {
        return Err(ReviewError::Kind(h.kind));
    }
    let uid = h.request.ok_or(ReviewError::NoRequest)?.uid;
    if uid.is_empty() {
        return Err(ReviewError::NoUid);
    }
    Ok((h.api_version, uid))
}

/// Settings that shape admission answers. (`--skip-prefix` is the resolver's: it classifies.)
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    pub keep_tag: bool,
    pub resolve_timeout: Duration,
    pub stale_on_error: bool,
}

/// What a request asks of the resolver.
#[derive(Debug, Default)]
pub struct Plan {
    /// Image sites to consider, in order; the resolver says which are tags, digests, skipped or
    /// invalid.
    pub sites: Vec<ImageSite>,
    /// Why nothing is looked at, when that is the case (for the log line).
    pub ignored: Option<&'static str>,
    /// Where the `tagpin.io/pinned` record goes (none for subresource requests, whose metadata
    /// changes the API server drops).
    pub record: Option<podspec::Record>,
    /// For template UPDATEs, per site: the digest the old object held for this very image (by
    /// its record). Used when the registry is out, so a re-apply during an outage changes nothing
    /// instead of rolling the template back to a tag.
    pub previous: Vec<Option<String>>,
    /// Set when the object was not inspected because it exceeds a limit: the warning (on
    /// `/mutate`, where the object is admitted as written) or the denial (on `/enforce`).
    pub over_limit: Option<String>,
}

/// Which image sites of the request to consider. Pure.
pub fn plan(req: &AdmissionRequest) -> Plan {
    let ignore = |why| Plan {
        ignored: Some(why),
        ..Plan::default()
    };
    let update = match req.operation.as_str() {
        "CREATE" => false,
        "UPDATE" => true,
        _ => return ignore("operation"),
    };
    // Built-in kinds by the table; a custom resource (an operator added its kind to the rules)
    // by the pod-spec shapes it holds.
    let table = podspec::target(&req.kind.group, &req.kind.kind);
    if table.is_none() && !podspec::is_custom_group(&req.kind.group) {
        return ignore("kind");
    }
    let is_pod = table.is_some_and(|t| t.is_pod);
    let subresource = req.sub_resource.as_deref().unwrap_or("");
    match subresource {
        "" => {}
        "ephemeralcontainers" if update && is_pod => {}
        _ => return ignore("subresource"),
    }
    if req.too_large {
        return Plan {
            over_limit: Some(format!(
                "tagpin: limit: the object holds more than {MAX_KEPT_NODES} fields that could name images; not inspected, nothing pinned"
            )),
            ignored: Some("over limit"),
            ..Plan::default()
        };
    }
    let Some(object) = &req.object else {
        return ignore("no object");
    };
    let specs = podspec::pod_specs(&req.kind.group, &req.kind.kind, object);
    if specs.is_empty() {
        return ignore("kind");
    }
    if !is_pod && podspec::is_controller_owned(object) {
        return ignore("controller-owned");
    }
    let all = podspec::images_of(object, &specs);
    let record = podspec::record_of(object, &specs, &all).filter(|_| subresource.is_empty());
    // A Pod's running containers restart when their image changes, so an UPDATE pins only new
    // or changed images. A template is pinned whole: re-applying it must pick up a moved tag (a
    // rollout) and give back the identical object when the tag did not move (no rollout).
    let sites = if update && is_pod {
        podspec::changed_since(all, req.old_object.as_ref())
    } else {
        all
    };
    let old_record = match (&req.old_object, update && !is_pod) {
        (Some(old), true) => podspec::record_of(old, &specs, &[]).map(|r| (old, r)),
        _ => None,
    };
    let previous_of = |site: &ImageSite| -> Option<String> {
        let (old, rec) = old_record.as_ref()?;
        let before = old.pointer(site.pointer.as_str())?.as_str()?;
        let (repo, _) = before.split_once('@')?;
        let written = rec.recorded(&site.key)?;
        (written == site.image && ImageRef::parse(written).ok()?.written_repository() == repo)
            .then(|| before.to_string())
    };
    Plan {
        previous: sites.iter().map(previous_of).collect(),
        sites,
        record,
        ignored: None,
        over_limit: None,
    }
}

/// The decision for one request. Pure.
#[derive(Debug, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub patch: Vec<json_patch::PatchOperation>,
    pub warnings: Vec<String>,
    /// Set on denial: the images that could not be pinned and why (bounded, see
    /// [`MAX_DENIAL_BYTES`]).
    pub denial: Option<String>,
    pub pinned: usize,
    pub left: usize,
    /// How many of the first `warnings` are about a limit (they stay first).
    pub limits: usize,
}

/// Most warnings in one answer; the last one then says how many more there were.
pub const MAX_WARNINGS: usize = 20;
/// Longest warning, in bytes (the API server cuts longer ones).
pub const MAX_WARNING_BYTES: usize = 256;
/// Longest denial message, in bytes.
pub const MAX_DENIAL_BYTES: usize = 2048;

/// At most [`MAX_WARNINGS`] warnings of at most [`MAX_WARNING_BYTES`] each, in order; when some
/// are left out the last one says how many.
pub fn bound_warnings(warnings: &[String]) -> Vec<String> {
    let all: Vec<String> = warnings.iter().flat_map(|w| split_warning(w)).collect();
    let mut out: Vec<String> = all.iter().take(MAX_WARNINGS).cloned().collect();
    if all.len() > MAX_WARNINGS {
        out.truncate(MAX_WARNINGS - 1);
        out.push(format!(
            "tagpin: {} more warnings not shown",
            all.len() - (MAX_WARNINGS - 1)
        ));
    }
    out
}

/// A warning longer than [`MAX_WARNING_BYTES`] as several that are not: cut after a `; ` where
/// possible, each cut marked `...` at the end of one piece and the start of the next. Pure.
pub fn split_warning(w: &str) -> Vec<String> {
    const MARK: &str = "...";
    let mut out = Vec::new();
    let mut rest = w;
    let mut first = true;
    loop {
        let prefix = if first { "" } else { "... " };
        if prefix.len() + rest.len() <= MAX_WARNING_BYTES {
            out.push(format!("{prefix}{rest}"));
            return out;
        }
        let room = MAX_WARNING_BYTES - prefix.len() - MARK.len();
        let mut cut = room;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        // Prefer to cut after a "; " separator, if one falls in the second half.
        let at = match rest[..cut].rfind("; ") {
            Some(i) if i + 2 > room / 2 => i + 2,
            _ => cut,
        };
        out.push(format!("{prefix}{}{MARK}", &rest[..at]));
        rest = &rest[at..];
        first = false;
    }
}

/// `head` followed by as many `items` (each cut to [`MAX_WARNING_BYTES`]) as fit in
/// [`MAX_DENIAL_BYTES`], separated by `; `, then how many were left out.
fn bounded_list(head: String, items: impl ExactSizeIterator<Item = String>) -> String {
    let total = items.len();
    let mut out = head;
    // Room for the "; and N more not shown" tail.
    let room = MAX_DENIAL_BYTES - 40;
    for (i, item) in items.enumerate() {
        let item = truncate(item, MAX_WARNING_BYTES);
        let sep = if i == 0 { "" } else { "; " };
        if out.len() + sep.len() + item.len() > room {
            out.push_str(&format!("; and {} more not shown", total - i));
            return out;
        }
        out.push_str(sep);
        out.push_str(&item);
    }
    out
}

/// Combines a plan with the resolver's outcomes (one per `plan.sites` entry, in order). Pure.
pub fn decide(plan: &Plan, outcomes: &[ImageOutcome], mode: Endpoint, keep_tag: bool) -> Decision {
    if let Some(why) = &plan.over_limit {
        let allowed = mode == Endpoint::Mutate;
        return Decision {
            allowed,
            patch: Vec::new(),
            warnings: if allowed {
                vec![why.clone()]
            } else {
                Vec::new()
            },
            denial: (!allowed).then(|| format!("tagpin: denied: {why}")),
            pinned: 0,
            left: 0,
            limits: usize::from(allowed),
        };
    }
    let mut pins: Vec<(&ImageSite, String)> = Vec::new();
    let mut warnings = Vec::new();
    let mut failures = Vec::new();
    let mut invalid = Vec::new();
    let mut over_limit = 0usize;
    for (i, (site, outcome)) in plan.sites.iter().zip(outcomes).enumerate() {
        let previous = plan.previous.get(i).and_then(Option::as_ref);
        let (image, outcome) = match outcome {
            ImageOutcome::Skipped | ImageOutcome::HasDigest => continue,
            ImageOutcome::Invalid(e) => {
                invalid.push((format!("{} ({})", site.image, site.label), e.to_string()));
                continue;
            }
            ImageOutcome::Resolved(image, outcome) => (image, outcome),
            ImageOutcome::OverLimit(_) => {
                over_limit += 1;
                continue;
            }
        };
        match outcome {
            Outcome::Pinned(d) => pins.push((site, image.pinned(d, keep_tag))),
            Outcome::Stale { digest, error } => {
                pins.push((site, image.pinned(digest, keep_tag)));
                warnings.push(format!(
                    "tagpin: {image} pinned to its last known digest {digest}: {error}"
                ));
            }
            Outcome::Failed(e) => match previous {
                Some(before) if mode == Endpoint::Mutate && e.is_outage() => {
                    pins.push((site, before.clone()));
                    warnings.push(format!(
                        "tagpin: {image} kept the digest it had ({before}): {e}"
                    ));
                }
                _ => failures.push((image.to_string(), e.to_string())),
            },
        }
    }
    failures.extend(invalid);
    if over_limit > 0 {
        // One line for all of them, first: the limit is why the rest is missing.
        let why = "not looked up: the object names more distinct images than --max-images-per-review allows";
        let what = format!("{over_limit} image(s)");
        warnings.insert(0, format!("tagpin: {what} left unpinned, {why}"));
        failures.insert(0, (what, why.to_string()));
    }
    let left = failures.len() - usize::from(over_limit > 0) + over_limit;
    let pinned = pins.len();
    let record_ops = match &plan.record {
        Some(r) => r.ops(&pins.iter().map(|(s, _)| *s).collect::<Vec<_>>()),
        None => Vec::new(),
    };
    match mode {
        Endpoint::Enforce if !failures.is_empty() => Decision {
            allowed: false,
            patch: Vec::new(),
            warnings: Vec::new(),
            denial: Some(bounded_list(
                format!("tagpin: denied, {left} image(s) could not be pinned to a digest: "),
                failures
                    .iter()
                    .map(|(image, why)| format!("{image}: {why}")),
            )),
            pinned: 0,
            left,
            limits: 0,
        },
        _ => {
            warnings.extend(
                failures
                    .iter()
                    .skip(usize::from(over_limit > 0))
                    .map(|(image, why)| format!("tagpin: {image} left unpinned: {why}")),
            );
            let mut patch = podspec::replace_ops(pins);
            patch.extend(record_ops);
            Decision {
                allowed: true,
                patch,
                warnings,
                denial: None,
                pinned,
                left,
                limits: usize::from(over_limit > 0),
            }
        }
    }
}

impl Decision {
    /// The outcome label of the log line and the admissions metric. Pure.
    pub fn outcome(&self, ignored: Option<&str>) -> &'static str {
        match (ignored, self.allowed, self.pinned, self.left) {
            (_, false, ..) => "denied",
            (Some(_), ..) => "ignored",
            (_, _, 0, 0) => "unchanged",
            (_, _, _, 0) => "pinned",
            (_, _, 0, _) => "unpinned",
            _ => "partial",
        }
    }
}

/// The API server may cut long warnings; keep them whole-character and bounded.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ReviewOut {
    pub api_version: String,
    pub kind: &'static str,
    pub response: ResponseOut,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ResponseOut {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// base64 of the JSON Patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusOut>,
}

#[derive(Serialize, Debug)]
pub struct StatusOut {
    pub status: &'static str,
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

/// Builds the AdmissionReview answer for a decision.
pub fn response(api_version: String, uid: String, d: &Decision) -> ReviewOut {
    let patch = (!d.patch.is_empty()).then(|| {
        // Serializing a Vec of patch operations cannot fail.
        let json = serde_json::to_vec(&d.patch).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(json)
    });
    ReviewOut {
        api_version,
        kind: "AdmissionReview",
        response: ResponseOut {
            uid,
            allowed: d.allowed,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: bound_warnings(&d.warnings),
            status: d.denial.as_ref().map(|m| StatusOut {
                status: "Failure",
                code: 403,
                reason: "Forbidden",
                message: truncate(m.clone(), MAX_DENIAL_BYTES),
            }),
        },
    }
}

/// Where the request's pod spec is, for reading its pull secrets (and, for a template, its
/// service account's). Pure.
pub fn credential_request(req: &AdmissionRequest) -> CredentialRequest<'_> {
    // The first pod spec found, as `plan` finds them (built-in kinds by their path, custom
    // resources by their shape): its pull secrets and service account are the object's.
    let pod_spec = req.object.as_ref().and_then(|o| {
        let specs = podspec::pod_specs(&req.kind.group, &req.kind.kind, o);
        let at = specs.first()?;
        at.spec_at.iter().try_fold(o, |v, t| v.get(t.as_str()))
    });
    CredentialRequest {
        namespace: req.namespace.as_deref().filter(|n| !n.is_empty()),
        pod_spec,
        template: !(req.kind.group.is_empty() && req.kind.kind == "Pod"),
    }
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
    pub async fn review(&self, body: &[u8], mode: Endpoint) -> Result<ReviewOut, ReviewError> {
        self.review_since(body, mode, Instant::now()).await
    }

    /// [`Self::review`] for a request that arrived at `started`: its deadline
    /// (`--resolve-timeout`) counts from then, time spent waiting for a slot included.
    pub async fn review_since(
        &self,
        body: &[u8],
        mode: Endpoint,
        started: Instant,
    ) -> Result<ReviewOut, ReviewError> {
        let path = mode.path();
        let (api_version, req) = match parse_review(body) {
            Ok(r) => r,
            Err(e) => {
                self.count(path, "invalid", started);
                tracing::warn!(path, error = %Escaped(&e.to_string()), "rejected a body that is not an AdmissionReview");
                return Err(e);
            }
        };
        let plan = plan(&req);
        let decision = self.resolve_and_decide(&req, &plan, mode, started).await;
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
        mode: Endpoint,
        started: Instant,
    ) -> Decision {
        let images: Vec<&str> = plan.sites.iter().map(|s| s.image.as_str()).collect();
        let batch_req = BatchRequest {
            credentials: credential_request(req),
            allow_stale: self.config.stale_on_error && mode == Endpoint::Mutate,
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
        let mut decision = decide(plan, &batch.outcomes, mode, self.config.keep_tag);
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
        mode: Endpoint,
        started: Instant,
        limit: usize,
    ) -> Result<ReviewOut, ReviewError> {
        let path = mode.path();
        let (api_version, uid) = match parse_review_header(body) {
            Ok(h) => h,
            Err(e) => {
                self.count(path, "invalid", started);
                return Err(e);
            }
        };
        let why = format!(
            "tagpin: limit: more than {limit} reviews in flight (--max-concurrent-reviews); no slot within {}",
            humantime::format_duration(started.elapsed())
        );
        let allowed = mode == Endpoint::Mutate;
        let d = Decision {
            allowed,
            patch: Vec::new(),
            warnings: if allowed {
                vec![why.clone()]
            } else {
                Vec::new()
            },
            denial: (!allowed).then(|| format!("tagpin: denied: {why}")),
            pinned: 0,
            left: 0,
            limits: usize::from(allowed),
        };
        self.count(path, "overloaded", started);
        tracing::warn!(uid = %Escaped(&uid), path, "review answered without looking: too many in flight");
        Ok(response(api_version, uid, &d))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Digest;
    use crate::resolve::{classify, Class, LookupError};
    use serde_json::json;

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    /// The skip prefixes the resolver classifies with in these tests.
    fn cfg() -> Vec<String> {
        vec!["kind.local/".into()]
    }

    /// The pure steps as the webhook runs them: plan (then the resolver classifies each site).
    fn plan(req: &AdmissionRequest, _skip: &[String]) -> Plan {
        super::plan(req)
    }

    fn class(site: &ImageSite) -> Class {
        classify(&site.image, &cfg())
    }

    /// `outcomes` stand for the resolver's answers for the plan's tags, in order; the other
    /// sites get their class (skipped, digest, invalid) as `resolve_batch` gives it.
    fn decide(p: &Plan, outcomes: &[Outcome], mode: Endpoint, keep_tag: bool) -> Decision {
        let mut given = outcomes.iter();
        let all: Vec<ImageOutcome> = p
            .sites
            .iter()
            .map(|s| match class(s) {
                Class::Skipped => ImageOutcome::Skipped,
                Class::HasDigest => ImageOutcome::HasDigest,
                Class::Invalid(e) => ImageOutcome::Invalid(e),
                Class::Tag(r) => ImageOutcome::Resolved(r, given.next().unwrap().clone()),
            })
            .collect();
        super::decide(p, &all, mode, keep_tag)
    }

    fn invalid(p: &Plan) -> usize {
        p.sites
            .iter()
            .filter(|s| matches!(class(s), Class::Invalid(_)))
            .count()
    }

    fn req(op: &str, sub: Option<&str>, object: Value, old: Option<Value>) -> AdmissionRequest {
        AdmissionRequest {
            uid: "u1".into(),
            kind: GroupVersionKind {
                group: "".into(),
                version: "v1".into(),
                kind: "Pod".into(),
            },
            sub_resource: sub.map(Into::into),
            name: Some("p".into()),
            namespace: Some("ns".into()),
            operation: op.into(),
            object: Some(object),
            old_object: old,
            dry_run: None,
            too_large: false,
        }
    }

    fn pod(images: &[&str]) -> Value {
        let cs: Vec<Value> = images
            .iter()
            .enumerate()
            .map(|(i, im)| json!({"name": format!("c{i}"), "image": im}))
            .collect();
        json!({"metadata": {"name": "p"}, "spec": {"containers": cs}})
    }

    /// The plan's sites the resolver would look up.
    fn images(p: &Plan) -> Vec<&str> {
        p.sites
            .iter()
            .filter(|s| matches!(class(s), Class::Tag(_)))
            .map(|s| s.image.as_str())
            .collect()
    }

    #[test]
    fn plan_skips_digests_prefixes_and_reports_invalid() {
        let obj = pod(&[
            "nginx:1",
            &format!("app@{D}"),
            "kind.local/x:1",
            "Bad:Image",
            "nginx:1",
        ]);
        let p = plan(&req("CREATE", None, obj, None), &cfg());
        assert_eq!(images(&p), vec!["nginx:1", "nginx:1"]);
        assert_eq!(invalid(&p), 1);
        assert!(p.ignored.is_none());
    }

    #[test]
    fn plan_ignores_other_operations_kinds_and_subresources() {
        let obj = pod(&["nginx:1"]);
        assert_eq!(
            plan(&req("DELETE", None, obj.clone(), None), &cfg()).ignored,
            Some("operation")
        );
        assert_eq!(
            plan(&req("UPDATE", Some("status"), obj.clone(), None), &cfg()).ignored,
            Some("subresource")
        );
        assert_eq!(
            plan(
                &req("CREATE", Some("ephemeralcontainers"), obj.clone(), None),
                &cfg()
            )
            .ignored,
            Some("subresource")
        );
        let mut r = req("CREATE", None, obj, None);
        r.kind.kind = "ConfigMap".into();
        assert_eq!(plan(&r, &cfg()).ignored, Some("kind"));
    }

    #[test]
    fn update_pins_only_changed_images() {
        let old = pod(&["nginx:1", "redis:7"]);
        let new = pod(&["nginx:1", "redis:8"]);
        let p = plan(&req("UPDATE", None, new, Some(old)), &cfg());
        assert_eq!(images(&p), vec!["redis:8"]);
        // ephemeralcontainers subresource: the new debug container is pinned, nothing else.
        let old = pod(&["nginx:1"]);
        let mut new = old.clone();
        new["spec"]["ephemeralContainers"] = json!([{"name": "dbg", "image": "busybox:1.36"}]);
        let p = plan(
            &req("UPDATE", Some("ephemeralcontainers"), new, Some(old)),
            &cfg(),
        );
        assert_eq!(images(&p), vec!["busybox:1.36"]);
    }

    #[test]
    fn decide_mutate_pins_and_warns() {
        let obj = pod(&["nginx:1", "redis:7", "app:2", "Bad:Image"]);
        let p = plan(&req("CREATE", None, obj.clone(), None), &cfg());
        let d = Digest::parse(D).unwrap();
        let err = LookupError::Deadline {
            registry: "index.docker.io".into(),
            after: Duration::from_secs(5),
        };
        let outcomes = vec![
            Outcome::Pinned(d.clone()),
            Outcome::Failed(err.clone()),
            Outcome::Stale {
                digest: d.clone(),
                error: err,
            },
        ];
        let dec = decide(&p, &outcomes, Endpoint::Mutate, false);
        assert!(dec.allowed);
        assert_eq!((dec.pinned, dec.left), (2, 2));
        let mut patched = obj.clone();
        json_patch::patch(&mut patched, &dec.patch).unwrap();
        let mut expected = obj;
        expected["spec"]["containers"][0]["image"] = json!(format!("nginx@{D}"));
        expected["spec"]["containers"][2]["image"] = json!(format!("app@{D}"));
        // Stale pins are recorded too; images left unpinned are not.
        expected["metadata"]["annotations"] =
            json!({"tagpin.io/pinned": r#"{"c0":"nginx:1","c2":"app:2"}"#});
        assert_eq!(patched, expected);
        assert_eq!(
            dec.warnings[1],
            "tagpin: redis:7 left unpinned: registry index.docker.io timed out after 5s"
        );
        assert!(
            dec.warnings[0].starts_with("tagpin: app:2 pinned to its last known digest"),
            "{:?}",
            dec.warnings
        );
        assert!(
            dec.warnings[2].starts_with("tagpin: Bad:Image (containers/c3) left unpinned"),
            "{:?}",
            dec.warnings
        );
    }

    #[test]
    fn decide_enforce_denies_naming_every_image() {
        let obj = pod(&["nginx:1", "redis:7"]);
        let p = plan(&req("CREATE", None, obj, None), &cfg());
        let err = |r: &str| LookupError::BreakerOpen {
            registry: r.into(),
            remaining: Duration::from_secs(3),
        };
        let dec = decide(
            &p,
            &[Outcome::Failed(err("a")), Outcome::Failed(err("b"))],
            Endpoint::Enforce,
            false,
        );
        assert!(!dec.allowed);
        assert!(dec.patch.is_empty());
        let m = dec.denial.unwrap();
        assert!(
            m.contains("nginx:1: circuit breaker open for registry a"),
            "{m}"
        );
        assert!(
            m.contains("redis:7: circuit breaker open for registry b"),
            "{m}"
        );
        // Nothing to fix: allowed.
        let dec = decide(&Plan::default(), &[], Endpoint::Enforce, false);
        assert!(dec.allowed);
    }

    #[test]
    fn response_has_base64_patch_and_status_code() {
        let obj = pod(&["nginx:1"]);
        let p = plan(&req("CREATE", None, obj, None), &cfg());
        let dec = decide(
            &p,
            &[Outcome::Pinned(Digest::parse(D).unwrap())],
            Endpoint::Mutate,
            true,
        );
        let out = serde_json::to_value(response("admission.k8s.io/v1".into(), "u1".into(), &dec))
            .unwrap();
        assert_eq!(out["response"]["uid"], "u1");
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(out["response"]["patch"].as_str().unwrap())
            .unwrap();
        let ops: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(
            ops,
            json!([
                {"op": "replace", "path": "/spec/containers/0/image", "value": format!("nginx:1@{D}")},
                {"op": "add", "path": "/metadata/annotations", "value": {"tagpin.io/pinned": r#"{"c0":"nginx:1"}"#}}
            ])
        );
        let deny = Decision {
            allowed: false,
            patch: vec![],
            warnings: vec![],
            denial: Some("no".into()),
            pinned: 0,
            left: 1,
            limits: 0,
        };
        let out = serde_json::to_value(response("admission.k8s.io/v1".into(), "u2".into(), &deny))
            .unwrap();
        assert_eq!(out["response"]["status"]["code"], 403);
        assert!(out["response"].get("patch").is_none());
    }

    #[test]
    fn long_warnings_are_split_and_many_are_capped() {
        let long = format!(
            "tagpin: x refused every credential tried: {}",
            ["the credential from pull secret ns/s entry \"reg.example:5000\" (401)"; 6].join("; ")
        );
        let parts = split_warning(&long);
        assert!(parts.len() > 1);
        assert!(
            parts.iter().all(|p| p.len() <= MAX_WARNING_BYTES),
            "{parts:?}"
        );
        let joined: String = parts
            .iter()
            .map(|p| p.trim_start_matches("... ").trim_end_matches("..."))
            .collect();
        assert_eq!(joined, long);
        assert_eq!(split_warning("short"), vec!["short"]);
        let many: Vec<String> = (0..30).map(|i| format!("w{i}")).collect();
        let b = bound_warnings(&many);
        assert_eq!(b.len(), MAX_WARNINGS);
        assert_eq!(b[19], "tagpin: 11 more warnings not shown");
        assert_eq!(b[18], "w18");
    }

    #[test]
    fn parse_review_errors_say_what_is_wrong() {
        assert!(matches!(
            parse_review(b"not json"),
            Err(ReviewError::Json(_))
        ));
        assert!(matches!(
            parse_review(br#"{"apiVersion":"v1","kind":"Pod"}"#),
            Err(ReviewError::Version(_))
        ));
        assert!(matches!(
            parse_review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            Err(ReviewError::NoRequest)
        ));
        let e = parse_review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("missing field"), "{e}");
    }

    fn workload_req(
        op: &str,
        group: &str,
        kind: &str,
        object: Value,
        old: Option<Value>,
    ) -> AdmissionRequest {
        let mut r = req(op, None, object, old);
        r.kind = GroupVersionKind {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
        };
        r
    }

    fn deployment(images: &[&str]) -> Value {
        json!({"metadata": {"name": "web"}, "spec": {"template": pod(images)}})
    }

    #[test]
    fn templates_are_pinned_and_recorded_owned_ones_never() {
        let d = Digest::parse(D).unwrap();
        let obj = deployment(&["nginx:1"]);
        let p = plan(
            &workload_req("CREATE", "apps", "Deployment", obj.clone(), None),
            &cfg(),
        );
        assert_eq!(images(&p), vec!["nginx:1"]);
        let dec = decide(&p, &[Outcome::Pinned(d)], Endpoint::Mutate, false);
        let mut out = obj;
        json_patch::patch(&mut out, &dec.patch).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["image"],
            format!("nginx@{D}")
        );
        let rec = r#"{"c0":"nginx:1"}"#;
        assert_eq!(out["metadata"]["annotations"]["tagpin.io/pinned"], rec);
        assert_eq!(
            out["spec"]["template"]["metadata"]["annotations"]["tagpin.io/pinned"],
            rec
        );

        // A ReplicaSet owned by a Deployment is left to its owner.
        let mut rs = deployment(&["nginx:1"]);
        rs["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "1", "controller": true}]);
        let p = plan(
            &workload_req("CREATE", "apps", "ReplicaSet", rs, None),
            &cfg(),
        );
        assert_eq!(p.ignored, Some("controller-owned"));
        // A Pod owned by a ReplicaSet is pinned all the same.
        let mut pod_obj = pod(&["nginx:1"]);
        pod_obj["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "2", "controller": true}]);
        let p = plan(&req("CREATE", None, pod_obj, None), &cfg());
        assert_eq!(images(&p), vec!["nginx:1"]);
    }

    #[test]
    fn custom_resources_are_pinned_by_their_pod_spec_shape() {
        let d = Digest::parse(D).unwrap();
        // An Argo Rollout has a Deployment's template: found by shape, pinned and recorded.
        let obj = deployment(&["nginx:1"]);
        let p = plan(
            &workload_req("CREATE", "argoproj.io", "Rollout", obj.clone(), None),
            &cfg(),
        );
        assert_eq!(images(&p), vec!["nginx:1"]);
        let dec = decide(&p, &[Outcome::Pinned(d)], Endpoint::Mutate, false);
        let mut out = obj;
        json_patch::patch(&mut out, &dec.patch).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["image"],
            format!("nginx@{D}")
        );
        assert_eq!(
            out["spec"]["template"]["metadata"]["annotations"]["tagpin.io/pinned"],
            r#"{"c0":"nginx:1"}"#
        );
        // Owned by a controller: left alone, as a ReplicaSet is.
        let mut owned = deployment(&["nginx:1"]);
        owned["metadata"]["ownerReferences"] = json!([{"apiVersion": "x.io/v1", "kind": "X", "name": "x", "uid": "1", "controller": true}]);
        let r = workload_req("CREATE", "argoproj.io", "Rollout", owned, None);
        assert_eq!(plan(&r, &cfg()).ignored, Some("controller-owned"));
        // A custom resource without a pod spec, and built-in kinds, are not searched.
        let r = workload_req("CREATE", "example.com", "Widget", json!({"spec": {}}), None);
        assert_eq!(plan(&r, &cfg()).ignored, Some("kind"));
        let r = workload_req("CREATE", "", "Service", deployment(&["nginx:1"]), None);
        assert_eq!(plan(&r, &cfg()).ignored, Some("kind"));
    }

    #[test]
    fn template_update_pins_every_tag_pod_update_only_changes() {
        // The old object was pinned; a re-apply brings the tag back: it is resolved again.
        let old = deployment(&[&format!("nginx@{D}"), "redis:7"]);
        let new = deployment(&["nginx:1", "redis:7"]);
        let p = plan(
            &workload_req("UPDATE", "apps", "Deployment", new, Some(old)),
            &cfg(),
        );
        assert_eq!(images(&p), vec!["nginx:1", "redis:7"]);
        // Subresources of workloads (scale, status) are not looked at.
        let mut r = workload_req(
            "UPDATE",
            "apps",
            "Deployment",
            deployment(&["nginx:1"]),
            None,
        );
        r.sub_resource = Some("scale".into());
        assert_eq!(plan(&r, &cfg()).ignored, Some("subresource"));
        // The ephemeralcontainers subresource records nothing (the API server drops metadata
        // changes made through it).
        let old = pod(&["nginx:1"]);
        let mut new = old.clone();
        new["spec"]["ephemeralContainers"] = json!([{"name": "dbg", "image": "busybox:1"}]);
        let p = plan(
            &req("UPDATE", Some("ephemeralcontainers"), new, Some(old)),
            &cfg(),
        );
        let dec = decide(
            &p,
            &[Outcome::Pinned(Digest::parse(D).unwrap())],
            Endpoint::Mutate,
            false,
        );
        assert_eq!(dec.patch.len(), 1, "{:?}", dec.patch);
    }

    #[test]
    fn template_update_during_an_outage_keeps_the_digest_the_old_object_had() {
        let rec = r#"{"c0":"nginx:1","c1":"redis:7"}"#;
        let mut old = deployment(&[&format!("nginx@{D}"), &format!("redis@{D}")]);
        old["spec"]["template"]["metadata"]["annotations"] = json!({"tagpin.io/pinned": rec});
        old["metadata"]["annotations"] = json!({"tagpin.io/pinned": rec});
        // Re-applied from Git: tags again; redis now names another tag than was recorded.
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1");
        new["spec"]["template"]["spec"]["containers"][1]["image"] = json!("redis:8");
        let p = plan(
            &workload_req(
                "UPDATE",
                "apps",
                "Deployment",
                new.clone(),
                Some(old.clone()),
            ),
            &cfg(),
        );
        assert_eq!(p.previous, vec![Some(format!("nginx@{D}")), None]);
        let outage = LookupError::Deadline {
            registry: "index.docker.io".into(),
            after: Duration::from_secs(5),
        };
        let dec = decide(
            &p,
            &[
                Outcome::Failed(outage.clone()),
                Outcome::Failed(outage.clone()),
            ],
            Endpoint::Mutate,
            false,
        );
        let mut out = new.clone();
        json_patch::patch(&mut out, &dec.patch).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["image"],
            format!("nginx@{D}"),
            "kept, so the template does not fall back to a tag"
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][1]["image"],
            "redis:8"
        );
        assert_eq!(
            dec.warnings[0],
            format!("tagpin: nginx:1 kept the digest it had (nginx@{D}): registry index.docker.io timed out after 5s")
        );
        // An answer about the image (every credential refused) is not an outage: left as written.
        let refused = LookupError::AllRefused {
            registry: "index.docker.io".into(),
            refusals: vec![],
        };
        let dec = decide(
            &p,
            &[Outcome::Failed(refused), Outcome::Failed(outage.clone())],
            Endpoint::Mutate,
            false,
        );
        assert_eq!(dec.left, 2);
        // /enforce never admits on a digest it could not confirm.
        let dec = decide(
            &p,
            &[Outcome::Failed(outage.clone()), Outcome::Failed(outage)],
            Endpoint::Enforce,
            false,
        );
        assert!(!dec.allowed);
    }

    #[test]
    fn credential_request_finds_the_pod_spec() {
        let r = req("CREATE", None, pod(&["a:1"]), None);
        let c = credential_request(&r);
        assert_eq!(c.namespace, Some("ns"));
        assert!(!c.template);
        assert_eq!(c.pod_spec, r.object.as_ref().and_then(|o| o.get("spec")));
        let mut other = req("CREATE", None, pod(&["a:1"]), None);
        other.kind.kind = "Unknown".into();
        other.namespace = Some(String::new());
        let c = credential_request(&other);
        assert!(c.pod_spec.is_none() && c.template && c.namespace.is_none());
        // A custom resource with a pod template: its pod spec, found by shape.
        let mut rollout = req(
            "CREATE",
            None,
            json!({"spec": {"template": {"spec": {"imagePullSecrets": [{"name": "regcred"}], "containers": [{"name": "a", "image": "a:1"}]}}}}),
            None,
        );
        rollout.kind = GroupVersionKind {
            group: "argoproj.io".into(),
            version: "v1alpha1".into(),
            kind: "Rollout".into(),
        };
        let c = credential_request(&rollout);
        assert_eq!(
            c.pod_spec,
            rollout
                .object
                .as_ref()
                .and_then(|o| o.pointer("/spec/template/spec"))
        );
        assert!(c.template);
    }
}
