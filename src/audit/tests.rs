//! The audit's pure core: facts of listed pods (as the API server returns them), findings from
//! resolver answers, the report.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use super::report::{Report, Summary};
use super::*;
use crate::resolve::http::RegistryError;

const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const C: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

fn d(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

/// A pod as the API server lists it: `containers` is `[(name, image, imageID or "")]`.
fn pod(ns: &str, name: &str, containers: &[(&str, &str, &str)], extra: Value) -> Pod {
    let spec: Vec<Value> = containers
        .iter()
        .map(|(n, i, _)| json!({"name": n, "image": i}))
        .collect();
    let statuses: Vec<Value> = containers
        .iter()
        .filter(|(_, _, id)| !id.is_empty())
        .map(|(n, i, id)| {
            json!({"name": n, "image": i, "imageID": id, "ready": true, "restartCount": 0,
                   "started": true, "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}}})
        })
        .collect();
    let mut v = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
        "spec": {"containers": spec},
        "status": {"phase": "Running", "containerStatuses": statuses},
    });
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

fn owned_by(kind: &str, name: &str, hash: Option<&str>) -> Value {
    let mut meta = json!({"ownerReferences": [
        {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": format!("uid-{name}"), "controller": true},
        {"apiVersion": "v1", "kind": "Other", "name": "not-the-controller", "uid": "x"}
    ]});
    if let Some(h) = hash {
        meta["labels"] = json!({"pod-template-hash": h});
    }
    json!({"metadata": meta})
}

fn inventory(pods: &[Pod]) -> Inventory {
    let mut inv = Inventory::default();
    inv.add(pods);
    inv
}

fn answers(ns: &str, list: &[(&str, Outcome)]) -> Answers {
    let mut per = BTreeMap::new();
    for (image, o) in list {
        per.insert(image.to_string(), o.clone());
    }
    let mut a = Answers::new();
    a.insert(
        Asker {
            namespace: ns.into(),
            pull_secrets: vec![],
        },
        per,
    );
    a
}

fn namespaces(list: &[(&str, Option<&str>)]) -> Namespaces {
    Namespaces::new(list.iter().map(|(n, mode)| {
        let mut labels = BTreeMap::new();
        if let Some(m) = mode {
            labels.insert(MODE_LABEL.to_string(), m.to_string());
        }
        (n.to_string(), labels)
    }))
}

fn kinds(f: &[Finding]) -> Vec<(String, Kind)> {
    f.iter()
        .map(|f| (f.pod.clone().unwrap_or_else(|| "-".into()), f.kind))
        .collect()
}

fn outage(registry: &str) -> Outcome {
    Outcome::Failed(LookupError::Deadline {
        registry: registry.into(),
        after: Duration::from_secs(5),
    })
}

#[test]
fn running_digest_reads_every_image_id_form_a_runtime_writes() {
    let forms = [
        format!("docker-pullable://registry.example/app@{A}"),
        format!("registry.example/app@{A}"),
        format!("docker.io/library/nginx@{A}"),
    ];
    for f in &forms {
        assert_eq!(running_digest(f), Some(d(A)), "{f}");
    }
    // An image ID (the config digest) is not a manifest digest: nothing to compare.
    for f in [
        A.to_string(),
        format!("docker://{A}"),
        "".into(),
        "app@sha256:short".into(),
    ] {
        assert_eq!(running_digest(&f), None, "{f}");
    }
}

#[test]
fn facts_keep_keys_statuses_owner_workload_and_pull_secrets() {
    let mut p = pod(
        "ns",
        "web-7d4b9-x1",
        &[("web", "app:1", &format!("docker-pullable://app@{A}"))],
        owned_by("ReplicaSet", "web-7d4b9", Some("7d4b9")),
    );
    let spec = p.spec.as_mut().unwrap();
    spec.init_containers = Some(vec![serde_json::from_value(
        json!({"name": "migrate", "image": "tool:2"}),
    )
    .unwrap()]);
    spec.image_pull_secrets = Some(
        serde_json::from_value(
            json!([{"name": "s1"}, {"name": "s1"}, {"name": ""}, {"name": "s2"}]),
        )
        .unwrap(),
    );
    p.status.as_mut().unwrap().init_container_statuses = Some(vec![serde_json::from_value(
        json!({"name": "migrate", "image": "tool:2", "imageID": format!("tool@{B}"), "ready": false, "restartCount": 0}),
    )
    .unwrap()]);
    let f = PodFacts::of(&p);
    assert_eq!(f.namespace, "ns");
    assert_eq!(
        f.owner.as_ref().unwrap().to_string(),
        "ReplicaSet/web-7d4b9"
    );
    assert_eq!(f.workload.as_ref().unwrap().to_string(), "Deployment/web");
    assert_eq!(f.pull_secrets, ["s1", "s2"]);
    let keys: Vec<_> = f
        .containers
        .iter()
        .map(|c| (c.key.as_str(), c.running.clone()))
        .collect();
    assert_eq!(keys, [("init/migrate", Some(d(B))), ("web", Some(d(A)))]);
    assert!(!f.skip_label);
}

#[test]
fn a_replicaset_not_named_after_its_hash_is_its_own_workload() {
    for (rs, hash) in [
        ("web-7d4b9", Some("other")),
        ("web-7d4b9", None),
        ("7d4b9", Some("7d4b9")),
    ] {
        let f = PodFacts::of(&pod(
            "ns",
            "p",
            &[("c", "app:1", "")],
            owned_by("ReplicaSet", rs, hash),
        ));
        assert_eq!(f.workload.unwrap().to_string(), format!("ReplicaSet/{rs}"));
    }
    let f = PodFacts::of(&pod(
        "ns",
        "p",
        &[("c", "app:1", "")],
        owned_by("StatefulSet", "db", None),
    ));
    assert_eq!(f.workload.unwrap().to_string(), "StatefulSet/db");
    // A pod with owners but none marked controller has no owner.
    let f = PodFacts::of(&pod(
        "ns",
        "p",
        &[("c", "app:1", "")],
        json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "u"}]}}),
    ));
    assert_eq!((f.owner, f.workload), (None, None));
}

