//! Registries at a distance: real `docker-registry` processes behind a real Toxiproxy on
//! 127.0.0.1 (25 ms each way, outages, stalls, resets mid-TLS). Bounds and counts are asserted,
//! never timings; the figures are `scripts/distance`'s (BENCHMARKS.md, "At real distances").

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::forward::{Forward, Mode};
use common::half_body::{half_body_registry, MANIFEST};
use common::limiter::rate_limiting_registry;
use common::token::TokenServer;
use common::toxiproxy::Toxiproxy;
use common::*;
use serde_json::json;
use tagpin::resolve::credentials::CredentialSet;
use tagpin::resolve::{BatchRequest, Budget, ImageOutcome, Outcome, Resolver, ResolverConfig};

const RTT_MS: u64 = 25;

async fn batch(r: &Resolver, images: &[String], budget: Duration) -> Vec<Outcome> {
    let req = BatchRequest {
        allow_stale: true,
        ..BatchRequest::default()
    };
    r.resolve_batch(&req, images, Budget::from_now(budget))
        .await
        .outcomes
        .into_iter()
        .map(|o| match o {
            ImageOutcome::Resolved(_, o) => o,
            other => panic!("not a tag: {other:?}"),
        })
        .collect()
}

fn resolver(cfg: ResolverConfig) -> Resolver {
    Resolver::new(cfg, Arc::new(tagpin::metrics::Metrics::new())).unwrap()
}

