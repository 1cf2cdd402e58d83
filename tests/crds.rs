//! Issue 24: operators' custom resources (`tests/data/crds/`: Ray, JobSet, LeaderWorkerSet, Argo
//! Workflows, Tekton, KEDA, Knative, Spark, Flink, ECK, Strimzi, and shapes that are not pod
//! specs) through the webhook (`/mutate`, the admitter with a real resolver) and `tagpin pin`
//! (the built binary), against a real registry. Every image a fixture marks `# expect: pin` is
//! pinned by both, every other one is reported by both in the same words, and the admitted
//! object is exactly what `pin` writes (images and `tagpin.io/pinned` records alike).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;
use serde_json::{json, Value};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/crds");

/// Every fixture, `{A}` replaced by the registry address, by file name.
fn fixtures(a: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(DIR).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        out.insert(name, std::fs::read_to_string(&p).unwrap().replace("{A}", a));
    }
    out
}

/// The `(image, verdict)` of every line marked `# expect: <verdict>`.
fn marked(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (before, verdict) = l.split_once("# expect: ")?;
            let image = before.split_once("image:")?.1.trim().to_string();
            Some((image, verdict.trim().to_string()))
        })
        .collect()
}

fn review_of(uid: &str, object: &Value) -> Value {
    let api = object["apiVersion"].as_str().unwrap();
    let (group, version) = api.rsplit_once('/').unwrap_or(("", api));
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": object["kind"]},
            "resource": {"group": group, "version": version, "resource": "things"},
            "namespace": "team-a", "operation": "CREATE",
            "userInfo": {"username": "tester"},
            "object": object, "oldObject": null, "dryRun": false
        }
    })
}

/// `<label>: <image> <why>` of a webhook warning or a `pin` note about a field left as written.
fn field_of_warning(w: &str) -> Option<String> {
    Some(
        w.strip_prefix("tagpin: ")?
            .strip_suffix(": left as written")?
            .to_string(),
    )
}

fn field_of_note(n: &str) -> Option<String> {
    let rest = n.strip_suffix(": left as written, not checked")?;
    Some(rest.split_once(") ")?.1.to_string())
}

