//! Credentials as the kubelet has them, against real registries (`docker-registry` with htpasswd
//! over HTTPS, and with token auth against the token server in `common::token`), with pull
//! secrets and service accounts served by the fake API server in `common::fake_kube` (a fake:
//! no Kubernetes API server can run here), reached through a kubeconfig.

mod common;

use std::time::Duration;

use common::fake_kube::{secret_path, service_account_path, FakeKube};
use common::token::TokenServer;
use common::*;
use serde_json::{json, Value};
use tagpin::cluster::{Cluster, ClusterOptions};
use tagpin::reference::ImageRef;
use tagpin::resolve::{BatchRequest, Budget, CredentialRequest, ImageOutcome, Outcome};
use tagpin::tree::Kept;

/// A Pod CREATE review in `ns` whose spec lists these pull secrets.
fn pod_with_secrets(uid: &str, ns: &str, images: &[&str], secrets: &[&str]) -> Value {
    let mut r = pod_review(uid, images);
    r["request"]["namespace"] = json!(ns);
    r["request"]["object"]["metadata"]["namespace"] = json!(ns);
    if !secrets.is_empty() {
        r["request"]["object"]["spec"]["imagePullSecrets"] =
            secrets.iter().map(|s| json!({"name": s})).collect();
    }
    r
}

async fn cluster(kube: &FakeKube) -> Cluster {
    Cluster::from_kubeconfig(
        &kube.kubeconfig(),
        ClusterOptions::default(),
        common::metrics(),
    )
    .await
    .unwrap()
}

/// The lookup outcomes of a batch of tags.
fn outcomes(b: Vec<ImageOutcome>) -> Vec<Outcome> {
    b.into_iter()
        .map(|o| match o {
            ImageOutcome::Resolved(_, o) => o,
            other => panic!("not a tag: {other:?}"),
        })
        .collect()
}

fn pinned_image(review: &Value, resp: &Value) -> Value {
    apply(review, resp)["spec"]["containers"][0]["image"].clone()
}

#[tokio::test]
async fn pull_secrets_against_a_token_auth_registry_wrong_password_moves_on_to_the_next() {
    let ts = TokenServer::start(&[("ci-bot", "t0ken-pa55", &["private/app"])]);
    let reg = Registry::token_auth(&ts);
    let a = &reg.addr;
    let d = reg
        .pusher_with_token(ts.mint("admin", "private/app", &["pull", "push"]))
        .push("private/app", "1", Kind::Oci)
        .await;
    let kube = FakeKube::start();
    kube.put_pull_secret("team-a", "stale", a, "ci-bot", "old-password");
    // Registry keys written as URLs are understood.
    kube.put_pull_secret(
        "team-a",
        "regcred",
        &format!("http://{a}/"),
        "ci-bot",
        "t0ken-pa55",
    );
    let mut cfg = reg.resolver_config();
    cfg.cluster = Some(cluster(&kube).await);
    let router = router(admitter(cfg, admission_config()));
    let image = format!("{a}/private/app:1");
    let review = pod_with_secrets("tok-1", "team-a", &[&image], &["stale", "regcred"]);
    let tokens_before = ts.requests();
    let resp = common::review(&router, "/mutate", &review).await;
    assert_eq!(pinned_image(&review, &resp), format!("{a}/private/app@{d}"));
    assert!(warnings(&resp).is_empty(), "{:?}", warnings(&resp));
    // stale: HEAD 401 (challenge), token 401 → next; regcred: HEAD 401, token 200, HEAD 200.
    assert_eq!(ts.requests() - tokens_before, 2);
    assert_eq!(
        reg.manifest_requests("private/app", "1"),
        3,
        "{}",
        reg.log_text()
    );
    assert_eq!(kube.reads(&secret_path("team-a", "stale")), 1);
    assert_eq!(kube.reads(&secret_path("team-a", "regcred")), 1);

    // Again: secrets and digest from the caches, nothing reaches the registry or the API.
    let review = pod_with_secrets("tok-2", "team-a", &[&image], &["stale", "regcred"]);
    let resp = common::review(&router, "/mutate", &review).await;
    assert_eq!(pinned_image(&review, &resp), format!("{a}/private/app@{d}"));
    assert_eq!(reg.manifest_requests("private/app", "1"), 3);
    assert_eq!(kube.total_reads(), 2);

    // Without the secret, anonymous gets no token: unpinned, with a warning.
    let review = pod_with_secrets("tok-3", "team-a", &[&image], &[]);
    let resp = common::review(&router, "/mutate", &review).await;
    assert!(resp.get("patch").is_none(), "{resp}");
    assert_eq!(
        warnings(&resp),
        vec![format!(
            "tagpin: {image} left unpinned: registry {a} refused anonymous access (401): give tagpin credentials that can pull this image"
        )]
    );
}

