//! Property: for any generated Pod or workload, read through the pruning review parser, the patch
//! tagpin answers with — applied to the *whole* original object — changes only image fields (to
//! their pinned form) and the `tagpin.io/pinned` record. Pure: no server, no registry.

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tagpin::admission::{decide, parse_review, plan, Endpoint};
use tagpin::reference::Digest;
use tagpin::resolve::{classify, Class, ImageOutcome, LookupError, Outcome};

const D: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const PINNED: &str = "tagpin.io/pinned";

fn image() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,6}(/[a-z]{1,4})?:[0-9]{1,2}",
        "reg\\.example:5000/[a-z]{1,6}:v[0-9]",
        "[a-z]{1,6}",
        "[a-z]{1,6}@sha256:[0-9a-f]{64}",
        "Bad:[A-Z]{1,3}",
        "kind\\.local/[a-z]{1,4}:1",
    ]
}

fn extra() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(null)),
        "[a-z ]{0,12}".prop_map(Value::String),
        any::<i32>().prop_map(|n| json!(n)),
        Just(json!({"name": "x", "value": "y"})),
        Just(json!([{"containerPort": 80, "name": "http"}])),
        Just(json!({"limits": {"cpu": "1"}, "requests": {"memory": "1Gi"}})),
    ]
}

fn container() -> impl Strategy<Value = Value> {
    (
        "[a-z]{1,5}",
        proptest::option::weighted(0.9, image()),
        proptest::collection::vec(("[a-zA-Z]{1,8}", extra()), 0..4),
    )
        .prop_map(|(name, image, extras)| {
            let mut m = Map::new();
            for (k, v) in extras {
                m.insert(k, v);
            }
            m.insert("name".into(), json!(name));
            if let Some(i) = image {
                m.insert("image".into(), json!(i));
            }
            Value::Object(m)
        })
}

fn pod_spec() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(container(), 1..5),
        proptest::collection::vec(container(), 0..3),
        proptest::collection::vec(("[a-z]{1,5}", proptest::option::of(image())), 0..3),
        proptest::option::of("[a-z]{1,6}"),
    )
        .prop_map(|(cs, init, vols, sa)| {
            let vols: Vec<Value> = vols
                .into_iter()
                .map(|(n, i)| match i {
                    Some(i) => {
                        json!({"name": n, "image": {"reference": i, "pullPolicy": "IfNotPresent"}})
                    }
                    None => json!({"name": n, "configMap": {"name": n}}),
                })
                .collect();
            let mut spec = json!({"containers": cs, "restartPolicy": "Always", "volumes": vols});
            if !init.is_empty() {
                spec["initContainers"] = json!(init);
            }
            if let Some(sa) = sa {
                spec["serviceAccountName"] = json!(sa);
            }
            spec
        })
}

fn metadata() -> impl Strategy<Value = Option<Value>> {
    proptest::option::weighted(
        0.8,
        (
            proptest::option::of(proptest::collection::btree_map(
                "[a-z./]{1,10}",
                "[a-z]{0,6}",
                0..3,
            )),
            any::<bool>(),
        )
            .prop_map(|(ann, labels)| {
                let mut m = json!({"name": "o", "uid": "1", "resourceVersion": "9"});
                if let Some(a) = ann {
                    m["annotations"] = json!(a);
                }
                if labels {
                    m["labels"] = json!({"app": "web"});
                }
                m
            }),
    )
}

