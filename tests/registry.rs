//! Admission end to end against a real registry (Debian's `docker-registry`), through the axum
//! router (no socket, no TLS on our side). Every patch is applied to the original object and the
//! result compared: only image fields change, each to the digest of the bytes we pushed, plus the
//! `tagpin.io/pinned` record.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn set(v: &mut Value, ptr: &str, to: &str) {
    *v.pointer_mut(ptr).unwrap() = json!(to);
}

#[tokio::test]
async fn pins_every_pod_spec_path_to_the_pushed_digest() {
    let reg = Registry::plain();
    let p = reg.pusher();
    let a = &reg.addr;
    let d_docker = p.push("legacy/app", "2.0", Kind::Docker).await;
    let d_oci = p.push("team/app/web", "v1.2.3-rc_1", Kind::Oci).await;
    let d_index = p.push("multi", "1", Kind::Index).await;
    let d_latest = p.push("models", "latest", Kind::Oci).await;
    let images = [
        format!("{a}/legacy/app:2.0"),
        format!("{a}/team/app/web:v1.2.3-rc_1"),
        format!("{a}/multi:1"),
        format!("{a}/models"),
    ];
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();
    let review = fixture("pod-create.json", &refs);
    let router = router(admitter(reg.resolver_config(), admission_config()));
    let resp = common::review(&router, "/mutate", &review).await;
    assert_eq!(resp["allowed"], true);
    assert!(warnings(&resp).is_empty(), "{:?}", warnings(&resp));

    let mut expected = review["request"]["object"].clone();
    set(
        &mut expected,
        "/spec/initContainers/0/image",
        &format!("{a}/legacy/app@{d_docker}"),
    );
    set(
        &mut expected,
        "/spec/containers/0/image",
        &format!("{a}/team/app/web@{d_oci}"),
    );
    set(
        &mut expected,
        "/spec/containers/1/image",
        &format!("{a}/multi@{d_index}"),
    );
    set(
        &mut expected,
        "/spec/volumes/1/image/reference",
        &format!("{a}/models@{d_latest}"),
    );
    // The record: site key → image as written, keys sorted, compact JSON.
    let record = std::collections::BTreeMap::from([
        ("init/migrate", format!("{a}/legacy/app:2.0")),
        ("web", format!("{a}/team/app/web:v1.2.3-rc_1")),
        ("sidecar", format!("{a}/multi:1")),
        ("volume/models", format!("{a}/models")),
    ]);
    expected["metadata"]["annotations"] =
        json!({"tagpin.io/pinned": serde_json::to_string(&record).unwrap()});
    assert_eq!(apply(&review, &resp), expected);
    // The patch is exactly one replace per image, then the record.
    let ops = serde_json::to_value(patch_of(&resp).unwrap()).unwrap();
    let ops = ops.as_array().unwrap();
    assert_eq!(ops.len(), 5);
    assert!(ops[..4].iter().all(|o| o["op"] == "replace"));
    assert_eq!(ops[4]["op"], "add");
    assert_eq!(ops[4]["path"], "/metadata/annotations");

    // The multi-platform tag resolves to the index, not a platform manifest.
    let amd64 = reg.log_text().contains("multi/manifests/1-amd64");
    assert!(amd64, "platform manifests were pushed");
    assert_ne!(d_index, d_oci);

    // --keep-tag
    let mut cfg = admission_config();
    cfg.keep_tag = true;
    let router = common::router(admitter(reg.resolver_config(), cfg));
    let resp = common::review(&router, "/mutate", &review).await;
    let obj = apply(&review, &resp);
    assert_eq!(
        obj["spec"]["containers"][0]["image"],
        format!("{a}/team/app/web:v1.2.3-rc_1@{d_oci}")
    );
    assert_eq!(
        obj["spec"]["volumes"][1]["image"]["reference"],
        format!("{a}/models:latest@{d_latest}")
    );
}

#[tokio::test]
async fn digests_skip_prefixes_and_duplicates_cost_one_request() {
    let reg = Registry::plain();
    let a = &reg.addr;
    let d = reg.pusher().push("app", "1", Kind::Oci).await;
    let mut cfg = reg.resolver_config();
    cfg.skip_prefixes.push(format!("{a}/skipped"));
    let router = router(admitter(cfg, admission_config()));
    let pinned = format!("{a}/other@{d}");
    let review = pod_review(
        "dup",
        &[
            &format!("{a}/app:1"),
            &format!("{a}/app:1"),
            &pinned,
            &format!("{a}/skipped/x:1"),
        ],
    );
    let resp = common::review(&router, "/mutate", &review).await;
    let obj = apply(&review, &resp);
    assert_eq!(
        obj["spec"]["containers"][0]["image"],
        format!("{a}/app@{d}")
    );
    assert_eq!(
        obj["spec"]["containers"][1]["image"],
        format!("{a}/app@{d}")
    );
    assert_eq!(obj["spec"]["containers"][2]["image"], pinned);
    assert_eq!(
        obj["spec"]["containers"][3]["image"],
        format!("{a}/skipped/x:1")
    );
    assert_eq!(
        reg.manifest_requests("app", "1"),
        1,
        "duplicate image resolved once"
    );
    assert_eq!(
        reg.count("/v2/other/"),
        0,
        "a digest is never sent to a registry"
    );
    assert_eq!(
        reg.count("/v2/skipped/"),
        0,
        "a skipped prefix is never sent to a registry"
    );

    // A pod whose every image is pinned already gets no patch at all.
    let review = pod_review("all-pinned", &[&pinned]);
    let resp = common::review(&router, "/mutate", &review).await;
    assert!(resp.get("patch").is_none());
    assert_eq!(resp["allowed"], true);
}

