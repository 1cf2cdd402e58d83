//! The `tagpin` binary itself: HTTPS serving, certificate reload on a Secret-volume style symlink
//! swap, body limits, metrics, SIGTERM drain, and `tagpin resolve`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::post_over_http as post;
use common::*;

fn client(trust: Option<&str>) -> reqwest::Client {
    init();
    let b = reqwest::Client::builder().tls_info(true);
    let b = match trust {
        Some(pem) => b.tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()]),
        None => b.tls_danger_accept_invalid_certs(true),
    };
    b.build().unwrap()
}

#[tokio::test]
async fn serves_https_with_a_generated_certificate_limits_bodies_and_exports_metrics() {
    let reg = Registry::plain();
    let a = reg.addr.clone();
    let d = reg.pusher().push("app", "1", Kind::Oci).await;
    let tp = Tagpin::spawn(&["--insecure-registry", &a]);
    assert!(tp.log().contains("self-signed certificate"), "{}", tp.log());
    let c = client(None);
    let base = format!("https://{}", tp.https);

    let review = pod_review("bin-1", &[&format!("{a}/app:1")]);
    let (status, out) = post(
        &c,
        &format!("{base}/mutate"),
        serde_json::to_vec(&review).unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        apply(&review, &out["response"])["spec"]["containers"][0]["image"],
        format!("{a}/app@{d}")
    );

    // The API server's form of the URL (`?timeout=`) is a review too; what is not a review POST
    // gets the router's answers.
    let (status, out) = post(
        &c,
        &format!("{base}/enforce?timeout=10s"),
        // Already a digest: no lookup, so the counts below stay those of the reviews above.
        serde_json::to_vec(&pod_review("bin-2", &[&format!("{a}/app@{d}")])).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["response"]["uid"], "bin-2");
    assert_eq!(out["response"]["allowed"], true);
    let (status, _) = post(&c, &format!("{base}/mutate/"), b"{}".to_vec()).await;
    assert_eq!(status, 404);
    let get = c.get(format!("{base}/mutate")).send().await.unwrap();
    assert_eq!(get.status(), 405);

    // Not an AdmissionReview: 400 with a JSON message saying what is wrong.
    let (status, out) = post(&c, &format!("{base}/mutate"), b"{\"hello\": 1".to_vec()).await;
    assert_eq!(status, 400);
    assert!(
        out["error"]
            .as_str()
            .unwrap()
            .contains("not an AdmissionReview"),
        "{out}"
    );
    let (status, out) = post(
        &c,
        &format!("{base}/enforce"),
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(out["error"], "AdmissionReview has no request");
    // 10 MiB: 413.
    let (status, out) = post(&c, &format!("{base}/mutate"), vec![b' '; 10 << 20]).await;
    assert_eq!(status, 413);
    assert!(
        out["error"].as_str().unwrap().contains("larger than"),
        "{out}"
    );

    // Still serving after all that.
    let health = c.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let m = reqwest::get(format!("http://{}/metrics", tp.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "tagpin_admissions_total{path=\"mutate\",outcome=\"pinned\"} 1",
        "tagpin_admissions_total{path=\"mutate\",outcome=\"invalid\"} 1",
        "tagpin_admissions_total{path=\"enforce\",outcome=\"invalid\"} 1",
        "tagpin_admission_duration_seconds_bucket",
        &format!("tagpin_registry_lookups_total{{registry=\"{a}\",outcome=\"ok\"}} 1"),
        "tagpin_registry_lookup_duration_seconds_bucket",
        "tagpin_cache_misses_total 1",
        "tagpin_cache_hits_total 0",
        &format!("tagpin_breaker_state{{registry=\"{a}\"}} 0"),
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
    assert!(
        !m.contains("team-a") && !m.contains("/app"),
        "no namespaces or images in labels"
    );
    assert_eq!(
        reqwest::get(format!("http://{}/readyz", tp.metrics))
            .await
            .unwrap()
            .status(),
        200
    );
    // One structured line per admission.
    let log = tp.wait_for_log("uid=bin-1");
    let line = log
        .lines()
        .find(|l| l.contains("uid=bin-1"))
        .unwrap_or_else(|| panic!("{log}"));
    for field in [
        "namespace=\"team-a\"",
        "name=\"p\"",
        "kind=Pod",
        "pinned=1",
        "left=0",
        "outcome=\"pinned\"",
        "duration_ms=",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    assert!(
        !log.contains('\u{1b}'),
        "no colour codes when not a terminal"
    );
}

/// Lays out a directory the way the kubelet mounts a Secret: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..<timestamp>/`, swapped atomically by renaming a new `..data` symlink.
fn write_secret_version(dir: &Path, version: &str, cert: &str, key: &str) {
    let v = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("tls.crt"), cert).unwrap();
    std::fs::write(v.join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        if !dir.join(f).exists() {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
    }
}

async fn served_cert(addr: &str) -> Vec<u8> {
    // A fresh client: a new connection and a new handshake.
    let resp = client(None)
        .get(format!("https://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .unwrap()
        .to_vec()
}

async fn healthz(c: &reqwest::Client, addr: &str) -> u16 {
    c.get(format!("https://{addr}/healthz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The value of `tagpin_tls_certificate_expiry_timestamp_seconds` in a scrape of `metrics`.
async fn cert_expiry_metric(metrics: &str) -> Option<i64> {
    let m = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix("tagpin_tls_certificate_expiry_timestamp_seconds "))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn certificate_reloads_on_secret_symlink_swap_and_a_bad_pair_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    // notAfter 2031-05-17 and 2040-01-01, midnight UTC: the expiry metric must follow the swap.
    let (one_expires, two_expires) = (1_936_742_400, 2_208_988_800);
    let one = TestCa::valid_until(2031, 5, 17);
    let two = TestCa::valid_until(2040, 1, 1);
    write_secret_version(
        dir.path(),
        "2026_01",
        &format!("{}{}", one.cert_pem, one.ca_pem),
        &one.key_pem,
    );
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    let tp = Tagpin::spawn(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-reload-interval",
        "100ms",
    ]);
    assert_eq!(served_cert(&tp.https).await, der(&one.cert_pem));
    assert_eq!(cert_expiry_metric(&tp.metrics).await, Some(one_expires));
    // A client that trusts the first CA keeps a pooled connection across the reload.
    let kept = client(Some(&one.ca_pem));
    assert_eq!(healthz(&kept, &tp.https).await, 200);

    write_secret_version(dir.path(), "2026_02", &two.cert_pem, &two.key_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_cert(&tp.https).await != der(&two.cert_pem) {
        assert!(
            Instant::now() < deadline,
            "new certificate never served:\n{}",
            tp.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tp.wait_for_log("TLS certificate reloaded");
    assert_eq!(
        cert_expiry_metric(&tp.metrics).await,
        Some(two_expires),
        "the expiry metric follows the reload"
    );
    // The open connection was not dropped.
    assert_eq!(healthz(&kept, &tp.https).await, 200);

    // A mismatched pair is logged and the current certificate kept.
    write_secret_version(dir.path(), "2026_03", &one.cert_pem, &two.key_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tp.log().contains("not a valid pair") {
        assert!(
            Instant::now() < deadline,
            "bad pair not noticed:\n{}",
            tp.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served_cert(&tp.https).await, der(&two.cert_pem));
    assert_eq!(
        cert_expiry_metric(&tp.metrics).await,
        Some(two_expires),
        "a refused pair leaves the metric at the certificate still served"
    );
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    // A registry that never answers keeps the admission in flight for the whole deadline.
    let (hung, _held) = hung_registry();
    let mut tp = Tagpin::spawn(&[
        "--insecure-registry",
        &hung,
        "--resolve-timeout",
        "2s",
        "--shutdown-grace",
        "10s",
    ]);
    let c = client(None);
    let url = format!("https://{}/mutate", tp.https);
    let review = pod_review("drain", &[&format!("{hung}/app:1")]);
    let body = serde_json::to_vec(&review).unwrap();
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { post(&c, &url, body).await }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    tp.signal("TERM");
    let (status, out) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the in-flight admission was answered");
    assert_eq!(out["response"]["allowed"], true);
    assert!(
        out["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("timed out after 2s"),
        "{out}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = tp.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit:\n{}", tp.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}\n{}", tp.log());
    tp.wait_for_log("shutting down");
}

#[tokio::test]
async fn resolve_command_prints_pins_and_fails_on_any_error() {
    let reg = Registry::plain();
    let a = reg.addr.clone();
    let d = reg
        .pusher()
        .push("team/app", "v1.2.3-rc_1", Kind::Index)
        .await;
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tagpin"))
            .arg("resolve")
            .args(["--insecure-registry", &a])
            .args(args)
            .output()
            .unwrap()
    };
    let image = format!("{a}/team/app:v1.2.3-rc_1");
    let pinned = format!("{a}/team/app@{d}");
    let out = run(&[&image, &pinned]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{image} {pinned}\n{pinned} {pinned}\n")
    );

    let missing = format!("{a}/team/app:gone");
    let out = run(&["--keep-tag", &image, &missing, "Not/Valid"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{image} {a}/team/app:v1.2.3-rc_1@{d}\n")
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!(
            "tagpin: cannot pin {missing}: manifest not found (404)"
        )),
        "{err}"
    );
    assert!(
        err.contains("\"Not/Valid\" is not a valid image reference"),
        "{err}"
    );

    // Flags are also read from TAGPIN_* environment variables.
    let out = Command::new(env!("CARGO_BIN_EXE_tagpin"))
        .args(["resolve", &image])
        .env("TAGPIN_INSECURE_REGISTRY", &a)
        .env("TAGPIN_KEEP_TAG", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{image} {a}/team/app:v1.2.3-rc_1@{d}\n")
    );
}

#[tokio::test]
async fn no_credential_reaches_the_log() {
    let reg = Registry::tls_basic("deployer", "Pa55-w0rd-never-logged");
    let a = reg.addr.clone();
    reg.pusher().push("private/app", "1", Kind::Oci).await;
    let ca = reg.dir.path().join("ca.pem");
    std::fs::write(&ca, &reg.tls.as_ref().unwrap().ca_pem).unwrap();
    let good = reg.docker_config("Pa55-w0rd-never-logged");
    // Pull secrets, through the fake API server: a refused one first, a missing one, the right one.
    let kube = common::fake_kube::FakeKube::start();
    kube.put_pull_secret(
        "team-a",
        "stale",
        &a,
        "deployer",
        "Wr0ng-secret-never-logged",
    );
    kube.put_pull_secret(
        "team-a",
        "regcred",
        &a,
        "deployer",
        "Pa55-w0rd-never-logged",
    );
    let kubeconfig = kube.kubeconfig();
    let tp = Tagpin::spawn(&[
        "--registry-ca",
        ca.to_str().unwrap(),
        "--docker-config",
        good.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    let c = client(None);
    let mut review = pod_review(
        "secret-1",
        &[
            &format!("{a}/private/app:1"),
            &format!("{a}/private/app:missing"),
        ],
    );
    review["request"]["object"]["spec"]["imagePullSecrets"] =
        serde_json::json!([{"name": "stale"}, {"name": "gone"}, {"name": "regcred"}]);
    let (status, out) = post(
        &c,
        &format!("https://{}/mutate", tp.https),
        serde_json::to_vec(&review).unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(out["response"]["patch"].is_string(), "{out}");
    assert_eq!(
        out["response"]["warnings"][0],
        "tagpin: pull secret team-a/gone not found; resolving without it"
    );
    assert_eq!(kube.total_reads(), 3);
    let log = tp.wait_for_log("\"uid\":\"secret-1\"");
    assert!(log.contains("through the kubeconfig"), "{log}");
    assert!(log.contains("team-a/gone not found"), "{log}");
    for secret in ["Pa55-w0rd-never-logged", "Wr0ng-secret-never-logged"] {
        let encoded = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(format!("deployer:{secret}"))
        };
        assert!(!log.contains(secret) && !log.contains(&encoded), "{log}");
        assert!(!out.to_string().contains(secret), "{out}");
    }
}

#[test]
fn an_unusable_kubeconfig_stops_serve_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\nusers: [{name: x, user: {token: kube-t0ken-never-shown}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tagpin"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .arg("--kubeconfig")
        .arg(&kc)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "tagpin: cannot use --kubeconfig {}: ",
            kc.display()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn no_kube_never_calls_the_api() {
    let reg = Registry::plain();
    let a = reg.addr.clone();
    reg.pusher().push("app", "1", Kind::Oci).await;
    let kube = common::fake_kube::FakeKube::start();
    let kubeconfig = kube.kubeconfig();
    let tp = Tagpin::spawn(&[
        "--insecure-registry",
        &a,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--no-kube",
    ]);
    let mut review = pod_review("no-kube", &[&format!("{a}/app:1")]);
    review["request"]["object"]["spec"]["imagePullSecrets"] =
        serde_json::json!([{"name": "regcred"}]);
    let (status, out) = post(
        &client(None),
        &format!("https://{}/mutate", tp.https),
        serde_json::to_vec(&review).unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(out["response"]["patch"].is_string(), "{out}");
    assert!(out["response"].get("warnings").is_none(), "{out}");
    assert_eq!(kube.total_reads(), 0);
    assert!(tp
        .log()
        .contains("--no-kube: pull secrets and service accounts are not read"));
}