#[tokio::test]
async fn missing_forbidden_and_unusable_secrets_are_warnings_and_the_rest_resolves() {
    let reg = Registry::tls_basic("deployer", "legacy-pa55");
    let a = &reg.addr;
    let d = reg.pusher().push("private/app", "1", Kind::Docker).await;
    let kube = FakeKube::start();
    // The one that works is a legacy kubernetes.io/dockercfg secret.
    kube.put_dockercfg_secret(
        "team-a",
        "legacy",
        &format!("https://{a}"),
        "deployer",
        "legacy-pa55",
    );
    kube.put_secret("team-a", "opaque", "Opaque", "token", &json!("x"));
    kube.forbid(&secret_path("team-a", "locked"));
    let mut cfg = reg.resolver_config();
    cfg.cluster = Some(cluster(&kube).await);
    let adm = admitter(cfg, admission_config());
    let router = router(adm.clone());
    let image = format!("{a}/private/app:1");
    let secrets = ["gone", "locked", "opaque", "legacy"];
    let expected = vec![
        "tagpin: pull secret team-a/gone not found; resolving without it".to_string(),
        "tagpin: not allowed to read pull secret team-a/locked (403); grant tagpin get on secrets; resolving without it".to_string(),
        "tagpin: pull secret team-a/opaque has type \"Opaque\"; tagpin reads only kubernetes.io/dockerconfigjson and kubernetes.io/dockercfg secrets; resolving without it".to_string(),
    ];
    for uid in ["miss-1", "miss-2"] {
        let review = pod_with_secrets(uid, "team-a", &[&image], &secrets);
        let resp = common::review(&router, "/mutate", &review).await;
        assert_eq!(pinned_image(&review, &resp), format!("{a}/private/app@{d}"));
        assert_eq!(warnings(&resp), expected);
    }
    // Each object read once: "not found" and "forbidden" are cached too (briefly).
    for s in secrets {
        assert_eq!(kube.reads(&secret_path("team-a", s)), 1, "{s}");
    }
    // And counted, by kind and outcome (opaque exists: found, though unusable).
    let metrics = adm.metrics.encode();
    for line in [
        r#"tagpin_kube_reads_total{kind="secret",outcome="not_found"} 1"#,
        r#"tagpin_kube_reads_total{kind="secret",outcome="forbidden"} 1"#,
        r#"tagpin_kube_reads_total{kind="secret",outcome="found"} 2"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
}

#[tokio::test]
async fn every_credential_refused_warns_on_mutate_and_denies_on_enforce() {
    let reg = Registry::tls_basic("deployer", "right-pa55");
    let a = &reg.addr;
    reg.pusher().push("private/app", "1", Kind::Oci).await;
    let kube = FakeKube::start();
    kube.put_pull_secret("team-a", "wrong", a, "deployer", "wrong-pa55");
    let mut cfg = reg.resolver_config();
    cfg.cluster = Some(cluster(&kube).await);
    let router = router(admitter(cfg, admission_config()));
    let image = format!("{a}/private/app:1");
    let why = format!(
        "registry {a} refused every credential tried: the credential from pull secret team-a/wrong entry \"{a}\" (401); anonymous access (401)"
    );
    let review = pod_with_secrets("all-1", "team-a", &[&image], &["wrong"]);
    let resp = common::review(&router, "/mutate", &review).await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
    assert_eq!(
        warnings(&resp),
        vec![format!("tagpin: {image} left unpinned: {why}")]
    );

    let review = pod_with_secrets("all-2", "team-a", &[&image], &["wrong"]);
    let resp = common::review(&router, "/enforce", &review).await;
    assert_eq!(resp["allowed"], false);
    assert_eq!(resp["status"]["code"], 403);
    assert_eq!(
        resp["status"]["message"],
        format!("tagpin: denied, 1 image(s) could not be pinned to a digest: {image}: {why}")
    );
    assert!(!resp.to_string().contains("wrong-pa55"));
}

#[tokio::test]
async fn a_digest_resolved_with_one_namespaces_secret_never_answers_another_namespace() {
    let reg = Registry::tls_basic("team-a-bot", "team-a-pa55");
    let a = &reg.addr;
    let d = reg.pusher().push("private/app", "1", Kind::Oci).await;
    let kube = FakeKube::start();
    kube.put_pull_secret("team-a", "regcred", a, "team-a-bot", "team-a-pa55");
    kube.put_pull_secret("team-b", "regcred", a, "team-b-bot", "team-b-pa55");
    let mut cfg = reg.resolver_config();
    cfg.cluster = Some(cluster(&kube).await);
    let router = router(admitter(cfg, admission_config()));
    let image = format!("{a}/private/app:1");

    let review_a = pod_with_secrets("iso-a", "team-a", &[&image], &["regcred"]);
    let resp = common::review(&router, "/mutate", &review_a).await;
    assert_eq!(
        pinned_image(&review_a, &resp),
        format!("{a}/private/app@{d}")
    );

    // Right after, same image, same secret name, other namespace: its own credential is
    // refused, and A's cached digest is not lent to it.
    let review_b = pod_with_secrets("iso-b", "team-b", &[&image], &["regcred"]);
    let resp = common::review(&router, "/mutate", &review_b).await;
    assert!(resp.get("patch").is_none(), "{resp}");
    assert_eq!(
        warnings(&resp),
        vec![format!(
            "tagpin: {image} left unpinned: registry {a} refused every credential tried: the credential from pull secret team-b/regcred entry \"{a}\" (401); anonymous access (401)"
        )]
    );
    // Nor to a pod with no secret at all.
    let review_c = pod_with_secrets("iso-c", "team-b", &[&image], &[]);
    let resp = common::review(&router, "/mutate", &review_c).await;
    assert!(resp.get("patch").is_none(), "{resp}");

    // A itself still hits its cache.
    let before = reg.manifest_requests("private/app", "1");
    let resp = common::review(&router, "/mutate", &review_a).await;
    assert_eq!(
        pinned_image(&review_a, &resp),
        format!("{a}/private/app@{d}")
    );
    assert_eq!(reg.manifest_requests("private/app", "1"), before);
}

/// The pod spec of a Deployment, where the ServiceAccount admission plugin has not copied the
/// service account's pull secrets: tagpin reads the service account.
#[tokio::test]
async fn a_template_without_pull_secrets_uses_its_service_accounts() {
    let reg = Registry::tls_basic("builder-bot", "sa-pa55");
    let a = &reg.addr;
    let d = reg.pusher().push("private/app", "2", Kind::Index).await;
    let kube = FakeKube::start();
    kube.put_service_account("team-a", "builder", &["sa-regcred"]);
    kube.put_pull_secret("team-a", "sa-regcred", a, "builder-bot", "sa-pa55");
    let mut cfg = reg.resolver_config();
    cfg.cluster = Some(cluster(&kube).await);
    let resolver = admitter(cfg, admission_config()).resolver;
    let image = ImageRef::parse(&format!("{a}/private/app:2")).unwrap();
    let deployment = |sa: &str, secrets: &[&str]| {
        let mut spec = json!({"serviceAccountName": sa, "containers": [{"name": "app", "image": image.original()}]});
        if !secrets.is_empty() {
            spec["imagePullSecrets"] = secrets.iter().map(|s| json!({"name": s})).collect();
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "team-a"},
               "spec": {"replicas": 3, "template": {"metadata": {}, "spec": spec}}})
    };
    let gather = |obj: Value| {
        let resolver = resolver.clone();
        let image = image.clone();
        async move {
            let spec = obj.pointer("/spec/template/spec").map(Kept::from_value);
            let req = BatchRequest {
                credentials: CredentialRequest {
                    namespace: Some("team-a"),
                    pod_spec: spec.as_ref(),
                    template: true,
                },
                ..BatchRequest::default()
            };
            let b = resolver
                .resolve_batch(
                    &req,
                    &[image.original()],
                    Budget::from_now(Duration::from_secs(5)),
                )
                .await;
            (b.warnings, outcomes(b.outcomes))
        }
    };
    let (w, out) = gather(deployment("builder", &[])).await;
    assert!(w.is_empty(), "{w:?}");
    assert!(
        matches!(&out[0], Outcome::Pinned(x) if x.to_string() == d),
        "{out:?}"
    );
    assert_eq!(kube.reads(&service_account_path("team-a", "builder")), 1);
    assert_eq!(kube.reads(&secret_path("team-a", "sa-regcred")), 1);

    // A template that names its own pull secrets: the plugin would not add the account's, so
    // the account is not read.
    kube.put_pull_secret("team-a", "own", a, "builder-bot", "sa-pa55");
    let (w, out) = gather(deployment("builder", &["own"])).await;
    assert!(w.is_empty(), "{w:?}");
    assert!(matches!(&out[0], Outcome::Pinned(_)), "{out:?}");
    assert_eq!(kube.reads(&service_account_path("team-a", "builder")), 1);
    assert_eq!(kube.reads(&secret_path("team-a", "own")), 1);

    // A missing service account: a warning, resolution goes on (here: no credential left).
    let (w, out) = gather(deployment("ghost", &[])).await;
    assert_eq!(
        w,
        vec!["tagpin: service account team-a/ghost not found; resolving without its pull secrets"]
    );
    assert!(matches!(&out[0], Outcome::Failed(_)), "{out:?}");
}