/// (group, kind, object)
fn object() -> impl Strategy<Value = (&'static str, &'static str, Value)> {
    (0..4usize, pod_spec(), metadata(), metadata()).prop_map(|(k, spec, meta, tmeta)| {
        let mut template = json!({"spec": spec.clone()});
        if let Some(t) = tmeta {
            template["metadata"] = t;
        }
        let (group, kind, mut obj) = match k {
            0 => ("", "Pod", json!({"apiVersion": "v1", "kind": "Pod", "spec": spec})),
            1 => (
                "apps",
                "Deployment",
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 2, "template": template}}),
            ),
            2 => (
                "batch",
                "CronJob",
                json!({"apiVersion": "batch/v1", "kind": "CronJob", "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}}),
            ),
            _ => (
                "",
                "PodTemplate",
                json!({"apiVersion": "v1", "kind": "PodTemplate", "template": template}),
            ),
        };
        if let Some(m) = meta {
            obj["metadata"] = m;
        }
        (group, kind, obj)
    })
}

/// The object with every image field blanked and the record (and annotation/metadata maps left
/// empty by removing it) taken out.
fn normalize(v: &mut Value, images: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(a)) = m.get_mut("annotations") {
                a.remove(PINNED);
                if a.is_empty() {
                    m.remove("annotations");
                }
            }
            for (k, child) in m.iter_mut() {
                if k == "image" || k == "reference" {
                    if let Value::String(s) = child {
                        images.push(std::mem::take(s));
                        continue;
                    }
                }
                normalize(child, images);
            }
            if matches!(m.get("metadata"), Some(Value::Object(x)) if x.is_empty()) {
                m.remove("metadata");
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| normalize(x, images)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn the_patch_changes_only_images_and_the_record(
        (group, kind, obj) in object(),
        fail in proptest::collection::vec(any::<bool>(), 16),
        keep_tag in any::<bool>(),
    ) {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "kind": {"group": group, "version": "v1", "kind": kind},
                "namespace": "ns", "operation": "CREATE", "userInfo": {"username": "x"},
                "object": obj,
            }
        });
        let body = serde_json::to_vec(&review).unwrap();
        let (_, req) = parse_review(&body).unwrap();
        let p = plan(&req);
        let d = Digest::parse(D).unwrap();
        // Each site as the resolver classifies it; tags resolved or failed as generated.
        let skip = vec!["kind.local/".to_string()];
        let outcomes: Vec<ImageOutcome> = p
            .sites
            .iter()
            .enumerate()
            .map(|(i, site)| match classify(&site.image, &skip) {
                Class::Skipped => ImageOutcome::Skipped,
                Class::HasDigest => ImageOutcome::HasDigest,
                Class::Invalid(e) => ImageOutcome::Invalid(e),
                Class::Tag(r) => ImageOutcome::Resolved(
                    r,
                    if fail[i % fail.len()] {
                        Outcome::Failed(LookupError::Deadline { registry: "r".into(), after: Duration::from_secs(1) })
                    } else {
                        Outcome::Pinned(d.clone())
                    },
                ),
            })
            .collect();
        let dec = decide(&p, &outcomes, Endpoint::Mutate, keep_tag);
        prop_assert!(dec.allowed);
        let mut patched = obj.clone();
        json_patch::patch(&mut patched, &dec.patch.parsed().unwrap()).unwrap();

        let (mut a, mut b) = (obj.clone(), patched.clone());
        let (mut before, mut after) = (Vec::new(), Vec::new());
        normalize(&mut a, &mut before);
        normalize(&mut b, &mut after);
        prop_assert_eq!(&a, &b, "something other than an image or the record changed");
        prop_assert_eq!(before.len(), after.len());
        let mut changed = 0;
        for (x, y) in before.iter().zip(&after) {
            if x != y {
                changed += 1;
                prop_assert!(y.ends_with(&format!("@{D}")), "{} became {}", x, y);
                prop_assert!(!x.contains('@'), "a digest was changed: {}", x);
            }
        }
        prop_assert_eq!(changed, dec.pinned);
        // Other annotations survive.
        if let Some(Value::Object(ann)) = obj.pointer("/metadata/annotations") {
            for (k, v) in ann {
                if k != PINNED {
                    prop_assert_eq!(patched["metadata"]["annotations"].get(k), Some(v));
                }
            }
        }
    }
}
