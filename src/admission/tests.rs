//! The pure steps (plan, decide, the answer) on requests built here.

use std::time::Duration;

use base64::Engine as _;

use super::*;
use crate::podspec::ImageSite;
use crate::reference::Digest;
use crate::resolve::{classify, Class, LookupError};
use crate::resolve::{ImageOutcome, Outcome};
use crate::tree::{Kept, Tree};
use serde_json::json;
use serde_json::Value;

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

/// A request holding `object` and `old` whole (as `Kept`, owning their strings).
fn req(
    op: &str,
    sub: Option<&str>,
    object: Value,
    old: Option<Value>,
) -> AdmissionRequest<'static> {
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
        object: Some(Kept::from_value(&object)),
        old_object: old.as_ref().map(Kept::from_value),
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
    json_patch::patch(&mut patched, &dec.patch.parsed().unwrap()).unwrap();
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
    // --keep-tag: the tag stays in front of the digest, on fresh and stale pins alike.
    let kept = decide(&p, &outcomes, Endpoint::Mutate, true);
    let mut patched = expected.clone();
    json_patch::patch(&mut patched, &kept.patch.parsed().unwrap()).unwrap();
    expected["spec"]["containers"][0]["image"] = json!(format!("nginx:1@{D}"));
    expected["spec"]["containers"][2]["image"] = json!(format!("app:2@{D}"));
    assert_eq!(patched, expected);
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
    let out =
        serde_json::to_value(response("admission.k8s.io/v1".into(), "u1".into(), &dec)).unwrap();
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
        patch: Default::default(),
        warnings: vec![],
        denial: Some("no".into()),
        pinned: 0,
        left: 1,
        limits: 0,
    };
    let out =
        serde_json::to_value(response("admission.k8s.io/v1".into(), "u2".into(), &deny)).unwrap();
    assert_eq!(out["response"]["status"]["code"], 403);
    assert!(out["response"].get("patch").is_none());
}

/// Issue 24: a warning without `; ` in reach was cut at byte 253, inside a word.
#[test]
fn long_warnings_are_split_between_words() {
    let words = "spec/tasks/0/taskSpec/steps/1/image: registry.example.com/team/builder:v1.2.3 is an image field outside every pod spec tagpin knows: left as written and also some more words here";
    let long = format!("tagpin: {words} {words}");
    let parts = split_warning(&long);
    assert!(parts.len() > 1, "{parts:?}");
    let bodies: Vec<&str> = parts
        .iter()
        .map(|p| p.trim_start_matches("... ").trim_end_matches("..."))
        .collect();
    assert_eq!(bodies.concat(), long, "nothing lost");
    for (p, b) in parts.iter().zip(&bodies) {
        assert!(p.len() <= MAX_WARNING_BYTES, "{p}");
        // Every cut falls after a space: no piece but the last ends inside a word.
        if b.len() < long.len() && !long.ends_with(b) {
            assert!(b.ends_with(' '), "cut inside a word: {p:?}");
        }
    }
    // One word longer than the room is still cut (nothing else fits).
    let word = "x".repeat(600);
    let parts = split_warning(&word);
    assert!(parts.iter().all(|p| p.len() <= MAX_WARNING_BYTES));
    let bodies: String = parts
        .iter()
        .map(|p| p.trim_start_matches("... ").trim_end_matches("..."))
        .collect();
    assert_eq!(bodies, word);
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
    let e = parse_review(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("missing field"), "{e}");
}

fn workload_req(
    op: &str,
    group: &str,
    kind: &str,
    object: Value,
    old: Option<Value>,
) -> AdmissionRequest<'static> {
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
    json_patch::patch(&mut out, &dec.patch.parsed().unwrap()).unwrap();
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
    json_patch::patch(&mut out, &dec.patch.parsed().unwrap()).unwrap();
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

/// Issue 24: a custom resource's fields the rule leaves alone are warnings in `pin`'s words
/// (they used to pass silently), and one too deep to search is refused as a limit: a warning on
/// `/mutate`, a denial on `/enforce`, nothing pinned.
#[test]
fn custom_resources_report_what_they_do_not_pin_and_bounds_are_limits() {
    let prom =
        json!({"spec": {"image": "prometheus:v2.54.1", "alerting": {"image": "x@sha256:00"}}});
    let p = plan(
        &workload_req("CREATE", "monitoring.coreos.com", "Prometheus", prom, None),
        &cfg(),
    );
    assert_eq!(p.ignored, Some("kind"));
    assert_eq!(
        p.notes,
        vec!["tagpin: spec/image: prometheus:v2.54.1 is an image field outside every pod spec tagpin knows: left as written"]
    );
    let dec = decide(&p, &[], Endpoint::Mutate, false);
    assert!(dec.allowed && dec.patch.is_empty());
    assert_eq!(dec.warnings, p.notes);

    let mut deep = json!({"containers": [{"name": "c", "image": "a:1"}]});
    for _ in 0..crate::podspec::MAX_SEARCH_DEPTH + 1 {
        deep = json!({ "x": deep });
    }
    let r = workload_req(
        "CREATE",
        "example.com",
        "Deep",
        json!({ "spec": deep }),
        None,
    );
    let p = plan(&r, &cfg());
    assert!(p.sites.is_empty());
    let why = p.over_limit.clone().expect("a limit");
    assert!(why.contains("nested deeper than 32 levels"), "{why}");
    let dec = decide(&p, &[], Endpoint::Mutate, false);
    assert!(dec.allowed);
    assert_eq!(dec.warnings, vec![why.clone()]);
    let dec = decide(&p, &[], Endpoint::Enforce, false);
    assert!(!dec.allowed);
    assert_eq!(dec.denial, Some(format!("tagpin: denied: {why}")));
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
    json_patch::patch(&mut out, &dec.patch.parsed().unwrap()).unwrap();
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
    let c = credential_request(&r, &super::plan(&r));
    assert_eq!(c.namespace, Some("ns"));
    assert!(!c.template);
    assert_eq!(c.pod_spec, r.object.as_ref().and_then(|o| o.field("spec")));
    let mut other = req("CREATE", None, pod(&["a:1"]), None);
    other.kind.kind = "Unknown".into();
    other.namespace = Some(String::new());
    let c = credential_request(&other, &super::plan(&other));
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
    let c = credential_request(&rollout, &super::plan(&rollout));
    assert_eq!(
        c.pod_spec,
        rollout
            .object
            .as_ref()
            .and_then(|o| o.pointer("/spec/template/spec"))
    );
    assert!(c.template);
}
