//! `tagpin pin` (the built binary) over YAML files, against a real registry (Debian's
//! `docker-registry`): a directory of mixed documents, `--in-place`, `-o`, stdin, `--check` exit
//! codes, error messages, and the registry requests a large input costs.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

fn docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text).unwrap()
}

fn set(v: &mut Value, ptr: &str, to: Value) {
    // Creates missing objects on the way (annotations that did not exist).
    let mut cur = v;
    for tok in ptr.split('/').skip(1) {
        let tok = tok.replace("~1", "/").replace("~0", "~");
        cur = match cur {
            Value::Array(a) => &mut a[tok.parse::<usize>().unwrap()],
            other => {
                if !other.is_object() {
                    *other = json!({});
                }
                other
                    .as_object_mut()
                    .unwrap()
                    .entry(tok)
                    .or_insert(Value::Null)
            }
        };
    }
    *cur = to;
}

/// The test tree: what each file holds, with `{A}` standing for the registry address.
const WEB: &str = r#"# The web tier. Comments and layout must survive pinning.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}   # flow style is fine here: no edit touches it
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      initContainers:
      - name: migrate
        image: "{A}/app:v3"   # quoted
      containers:
        - name: web
          image: {A}/web:1.27 # pinned by CI
          env:
            - name: BASE_IMAGE
              value: {A}/web:1.27
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports: [{port: 80}]
"#;

const JOBS: &str = r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
  annotations:
    owner: team-a
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - name: report
            image: {A}/app:v3
---
# A document with only a comment.
---
apiVersion: v1
kind: PodTemplate
metadata:
  name: worker
template:
  metadata:
    labels:
      role: worker
  spec:
    containers:
    - name: worker
      image: {A}/redis:7
"#;

const LIST: &str = r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: debug}
  spec:
    containers: [{name: sh, image: "{A}/redis:7"}]
"#;

const OWNED: &str = r#"apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web-7d4b9c8f6d
  ownerReferences:
  - {apiVersion: apps/v1, kind: Deployment, name: web, uid: 6c1a2b3d, controller: true}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: "{A}/web:1.27"}]
"#;

fn write_tree(dir: &Path, a: &str, pinned_pod: &str) {
    let w = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text.replace("{A}", a)).unwrap();
    };
    w("apps/web.yaml", WEB);
    w("apps/jobs.yml", JOBS);
    w("debug/list.yaml", LIST);
    w("owned.yaml", OWNED);
    w(
        "pinned.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: a\n    image: {pinned_pod}\n"),
    );
    w("README.md", "image: {A}/web:1.27\n");
    w(
        ".git/x.yaml",
        "kind: Pod\nspec: {containers: [{name: a, image: nope:1}]}\n",
    );
}

/// Every document of the tree, in output order (files sorted), as tagpin should leave it.
fn expected_docs(before: &str, a: &str, d: &Pushed) -> Vec<Value> {
    let mut docs = docs(before);
    let (app, web, redis) = (
        format!("{a}/app:v3"),
        format!("{a}/web:1.27"),
        format!("{a}/redis:7"),
    );
    // apps/jobs.yml: CronJob, PodTemplate
    set(
        &mut docs[0],
        "/spec/jobTemplate/spec/template/spec/containers/0/image",
        json!(format!("{a}/app@{}", d.app)),
    );
    let r = json!(record(&[("report", &app)]));
    set(
        &mut docs[0],
        "/metadata/annotations/tagpin.io~1pinned",
        r.clone(),
    );
    set(
        &mut docs[0],
        "/spec/jobTemplate/spec/template/metadata/annotations/tagpin.io~1pinned",
        r,
    );
    set(
        &mut docs[1],
        "/template/spec/containers/0/image",
        json!(format!("{a}/redis@{}", d.redis)),
    );
    let r = json!(record(&[("worker", &redis)]));
    set(
        &mut docs[1],
        "/metadata/annotations/tagpin.io~1pinned",
        r.clone(),
    );
    set(
        &mut docs[1],
        "/template/metadata/annotations/tagpin.io~1pinned",
        r,
    );
    // apps/web.yaml: Deployment, Service (unchanged). The env value is not an image.
    set(
        &mut docs[2],
        "/spec/template/spec/initContainers/0/image",
        json!(format!("{a}/app@{}", d.app)),
    );
    set(
        &mut docs[2],
        "/spec/template/spec/containers/0/image",
        json!(format!("{a}/web@{}", d.web)),
    );
    let r = json!(record(&[("init/migrate", &app), ("web", &web)]));
    set(
        &mut docs[2],
        "/metadata/annotations/tagpin.io~1pinned",
        r.clone(),
    );
    set(
        &mut docs[2],
        "/spec/template/metadata/annotations/tagpin.io~1pinned",
        r,
    );
    // debug/list.yaml: the Pod inside the List.
    set(
        &mut docs[4],
        "/items/0/spec/containers/0/image",
        json!(format!("{a}/redis@{}", d.redis)),
    );
    set(
        &mut docs[4],
        "/items/0/metadata/annotations/tagpin.io~1pinned",
        json!(record(&[("sh", &redis)])),
    );
    // owned.yaml and pinned.yaml: unchanged.
    docs
}

