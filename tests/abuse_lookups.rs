//! Hostile input on the lookup side (issue "Hostile input, hostile networks", rows 3-9): what a
//! pod author can make tagpin connect to, and how much a review can make it hold. Every server is
//! on loopback; the link-local and metadata rules are proven by unit tests of the address check
//! (`src/resolve/netpolicy.rs`), never with a packet.

mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tagpin::resolve::netpolicy::AddressPolicy;
use tagpin::resolve::ResolverConfig;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A TCP listener that counts the connections made to it (and answers none).
fn counting_listener(ip: &str) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind(format!("{ip}:0")).unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, n)
}

/// The `serve` address rules, allowing `allow` (CIDRs) and naming `insecure` registries.
fn serve_policy(cfg: &mut ResolverConfig, allow: &[&str], insecure: &[String]) {
    let allow = allow.iter().map(|c| c.parse().unwrap()).collect();
    cfg.registry.policy = Arc::new(AddressPolicy::serve(allow, insecure));
}

#[test]
fn row7_a_loopback_image_is_refused_before_any_connection() {
    let (addr, connections) = counting_listener("127.0.0.1");
    // `serve`'s address rules with no range allowed, answering a real review.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cfg = ResolverConfig::default();
        serve_policy(&mut cfg, &[], &[]);
        let router = router(admitter(cfg, admission_config()));
        let image = format!("{addr}/x:y");
        let resp = review(&router, "/mutate", &pod_review("scan", &[&image])).await;
        assert_eq!(resp["allowed"], true);
        assert_eq!(
            warnings(&resp),
            vec![format!(
                "tagpin: {image} left unpinned: registry {addr}: address not allowed (loopback); allow it with --allow-registry-cidr or name it in --insecure-registry"
            )]
        );
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(connections.load(Ordering::SeqCst), 0, "no connection made");
}

#[tokio::test]
async fn row7_the_binary_refuses_loopback_registries_unless_named() {
    let reg = Registry::plain();
    let d = reg.pusher().push("app", "1", Kind::Oci).await;
    let a = reg.addr.clone();
    let image = format!("{a}/app:1");
    let review_ = pod_review("bin", &[&image]);
    // The shipped rules: a loopback registry is refused, unless the operator named it (this
    // host and port, not another port of the same host).
    for (named, pinned) in [
        ("other.example", false),
        ("127.0.0.1:9", false),
        (a.as_str(), true),
    ] {
        let tp = Tagpin::spawn_without_allowances(&["--no-kube", "--insecure-registry", named]);
        let (status, resp) = tp.review("/mutate", &review_).await;
        assert_eq!(status, 200);
        let text = resp.to_string();
        let image_now = apply(&review_, &resp)["spec"]["containers"][0]["image"].clone();
        assert_eq!(
            image_now == format!("{a}/app@{d}").as_str(),
            pinned,
            "{named}: {text}"
        );
        assert_eq!(
            text.contains("address not allowed (loopback)"),
            !pinned,
            "{text}"
        );
    }
}

#[tokio::test]
async fn row4_a_pod_with_1100_images_on_a_hung_registry_holds_at_most_16_connections() {
    let (hung, held) = hung_registry();
    let reg = Registry::plain();
    let d = reg.pusher().push("app", "1", Kind::Oci).await;
    let mut cfg = reg.resolver_config();
    cfg.registry.insecure.push(hung.clone());
    cfg.max_images_per_batch = Some(64);
    cfg.lookup_timeout = Duration::from_secs(30);
    let mut adm = admission_config();
    adm.resolve_timeout = Duration::from_secs(1);
    let router = router(admitter(cfg, adm));
    let images: Vec<String> = (0..1100).map(|i| format!("{hung}/app:{i}")).collect();
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();
    let resp = review(&router, "/mutate", &pod_review("many", &refs)).await;
    assert_eq!(resp["allowed"], true);
    let w = warnings(&resp);
    assert_eq!(
        w[0],
        "tagpin: 1036 image(s) left unpinned, not looked up: the object names more distinct images than --max-images-per-review allows"
    );
    let open = held.lock().unwrap().len();
    assert!(open <= 16, "{open} connections to one registry");
    // Another tenant's review, on another registry, is still answered and pinned.
    let ok = format!("{}/app:1", reg.addr);
    let resp = review(&router, "/mutate", &pod_review("other", &[&ok])).await;
    assert_eq!(
        apply(&pod_review("other", &[&ok]), &resp)["spec"]["containers"][0]["image"],
        format!("{}/app@{d}", reg.addr)
    );
    // Under /enforce the same pod is denied, naming the limit.
    let resp = review(&router, "/enforce", &pod_review("many-e", &refs)).await;
    assert_eq!(resp["allowed"], false);
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(msg.contains("1036 image(s): not looked up"), "{msg}");
}