#[tokio::test]
async fn a_pod_is_never_looked_up_by_service_account() {
    let reg = Registry::plain();
    let a = &reg.addr;
    reg.pusher().push("public/app", "1", Kind::Oci).await;
    let kube = FakeKube::start();
    let mut cfg = reg.resolver_config();
    cfg.cluster = Some(cluster(&kube).await);
    let router = router(admitter(cfg, admission_config()));
    let mut review = pod_with_secrets("sa-pod", "team-a", &[&format!("{a}/public/app:1")], &[]);
    review["request"]["object"]["spec"]["serviceAccountName"] = json!("builder");
    let resp = common::review(&router, "/mutate", &review).await;
    assert!(resp.get("patch").is_some());
    assert!(warnings(&resp).is_empty(), "{:?}", warnings(&resp));
    assert_eq!(kube.total_reads(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_50_pods_costs_one_secret_read_and_one_lookup() {
    let reg = Registry::tls_basic("deployer", "burst-pa55");
    let a = reg.addr.clone();
    let d = reg.pusher().push("burst/app", "1.0", Kind::Index).await;
    let kube = FakeKube::start();
    kube.put_pull_secret("team-a", "regcred", &a, "deployer", "burst-pa55");
    let mut cfg = reg.resolver_config();
    cfg.cluster = Some(cluster(&kube).await);
    let router = router(admitter(cfg, admission_config()));
    let image = format!("{a}/burst/app:1.0");
    let mut tasks = Vec::new();
    for i in 0..50 {
        let router = router.clone();
        // Pods of one ReplicaSet: generateName, the same spec and pull secret.
        let mut review = pod_with_secrets(&format!("burst-{i}"), "team-a", &[&image], &["regcred"]);
        review["request"]["object"]["metadata"] =
            json!({"generateName": "web-7d4b9c-", "namespace": "team-a"});
        tasks.push(tokio::spawn(async move {
            let resp = common::review(&router, "/mutate", &review).await;
            (pinned_image(&review, &resp), warnings(&resp))
        }));
    }
    for t in tasks {
        let (pinned, w) = t.await.unwrap();
        assert_eq!(pinned, format!("{a}/burst/app@{d}"));
        assert!(w.is_empty(), "{w:?}");
    }
    let api_reads = kube.total_reads();
    let registry_requests = reg.manifest_requests("burst/app", "1.0");
    eprintln!(
        "burst: 50 concurrent pod admissions with a pull secret -> {api_reads} Kubernetes API read(s), {registry_requests} registry request(s)"
    );
    assert_eq!(api_reads, 1);
    // One lookup: HEAD without credentials (the Basic challenge), then HEAD with them.
    assert_eq!(registry_requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_50_from_one_deployment_costs_one_read_per_object() {
    let ts = TokenServer::start(&[("ci-bot", "burst-t0ken", &["burst/app"])]);
    let reg = Registry::token_auth(&ts);
    let a = reg.addr.clone();
    let d = reg
        .pusher_with_token(ts.mint("admin", "burst/app", &["pull", "push"]))
        .push("burst/app", "1.0", Kind::Oci)
        .await;
    let kube = FakeKube::start();
    kube.put_service_account("team-a", "web", &["regcred"]);
    kube.put_pull_secret("team-a", "regcred", &a, "ci-bot", "burst-t0ken");
    let mut cfg = reg.resolver_config();
    cfg.cluster = Some(cluster(&kube).await);
    let resolver = admitter(cfg, admission_config()).resolver;
    let image = ImageRef::parse(&format!("{a}/burst/app:1.0")).unwrap();
    let spec = Kept::from_value(
        &json!({"serviceAccountName": "web", "containers": [{"name": "app", "image": image.original()}]}),
    );
    let tokens_before = ts.requests();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (resolver, image, spec) = (resolver.clone(), image.clone(), spec.clone());
        tasks.push(tokio::spawn(async move {
            let req = BatchRequest {
                credentials: CredentialRequest {
                    namespace: Some("team-a"),
                    pod_spec: Some(&spec),
                    template: true,
                },
                ..BatchRequest::default()
            };
            let b = resolver
                .resolve_batch(
                    &req,
                    &[image.original()],
                    Budget::from_now(Duration::from_secs(5)),
                )
                .await;
            (b.warnings, outcomes(b.outcomes))
        }));
    }
    for t in tasks {
        let (w, out) = t.await.unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert!(
            matches!(&out[0], Outcome::Pinned(x) if x.to_string() == d),
            "{out:?}"
        );
    }
    let api_reads = kube.total_reads();
    let registry_requests = reg.manifest_requests("burst/app", "1.0");
    let token_requests = ts.requests() - tokens_before;
    eprintln!(
        "burst: 50 concurrent Deployment-template resolutions -> {api_reads} Kubernetes API reads (1 ServiceAccount + 1 Secret), {registry_requests} manifest requests + {token_requests} token request(s)"
    );
    assert_eq!(kube.reads(&service_account_path("team-a", "web")), 1);
    assert_eq!(kube.reads(&secret_path("team-a", "regcred")), 1);
    assert_eq!(api_reads, 2);
    // HEAD 401 with the Bearer challenge, one token, HEAD with the token.
    assert_eq!(registry_requests, 2);
    assert_eq!(token_requests, 1);
}

#[tokio::test]
async fn a_hung_api_read_is_bounded_by_the_kube_timeout_and_the_rest_resolves() {
    let reg = Registry::tls_basic("deployer", "hang-pa55");
    let a = &reg.addr;
    let d = reg.pusher().push("private/app", "1", Kind::Oci).await;
    let kube = FakeKube::start();
    kube.hang(&secret_path("team-a", "slow"));
    kube.put_pull_secret("team-a", "regcred", a, "deployer", "hang-pa55");
    let mut cfg = reg.resolver_config();
    let opts = ClusterOptions {
        timeout: Duration::from_millis(300),
        ..ClusterOptions::default()
    };
    cfg.cluster = Some(
        Cluster::from_kubeconfig(&kube.kubeconfig(), opts, common::metrics())
            .await
            .unwrap(),
    );
    let router = router(admitter(cfg, admission_config()));
    let image = format!("{a}/private/app:1");
    let review = pod_with_secrets("hang-1", "team-a", &[&image], &["slow", "regcred"]);
    let resp = common::review(&router, "/mutate", &review).await;
    assert_eq!(pinned_image(&review, &resp), format!("{a}/private/app@{d}"));
    assert_eq!(
        warnings(&resp),
        vec!["tagpin: reading pull secret team-a/slow failed: timed out after 300ms; resolving without it"]
    );
    // A timeout is not cached: the next admission asks again.
    let review = pod_with_secrets("hang-2", "team-a", &[&image], &["slow", "regcred"]);
    common::review(&router, "/mutate", &review).await;
    assert_eq!(kube.reads(&secret_path("team-a", "slow")), 2);
    assert_eq!(kube.reads(&secret_path("team-a", "regcred")), 1);
}

/// A Deployment AdmissionReview through the webhook: its template names no pull secrets, so its
/// service account's are read and used; the template is pinned and recorded.
#[tokio::test]
async fn a_deployment_review_is_pinned_with_its_service_accounts_secret() {
    let reg = Registry::tls_basic("deploy-bot", "d3ploy-pa55");
    let a = reg.addr.clone();
    let p = reg.pusher();
    let d_app = p.push("private/app", "v3", Kind::Oci).await;
    let d_web = p.push("private/web", "1.27", Kind::Index).await;
    let kube = FakeKube::start();
    kube.put_service_account("team-a", "web", &["regcred"]);
    kube.put_pull_secret("team-a", "regcred", &a, "deploy-bot", "d3ploy-pa55");
    let mut cfg = reg.resolver_config();
    cfg.cluster = Some(cluster(&kube).await);
    let router = router(admitter(cfg, admission_config()));
    let (app, web) = (
        format!("{a}/private/app:v3"),
        format!("{a}/private/web:1.27"),
    );
    let mut review = fixture("deployment-create.json", &[&app, &web]);
    review["request"]["object"]["spec"]["template"]["spec"]["serviceAccountName"] = json!("web");
    let resp = common::review(&router, "/mutate", &review).await;
    assert!(warnings(&resp).is_empty(), "{:?}", warnings(&resp));
    let out = apply(&review, &resp);
    let spec = &out["spec"]["template"]["spec"];
    assert_eq!(
        spec["initContainers"][0]["image"],
        format!("{a}/private/app@{d_app}")
    );
    assert_eq!(
        spec["containers"][0]["image"],
        format!("{a}/private/web@{d_web}")
    );
    assert!(out["spec"]["template"]["metadata"]["annotations"]["tagpin.io/pinned"].is_string());
    assert_eq!(kube.reads(&service_account_path("team-a", "web")), 1);
    assert_eq!(kube.reads(&secret_path("team-a", "regcred")), 1);

    // Without the service account: both images left unpinned, the warning names the account.
    let mut other = review.clone();
    other["request"]["object"]["spec"]["template"]["spec"]["serviceAccountName"] = json!("ghost");
    other["request"]["uid"] = json!("ghost-1");
    let resp = common::review(&router, "/mutate", &other).await;
    assert!(resp.get("patch").is_none(), "{resp}");
    let w = warnings(&resp);
    assert_eq!(
        w[0],
        "tagpin: service account team-a/ghost not found; resolving without its pull secrets"
    );
    assert_eq!(w.len(), 3, "{w:?}");
}