fn tree_text(dir: &Path) -> String {
    [
        "apps/jobs.yml",
        "apps/web.yaml",
        "debug/list.yaml",
        "owned.yaml",
        "pinned.yaml",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
    .collect::<Vec<_>>()
    .join("---\n")
}

#[tokio::test]
async fn pins_a_directory_of_mixed_documents_changing_only_images_and_the_record() {
    let reg = Registry::plain();
    let a = reg.addr.clone();
    let d = push_all(&reg).await;
    let dir = tempfile::tempdir().unwrap();
    let pinned_pod = format!("{a}/web@{}", d.web);
    write_tree(dir.path(), &a, &pinned_pod);
    let before = tree_text(dir.path());

    let out = tagpin(&reg, &[dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(docs(&text), expected_docs(&before, &a, &d));

    // Comments, quoting and layout of edited documents are kept.
    for kept in [
        "# The web tier. Comments and layout must survive pinning.",
        "  labels: {app: web}   # flow style is fine here: no edit touches it",
        &format!("image: \"{a}/app@{}\"   # quoted", d.app),
        &format!("image: {a}/web@{} # pinned by CI", d.web),
        &format!("value: {a}/web:1.27"),
        "# A document with only a comment.",
    ] {
        assert!(text.contains(kept), "missing {kept:?} in\n{text}");
    }
    // Every document was edited in place, the List and its flow-style pod spec too (before
    // issue 13 the List was re-serialized and stderr said "comments and layout not kept").
    let err = stderr(&out);
    assert!(
        !err.contains("not kept") && !err.contains("cannot edit"),
        "{err}"
    );
    let flow = format!(
        "containers: [{{name: sh, image: \"{a}/redis@{}\"}}]",
        d.redis
    );
    assert!(text.contains(&flow), "missing {flow:?} in\n{text}");
    // Each tag was asked once; the owned ReplicaSet, the pinned Pod, README.md and .git/ not at all.
    assert_eq!(reg.manifest_requests("app", "v3"), 1);
    assert_eq!(reg.manifest_requests("web", "1.27"), 1);
    assert_eq!(reg.manifest_requests("redis", "7"), 1);
    assert_eq!(reg.count("/v2/nope/"), 0);
    // Nothing was written to the input files.
    assert_eq!(tree_text(dir.path()), before);
}

#[tokio::test]
async fn in_place_output_file_and_check_exit_codes() {
    let reg = Registry::plain();
    let a = reg.addr.clone();
    let d = push_all(&reg).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    write_tree(dir.path(), &a, &format!("{a}/web@{}", d.web));
    let owned_before = std::fs::read(dir.path().join("owned.yaml")).unwrap();

    // --check on tags: exit 1, every unpinned image named with file and document.
    let out = tagpin(&reg, &["--check", root]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let web_yaml = dir.path().join("apps/web.yaml");
    for line in [
        format!(
            "{}: document 1 (Deployment web) containers/web: {a}/web:1.27 is not pinned to a digest",
            web_yaml.display()
        ),
        format!(
            "{}: document 1 (Deployment web) initContainers/migrate: {a}/app:v3 is not pinned to a digest",
            web_yaml.display()
        ),
    ] {
        assert!(err.contains(&line), "missing {line:?} in\n{err}");
    }
    assert_eq!(err.matches("is not pinned").count(), 5, "{err}");
    assert!(out.stdout.is_empty(), "--check writes nothing to stdout");

    // -o: one file with every document.
    let out_file = dir.path().join("out/pinned.yaml");
    std::fs::create_dir_all(out_file.parent().unwrap()).unwrap();
    let out = tagpin(&reg, &["-o", out_file.to_str().unwrap(), root]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let written = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(docs(&written).len(), 7);

    // --in-place rewrites the files that change, and only those.
    std::fs::remove_dir_all(out_file.parent().unwrap()).unwrap();
    let out = tagpin(&reg, &["--in-place", root]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(dir.path().join("owned.yaml")).unwrap(),
        owned_before
    );
    let web = std::fs::read_to_string(&web_yaml).unwrap();
    assert!(
        web.contains(&format!("image: {a}/web@{} # pinned by CI", d.web)),
        "{web}"
    );

    // A symlinked file is rewritten through the link: the link stays a link.
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("linked.yaml");
    std::fs::write(
        &target,
        format!("kind: Pod\napiVersion: v1\nmetadata:\n  name: l\nspec:\n  containers:\n  - name: a\n    image: {a}/redis:7\n"),
    )
    .unwrap();
    let link = elsewhere.path().join("link.yaml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = tagpin(&reg, &["--in-place", link.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let linked = std::fs::read_to_string(&target).unwrap();
    assert!(
        linked.contains(&format!("image: {a}/redis@{}", d.redis)),
        "{linked}"
    );

    // --check on the pinned tree: exit 0. Running pin again changes nothing.
    let out = tagpin(&reg, &["--check", root]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let again = tagpin(&reg, &[root]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(
        docs(&String::from_utf8(again.stdout).unwrap()),
        docs(&tree_text(dir.path()))
    );

    // The tag moves: --check names the image, its recorded tag and the new digest.
    let moved = reg.pusher().push("web", "1.27", Kind::Oci).await;
    let out = tagpin(&reg, &["--check", root]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let line = format!(
        "{}: document 1 (Deployment web) containers/web: {a}/web@{} is pinned from {a}/web:1.27, which now points to {moved}",
        web_yaml.display(),
        d.web
    );
    assert!(err.contains(&line), "missing {line:?} in\n{err}");
    // pinned.yaml's Pod has a digest but no record: nothing to compare it with.
    assert!(!err.contains("pinned.yaml"), "{err}");
}

#[tokio::test]
async fn stdin_to_stdout_and_errors_name_file_document_and_image() {
    let reg = Registry::plain();
    let a = reg.addr.clone();
    let d = reg.pusher().push("app", "v3", Kind::Oci).await;
    let input = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: a\n    image: {a}/app:v3\n  - name: b\n    image: {a}/missing:1\n"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_tagpin"))
        .args(["pin", "--insecure-registry", &a, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "one image could not be pinned");
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(
        text,
        input
            .replace(
                "metadata:\n  name: p\n",
                &format!(
                    "metadata:\n  annotations:\n    tagpin.io/pinned: '{}'\n  name: p\n",
                    record(&[("a", &format!("{a}/app:v3"))])
                )
            )
            .replace(&format!("{a}/app:v3"), &format!("{a}/app@{d}"))
            .replace(
                &format!("'{{\"a\":\"{a}/app@{d}\"}}'"),
                &format!("'{{\"a\":\"{a}/app:v3\"}}'")
            )
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "stdin: document 1 (Pod p) containers/b: {a}/missing:1 left unpinned: manifest not found (404)"
        )),
        "{err}"
    );

    // Invalid YAML: exit 2, file:line:column and the document, and -o is not written.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: A\n---\nkind: Pod\nspec: [unclosed\n").unwrap();
    let out_file = dir.path().join("out.yaml");
    let out = tagpin(
        &reg,
        &["-o", out_file.to_str().unwrap(), bad.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}:4:7: document 2 is not valid YAML",
            bad.display()
        )),
        "{err}"
    );
    assert!(!out_file.exists());
    // A missing file: exit 2, named.
    let out = tagpin(&reg, &["/nonexistent/x.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read /nonexistent/x.yaml"),
        "{}",
        stderr(&out)
    );
}

/// 200 documents naming 20 distinct images cost 20 manifest requests: one per image, resolved
/// concurrently and shared by every document that names it.
#[tokio::test]
async fn two_hundred_documents_with_twenty_images_cost_twenty_requests() {
    let reg = Registry::plain();
    let a = reg.addr.clone();
    let p = reg.pusher();
    let mut digests = Vec::new();
    for i in 0..20 {
        digests.push(p.push(&format!("svc{i}"), "1.0", Kind::Oci).await);
    }
    let mut text = String::new();
    for n in 0..200 {
        let i = n % 20;
        text.push_str(&format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d{n}\nspec:\n  template:\n    spec:\n      containers:\n      - name: c\n        image: {a}/svc{i}:1.0\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("many.yaml");
    std::fs::write(&f, &text).unwrap();
    let out = tagpin(&reg, &[f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out_docs = docs(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(out_docs.len(), 200);
    for (n, doc) in out_docs.iter().enumerate() {
        assert_eq!(
            doc.pointer("/spec/template/spec/containers/0/image")
                .unwrap(),
            &json!(format!("{a}/svc{}@{}", n % 20, digests[n % 20]))
        );
    }
    let total: usize = (0..20)
        .map(|i| reg.manifest_requests(&format!("svc{i}"), "1.0"))
        .sum();
    assert_eq!(total, 20);
}