#[tokio::test]
async fn row5_redirects_to_plain_http_or_to_refused_addresses_are_not_followed() {
    // The target: a "metadata service" on another loopback address than the registry's.
    let target = MockServer::builder()
        .listener(TcpListener::bind("127.0.0.2:0").unwrap())
        .start()
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("secret-role"))
        .mount(&target)
        .await;
    let registry = MockServer::start().await;
    let a = registry.address().to_string();
    for (i, to) in [
        format!(
            "http://{}/latest/meta-data/iam/security-credentials/",
            target.address()
        ),
        format!("https://{}/latest/meta-data/", target.address()),
    ]
    .into_iter()
    .enumerate()
    {
        registry.reset().await;
        Mock::given(method("HEAD"))
            .respond_with(ResponseTemplate::new(302).insert_header("Location", to.as_str()))
            .mount(&registry)
            .await;
        let mut cfg = ResolverConfig::default();
        cfg.registry.insecure.push(a.clone());
        let named = cfg.registry.insecure.clone();
        serve_policy(&mut cfg, &["127.0.0.1/32"], &named);
        let router = router(admitter(cfg, admission_config()));
        let image = format!("{a}/app:{i}");
        let resp = review(&router, "/mutate", &pod_review("redir", &[&image])).await;
        assert!(resp.get("patch").is_none(), "{resp}");
        let w = warnings(&resp).join("\n");
        let expect = if i == 0 {
            "redirect refused (not https)"
        } else {
            "address not allowed (loopback)"
        };
        assert!(w.contains(expect), "{w}");
    }
    assert!(
        target.received_requests().await.unwrap().is_empty(),
        "the redirect target was never asked"
    );
}

#[tokio::test]
async fn row8_credentials_are_never_sent_to_a_plain_http_token_realm() {
    let ts = token::TokenServer::start(&[("bot", "pw", &["pull"])]);
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions {
        tls: true,
        htpasswd: None,
        token: Some(ts.registry_auth_yaml(dir.path())),
    });
    let a = reg.addr.clone();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(r#"{{"auths":{{"https://{a}":{{"username":"bot","password":"pw"}}}}}}"#),
    )
    .unwrap();
    let mut cfg = reg.resolver_config();
    cfg.docker_config =
        tagpin::resolve::credentials::CredentialSet::from_docker_config_file(&config).unwrap();
    serve_policy(&mut cfg, &["127.0.0.0/8"], &[]);
    let router = router(admitter(cfg, admission_config()));
    let image = format!("{a}/private/app:1");
    let resp = review(&router, "/mutate", &pod_review("realm", &[&image])).await;
    let w = warnings(&resp).join("\n");
    assert!(w.contains("is not https"), "{w}");
    assert!(!w.contains("pw"), "{w}");
    assert_eq!(ts.requests(), 0, "the token realm was never asked");
}

