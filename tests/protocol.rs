//! Registry protocol quirks a real `docker-registry` will not produce on demand: no digest header
//! on HEAD, 429 with Retry-After, 5xx, a malformed digest, and the Bearer-token flow with token
//! reuse. Served by wiremock on 127.0.0.1.

mod common;

use std::time::Duration;

use common::*;
use tagpin::reference::ImageRef;
use tagpin::resolve::{
    BatchRequest, Budget, ImageOutcome, LookupError, Outcome, Resolver, ResolverConfig,
};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn resolver(srv: &MockServer, tweak: impl FnOnce(&mut ResolverConfig)) -> Resolver {
    init();
    let mut cfg = ResolverConfig::default();
    cfg.registry.insecure.push(srv.address().to_string());
    tweak(&mut cfg);
    Resolver::new(cfg, std::sync::Arc::new(tagpin::metrics::Metrics::new())).unwrap()
}

/// One image through the resolver's entry point (stale digests allowed, as `/mutate` does).
async fn resolve_with(r: &Resolver, image: &str, timeout: Duration, allow_stale: bool) -> Outcome {
    let req = BatchRequest {
        allow_stale,
        ..BatchRequest::default()
    };
    match r
        .resolve_batch(&req, &[image], Budget::from_now(timeout))
        .await
        .outcomes
        .remove(0)
    {
        ImageOutcome::Resolved(_, o) => o,
        other => panic!("not a tag: {other:?}"),
    }
}

async fn resolve(r: &Resolver, image: &str) -> Outcome {
    resolve_with(r, image, Duration::from_secs(5), true).await
}

fn manifest_heads(reqs: &[Request]) -> usize {
    reqs.iter()
        .filter(|r| r.method.as_str() == "HEAD" && r.url.path().contains("/manifests/"))
        .count()
}

#[tokio::test]
async fn no_digest_header_means_get_and_hash_the_exact_bytes() {
    let srv = MockServer::start().await;
    let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.to_vec();
    Mock::given(method("HEAD"))
        .and(path("/v2/team/app/manifests/1.0"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&srv)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/manifests/1.0"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(body.clone(), "application/vnd.oci.image.index.v1+json"),
        )
        .expect(1)
        .mount(&srv)
        .await;
    let r = resolver(&srv, |_| {});
    match resolve(&r, &format!("{}/team/app:1.0", srv.address())).await {
        Outcome::Pinned(d) => assert_eq!(d.to_string(), sha256(&body)),
        other => panic!("{other:?}"),
    }
    for req in srv.received_requests().await.unwrap() {
        let accept = req.headers.get("accept").unwrap().to_str().unwrap();
        assert_eq!(
            accept,
            tagpin::resolve::registry::ACCEPT_MANIFESTS,
            "{} asks for every manifest type",
            req.method
        );
    }
}