fn breaker_state(r: &Resolver, registry: &str) -> Option<u8> {
    let text = r.metrics().encode();
    let prefix = format!("tagpin_breaker_state{{registry=\"{registry}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().parse().unwrap())
}

async fn push_tags(reg: &Registry, repo: &str, n: usize) -> Vec<String> {
    let p = reg.pusher();
    let mut digests = Vec::new();
    for i in 0..n {
        digests.push(p.push(repo, &format!("v{i}"), Kind::Oci).await);
    }
    digests
}

/// Issue 22, target 4: the registry is down long enough to open its breaker, then comes back.
/// The first admission after the cool-down pins every image: the lookups behind the probe wait
/// for its outcome instead of failing fast (before: 1 of 16 pinned).
#[tokio::test]
async fn after_an_outage_the_first_admission_pins_every_image_once_the_probe_answers() {
    let reg = Registry::plain();
    let digests = push_tags(&reg, "app", 16).await;
    let toxi = Toxiproxy::start().await;
    let addr = toxi.proxy("reg", &reg.addr).await;
    toxi.latency("reg", RTT_MS / 2).await;
    let mut cfg = reg.resolver_config();
    cfg.registry.insecure.push(addr.clone());
    cfg.breaker_threshold = 2;
    cfg.breaker_cooldown = Duration::from_millis(1_500);
    cfg.lookup_timeout = Duration::from_secs(5);
    let r = resolver(cfg);

    // Down: two admissions fail (connection refused) and open the breaker.
    toxi.set_enabled("reg", false).await;
    for i in 0..2 {
        let out = batch(&r, &[format!("{addr}/app:down{i}")], Duration::from_secs(3)).await;
        assert!(matches!(out[0], Outcome::Failed(_)), "{out:?}");
    }
    assert_eq!(breaker_state(&r, &addr), Some(1), "the breaker opened");

    // Back, and the cool-down over: one admission of 16 new tags.
    toxi.set_enabled("reg", true).await;
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let images: Vec<String> = (0..16).map(|i| format!("{addr}/app:v{i}")).collect();
    let out = batch(&r, &images, Duration::from_secs(4)).await;
    for (i, (o, want)) in out.iter().zip(&digests).enumerate() {
        match o {
            Outcome::Pinned(d) => assert_eq!(&d.to_string(), want, "app:v{i}"),
            other => panic!("app:v{i} left unpinned after the registry came back: {other:?}"),
        }
    }
    assert_eq!(breaker_state(&r, &addr), Some(0), "the probe closed it");
    for i in 0..16 {
        assert_eq!(
            reg.manifest_requests("app", &format!("v{i}")),
            1,
            "app:v{i}"
        );
    }
}

/// Issue 22, target 5, first half: a registry that accepts, reads the request and never
/// answers. The admission is answered by its deadline with the last known digests, and the burst
/// of stalled lookups counts as one failure in the breaker (before: one per image, and a breaker
/// of threshold 3 opened in one admission).
#[tokio::test]
async fn a_stalled_registry_answers_last_known_digests_and_counts_one_failure() {
    let reg = Registry::plain();
    let digests = push_tags(&reg, "app", 8).await;
    let toxi = Toxiproxy::start().await;
    let addr = toxi.proxy("reg", &reg.addr).await;
    toxi.latency("reg", RTT_MS / 2).await;
    let mut cfg = reg.resolver_config();
    cfg.registry.insecure.push(addr.clone());
    cfg.cache_ttl = Duration::from_millis(300);
    cfg.stale_ttl = Some(Duration::from_secs(3_600));
    cfg.breaker_threshold = 3;
    cfg.lookup_timeout = Duration::from_secs(2);
    let r = resolver(cfg);
    let images: Vec<String> = (0..8).map(|i| format!("{addr}/app:v{i}")).collect();
    let out = batch(&r, &images, Duration::from_secs(5)).await;
    assert!(
        out.iter().all(|o| matches!(o, Outcome::Pinned(_))),
        "{out:?}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await; // past the cache TTL

    // Held connections are reused: drop them so every lookup meets the stall.
    toxi.set_enabled("reg", false).await;
    toxi.set_enabled("reg", true).await;
    toxi.toxic(
        "reg",
        "stall",
        "timeout",
        "downstream",
        json!({"timeout": 0}),
    )
    .await;
    let out = batch(&r, &images, Duration::from_millis(800)).await;
    for (i, (o, want)) in out.iter().zip(&digests).enumerate() {
        match o {
            Outcome::Stale { digest, .. } => assert_eq!(&digest.to_string(), want, "app:v{i}"),
            other => panic!("app:v{i}: {other:?}"),
        }
    }
    // The lookups go on past the admission and time out; then the breaker has seen one outage.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let text = r.metrics().encode();
    let timeouts =
        format!("tagpin_registry_lookups_total{{registry=\"{addr}\",outcome=\"timeout\"}} 8");
    assert!(
        text.contains(&timeouts),
        "every stalled lookup timed out:\n{text}"
    );
    assert_eq!(
        breaker_state(&r, &addr),
        Some(0),
        "one outage is one failure, not eight:\n{text}"
    );
}

/// Issue 22, target 5, second half: a TLS registry whose connections are cut mid-handshake.
/// Answered with the last known digests, and counted once.
#[tokio::test]
async fn a_registry_resetting_mid_tls_answers_last_known_digests_and_counts_one_failure() {
    let reg = Registry::start(RegistryOptions {
        tls: true,
        htpasswd: None,
        token: None,
    });
    let digests = push_tags(&reg, "app", 8).await;
    let toxi = Toxiproxy::start().await;
    let addr = toxi.proxy("reg", &reg.addr).await;
    toxi.latency("reg", RTT_MS / 2).await;
    let mut cfg = reg.resolver_config();
    cfg.cache_ttl = Duration::from_millis(300);
    cfg.stale_ttl = Some(Duration::from_secs(3_600));
    cfg.breaker_threshold = 3;
    cfg.lookup_timeout = Duration::from_secs(2);
    let r = resolver(cfg);
    let images: Vec<String> = (0..8).map(|i| format!("{addr}/app:v{i}")).collect();
    let out = batch(&r, &images, Duration::from_secs(5)).await;
    assert!(
        out.iter().all(|o| matches!(o, Outcome::Pinned(_))),
        "{out:?}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;

    toxi.set_enabled("reg", false).await;
    toxi.set_enabled("reg", true).await;
    // 100 bytes of the server's handshake, then the connection is closed.
    toxi.toxic(
        "reg",
        "cut",
        "limit_data",
        "downstream",
        json!({"bytes": 100}),
    )
    .await;
    let out = batch(&r, &images, Duration::from_secs(1)).await;
    for (i, (o, want)) in out.iter().zip(&digests).enumerate() {
        match o {
            Outcome::Stale { digest, .. } => assert_eq!(&digest.to_string(), want, "app:v{i}"),
            other => panic!("app:v{i}: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        breaker_state(&r, &addr),
        Some(0),
        "one outage is one failure, not eight:\n{}",
        r.metrics().encode()
    );
}

/// Issue 22, target 5, the half-answer: a server that accepts, sends its response head, then
/// never sends the body. tagpin asks manifests with HEAD (no body), so the GET that can be left
/// half-answered is the token request of a token-auth registry. A TCP pipe in front of the token
/// server (`tests/common/forward.rs`: it lets the head of each answer through and holds back the
/// rest, as no real server does on demand) cuts the real answers. The admission is answered by
/// its deadline with the last known digests and a warning naming each image; the lookups end
/// (timed out, not hung) and the burst counts as one failure in the breaker.
#[tokio::test]
async fn a_token_endpoint_that_sends_headers_then_stalls_answers_last_known_digests_and_counts_one_failure(
) {
    let mut ts = TokenServer::start(&[("bot", "pw", &["app"])]);
    let upstream = ts
        .realm
        .trim_start_matches("http://")
        .trim_end_matches("/token")
        .to_string();
    let pipe = Forward::start(&upstream).await;
    ts.realm = format!("http://{}/token", pipe.addr);
    // Tokens that expire at once (tagpin keeps one for its expires_in less a tenth), so the
    // second admission must ask for one again.
    ts.set_expires_in(1);
    let reg = Registry::token_auth(&ts);
    let p = reg.pusher_with_token(ts.mint("admin", "app", &["pull", "push"]));
    let mut digests = Vec::new();
    for i in 0..8 {
        digests.push(p.push("app", &format!("v{i}"), Kind::Oci).await);
    }
    let toxi = Toxiproxy::start().await;
    let addr = toxi.proxy("reg", &reg.addr).await;
    toxi.latency("reg", RTT_MS / 2).await;
    let mut cfg = reg.resolver_config();
    cfg.registry.insecure.push(addr.clone());
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "bot:pw");
    let config = json!({"auths": {format!("http://{addr}"): {"auth": auth}}}).to_string();
    cfg.docker_config =
        CredentialSet::from_docker_config(config.as_bytes(), std::path::Path::new("test")).unwrap();
    cfg.cache_ttl = Duration::from_millis(300);
    cfg.stale_ttl = Some(Duration::from_secs(3_600));
    cfg.breaker_threshold = 2;
    cfg.lookup_timeout = Duration::from_secs(2);
    let mut adm = admission_config();
    adm.resolve_timeout = Duration::from_millis(800);
    let a = admitter(cfg, adm);
    let r = a.resolver.clone();
    let router = router(a);
    let images: Vec<String> = (0..8).map(|i| format!("{addr}/app:v{i}")).collect();
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();

    // The first lookups, with time to spare (the admissions' deadline is short).
    let out = batch(&r, &images, Duration::from_secs(5)).await;
    for (o, d) in out.iter().zip(&digests) {
        assert!(
            matches!(o, Outcome::Pinned(got) if &got.to_string() == d),
            "{o:?}"
        );
    }
    let tokens_asked = ts.requests();
    assert!(tokens_asked >= 1, "the first admission got a token");
    // Past the digests' TTL and the tokens' life.
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    // From now on every answer of the token server is cut after its head (the connection held
    // by the pool is closed, so the next request opens one that is cut).
    pipe.set_mode(Mode::HeadThenStall);
    pipe.drop_connections();
    let second = pod_review("second", &refs);
    let resp = review(&router, "/mutate", &second).await;
    assert_eq!(resp["allowed"], true);
    let pod = apply(&second, &resp);
    let w = warnings(&resp);
    for (i, (image, d)) in images.iter().zip(&digests).enumerate() {
        assert_eq!(
            pod["spec"]["containers"][i]["image"],
            format!("{addr}/app@{d}"),
            "{image}: the last known digest: {resp}"
        );
        assert!(
            w.iter()
                .any(|w| w.contains(image.as_str()) && w.contains("last known digest")),
            "no warning names {image}: {w:?}"
        );
    }
    assert!(
        pipe.stalled() >= 1,
        "the token server's answers were cut after their head"
    );
    assert!(ts.requests() > tokens_asked, "a token was asked again");
    // The lookups go on past the admission, and end: timed out, not hung. The burst is one
    // outage: with a threshold of 2, counting it twice would open the breaker.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let text = r.metrics().encode();
    let timeouts =
        format!("tagpin_registry_lookups_total{{registry=\"{addr}\",outcome=\"timeout\"}} 8");
    assert!(
        text.contains(&timeouts),
        "every half-answered lookup ended, timed out:\n{text}"
    );
    assert_eq!(
        breaker_state(&r, &addr),
        Some(0),
        "one outage is one failure, not eight:\n{text}"
    );
}

/// Issue 22, target 5, the half-answer on a manifest GET: tagpin GETs a manifest only when the
/// HEAD brings no digest, which no real registry does; a stand-in (`tests/common/half_body.rs`)
/// answers HEAD without one, and then sends each GET's headers and half its body, and stops. The
/// admission is answered by its deadline with the last known digests and a warning naming each
/// image; the lookups end (timed out, not hung) and the burst counts as one failure.
#[tokio::test]
async fn a_manifest_get_whose_body_stalls_answers_last_known_digests_and_counts_one_failure() {
    init();
    let (upstream, state) = half_body_registry().await;
    let toxi = Toxiproxy::start().await;
    let addr = toxi.proxy("reg", &upstream).await;
    toxi.latency("reg", RTT_MS / 2).await;
    let mut cfg = ResolverConfig::default();
    cfg.registry.insecure.push(addr.clone());
    cfg.cache_ttl = Duration::from_millis(300);
    cfg.stale_ttl = Some(Duration::from_secs(3_600));
    cfg.breaker_threshold = 2;
    cfg.lookup_timeout = Duration::from_secs(2);
    let mut adm = admission_config();
    adm.resolve_timeout = Duration::from_millis(800);
    let a = admitter(cfg, adm);
    let r = a.resolver.clone();
    let router = router(a);
    let images: Vec<String> = (0..8).map(|i| format!("{addr}/app:v{i}")).collect();
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();
    let digest = sha256(MANIFEST);

    // The first lookups, with time to spare (the admission's deadline is short).
    let out = batch(&r, &images, Duration::from_secs(5)).await;
    for o in &out {
        assert!(
            matches!(o, Outcome::Pinned(got) if got.to_string() == digest),
            "{o:?}"
        );
    }
    assert_eq!(state.gets.load(std::sync::atomic::Ordering::SeqCst), 8);
    tokio::time::sleep(Duration::from_millis(400)).await; // past the cache TTL

    state.stall.store(true, std::sync::atomic::Ordering::SeqCst);
    toxi.set_enabled("reg", false).await;
    toxi.set_enabled("reg", true).await;
    let second = pod_review("second", &refs);
    let resp = review(&router, "/mutate", &second).await;
    assert_eq!(resp["allowed"], true);
    let pod = apply(&second, &resp);
    let w = warnings(&resp);
    for (i, image) in images.iter().enumerate() {
        assert_eq!(
            pod["spec"]["containers"][i]["image"],
            format!("{addr}/app@{digest}"),
            "{image}: the last known digest: {resp}"
        );
        assert!(
            w.iter()
                .any(|w| w.contains(image.as_str()) && w.contains("last known digest")),
            "no warning names {image}: {w:?}"
        );
    }
    assert!(state.stalled.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let text = r.metrics().encode();
    let timeouts =
        format!("tagpin_registry_lookups_total{{registry=\"{addr}\",outcome=\"timeout\"}} 8");
    assert!(
        text.contains(&timeouts),
        "every half-answered lookup ended, timed out:\n{text}"
    );
    assert_eq!(
        breaker_state(&r, &addr),
        Some(0),
        "one outage is one failure, not eight:\n{text}"
    );
}

/// Issue 22, target 3: a rollout storm. 500 pods naming 200 distinct tags over 20 registries,
/// all within a second, 25 ms each way, the first answer for 10% of the tags
/// `429 Retry-After: 1`. Every image is pinned by the admission deadline; each tag is asked once
/// plus once per 429; no registry has more than `--max-lookups-per-registry` requests at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_storm_pins_every_image_within_the_deadline_and_the_registries_limits() {
    const REGISTRIES: usize = 20;
    const TAGS_PER_REGISTRY: usize = 10;
    const PODS: usize = 500;
    const PER_REGISTRY: usize = 4;
    init();
    let toxi = Toxiproxy::start().await;
    let mut registries = Vec::new();
    for r in 0..REGISTRIES {
        // Tag 0 of every registry: 10% of all tags.
        let limited = [format!("/v2/app/manifests/t{}", r * TAGS_PER_REGISTRY)].into();
        let (upstream, state) = rate_limiting_registry(limited);
        let name = format!("reg{r}");
        let addr = toxi.proxy(&name, &upstream).await;
        toxi.latency(&name, RTT_MS / 2).await;
        registries.push((addr, state));
    }
    let mut cfg = ResolverConfig::default();
    cfg.registry.insecure = registries.iter().map(|(a, _)| a.clone()).collect();
    cfg.max_lookups_per_registry = PER_REGISTRY;
    let r = resolver(cfg);
    let tag = |i: usize| {
        let (addr, _) = &registries[i / TAGS_PER_REGISTRY];
        format!("{addr}/app:t{i}")
    };
    let tags = REGISTRIES * TAGS_PER_REGISTRY;
    let pods: Vec<_> = (0..PODS)
        .map(|p| {
            let images = vec![tag(p % tags), tag((p * 7 + 3) % tags)];
            let r = r.clone();
            tokio::spawn(async move {
                (
                    images.clone(),
                    batch(&r, &images, Duration::from_secs(10)).await,
                )
            })
        })
        .collect();
    for pod in pods {
        let (images, out) = pod.await.unwrap();
        for (image, o) in images.iter().zip(out) {
            assert!(matches!(o, Outcome::Pinned(_)), "{image}: {o:?}");
        }
    }
    for (i, (addr, state)) in registries.iter().enumerate() {
        let requests = state.requests.lock().unwrap().clone();
        for t in 0..TAGS_PER_REGISTRY {
            let path = format!("/v2/app/manifests/t{}", i * TAGS_PER_REGISTRY + t);
            let asked_again = usize::from(state.limited.contains(&path));
            assert_eq!(
                requests.get(&path).copied().unwrap_or(0),
                1 + asked_again,
                "{addr}{path}: once, plus once per 429"
            );
        }
        assert_eq!(
            requests.len(),
            TAGS_PER_REGISTRY,
            "{addr}: nothing but the manifests (no /v2/ pings): {requests:?}"
        );
        let most = state.most.load(std::sync::atomic::Ordering::SeqCst);
        assert!(most <= PER_REGISTRY, "{addr} had {most} requests at once");
    }
}
