//! Kubelet credential-provider plugins, end to end: a real plugin process (a bash script speaking
//! the real JSON, `common::plugin`) gives the credentials for real `docker-registry`s with
//! htpasswd over HTTPS.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::plugin::{auth, Plugins, Provider};
use common::*;
use tagpin::resolve::provider::Providers;

const USER: &str = "plugin-bot";
const PASSWORD: &str = "plugin-pa55";

fn ca_bundle(regs: &[&Registry]) -> Vec<u8> {
    regs.iter()
        .map(|r| r.tls.as_ref().unwrap().ca_pem.clone())
        .collect::<String>()
        .into_bytes()
}

#[tokio::test]
async fn plugin_answers_are_cached_per_cache_key_type() {
    let r1 = Registry::tls_basic(USER, PASSWORD);
    let r2 = Registry::tls_basic(USER, PASSWORD);
    let (a1, a2) = (r1.addr.clone(), r2.addr.clone());
    let d_app = r1.pusher().push("private/app", "1", Kind::Oci).await;
    let d_other = r1.pusher().push("private/other", "1", Kind::Oci).await;
    let d_r2 = r2.pusher().push("private/app", "1", Kind::Oci).await;
    // Two repositories on one registry, one on another, then the first again.
    let admissions = [
        (
            format!("{a1}/private/app:1"),
            format!("{a1}/private/app@{d_app}"),
        ),
        (
            format!("{a1}/private/other:1"),
            format!("{a1}/private/other@{d_other}"),
        ),
        (
            format!("{a2}/private/app:1"),
            format!("{a2}/private/app@{d_r2}"),
        ),
        (
            format!("{a1}/private/app:1"),
            format!("{a1}/private/app@{d_app}"),
        ),
    ];
    let plugins = Plugins::new();
    for (key_type, duration, expected_runs) in [
        ("Image", "", 3),
        ("Registry", "", 2),
        ("Global", "", 1),
        // cacheDuration 0: never cached, one run per admission.
        ("Image", "0s", 4),
    ] {
        let name = format!("tp-{}{}", key_type.to_lowercase(), duration);
        let config = plugins.config(&[Provider {
            name: &name,
            match_images: vec![a1.clone(), a2.clone()],
            mode: "ok",
            cache_key_type: key_type,
            cache_duration: duration,
            default_cache_duration: "10m",
            auth: auth(&[&a1, &a2], USER, PASSWORD),
        }]);
        let mut cfg = r1.resolver_config();
        cfg.registry.extra_ca_pem = Some(ca_bundle(&[&r1, &r2]));
        cfg.providers = Some(Arc::new(
            Providers::load(
                &config,
                &plugins.bin_dir(),
                Duration::from_secs(10),
                common::metrics(),
            )
            .unwrap(),
        ));
        let router = router(admitter(cfg, admission_config()));
        for (i, (image, pinned)) in admissions.iter().enumerate() {
            let review = pod_review(&format!("{name}-{i}"), &[image]);
            let resp = common::review(&router, "/mutate", &review).await;
            assert!(warnings(&resp).is_empty(), "{name}: {:?}", warnings(&resp));
            assert_eq!(
                apply(&review, &resp)["spec"]["containers"][0]["image"],
                *pinned,
                "{name}"
            );
        }
        let runs = plugins.requests(&name);
        eprintln!("plugin cacheKeyType={key_type} cacheDuration={duration:?}: 4 admissions (3 images, 2 registries) -> {} run(s)", runs.len());
        assert_eq!(runs.len(), expected_runs, "{name}: {runs:?}");
        // The request is the kubelet's: the image without its tag.
        assert_eq!(
            runs[0],
            format!(
                "{{\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"kind\":\"CredentialProviderRequest\",\"image\":\"{a1}/private/app\"}}"
            )
        );
    }
}