#[tokio::test]
async fn malformed_digest_header_is_refused() {
    let srv = MockServer::start().await;
    Mock::given(method("HEAD"))
        .respond_with(
            ResponseTemplate::new(200).insert_header("Docker-Content-Digest", "sha256:XYZ"),
        )
        .mount(&srv)
        .await;
    let r = resolver(&srv, |_| {});
    match resolve(&r, &format!("{}/app:1", srv.address())).await {
        Outcome::Failed(e) => assert!(e.to_string().contains("not a valid digest"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn server_errors_open_the_breaker_which_fails_fast_then_closes_after_a_good_probe() {
    let srv = MockServer::start().await;
    let failing = Mock::given(method("HEAD"))
        .respond_with(ResponseTemplate::new(503))
        .mount_as_scoped(&srv)
        .await;
    let r = resolver(&srv, |c| {
        c.breaker_threshold = 3;
        c.breaker_cooldown = Duration::from_millis(800);
    });
    let a = srv.address().to_string();
    for i in 0..3 {
        match resolve(&r, &format!("{a}/app:{i}")).await {
            Outcome::Failed(e) => assert!(e.to_string().contains("answered 503"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
    // Open: fails at once, nothing reaches the registry.
    let before = manifest_heads(&srv.received_requests().await.unwrap());
    assert_eq!(before, 3);
    for i in 3..10 {
        match resolve(&r, &format!("{a}/app:{i}")).await {
            Outcome::Failed(LookupError::BreakerOpen { registry, .. }) => assert_eq!(registry, a),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        manifest_heads(&srv.received_requests().await.unwrap()),
        before
    );
    // The registry recovers; after the cool-down one probe goes through and closes the breaker.
    drop(failing);
    Mock::given(method("HEAD"))
        .respond_with(ResponseTemplate::new(200).insert_header("Docker-Content-Digest", DIGEST))
        .mount(&srv)
        .await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    for i in 10..13 {
        assert!(matches!(
            resolve(&r, &format!("{a}/app:{i}")).await,
            Outcome::Pinned(_)
        ));
    }
    let text = r.metrics().encode();
    assert!(
        text.contains(&format!("tagpin_breaker_state{{registry=\"{a}\"}} 0")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "tagpin_registry_lookups_total{{registry=\"{a}\",outcome=\"breaker_open\"}} 7"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_429_whose_retry_after_ends_in_time_is_waited_out_and_asked_again() {
    let srv = MockServer::start().await;
    Mock::given(method("HEAD"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .mount(&srv)
        .await;
    Mock::given(method("HEAD"))
        .respond_with(ResponseTemplate::new(200).insert_header("Docker-Content-Digest", DIGEST))
        .mount(&srv)
        .await;
    // Threshold far away: only the 429 can open the breaker.
    let r = resolver(&srv, |c| {
        c.breaker_threshold = 100;
        c.breaker_cooldown = Duration::from_secs(3600);
    });
    let a = srv.address().to_string();
    match resolve(&r, &format!("{a}/app:1")).await {
        Outcome::Pinned(d) => assert_eq!(d.to_string(), DIGEST),
        other => panic!("the registry asked for a second of patience, then answered: {other:?}"),
    }
    // Asked twice: the first answer was 429, the retry after Retry-After got the digest.
    assert_eq!(manifest_heads(&srv.received_requests().await.unwrap()), 2);
}

#[tokio::test]
async fn a_registry_that_keeps_answering_429_is_asked_only_as_often_as_it_allows() {
    let srv = MockServer::start().await;
    Mock::given(method("HEAD"))
        .and(path("/v2/app/manifests/1"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1"))
        .mount(&srv)
        .await;
    Mock::given(method("HEAD"))
        .and(path("/v2/app/manifests/2"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "3600"))
        .mount(&srv)
        .await;
    let r = resolver(&srv, |c| {
        c.breaker_threshold = 100;
        c.breaker_cooldown = Duration::from_secs(3600);
    });
    let a = srv.address().to_string();
    match resolve_with(&r, &format!("{a}/app:1"), Duration::from_secs(8), true).await {
        Outcome::Failed(e) => assert!(
            e.to_string()
                .contains("rate limiting (429), retry after 1s"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    let heads = manifest_heads(&srv.received_requests().await.unwrap());
    assert_eq!(
        heads,
        1 + tagpin::resolve::MAX_RATE_LIMIT_RETRIES as usize,
        "one request, then one per Retry-After"
    );
    // A pause longer than a lookup may take is not waited for: one request, and the registry's
    // next tag fails at once without reaching it (the pause is capped at 10 minutes).
    match resolve(&r, &format!("{a}/app:2")).await {
        Outcome::Failed(e) => assert!(e.to_string().contains("rate limiting (429)"), "{e}"),
        other => panic!("{other:?}"),
    }
    match resolve(&r, &format!("{a}/app:3")).await {
        Outcome::Failed(LookupError::BreakerOpen { remaining, .. }) => {
            assert!(remaining <= Duration::from_secs(600), "{remaining:?}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        manifest_heads(&srv.received_requests().await.unwrap()),
        heads + 1
    );
}

#[tokio::test]
async fn bearer_token_flow_and_tokens_are_reused_until_they_expire() {
    let srv = MockServer::start().await;
    let a = srv.address().to_string();
    let challenge = format!(
        r#"Bearer realm="http://{a}/token",service="test-registry",scope="repository:team/app:pull""#
    );
    Mock::given(method("HEAD"))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(ResponseTemplate::new(200).insert_header("Docker-Content-Digest", DIGEST))
        .mount(&srv)
        .await;
    Mock::given(method("HEAD"))
        .respond_with(
            ResponseTemplate::new(401).insert_header("WWW-Authenticate", challenge.as_str()),
        )
        .mount(&srv)
        .await;
    Mock::given(method("GET"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"token": "tok-1", "expires_in": 300})),
        )
        .mount(&srv)
        .await;
    let r = resolver(&srv, |c| c.cache_ttl = Duration::from_millis(1));
    for tag in ["1", "2", "3"] {
        match resolve(&r, &format!("{a}/team/app:{tag}")).await {
            Outcome::Pinned(d) => assert_eq!(d.to_string(), DIGEST),
            other => panic!("{other:?}"),
        }
    }
    let reqs = srv.received_requests().await.unwrap();
    let token_gets: Vec<&Request> = reqs.iter().filter(|r| r.url.path() == "/token").collect();
    assert_eq!(
        token_gets.len(),
        1,
        "one token for three lookups of the same repository"
    );
    let q = token_gets[0].url.query().unwrap_or("");
    assert!(
        q.contains("service=test-registry") && q.contains("scope=repository%3Ateam%2Fapp%3Apull"),
        "{q}"
    );
    // Cold: HEAD 401, token, HEAD 200; warm: one HEAD each.
    assert_eq!(manifest_heads(&reqs), 4);
}

#[tokio::test]
async fn token_endpoint_failure_is_reported_not_swallowed() {
    let srv = MockServer::start().await;
    let a = srv.address().to_string();
    Mock::given(method("HEAD"))
        .respond_with(ResponseTemplate::new(401).insert_header(
            "WWW-Authenticate",
            format!(r#"Bearer realm="http://{a}/token",service="s""#).as_str(),
        ))
        .mount(&srv)
        .await;
    Mock::given(method("GET"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_string("not json"))
        .mount(&srv)
        .await;
    let r = resolver(&srv, |_| {});
    match resolve(&r, &format!("{a}/app:1")).await {
        Outcome::Failed(e) => assert!(
            e.to_string().contains("token endpoint") && e.to_string().contains("not JSON"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_lookup_that_outlives_the_deadline_finishes_and_fills_the_cache() {
    let srv = MockServer::start().await;
    Mock::given(method("HEAD"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("Docker-Content-Digest", DIGEST)
                .set_delay(Duration::from_millis(1200)),
        )
        .mount(&srv)
        .await;
    let r = resolver(&srv, |_| {});
    let image = ImageRef::parse(&format!("{}/slow/app:1", srv.address())).unwrap();
    let short = |r: &Resolver| {
        let im = image.original().to_string();
        let r = r.clone();
        async move { resolve_with(&r, &im, Duration::from_millis(300), false).await }
    };
    match short(&r).await {
        Outcome::Failed(LookupError::Deadline { after, .. }) => {
            assert_eq!(after, Duration::from_millis(300))
        }
        other => panic!("{other:?}"),
    }
    // The abandoned lookup keeps going and fills the cache: the next admission is a hit.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    match short(&r).await {
        Outcome::Pinned(d) => assert_eq!(d.to_string(), DIGEST),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        manifest_heads(&srv.received_requests().await.unwrap()),
        1,
        "one registry request in all"
    );
    assert!(r.metrics().encode().contains("tagpin_cache_hits_total 1"));
}

#[tokio::test]
async fn a_401_on_the_get_fallback_names_the_credential_that_was_sent() {
    // The HEAD answers without a digest; the GET that follows is refused. The refusal is the
    // credential's (here the --docker-config entry), not "anonymous access" for every one tried.
    let srv = MockServer::start().await;
    Mock::given(method("HEAD"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&srv)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/manifests/1.0"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&srv)
        .await;
    let a = srv.address().to_string();
    let config = format!(r#"{{"auths":{{"{a}":{{"username":"bot","password":"pw"}}}}}}"#);
    let r = resolver(&srv, |cfg| {
        cfg.docker_config = tagpin::resolve::credentials::CredentialSet::from_docker_config(
            config.as_bytes(),
            std::path::Path::new("config.json"),
        )
        .unwrap()
    });
    match resolve(&r, &format!("{a}/team/app:1.0")).await {
        Outcome::Failed(e) => assert_eq!(
            e.to_string(),
            format!(
                "registry {a} refused every credential tried: the credential from config.json entry \"{a}\" (401); anonymous access (401)"
            )
        ),
        other => panic!("{other:?}"),
    }
}
