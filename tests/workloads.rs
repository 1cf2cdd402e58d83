//! Workload templates through the webhook, against a real registry (Debian's `docker-registry`):
//! every kind's template path, the `tagpin.io/pinned` record, controller-owned objects left
//! alone, and UPDATE with a moved and an unmoved tag. Fixtures are real AdmissionReview JSON
//! (`tests/data/`); every patch is applied to the original object and the result compared.

mod common;

use common::*;
use serde_json::{json, Value};

/// The Deployment fixture turned into another kind with the same `spec.template`.
fn as_kind(review: &Value, group: &str, kind: &str, resource: &str) -> Value {
    let mut r = review.clone();
    let api_version = if group.is_empty() {
        "v1".to_string()
    } else {
        format!("{group}/v1")
    };
    let gvk = json!({"group": group, "version": "v1", "kind": kind});
    let gvr = json!({"group": group, "version": "v1", "resource": resource});
    r["request"]["kind"] = gvk.clone();
    r["request"]["requestKind"] = gvk;
    r["request"]["resource"] = gvr.clone();
    r["request"]["requestResource"] = gvr;
    r["request"]["object"]["apiVersion"] = json!(api_version);
    r["request"]["object"]["kind"] = json!(kind);
    let spec = r["request"]["object"]["spec"].as_object_mut().unwrap();
    spec.remove("strategy");
    spec.remove("progressDeadlineSeconds");
    if kind == "Job" {
        spec.remove("replicas");
        spec.remove("selector");
        spec.remove("revisionHistoryLimit");
        r["request"]["object"]["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
    }
    r
}

#[tokio::test]
async fn every_workload_kind_is_pinned_in_its_template_and_recorded() {
    let reg = Registry::plain();
    let a = &reg.addr;
    let d_app = reg.pusher().push("app", "v3", Kind::Oci).await;
    let d_web = reg.pusher().push("web", "1.27", Kind::Index).await;
    let migrate = format!("{a}/app:v3");
    let web = format!("{a}/web:1.27");
    let router = router(admitter(reg.resolver_config(), admission_config()));
    let rec = record(&[("init/migrate", &migrate), ("web", &web)]);

    let deployment = fixture("deployment-create.json", &[&migrate, &web]);
    let kinds = [
        ("apps", "Deployment", "deployments"),
        ("apps", "StatefulSet", "statefulsets"),
        ("apps", "DaemonSet", "daemonsets"),
        ("apps", "ReplicaSet", "replicasets"),
        ("", "ReplicationController", "replicationcontrollers"),
        ("batch", "Job", "jobs"),
    ];
    for (group, kind, resource) in kinds {
        let review = as_kind(&deployment, group, kind, resource);
        let resp = common::review(&router, "/mutate", &review).await;
        assert!(warnings(&resp).is_empty(), "{kind}: {:?}", warnings(&resp));
        let mut expected = review["request"]["object"].clone();
        let spec = &mut expected["spec"]["template"]["spec"];
        spec["initContainers"][0]["image"] = json!(format!("{a}/app@{d_app}"));
        spec["containers"][0]["image"] = json!(format!("{a}/web@{d_web}"));
        // The object's annotations exist (last-applied): one key is added beside them.
        expected["metadata"]["annotations"]["tagpin.io/pinned"] = json!(rec);
        // The template's metadata has labels but no annotations: the map is added.
        expected["spec"]["template"]["metadata"]["annotations"] = json!({"tagpin.io/pinned": rec});
        assert_eq!(apply(&review, &resp), expected, "{kind}");
        let ops = serde_json::to_value(patch_of(&resp).unwrap()).unwrap();
        let paths: Vec<&str> = ops
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            vec![
                "/spec/template/spec/containers/0/image",
                "/spec/template/spec/initContainers/0/image",
                "/metadata/annotations/tagpin.io~1pinned",
                "/spec/template/metadata/annotations",
            ],
            "{kind}: JSON Patch escapes the / of the annotation key"
        );
    }
    assert_eq!(reg.manifest_requests("app", "v3"), 1, "cached across kinds");

    // CronJob: the template sits under jobTemplate and has no metadata at all.
    let review = fixture("cronjob-create.json", &[&web]);
    let resp = common::review(&router, "/mutate", &review).await;
    let mut expected = review["request"]["object"].clone();
    let tpl = &mut expected["spec"]["jobTemplate"]["spec"]["template"];
    tpl["spec"]["containers"][0]["image"] = json!(format!("{a}/web@{d_web}"));
    let rec_report = record(&[("report", &web)]);
    tpl["metadata"] = json!({"annotations": {"tagpin.io/pinned": rec_report}});
    expected["metadata"]["annotations"] = json!({"tagpin.io/pinned": rec_report});
    assert_eq!(apply(&review, &resp), expected);

    // PodTemplate: `template` at the top level, its annotations already exist.
    let review = fixture("podtemplate-create.json", &[&migrate]);
    let resp = common::review(&router, "/mutate", &review).await;
    let mut expected = review["request"]["object"].clone();
    expected["template"]["spec"]["containers"][0]["image"] = json!(format!("{a}/app@{d_app}"));
    let rec_worker = record(&[("worker", &migrate)]);
    expected["template"]["metadata"]["annotations"]["tagpin.io/pinned"] = json!(rec_worker);
    expected["metadata"]["annotations"] = json!({"tagpin.io/pinned": rec_worker});
    assert_eq!(apply(&review, &resp), expected);
}