#[tokio::test]
async fn a_plugin_that_hangs_fails_or_answers_garbage_is_skipped_with_a_warning() {
    let reg = Registry::tls_basic(USER, PASSWORD);
    let a = reg.addr.clone();
    let d = reg.pusher().push("private/app", "1", Kind::Oci).await;
    let plugins = Plugins::new();
    let provider = |name, mode| Provider {
        name,
        match_images: vec![a.clone()],
        mode,
        cache_key_type: "Global",
        cache_duration: "",
        default_cache_duration: "10m",
        auth: auth(&[&a], USER, PASSWORD),
    };
    let config = plugins.config(&[
        provider("slow", "slow"),
        provider("badjson", "badjson"),
        provider("fail", "fail"),
    ]);
    let mut cfg = reg.resolver_config();
    // The static docker config is the source that still works.
    cfg.docker_config = tagpin::resolve::credentials::CredentialSet::from_docker_config_file(
        &reg.docker_config(PASSWORD),
    )
    .unwrap();
    cfg.providers = Some(Arc::new(
        Providers::load(
            &config,
            &plugins.bin_dir(),
            Duration::from_secs(1),
            common::metrics(),
        )
        .unwrap(),
    ));
    let adm = admitter(cfg, admission_config());
    let router = router(adm.clone());
    let image = format!("{a}/private/app:1");
    let review = pod_review("plugins-fail", &[&image]);
    let resp = common::review(&router, "/mutate", &review).await;
    assert_eq!(
        apply(&review, &resp)["spec"]["containers"][0]["image"],
        format!("{a}/private/app@{d}")
    );
    let w = warnings(&resp);
    assert_eq!(w.len(), 3, "{w:?}");
    assert_eq!(
        w[0],
        format!("tagpin: credential provider \"slow\" timed out after 1s for {a}/private/app; resolving without it")
    );
    assert!(
        w[1].starts_with(&format!("tagpin: credential provider \"badjson\" gave a bad answer for {a}/private/app: not a CredentialProviderResponse JSON (")),
        "{w:?}"
    );
    assert_eq!(
        w[2],
        format!("tagpin: credential provider \"fail\" exited with exit status: 3 for {a}/private/app: provider failed on purpose; resolving without it")
    );
    for name in ["slow", "badjson", "fail"] {
        assert_eq!(plugins.requests(name).len(), 1, "{name}");
    }
    // Each failure is counted by provider and outcome.
    let metrics = adm.metrics.encode();
    for line in [
        r#"tagpin_credential_plugin_runs_total{provider="slow",outcome="timeout"} 1"#,
        r#"tagpin_credential_plugin_runs_total{provider="badjson",outcome="bad_response"} 1"#,
        r#"tagpin_credential_plugin_runs_total{provider="fail",outcome="exit"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
}

#[tokio::test]
async fn resolve_command_takes_the_provider_flags() {
    let reg = Registry::tls_basic(USER, PASSWORD);
    let a = reg.addr.clone();
    let d = reg.pusher().push("private/app", "1", Kind::Oci).await;
    let plugins = Plugins::new();
    let config = plugins.config(&[Provider {
        name: "cli",
        match_images: vec![a.clone()],
        mode: "ok",
        cache_key_type: "Registry",
        cache_duration: "",
        default_cache_duration: "1m",
        auth: auth(&[&a], USER, PASSWORD),
    }]);
    let ca = plugins.path().join("ca.pem");
    std::fs::write(&ca, &reg.tls.as_ref().unwrap().ca_pem).unwrap();
    let image = format!("{a}/private/app:1");
    let out = Command::new(env!("CARGO_BIN_EXE_tagpin"))
        .args(["resolve", "--registry-ca", ca.to_str().unwrap()])
        .args([
            "--image-credential-provider-config",
            config.to_str().unwrap(),
        ])
        .args([
            "--image-credential-provider-bin-dir",
            plugins.bin_dir().to_str().unwrap(),
        ])
        .arg(&image)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{image} {a}/private/app@{d}\n")
    );
    assert_eq!(plugins.requests("cli").len(), 1);
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    // A config that is not one names the file and exits 1 before any lookup.
    let bad = plugins.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: Pod\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tagpin"))
        .args(["resolve", "--registry-ca", ca.to_str().unwrap()])
        .env("TAGPIN_IMAGE_CREDENTIAL_PROVIDER_CONFIG", &bad)
        .env(
            "TAGPIN_IMAGE_CREDENTIAL_PROVIDER_BIN_DIR",
            plugins.bin_dir(),
        )
        .arg(&image)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "--image-credential-provider-config {} is not a CredentialProviderConfig: apiVersion \"v1\"",
            bad.display()
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_50_admissions_runs_the_plugin_once() {
    let reg = Registry::tls_basic(USER, PASSWORD);
    let a = reg.addr.clone();
    let d = reg.pusher().push("burst/app", "1", Kind::Oci).await;
    let plugins = Plugins::new();
    let config = plugins.config(&[Provider {
        name: "burst",
        match_images: vec![a.clone()],
        mode: "ok",
        cache_key_type: "Image",
        cache_duration: "5m",
        default_cache_duration: "1m",
        auth: auth(&[&a], USER, PASSWORD),
    }]);
    let mut cfg = reg.resolver_config();
    cfg.providers = Some(Arc::new(
        Providers::load(
            &config,
            &plugins.bin_dir(),
            Duration::from_secs(10),
            common::metrics(),
        )
        .unwrap(),
    ));
    let router = router(admitter(cfg, admission_config()));
    let image = format!("{a}/burst/app:1");
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (router, review) = (router.clone(), pod_review(&format!("pb-{i}"), &[&image]));
        tasks.push(tokio::spawn(async move {
            let resp = common::review(&router, "/mutate", &review).await;
            apply(&review, &resp)["spec"]["containers"][0]["image"].clone()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), format!("{a}/burst/app@{d}"));
    }
    let runs = plugins.requests("burst").len();
    let lookups = reg.manifest_requests("burst/app", "1");
    eprintln!("plugin burst: 50 concurrent admissions -> {runs} plugin run(s), {lookups} registry request(s)");
    assert_eq!(runs, 1);
    assert_eq!(lookups, 2);
}

/// Every source refused: the warning lists what was tried, in the kubelet's order — pull
/// secret, plugin, docker config, anonymous.
#[tokio::test]
async fn sources_are_tried_in_the_kubelets_order() {
    let reg = Registry::tls_basic(USER, PASSWORD);
    let a = reg.addr.clone();
    reg.pusher().push("private/app", "1", Kind::Oci).await;
    let kube = common::fake_kube::FakeKube::start();
    kube.put_pull_secret("team-a", "regcred", &a, USER, "wrong-1");
    let plugins = Plugins::new();
    let config = plugins.config(&[Provider {
        name: "order",
        match_images: vec![a.clone()],
        mode: "ok",
        cache_key_type: "Global",
        cache_duration: "",
        default_cache_duration: "1m",
        auth: auth(&[&a], USER, "wrong-2"),
    }]);
    let mut cfg = reg.resolver_config();
    cfg.docker_config = tagpin::resolve::credentials::CredentialSet::from_docker_config_file(
        &reg.docker_config("wrong-3"),
    )
    .unwrap();
    cfg.providers = Some(Arc::new(
        Providers::load(
            &config,
            &plugins.bin_dir(),
            Duration::from_secs(10),
            common::metrics(),
        )
        .unwrap(),
    ));
    cfg.cluster = Some(
        tagpin::cluster::Cluster::from_kubeconfig(
            &kube.kubeconfig(),
            Default::default(),
            common::metrics(),
        )
        .await
        .unwrap(),
    );
    let router = router(admitter(cfg, admission_config()));
    let image = format!("{a}/private/app:1");
    let mut review = pod_review("order", &[&image]);
    review["request"]["object"]["spec"]["imagePullSecrets"] =
        serde_json::json!([{"name": "regcred"}]);
    let resp = common::review(&router, "/mutate", &review).await;
    assert!(resp.get("patch").is_none(), "{resp}");
    let docker_config = reg.docker_config("wrong-3");
    // Longer than the API server keeps (256 bytes): split into pieces, in order.
    assert_eq!(
        warnings(&resp),
        tagpin::admission::split_warning(&format!(
            "tagpin: {image} left unpinned: registry {a} refused every credential tried: \
             the credential from pull secret team-a/regcred entry \"{a}\" (401); \
             the credential from credential provider \"order\" entry \"{a}\" (401); \
             the credential from {} entry \"https://{a}\" (401); anonymous access (401)",
            docker_config.display()
        ))
    );
}
