//! HTTP/2 against a real registry (issue 22, target 5's "HTTP/2 where the registry offers it"):
//! the distribution registry v3 (`scripts/registry3`), serving TLS with its own test CA on
//! 127.0.0.1, negotiates h2; Debian's docker-registry 2.8 does not. A counting TCP pipe
//! (`tests/common/forward.rs`) between tagpin and the registry counts the connections tagpin
//! opens; the registry's own access log says which protocol each request came over.

mod common;

use common::forward::Forward;
use common::*;

/// Manifest requests in the registry's access log, and how many of them came over HTTP/2.
fn manifest_requests_by_protocol(reg: &Registry) -> (usize, usize) {
    let log = std::fs::read_to_string(reg.dir.path().join("access.log")).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("127.0.0.1 - ") && l.contains("\"HEAD /v2/app/manifests/"))
        .collect();
    let h2 = lines.iter().filter(|l| l.contains(" HTTP/2.0\"")).count();
    (lines.len(), h2)
}

fn tls_registry_v3(http2: bool) -> Registry {
    Registry::v3(
        RegistryOptions {
            tls: true,
            htpasswd: None,
            token: None,
        },
        http2,
    )
}

/// An uncached admission of a pod with 16 new tags (`{prefix}0`..`{prefix}15`) on `reg`, through
/// `pipe`; every image must be pinned to the digest pushed.
async fn admit_16_new_tags(reg: &Registry, pipe: &Forward, router: &axum::Router, prefix: &str) {
    let pusher = reg.pusher();
    let mut digests = Vec::new();
    for i in 0..16 {
        digests.push(pusher.push("app", &format!("{prefix}{i}"), Kind::Oci).await);
    }
    let images: Vec<String> = (0..16)
        .map(|i| format!("{}/app:{prefix}{i}", pipe.addr))
        .collect();
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();
    let review_ = pod_review(prefix, &refs);
    let resp = review(router, "/mutate", &review_).await;
    let pod = apply(&review_, &resp);
    for (i, d) in digests.iter().enumerate() {
        assert_eq!(
            pod["spec"]["containers"][i]["image"],
            format!("{}/app@{d}", pipe.addr),
            "app:{prefix}{i}: {resp}"
        );
    }
    assert!(warnings(&resp).is_empty(), "{resp}");
}

/// tagpin's first contact with `reg`: an uncached admission of 16 images. Returns the pipe, the
/// router (holding its connections), the connections opened and the registry's (manifest
/// requests, over HTTP/2).
async fn first_admission_of_16(reg: &Registry) -> (Forward, axum::Router, usize, (usize, usize)) {
    let pipe = Forward::start(&reg.addr).await;
    let router = router(admitter(reg.resolver_config(), admission_config()));
    admit_16_new_tags(reg, &pipe, &router, "v").await;
    reg.count("\"HEAD /v2/app/manifests/"); // waits for the access log to settle
    let connections = pipe.connections();
    (
        pipe,
        router,
        connections,
        manifest_requests_by_protocol(reg),
    )
}

#[tokio::test]
async fn sixteen_lookups_on_an_http2_registry_share_one_connection_once_it_is_open() {
    let reg = tls_registry_v3(true);
    let (pipe, router, connections, (requests, over_h2)) = first_admission_of_16(&reg).await;
    assert_eq!(requests, 16, "one HEAD per image");
    assert_eq!(over_h2, 16, "every lookup went over HTTP/2");
    // The first contact is not held back to save handshakes: the lookups go at once, each may
    // open its own connection before the pool knows the registry speaks h2; never more than the
    // lookups allowed in flight on one registry (--max-lookups-per-registry, 16).
    let limit = tagpin::resolve::ResolverConfig::default().max_lookups_per_registry;
    println!("first admission of 16 images over HTTP/2: {connections} connections opened");
    assert!(
        (1..=limit).contains(&connections),
        "16 lookups to one HTTP/2 registry opened {connections} connections (limit {limit})"
    );
    // The next uncached admission (a warm miss) rides a connection the pool kept.
    admit_16_new_tags(&reg, &pipe, &router, "w").await;
    assert_eq!(
        pipe.connections(),
        connections,
        "the warm miss opened a connection"
    );
    reg.count("\"HEAD /v2/app/manifests/w");
    assert_eq!(
        manifest_requests_by_protocol(&reg),
        (32, 32),
        "every lookup over HTTP/2"
    );
}

/// The negative control: the same registry with `http.http2.disabled`. The pipe and the log see
/// HTTP/1.1 and a connection per lookup in flight, so the counts above are the h2 path's.
#[tokio::test]
async fn with_http2_disabled_the_same_admission_is_http1_over_several_connections() {
    let reg = tls_registry_v3(false);
    let (_pipe, _router, connections, (requests, over_h2)) = first_admission_of_16(&reg).await;
    assert_eq!(requests, 16, "one HEAD per image");
    assert_eq!(over_h2, 0, "HTTP/2 disabled: every lookup over HTTP/1.1");
    assert!(
        connections > 1,
        "HTTP/1.1 lookups at once need a connection each; saw {connections}"
    );
}