fn notes_of(err: &str, file: &str) -> Vec<String> {
    err.lines()
        .filter_map(|l| l.strip_prefix("tagpin: note: "))
        .filter(|l| l.contains(&format!("/{file}: ")))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn webhook_and_pin_agree_on_every_operator_custom_resource() {
    let reg = Registry::plain();
    let a = reg.addr.clone();
    let files = fixtures(&a);
    assert!(files.len() >= 12, "{:?}", files.keys());
    // Push every image to pin, each tag its own manifest.
    let pusher = reg.pusher();
    let mut digests: BTreeMap<String, String> = BTreeMap::new();
    for text in files.values() {
        for (image, verdict) in marked(text) {
            if verdict == "pin" && !digests.contains_key(&image) {
                let (repo, tag) = image
                    .strip_prefix(&format!("{a}/"))
                    .unwrap()
                    .split_once(':')
                    .unwrap();
                let d = pusher.push(repo, tag, Kind::Oci).await;
                digests.insert(image, d);
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in &files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let d = dir.path().to_str().unwrap();
    let out = tagpin(&reg, &["--in-place", d]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "notes do not fail a run: {err}");
    let router = router(admitter(reg.resolver_config(), admission_config()));
    let mut pinned_total = 0;
    let mut reported_total = 0;
    for (name, text) in &files {
        let after = std::fs::read_to_string(dir.path().join(name)).unwrap();
        // pin: every line marked pin now holds its digest; every other marked line is as read.
        let marks = marked(text);
        for (line, (image, verdict)) in after
            .lines()
            .filter(|l| l.contains("# expect: "))
            .zip(&marks)
        {
            if verdict == "pin" {
                let repo = image.rsplit_once(':').unwrap().0;
                let want = format!("image: {repo}@{} # expect: pin", digests[image]);
                assert!(
                    line.trim_start().trim_start_matches("- ") == want,
                    "{name}: {line} (want {want})"
                );
                pinned_total += 1;
            } else {
                assert!(
                    line.contains(&format!("image: {image} # expect: {verdict}")),
                    "{name}: {line}"
                );
            }
        }
        // The webhook: each document admitted becomes exactly what pin wrote.
        let before: Vec<Value> = serde_saphyr::from_multiple(text).unwrap();
        let pinned: Vec<Value> = serde_saphyr::from_multiple(&after).unwrap();
        assert_eq!(before.len(), pinned.len(), "{name}");
        let mut webhook_fields = BTreeSet::new();
        for (i, (doc, want)) in before.iter().zip(&pinned).enumerate() {
            let rv = review_of(&format!("{name}-{i}"), doc);
            let resp = review(&router, "/mutate", &rv).await;
            assert_eq!(resp["allowed"], true, "{name} document {}", i + 1);
            let admitted = apply(&rv, &resp);
            assert_eq!(
                &admitted,
                want,
                "{name} document {}: webhook and pin differ",
                i + 1
            );
            if admitted != *doc {
                let rec = admitted
                    .pointer("/metadata/annotations/tagpin.io~1pinned")
                    .and_then(Value::as_str);
                assert!(
                    rec.is_some(),
                    "{name} document {}: pinned without a record",
                    i + 1
                );
            }
            for w in warnings(&resp) {
                let f = field_of_warning(&w).unwrap_or_else(|| panic!("{name}: warning {w}"));
                webhook_fields.insert(format!("{}|{f}", i + 1));
            }
        }
        // pin's notes and the webhook's warnings name the same fields in the same words.
        let pin_fields: BTreeSet<String> = notes_of(&err, name)
            .iter()
            .map(|n| {
                let doc = n
                    .split_once(": document ")
                    .unwrap()
                    .1
                    .split_once(' ')
                    .unwrap()
                    .0;
                format!(
                    "{doc}|{}",
                    field_of_note(n).unwrap_or_else(|| panic!("{n}"))
                )
            })
            .collect();
        assert_eq!(pin_fields, webhook_fields, "{name}");
        let reported = marks.iter().filter(|(_, v)| v != "pin").count();
        assert_eq!(pin_fields.len(), reported, "{name}: {pin_fields:#?}");
        for (_, v) in marks.iter().filter(|(_, v)| v != "pin") {
            let words = if v == "undecided" {
                "cannot tell is a pod spec"
            } else {
                "outside every pod spec"
            };
            assert!(pin_fields.iter().any(|f| f.contains(words)), "{name}: {v}");
        }
        reported_total += reported;
    }
    assert!(
        pinned_total >= 20 && reported_total >= 20,
        "{pinned_total} {reported_total}"
    );

    // --check on pin's output: passes, with the very notes pin gave (one verdict per field).
    let check = tagpin(&reg, &["--check", d]);
    let cerr = stderr(&check);
    assert_eq!(check.status.code(), Some(0), "{cerr}");
    let notes = |e: &str| -> BTreeSet<String> {
        e.lines()
            .filter(|l| l.starts_with("tagpin: note: "))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(notes(&cerr), notes(&err));
    // --strict makes them problems, in pin and --check alike.
    for mode in ["--check", "-o"] {
        let mut args = vec!["--strict", mode];
        let sink = dir.path().join("out.yaml.txt");
        if mode == "-o" {
            args.push(sink.to_str().unwrap());
        }
        args.push(d);
        let strict = tagpin(&reg, &args);
        let serr = stderr(&strict);
        assert_eq!(strict.status.code(), Some(1), "{mode}: {serr}");
        assert!(notes(&serr).is_empty(), "{serr}");
        assert!(
            serr.contains(&format!("; {reported_total} problem(s)")),
            "{mode}: {serr}"
        );
    }

    // A RayCluster worker whose digest was changed by hand fails --check: the record says which
    // tag it came from.
    let ray = dir.path().join("ray.yaml");
    let text = std::fs::read_to_string(&ray).unwrap();
    let gpu = &digests[&format!("{a}/ray:2.37.0-gpu")];
    let cpu = &digests[&format!("{a}/ray:2.37.0")];
    let tampered = text.replacen(&format!("{a}/ray@{gpu}"), &format!("{a}/ray@{cpu}"), 1);
    assert_ne!(tampered, text);
    std::fs::write(&ray, tampered).unwrap();
    let check = tagpin(&reg, &["--check", ray.to_str().unwrap()]);
    let cerr = stderr(&check);
    assert_eq!(check.status.code(), Some(1), "{cerr}");
    assert!(
        cerr.contains(&format!(
            "(RayCluster raycluster-kuberay) /spec/workerGroupSpecs/1/template/spec containers/ray-worker: {a}/ray@{cpu} is pinned from {a}/ray:2.37.0-gpu, which now points to {gpu}"
        )),
        "{cerr}"
    );
    let _ = Path::new(DIR);
}