#[tokio::test]
async fn controller_owned_templates_are_left_alone_but_their_pods_are_pinned() {
    let reg = Registry::plain();
    let a = &reg.addr;
    let d = reg.pusher().push("web", "1.27", Kind::Oci).await;
    let web = format!("{a}/web:1.27");
    let router = router(admitter(reg.resolver_config(), admission_config()));

    let review = fixture("replicaset-owned-create.json", &[&web]);
    for path in ["/mutate", "/enforce"] {
        let resp = common::review(&router, path, &review).await;
        assert_eq!(resp["allowed"], true, "{path}");
        assert!(
            resp.get("patch").is_none(),
            "{path}: owned ReplicaSet not mutated"
        );
        assert!(warnings(&resp).is_empty());
    }
    assert_eq!(reg.manifest_requests("web", "1.27"), 0, "nothing looked up");

    // The same ReplicaSet created by hand (no controller owner) is pinned.
    let mut unowned = review.clone();
    unowned["request"]["object"]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("ownerReferences");
    let resp = common::review(&router, "/mutate", &unowned).await;
    assert_eq!(
        apply(&unowned, &resp)["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("{a}/web@{d}")
    );

    // A Pod owned by that ReplicaSet is pinned: pods are always pinned.
    let mut pod = fixture("pod-create.json", &[&web]);
    pod["request"]["object"]["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f6d",
        "uid": "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e", "controller": true, "blockOwnerDeletion": true
    }]);
    let resp = common::review(&router, "/mutate", &pod).await;
    assert_eq!(
        apply(&pod, &resp)["spec"]["containers"][0]["image"],
        format!("{a}/web@{d}")
    );
}