#[tokio::test]
async fn ephemeral_container_update_pins_only_the_new_container() {
    let reg = Registry::plain();
    let a = &reg.addr;
    reg.pusher().push("web", "1", Kind::Oci).await;
    let d_dbg = reg.pusher().push("debug", "1.36", Kind::Docker).await;
    let web = format!("{a}/web:1");
    let dbg = format!("{a}/debug:1.36");
    // Placeholders in document order: object web, object debugger, oldObject web.
    let review = fixture("pod-ephemeral-update.json", &[&web, &dbg, &web]);
    let router = router(admitter(reg.resolver_config(), admission_config()));
    let resp = common::review(&router, "/mutate", &review).await;
    let mut expected = review["request"]["object"].clone();
    set(
        &mut expected,
        "/spec/ephemeralContainers/0/image",
        &format!("{a}/debug@{d_dbg}"),
    );
    assert_eq!(apply(&review, &resp), expected);
    assert_eq!(
        reg.manifest_requests("web", "1"),
        0,
        "unchanged container not looked up"
    );
}

#[tokio::test]
async fn moved_tag_is_seen_after_the_ttl_and_not_before() {
    let reg = Registry::plain();
    let a = &reg.addr;
    let p = reg.pusher();
    let first = p.push("app", "v1", Kind::Oci).await;
    let mut cfg = reg.resolver_config();
    cfg.cache_ttl = Duration::from_secs(2);
    let router = router(admitter(cfg, admission_config()));
    let image = format!("{a}/app:v1");
    let pinned = |resp: &Value, review: &Value| {
        apply(review, resp)["spec"]["containers"][0]["image"].clone()
    };

    let review = pod_review("m1", &[&image]);
    let resp = common::review(&router, "/mutate", &review).await;
    assert_eq!(pinned(&resp, &review), format!("{a}/app@{first}"));
    let requests_after_first = reg.manifest_requests("app", "v1");
    assert_eq!(requests_after_first, 1);

    let second = p.push("app", "v1", Kind::Oci).await;
    assert_ne!(first, second, "the tag moved");
    let started = Instant::now();
    let resp = common::review(&router, "/mutate", &review).await;
    assert_eq!(
        pinned(&resp, &review),
        format!("{a}/app@{first}"),
        "within the TTL: cached digest"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "test premise: still within the TTL"
    );
    assert_eq!(
        reg.manifest_requests("app", "v1"),
        requests_after_first,
        "no new registry request within the TTL"
    );

    tokio::time::sleep(Duration::from_millis(2300)).await;
    let resp = common::review(&router, "/mutate", &review).await;
    assert_eq!(
        pinned(&resp, &review),
        format!("{a}/app@{second}"),
        "after the TTL: the moved tag"
    );
    assert_eq!(reg.manifest_requests("app", "v1"), requests_after_first + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_admissions_of_one_uncached_image_cost_one_request() {
    let reg = Registry::plain();
    let a = &reg.addr;
    let d = reg.pusher().push("burst/app", "1.0", Kind::Index).await;
    let adm = admitter(reg.resolver_config(), admission_config());
    let metrics = adm.metrics.clone();
    let router = router(adm);
    let image = format!("{a}/burst/app:1.0");
    let mut tasks = Vec::new();
    for i in 0..50 {
        let router = router.clone();
        let review = pod_review(&format!("burst-{i}"), &[&image]);
        tasks.push(tokio::spawn(async move {
            let resp = common::review(&router, "/mutate", &review).await;
            apply(&review, &resp)["spec"]["containers"][0]["image"].clone()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), format!("{a}/burst/app@{d}"));
    }
    let requests = reg.manifest_requests("burst/app", "1.0");
    eprintln!(
        "coalescing: 50 concurrent admissions -> {requests} manifest request(s) at the registry"
    );
    assert_eq!(requests, 1);
    let text = metrics.encode();
    assert!(
        text.contains("tagpin_admissions_total{path=\"mutate\",outcome=\"pinned\"} 50"),
        "{text}"
    );
}

#[tokio::test]
async fn missing_manifest_warns_on_mutate_and_denies_on_enforce() {
    let reg = Registry::plain();
    let a = &reg.addr;
    let d = reg.pusher().push("exists", "1", Kind::Oci).await;
    let router = router(admitter(reg.resolver_config(), admission_config()));
    let missing = format!("{a}/exists:nope");
    let review = pod_review("nf", &[&format!("{a}/exists:1"), &missing]);
    let resp = common::review(&router, "/mutate", &review).await;
    assert_eq!(resp["allowed"], true);
    let obj = apply(&review, &resp);
    assert_eq!(
        obj["spec"]["containers"][0]["image"],
        format!("{a}/exists@{d}")
    );
    assert_eq!(obj["spec"]["containers"][1]["image"], missing.as_str());
    assert_eq!(
        warnings(&resp),
        vec![format!("tagpin: {missing} left unpinned: manifest not found (404) in {a}: check the image name and tag")]
    );

    let resp = common::review(&router, "/enforce", &review).await;
    assert_eq!(resp["allowed"], false);
    assert!(resp.get("patch").is_none());
    assert_eq!(resp["status"]["code"], 403);
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(msg.contains(&missing) && msg.contains("404"), "{msg}");
    assert!(
        !msg.contains(&format!("{a}/exists:1")),
        "a pinnable image is not named: {msg}"
    );

    // Enforce admits a pod whose images all pin, with the patch.
    let ok = pod_review("ok", &[&format!("{a}/exists:1")]);
    let resp = common::review(&router, "/enforce", &ok).await;
    assert_eq!(resp["allowed"], true);
    assert_eq!(
        apply(&ok, &resp)["spec"]["containers"][0]["image"],
        format!("{a}/exists@{d}")
    );
}

#[tokio::test]
async fn stopped_registry_leaves_images_unpinned_and_the_breaker_opens() {
    let mut reg = Registry::plain();
    let a = reg.addr.clone();
    let mut cfg = reg.resolver_config();
    cfg.breaker_threshold = 2;
    cfg.breaker_cooldown = Duration::from_secs(60);
    let router = router(admitter(cfg, admission_config()));
    reg.stop();
    for (i, expect) in [
        (0, "cannot connect to registry"),
        (1, "cannot connect to registry"),
        (2, "circuit breaker open for registry"),
        (3, "circuit breaker open for registry"),
    ] {
        let image = format!("{a}/app:{i}");
        let review = pod_review(&format!("down-{i}"), &[&image]);
        let resp = common::review(&router, "/mutate", &review).await;
        assert_eq!(resp["allowed"], true);
        assert!(resp.get("patch").is_none());
        let w = warnings(&resp);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with(&format!("tagpin: {image} left unpinned: {expect}")),
            "{w:?}"
        );
        if i < 2 {
            assert_eq!(
                w[0],
                // A short cause, never the transport's raw text.
                format!("tagpin: {image} left unpinned: cannot connect to registry {a}: connection refused")
            );
        }
    }
}

#[tokio::test]
async fn hung_registry_is_answered_within_the_deadline_and_the_lookup_fills_the_cache_later() {
    let (addr, held) = hung_registry();
    let mut cfg = tagpin::resolve::ResolverConfig::default();
    cfg.registry.insecure.push(addr.clone());
    cfg.lookup_timeout = Duration::from_secs(30);
    cfg.registry.request_timeout = Duration::from_secs(30);
    let mut adm = admission_config();
    adm.resolve_timeout = Duration::from_secs(1);
    let router = router(admitter(cfg, adm));
    let image = format!("{addr}/app:1");
    let review = pod_review("hung", &[&image]);
    let started = Instant::now();
    let resp = common::review(&router, "/mutate", &review).await;
    let took = started.elapsed();
    eprintln!("hung registry: answered after {took:?} with a 1s deadline");
    // Not a performance assertion: without the deadline this would take the 30 s lookup timeout.
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert_eq!(resp["allowed"], true);
    assert_eq!(
        warnings(&resp),
        vec![format!(
            "tagpin: {image} left unpinned: registry {addr} timed out after 1s"
        )]
    );
    assert!(
        !held.lock().unwrap().is_empty(),
        "the lookup did reach the hung registry"
    );
}

#[tokio::test]
async fn stale_on_error_uses_the_last_known_digest_and_can_be_turned_off() {
    let mut reg = Registry::plain();
    let a = reg.addr.clone();
    let d = reg.pusher().push("app", "1", Kind::Oci).await;
    let mut cfg = reg.resolver_config();
    cfg.cache_ttl = Duration::from_millis(300);
    let adm = admitter(cfg.clone(), admission_config());
    let router = router(adm);
    let image = format!("{a}/app:1");
    let review = pod_review("s1", &[&image]);
    let resp = common::review(&router, "/mutate", &review).await;
    assert!(warnings(&resp).is_empty());
    reg.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = common::review(&router, "/mutate", &review).await;
    assert_eq!(
        apply(&review, &resp)["spec"]["containers"][0]["image"],
        format!("{a}/app@{d}")
    );
    let w = warnings(&resp);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with(&format!(
            "tagpin: {image} pinned to its last known digest {d}: cannot connect to registry {a}"
        )),
        "{w:?}"
    );
    // /enforce never admits on a stale digest.
    let resp = common::review(&router, "/enforce", &review).await;
    assert_eq!(resp["allowed"], false);

    // Turned off: unpinned with a warning.
    let mut reg2 = Registry::plain();
    let a2 = reg2.addr.clone();
    reg2.pusher().push("app", "1", Kind::Oci).await;
    let mut cfg = reg2.resolver_config();
    cfg.cache_ttl = Duration::from_millis(300);
    cfg.stale_ttl = None;
    let mut adm = admission_config();
    adm.stale_on_error = false;
    let router = common::router(admitter(cfg, adm));
    let image = format!("{a2}/app:1");
    let review = pod_review("s2", &[&image]);
    common::review(&router, "/mutate", &review).await;
    reg2.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = common::review(&router, "/mutate", &review).await;
    assert!(resp.get("patch").is_none());
    assert!(
        warnings(&resp)[0].contains("left unpinned: cannot connect"),
        "{:?}",
        warnings(&resp)
    );
}

#[tokio::test]
async fn https_registry_with_basic_auth_uses_docker_config_credentials() {
    let reg = Registry::tls_basic("ci-bot", "s3cret-pa55");
    let a = &reg.addr;
    let d = reg.pusher().push("private/app", "1", Kind::Docker).await;
    let image = format!("{a}/private/app:1");
    let review = pod_review("auth", &[&image]);

    // Right password: pinned.
    let mut cfg = reg.resolver_config();
    cfg.docker_config = tagpin::resolve::credentials::CredentialSet::from_docker_config_file(
        &reg.docker_config("s3cret-pa55"),
    )
    .unwrap();
    let router = router(admitter(cfg, admission_config()));
    let resp = common::review(&router, "/mutate", &review).await;
    assert_eq!(
        apply(&review, &resp)["spec"]["containers"][0]["image"],
        format!("{a}/private/app@{d}")
    );
    assert!(warnings(&resp).is_empty(), "{:?}", warnings(&resp));

    // Wrong password: the chain falls through to anonymous, which is refused too.
    let mut cfg = reg.resolver_config();
    cfg.docker_config = tagpin::resolve::credentials::CredentialSet::from_docker_config_file(
        &reg.docker_config("wrong"),
    )
    .unwrap();
    let router = common::router(admitter(cfg, admission_config()));
    let resp = common::review(&router, "/mutate", &review).await;
    assert!(resp.get("patch").is_none());
    // One warning, longer than 256 bytes: split into pieces (admission::split_warning).
    let w = [warnings(&resp)
        .iter()
        .map(|p| p.trim_start_matches("... ").trim_end_matches("..."))
        .collect::<String>()];
    assert!(
        w[0].contains(&format!(
            "left unpinned: registry {a} refused every credential tried: the credential from "
        )) && w[0].contains("(401); anonymous access (401)"),
        "{w:?}"
    );
    assert!(!w[0].contains("wrong"), "no secret in warnings: {w:?}");

    // No CA: a TLS error that says what to do.
    let mut cfg = reg.resolver_config();
    cfg.registry.extra_ca_pem = None;
    let router = common::router(admitter(cfg, admission_config()));
    let resp = common::review(&router, "/mutate", &review).await;
    let w = warnings(&resp);
    assert!(
        w[0].contains("TLS with registry") && w[0].contains("--registry-ca"),
        "{w:?}"
    );
}

#[tokio::test]
async fn dry_run_other_kinds_and_operations() {
    let reg = Registry::plain();
    let a = &reg.addr;
    let d = reg.pusher().push("app", "1", Kind::Oci).await;
    let router = router(admitter(reg.resolver_config(), admission_config()));
    let image = format!("{a}/app:1");

    let mut review = pod_review("dry", &[&image]);
    review["request"]["dryRun"] = json!(true);
    let resp = common::review(&router, "/mutate", &review).await;
    assert_eq!(
        apply(&review, &resp)["spec"]["containers"][0]["image"],
        format!("{a}/app@{d}")
    );

    let mut review = pod_review("del", &[&image]);
    review["request"]["operation"] = json!("DELETE");
    let resp = common::review(&router, "/mutate", &review).await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());

    let mut review = pod_review("cm", &[&image]);
    review["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    let resp = common::review(&router, "/enforce", &review).await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
}