#[test]
fn image_volumes_are_audited_as_the_webhook_pins_them() {
    // The webhook pins `spec.volumes[].image.reference` (podspec::find_images); the audit reads
    // the same sites, so a volume's tag is a finding too, keyed as the record keys it.
    let p = pod(
        "ns",
        "p",
        &[("web", &format!("app@{A}"), &format!("app@{A}"))],
        json!({"spec": {"volumes": [
            {"name": "models", "image": {"reference": "models:latest"}},
            {"name": "scratch", "emptyDir": {}},
        ]}}),
    );
    let f = PodFacts::of(&p);
    let images: Vec<_> = f
        .containers
        .iter()
        .map(|c| (c.key.as_str(), c.image.as_str(), c.running.is_some()))
        .collect();
    assert_eq!(
        images,
        [
            ("web", format!("app@{A}").as_str(), true),
            ("volume/models", "models:latest", false),
        ]
    );
    let ns = namespaces(&[("ns", Some("enabled"))]);
    let (found, _) = inventory(&[p]).findings(&Answers::new(), &ns, &[]);
    let got: Vec<_> = found
        .iter()
        .map(|f| (f.container.as_str(), f.kind))
        .collect();
    assert_eq!(
        got,
        [
            ("volume/models", Kind::Unpinned),
            ("volume/models", Kind::Latest)
        ]
    );
}

#[test]
fn unpinned_says_whether_the_namespace_opted_in_and_the_skip_label() {
    let pods = [
        pod("off", "a", &[("c", "app:1", "")], json!({})),
        pod("on", "b", &[("c", "app:1", "")], json!({})),
        pod(
            "on",
            "c",
            &[("c", "app:1", "")],
            json!({"metadata": {"labels": {"tagpin.io/skip": "true"}}}),
        ),
        pod("unread", "d", &[("c", "app:1", "")], json!({})),
    ];
    let ns = namespaces(&[("off", None), ("on", Some("enabled"))]);
    let (f, gaps) = inventory(&pods).findings(&Answers::new(), &ns, &[]);
    let got: Vec<_> = f
        .iter()
        .map(|f| (f.pod.as_deref().unwrap(), f.kind, f.opted_in, f.skip_label))
        .collect();
    assert_eq!(
        got,
        [
            ("a", Kind::Unpinned, Some(false), Some(false)),
            ("b", Kind::Unpinned, Some(true), Some(false)),
            ("c", Kind::Unpinned, Some(true), Some(true)),
            ("d", Kind::Unpinned, None, Some(false)),
        ]
    );
    assert!(f[0].detail.contains("has not opted in"), "{}", f[0].detail);
    assert!(f[1].detail.contains("fallback-allow"), "{}", f[1].detail);
    assert!(
        f[2].detail.contains("tagpin.io/skip=true"),
        "{}",
        f[2].detail
    );
    assert!(f[3].detail.contains("opt-in unknown"), "{}", f[3].detail);
    assert!(gaps.warnings.is_empty() && gaps.unreachable.is_empty());
}