/// Re-applying a Deployment: the stored object is pinned; the request carries the tag again
/// (server-side apply or `kubectl replace` of the manifest from Git).
#[tokio::test]
async fn reapply_with_unmoved_tag_is_identical_and_with_moved_tag_rolls_out() {
    let reg = Registry::plain();
    let a = &reg.addr;
    let p = reg.pusher();
    let d_app = p.push("app", "v3", Kind::Oci).await;
    let d1 = p.push("web", "1.27", Kind::Oci).await;
    let migrate = format!("{a}/app:v3");
    let web = format!("{a}/web:1.27");
    let adm = admitter(reg.resolver_config(), admission_config());
    let router = router(adm.clone());

    let create = fixture("deployment-create.json", &[&migrate, &web]);
    let resp = common::review(&router, "/mutate", &create).await;
    let stored = apply(&create, &resp);
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("{a}/web@{d1}")
    );

    // UPDATE with the manifest as written (tags, no record) against the stored, pinned object.
    let mut update = create.clone();
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["uid"] = json!("5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f");
    update["request"]["oldObject"] = stored.clone();
    update["request"]["options"] =
        json!({"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kubectl"});
    let resp = common::review(&router, "/mutate", &update).await;
    assert_eq!(
        apply(&update, &resp),
        stored,
        "unmoved tag: identical object, so no rollout"
    );

    // The same, with the record still present in the request (it was kept by apply): identical.
    let mut update_kept = update.clone();
    update_kept["request"]["object"]["metadata"]["annotations"] =
        stored["metadata"]["annotations"].clone();
    update_kept["request"]["object"]["spec"]["template"]["metadata"] =
        stored["spec"]["template"]["metadata"].clone();
    let resp = common::review(&router, "/mutate", &update_kept).await;
    assert_eq!(apply(&update_kept, &resp), stored);

    // The tag moves: the same re-apply now produces the new digest (the rollout happens).
    let d2 = p.push("web", "1.27", Kind::Oci).await;
    assert_ne!(d1, d2);
    adm.resolver.clear_cache();
    let resp = common::review(&router, "/mutate", &update).await;
    let rolled = apply(&update, &resp);
    assert_eq!(
        rolled["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("{a}/web@{d2}")
    );
    assert_eq!(
        rolled["spec"]["template"]["spec"]["initContainers"][0]["image"],
        format!("{a}/app@{d_app}")
    );
    let mut expected = stored.clone();
    expected["spec"]["template"]["spec"]["containers"][0]["image"] = json!(format!("{a}/web@{d2}"));
    assert_eq!(
        rolled, expected,
        "only the moved image changed; same record"
    );

    // An UPDATE whose images are all digests already (a label edit) gets no patch.
    let mut relabel = update.clone();
    relabel["request"]["object"] = stored.clone();
    relabel["request"]["object"]["metadata"]["labels"]["tier"] = json!("frontend");
    let before = reg.manifest_requests("web", "1.27");
    let resp = common::review(&router, "/mutate", &relabel).await;
    assert!(resp.get("patch").is_none(), "{resp}");
    assert_eq!(reg.manifest_requests("web", "1.27"), before);
}

/// A re-apply while the registry is down, handled by a tagpin that has never resolved the image
/// (a restarted replica: no cache, no last known digest): the old object's record shows the
/// digest came from this very tag, so it is kept and nothing rolls out.
#[tokio::test]
async fn reapply_during_an_outage_keeps_the_pinned_template() {
    let mut reg = Registry::plain();
    let a = reg.addr.clone();
    let p = reg.pusher();
    p.push("app", "v3", Kind::Oci).await;
    p.push("web", "1.27", Kind::Oci).await;
    let migrate = format!("{a}/app:v3");
    let web = format!("{a}/web:1.27");
    let create = fixture("deployment-create.json", &[&migrate, &web]);
    let first = router(admitter(reg.resolver_config(), admission_config()));
    let stored = apply(&create, &common::review(&first, "/mutate", &create).await);

    reg.stop();
    let restarted = router(admitter(reg.resolver_config(), admission_config()));
    let mut update = create.clone();
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = stored.clone();
    let resp = common::review(&restarted, "/mutate", &update).await;
    assert_eq!(
        apply(&update, &resp),
        stored,
        "template unchanged: no rollout"
    );
    let w = warnings(&resp);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w.iter().any(|w| w.starts_with(&format!(
            "tagpin: {web} kept the digest it had ({a}/web@sha256:"
        ))),
        "{w:?}"
    );
    // Without an old object to go by (a CREATE), the same outage leaves the tags, loudly.
    let resp = common::review(&restarted, "/mutate", &create).await;
    assert!(resp.get("patch").is_none());
    assert!(warnings(&resp).iter().all(|w| w.contains("left unpinned")));
}