#[tokio::test]
async fn row9_two_thousand_registry_hosts_cost_at_most_65_label_values() {
    let mut cfg = ResolverConfig::default();
    serve_policy(&mut cfg, &["127.0.0.0/8"], &[]);
    cfg.max_images_per_batch = Some(64);
    cfg.breaker_threshold = 1;
    let adm = admitter(cfg, admission_config());
    let router = router(adm.clone());
    // 2,000 distinct hosts, all loopback addresses where nothing listens (refused at once).
    let images: Vec<String> = (0..2000)
        .map(|i| format!("127.0.{}.{}:1/app:1", i / 250, i % 250 + 1))
        .collect();
    for (n, chunk) in images.chunks(64).enumerate() {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let resp = review(&router, "/mutate", &pod_review(&format!("h{n}"), &refs)).await;
        assert_eq!(resp["allowed"], true);
    }
    let m = adm.metrics.encode();
    let mut labels: Vec<&str> = m
        .lines()
        .filter_map(|l| l.split("registry=\"").nth(1))
        .filter_map(|r| r.split('"').next())
        .collect();
    labels.sort();
    labels.dedup();
    assert!(labels.len() <= 65, "{} registry label values", labels.len());
    assert!(labels.contains(&"other"));
    assert!(m.len() < 200_000, "{} bytes of metrics", m.len());
}

#[tokio::test]
async fn a_405_on_head_falls_back_to_get_and_is_not_an_outage() {
    let srv = MockServer::start().await;
    Mock::given(method("HEAD"))
        .respond_with(ResponseTemplate::new(405))
        .mount(&srv)
        .await;
    let body = br#"{"schemaVersion":2}"#.to_vec();
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body.clone(), "application/json"))
        .mount(&srv)
        .await;
    let mut cfg = ResolverConfig::default();
    cfg.registry.insecure.push(srv.address().to_string());
    let router = router(admitter(cfg, admission_config()));
    let image = format!("{}/app:1", srv.address());
    let resp = review(&router, "/mutate", &pod_review("405", &[&image])).await;
    let pinned: Value = apply(&pod_review("405", &[&image]), &resp);
    assert_eq!(
        pinned["spec"]["containers"][0]["image"],
        format!("{}/app@{}", srv.address(), sha256(&body))
    );
}

/// Row 3: a manifest over 4 MiB is cut off while it streams, never hashed or held whole. A
/// stand-in registry (wiremock): docker-registry itself refuses to store a manifest that large.
#[tokio::test]
async fn row3_a_manifest_over_4_mib_is_refused_while_it_streams() {
    let srv = MockServer::start().await;
    // No Docker-Content-Digest on HEAD: tagpin must GET and hash the body.
    Mock::given(method("HEAD"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&srv)
        .await;
    let body = vec![b' '; (4 << 20) + 1];
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
        .mount(&srv)
        .await;
    let mut cfg = ResolverConfig::default();
    cfg.registry.insecure.push(srv.address().to_string());
    let router = router(admitter(cfg, admission_config()));
    let image = format!("{}/big:1", srv.address());
    let resp = review(&router, "/mutate", &pod_review("big", &[&image])).await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none(), "nothing pinned: {resp}");
    let w = warnings(&resp);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("response larger than 4194304 bytes"), "{w:?}");
}

/// Row 6: a TLS failure is named by its cause, never by what the other end presented (here a
/// certificate for an internal name, signed by a trusted CA, served on an address it does not
/// name: rustls's own message would list the certificate's names).
#[tokio::test]
async fn row6_a_tls_error_never_quotes_the_certificates_names() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    tagpin::install_crypto_provider();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["internal-db.corp.example".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(stream).await;
            });
        }
    });
    let mut cfg = ResolverConfig::default();
    cfg.registry.extra_ca_pem = Some(ca.pem().into_bytes());
    serve_policy(&mut cfg, &["127.0.0.0/8"], &[]);
    let router = router(admitter(cfg, admission_config()));
    let image = format!("{addr}/x:y");
    let resp = review(&router, "/mutate", &pod_review("tls", &[&image])).await;
    let w = warnings(&resp).join("\n");
    assert!(w.contains("TLS certificate not valid for this host"), "{w}");
    assert!(
        !w.contains("internal-db") && !w.contains("corp.example"),
        "{w}"
    );
}