#[test]
fn stale_when_the_node_runs_another_build_than_the_tag_names_now() {
    let pods = [
        pod(
            "ns",
            "old",
            &[("c", "app:1", &format!("docker-pullable://app@{A}"))],
            json!({}),
        ),
        pod(
            "ns",
            "current",
            &[("c", "app:1", &format!("app@{B}"))],
            json!({}),
        ),
        pod("ns", "pending", &[("c", "app:1", "")], json!({})),
    ];
    let a = answers("ns", &[("app:1", Outcome::Pinned(d(B)))]);
    let (f, _) = inventory(&pods).findings(&a, &Namespaces::default(), &[]);
    let stale: Vec<_> = f.iter().filter(|f| f.kind == Kind::Stale).collect();
    assert_eq!(stale.len(), 1, "{f:#?}");
    assert_eq!(stale[0].pod.as_deref(), Some("old"));
    assert_eq!(stale[0].running.as_deref(), Some(A));
    assert_eq!(stale[0].resolved.as_deref(), Some(B));
    assert_eq!(stale[0].tag.as_deref(), Some("app:1"));
    assert_eq!(f.iter().filter(|f| f.kind == Kind::Unpinned).count(), 3);
}

#[test]
fn an_unreachable_registry_makes_rows_unknown_and_is_named_once() {
    let pods = [
        pod(
            "ns",
            "p1",
            &[("c", "down.example/app:1", &format!("down.example/app@{A}"))],
            json!({}),
        ),
        pod(
            "ns",
            "p2",
            &[("c", "down.example/app:2", &format!("down.example/app@{A}"))],
            json!({}),
        ),
        pod(
            "ns",
            "p3",
            &[("c", &format!("down.example/app:3@{A}"), "")],
            json!({}),
        ),
        // Not an outage: an answer about the image. Unknown, but the registry is not "unreachable".
        pod(
            "ns",
            "p4",
            &[("c", "up.example/gone:1", &format!("up.example/gone@{A}"))],
            json!({}),
        ),
    ];
    let a = answers(
        "ns",
        &[
            ("down.example/app:1", outage("down.example")),
            ("down.example/app:2", outage("down.example")),
            ("down.example/app:3", outage("down.example")),
            (
                "up.example/gone:1",
                Outcome::Failed(LookupError::Registry(RegistryError::NotFound {
                    registry: "up.example".into(),
                })),
            ),
        ],
    );
    let (f, gaps) = inventory(&pods).findings(&a, &Namespaces::default(), &[]);
    let unknown: Vec<_> = f
        .iter()
        .filter(|f| f.kind == Kind::Unknown)
        .map(|f| (f.pod.as_deref().unwrap(), f.check.unwrap()))
        .collect();
    assert_eq!(
        unknown,
        [
            ("p1", Kind::Stale),
            ("p2", Kind::Stale),
            ("p3", Kind::Moved),
            ("p4", Kind::Stale)
        ]
    );
    assert_eq!(
        gaps.unreachable.keys().collect::<Vec<_>>(),
        ["down.example"]
    );
    assert!(!f
        .iter()
        .any(|f| matches!(f.kind, Kind::Stale | Kind::Moved)));
}

#[test]
fn moved_when_the_recorded_tag_points_elsewhere_naming_the_workload() {
    let record = json!({"metadata": {"annotations": {"tagpin.io/pinned": r#"{"web":"app:2"}"#}}});
    let mut rs = owned_by("ReplicaSet", "web-5f6", Some("5f6"));
    merge(&mut rs, record.clone());
    let pods = [
        // Recorded by the annotation (tagpin's default `repo@digest`).
        pod("ns", "web-5f6-a", &[("web", &format!("app@{A}"), "")], rs),
        // Recorded inline (`--keep-tag`).
        pod(
            "ns",
            "inline",
            &[("web", &format!("app:2@{A}"), "")],
            json!({}),
        ),
        // A record of another repository does not apply.
        pod(
            "ns",
            "other",
            &[("web", &format!("other@{A}"), "")],
            record.clone(),
        ),
        // Still current: nothing.
        pod(
            "ns",
            "current",
            &[("web", &format!("app:2@{B}"), "")],
            json!({}),
        ),
    ];
    let a = answers("ns", &[("app:2", Outcome::Pinned(d(B)))]);
    let (f, _) = inventory(&pods).findings(&a, &Namespaces::default(), &[]);
    assert_eq!(
        kinds(&f),
        [
            ("inline".into(), Kind::Moved),
            ("web-5f6-a".into(), Kind::Moved)
        ]
    );
    let by_deploy = f
        .iter()
        .find(|f| f.pod.as_deref() == Some("web-5f6-a"))
        .unwrap();
    assert_eq!(
        by_deploy.workload.as_ref().unwrap().to_string(),
        "Deployment/web"
    );
    assert!(
        by_deploy
            .detail
            .contains("a rollout of Deployment/web is waiting"),
        "{}",
        by_deploy.detail
    );
    assert_eq!(
        (
            by_deploy.pinned.as_deref(),
            by_deploy.resolved.as_deref(),
            by_deploy.tag.as_deref()
        ),
        (Some(A), Some(B), Some("app:2"))
    );
    // Only recorded tags were wanted; the unrecorded `other@…` was not.
    let wanted = inventory(&pods).wanted(&[]);
    assert_eq!(wanted.values().flatten().collect::<Vec<_>>(), ["app:2"]);
}

#[test]
fn mismatch_when_the_node_runs_another_digest_than_the_spec_pins() {
    let pods = [
        pod(
            "ns",
            "bad",
            &[("c", &format!("app@{A}"), &format!("app@{B}"))],
            json!({}),
        ),
        pod(
            "ns",
            "good",
            &[(
                "c",
                &format!("app@{A}"),
                &format!("docker-pullable://app@{A}"),
            )],
            json!({}),
        ),
    ];
    let (f, _) = inventory(&pods).findings(&Answers::new(), &Namespaces::default(), &[]);
    assert_eq!(kinds(&f), [("bad".into(), Kind::Mismatch)]);
    assert_eq!(
        (f[0].pinned.as_deref(), f[0].running.as_deref()),
        (Some(A), Some(B))
    );
}

#[test]
fn latest_for_no_tag_latest_and_pinned_from_latest() {
    let pods = [
        pod("ns", "none", &[("c", "app", "")], json!({})),
        pod("ns", "explicit", &[("c", "app:latest", "")], json!({})),
        pod(
            "ns",
            "pinned",
            &[("c", &format!("app:latest@{A}"), "")],
            json!({}),
        ),
        pod("ns", "versioned", &[("c", "app:1.2", "")], json!({})),
    ];
    let (f, _) = inventory(&pods).findings(&Answers::new(), &Namespaces::default(), &[]);
    let latest: Vec<_> = f
        .iter()
        .filter(|f| f.kind == Kind::Latest)
        .map(|f| f.pod.as_deref().unwrap())
        .collect();
    assert_eq!(latest, ["explicit", "none", "pinned"]);
}

#[test]
fn mixed_counts_the_builds_of_one_controllers_container() {
    let rs = || owned_by("ReplicaSet", "web-abc", Some("abc"));
    let pods = [
        pod(
            "ns",
            "web-abc-1",
            &[
                ("web", "app:1", &format!("app@{A}")),
                ("side", "s:1", &format!("s@{C}")),
            ],
            rs(),
        ),
        pod(
            "ns",
            "web-abc-2",
            &[
                ("web", "app:1", &format!("app@{A}")),
                ("side", "s:1", &format!("s@{C}")),
            ],
            rs(),
        ),
        pod(
            "ns",
            "web-abc-3",
            &[
                ("web", "app:1", &format!("docker-pullable://app@{B}")),
                ("side", "s:1", &format!("s@{C}")),
            ],
            rs(),
        ),
        // Pending, tag: runs nothing yet, not counted.
        pod(
            "ns",
            "web-abc-4",
            &[("web", "app:1", ""), ("side", "s:1", "")],
            rs(),
        ),
        // Another controller with the other build is not mixed with this one.
        pod(
            "ns",
            "api-1",
            &[("web", "app:1", &format!("app@{C}"))],
            owned_by("ReplicaSet", "api", None),
        ),
    ];
    let (f, _) = inventory(&pods).findings(&Answers::new(), &Namespaces::default(), &[]);
    let mixed: Vec<_> = f.iter().filter(|f| f.kind == Kind::Mixed).collect();
    assert_eq!(mixed.len(), 1, "{f:#?}");
    let m = mixed[0];
    assert_eq!((m.pod.as_deref(), m.container.as_str()), (None, "web"));
    assert_eq!(m.owner.as_ref().unwrap().to_string(), "ReplicaSet/web-abc");
    let counts: Vec<_> = m
        .digests
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| (c.digest.as_str(), c.pods))
        .collect();
    assert_eq!(counts, [(A, 2), (B, 1)]);
    assert!(
        m.detail
            .contains("sha256:aaaaaaaaaaaa (2 pods), sha256:bbbbbbbbbbbb (1 pod)"),
        "{}",
        m.detail
    );
}

#[test]
fn a_pinned_pod_that_is_not_running_yet_counts_with_its_spec_digest() {
    let rs = || owned_by("ReplicaSet", "web-abc", Some("abc"));
    let pods = [
        pod(
            "ns",
            "web-abc-1",
            &[("web", &format!("app@{A}"), &format!("app@{A}"))],
            rs(),
        ),
        pod("ns", "web-abc-2", &[("web", &format!("app@{B}"), "")], rs()),
    ];
    let (f, _) = inventory(&pods).findings(&Answers::new(), &Namespaces::default(), &[]);
    assert_eq!(kinds(&f), [("-".into(), Kind::Mixed)]);
}

#[test]
fn skipped_images_are_not_audited_and_invalid_ones_are_warned_about() {
    let pods = [pod(
        "ns",
        "p",
        &[
            ("a", "kind.local/app:latest", &format!("kind.local/app@{A}")),
            ("b", "Bad Image", ""),
        ],
        json!({}),
    )];
    let skip = vec!["kind.local/".to_string()];
    let inv = inventory(&pods);
    let (f, gaps) = inv.findings(&Answers::new(), &Namespaces::default(), &skip);
    assert!(f.is_empty(), "{f:#?}");
    assert_eq!(gaps.warnings.len(), 1);
    assert!(
        gaps.warnings[0].contains("pod ns/p container b"),
        "{:?}",
        gaps.warnings
    );
    assert!(inv.wanted(&skip).is_empty());
}

#[test]
fn wanted_asks_each_tag_once_per_namespace_and_pull_secrets() {
    let secret = json!({"spec": {"imagePullSecrets": [{"name": "reg"}]}});
    let runs = format!("app@{A}");
    let runs = runs.as_str();
    let pods = [
        pod(
            "a",
            "1",
            &[("c", "app:1", runs), ("d", "app:1", runs)],
            json!({}),
        ),
        // app:3 is not running anywhere: no check needs it, it is not asked for.
        pod(
            "a",
            "2",
            &[
                ("c", "app:1", runs),
                ("d", "app:2", runs),
                ("e", "app:3", ""),
            ],
            json!({}),
        ),
        pod("a", "3", &[("c", "app:1", runs)], secret),
        pod(
            "b",
            "4",
            &[("c", "app:1", runs), ("d", &format!("app:4@{A}"), "")],
            json!({}),
        ),
    ];
    let w = inventory(&pods).wanted(&[]);
    let got: Vec<_> = w
        .iter()
        .map(|(k, v)| (k.namespace.as_str(), k.pull_secrets.clone(), v.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("a", vec![], vec!["app:1".to_string(), "app:2".into()]),
            ("a", vec!["reg".to_string()], vec!["app:1".into()]),
            ("b", vec![], vec!["app:1".into(), "app:4".into()]),
        ]
    );
}

#[test]
fn findings_are_sorted_by_namespace_then_owner() {
    let pods = [
        pod("b", "z", &[("c", "app:1", "")], json!({})),
        pod(
            "a",
            "y",
            &[("c", "app:1", "")],
            owned_by("ReplicaSet", "r2", None),
        ),
        pod(
            "a",
            "x",
            &[("c", "app:1", "")],
            owned_by("ReplicaSet", "r1", None),
        ),
        pod("a", "w", &[("c", "app:1", "")], json!({})),
    ];
    let (f, _) = inventory(&pods).findings(&Answers::new(), &Namespaces::default(), &[]);
    let order: Vec<_> = f
        .iter()
        .map(|f| (f.namespace.as_str(), f.pod.as_deref().unwrap()))
        .collect();
    assert_eq!(order, [("a", "w"), ("a", "x"), ("a", "y"), ("b", "z")]);
}

fn report(findings: Vec<Finding>) -> Report {
    let mut summary = Summary {
        namespaces: 1,
        pods: 2,
        containers: 2,
        ..Summary::default()
    };
    for f in &findings {
        summary.count(f.kind);
    }
    Report {
        findings,
        summary,
        ..Report::default()
    }
}

#[test]
fn exit_code_follows_fail_on() {
    let pods = [pod(
        "ns",
        "old",
        &[("c", "app:1", &format!("app@{A}"))],
        json!({}),
    )];
    let a = answers("ns", &[("app:1", Outcome::Pinned(d(B)))]);
    let (f, _) = inventory(&pods).findings(&a, &Namespaces::default(), &[]);
    let r = report(f);
    assert_eq!(r.exit_code(&[Kind::Stale, Kind::Mixed, Kind::Mismatch]), 1);
    assert_eq!(r.exit_code(&[Kind::Moved]), 0);
    assert_eq!(r.exit_code(&[Kind::Unpinned]), 1);
    assert_eq!(report(vec![]).exit_code(&Kind::ALL), 0);
}

#[test]
fn json_has_every_field_of_the_contract_even_when_null() {
    let pods = [pod(
        "ns",
        "old",
        &[("c", "app:1", &format!("app@{A}"))],
        json!({}),
    )];
    let a = answers("ns", &[("app:1", Outcome::Pinned(d(B)))]);
    let (f, _) = inventory(&pods).findings(&a, &namespaces(&[("ns", None)]), &[]);
    let report_json = report(f).json();
    let v: Value = serde_json::from_str(&report_json).unwrap();
    let fields = [
        "kind",
        "namespace",
        "pod",
        "container",
        "owner",
        "workload",
        "image",
        "tag",
        "running",
        "resolved",
        "pinned",
        "digests",
        "opted_in",
        "skip_label",
        "check",
        "detail",
    ];
    // Read in the order written (a `Value`'s map does not keep it).
    let ordered: Findings = serde_json::from_str(&report_json).unwrap();
    assert_eq!(ordered.findings.len(), 2);
    for keys in &ordered.findings {
        assert_eq!(keys.0, fields);
    }
    assert_eq!(v["findings"][0]["kind"], "unpinned");
    assert_eq!(v["findings"][0]["opted_in"], false);
    assert_eq!(v["findings"][1]["kind"], "stale");
    assert_eq!(v["findings"][1]["owner"], Value::Null);
    for k in [
        "namespaces",
        "pods",
        "containers",
        "unpinned",
        "stale",
        "mixed",
        "moved",
        "mismatch",
        "latest",
        "unknown",
    ] {
        assert!(v["summary"][k].is_u64(), "summary.{k}");
    }
    for k in ["pod_list_pages", "namespace_reads", "tags_resolved"] {
        assert!(v["requests"][k].is_u64(), "requests.{k}");
    }
    assert!(v["registries_unreachable"].is_array() && v["warnings"].is_array());
}

#[test]
fn table_has_a_header_a_row_per_finding_and_the_summary() {
    let pods = [pod(
        "ns",
        "old",
        &[("c", "app:1", &format!("app@{A}"))],
        owned_by("ReplicaSet", "rs", None),
    )];
    let a = answers("ns", &[("app:1", Outcome::Pinned(d(B)))]);
    let (f, _) = inventory(&pods).findings(&a, &Namespaces::default(), &[]);
    let t = report(f).table();
    let lines: Vec<_> = t.lines().collect();
    assert_eq!(lines.len(), 4, "{t}");
    assert!(
        lines[0].starts_with("NAMESPACE   OWNER           POD   CONTAINER   FINDING    DETAIL"),
        "{t}"
    );
    assert!(
        lines[1].starts_with(
            "ns          ReplicaSet/rs   old   c           unpinned   app:1 is a tag;"
        ),
        "{t}"
    );
    assert!(lines[2].contains("stale"), "{t}");
    assert_eq!(
        lines[3],
        "2 pods (2 containers) in 1 namespace: 1 unpinned, 1 stale, 0 mixed, 0 moved, 0 mismatch, 0 latest, 0 unknown"
    );
    // Nothing found: only the summary.
    assert_eq!(report(vec![]).table().lines().count(), 1);
}

/// The findings of an audit report, each as its keys in the order they are written.
#[derive(serde::Deserialize)]
struct Findings {
    findings: Vec<KeysInOrder>,
}

struct KeysInOrder(Vec<String>);

impl<'de> serde::Deserialize<'de> for KeysInOrder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KeysInOrder;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a finding")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<KeysInOrder, A::Error> {
                let mut keys = Vec::new();
                while let Some((k, _)) = m.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(k);
                }
                Ok(KeysInOrder(keys))
            }
        }
        d.deserialize_map(V)
    }
}
