//! Admission and resolution speed, each against a floor measured in the same run: one raw manifest
//! HEAD (reqwest, keep-alive) against the same real `docker-registry` on loopback.
//!
//! `cargo bench --bench admission` (needs `docker-registry`; the test script installs it).
//! Read the figures as ratios to `floor/raw_manifest_head`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Duration;

use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use tagpin::admission::{
    decide, parse_review, parse_review_with, plan, response, Base64Patch, Endpoint, Reader,
};
use tagpin::pin;
use tagpin::reference::ImageRef;
use tagpin::resolve::{BatchRequest, Budget, ImageOutcome};

// The allocator the binary ships with (src/main.rs), so the figures are the shipped ones.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = Registry::plain();
    let a = reg.addr.clone();
    let images: Vec<String> = rt.block_on(push_bench_images(&reg));
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();

    let mut g = c.benchmark_group("floor");
    g.measurement_time(Duration::from_secs(5));
    let http = reqwest::Client::new();
    let url = format!("http://{a}/v2/web/manifests/1.0");
    g.bench_function("raw_manifest_head", |b| {
        b.to_async(&rt).iter(|| async {
            let r = http
                .head(&url)
                .header("accept", tagpin::resolve::registry::ACCEPT_MANIFESTS)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            black_box(r.headers().get("docker-content-digest").is_some())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("tagpin");
    g.measurement_time(Duration::from_secs(5));
    let adm = admitter(reg.resolver_config(), admission_config());
    let web = vec![images[0].clone()];
    g.bench_function("cold_lookup_one_image", |b| {
        b.to_async(&rt).iter(|| async {
            adm.resolver.clear_cache();
            let out = adm
                .resolver
                .resolve_batch(
                    &BatchRequest::default(),
                    &web,
                    Budget::from_now(Duration::from_secs(5)),
                )
                .await;
            black_box(out)
        })
    });
    let body = serde_json::to_vec(&fixture("pod-create.json", &refs)).unwrap();
    rt.block_on(adm.review(&body, Endpoint::Mutate)).unwrap();
    g.bench_function("cached_admission_4_images", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(adm.review(&body, Endpoint::Mutate).await.unwrap()) })
    });
    let router = router(adm.clone());
    g.bench_function("cached_admission_via_router", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(post(&router, "/mutate", body.clone()).await) })
    });
    // The cached path per container (issue 25): Pods of 1, 4, 16 and 64 containers, each a tag
    // of its own, every tag cached. The cost of an extra container is the slope.
    let many: Vec<String> = rt.block_on(async {
        let p = reg.pusher();
        let mut v = Vec::new();
        for i in 0..64 {
            p.push("many", &format!("v{i}"), Kind::Oci).await;
            v.push(format!("{a}/many:v{i}"));
        }
        v
    });
    for n in [1, 4, 16, 64] {
        let names: Vec<&str> = many[..n].iter().map(String::as_str).collect();
        let body = serde_json::to_vec(&pod_review(&format!("bench-{n}"), &names)).unwrap();
        let warm = rt.block_on(adm.review(&body, Endpoint::Mutate)).unwrap();
        assert!(warm.response.patch.is_some(), "{n} containers pinned");
        g.bench_function(format!("cached_admission_{n}_containers"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(adm.review(&body, Endpoint::Mutate).await.unwrap()) })
        });
    }

    // A Deployment: template paths, the record on object and template.
    let deploy = serde_json::to_vec(&fixture("deployment-create.json", &refs[..2])).unwrap();
    rt.block_on(adm.review(&deploy, Endpoint::Mutate)).unwrap();
    g.bench_function("cached_admission_deployment_2_images", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(adm.review(&deploy, Endpoint::Mutate).await.unwrap()) })
    });

    // A Pod with a pull secret, private registry (htpasswd over HTTPS): the secret comes from the
    // cluster cache (the fake API server of the tests), the digest from the digest cache.
    let private = Registry::tls_basic("bench", "bench-pa55");
    let kube = common::fake_kube::FakeKube::start();
    kube.put_pull_secret("team-a", "regcred", &private.addr, "bench", "bench-pa55");
    let priv_image = rt.block_on(async {
        private.pusher().push("private/app", "1.0", Kind::Oci).await;
        format!("{}/private/app:1.0", private.addr)
    });
    let mut pcfg = private.resolver_config();
    pcfg.cluster = Some(
        rt.block_on(tagpin::cluster::Cluster::from_kubeconfig(
            &kube.kubeconfig(),
            tagpin::cluster::ClusterOptions::default(),
            common::metrics(),
        ))
        .unwrap(),
    );
    let padm = admitter(pcfg, admission_config());
    let mut preview = pod_review("bench-secret", &[&priv_image]);
    preview["request"]["object"]["spec"]["imagePullSecrets"] =
        serde_json::json!([{"name": "regcred"}]);
    let pbody = serde_json::to_vec(&preview).unwrap();
    let warm = rt.block_on(padm.review(&pbody, Endpoint::Mutate)).unwrap();
    assert!(warm.response.patch.is_some(), "pinned with the pull secret");
    g.bench_function("cached_admission_with_pull_secret", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(padm.review(&pbody, Endpoint::Mutate).await.unwrap()) })
    });

    // `tagpin pin` without the lookups: parse 200 documents, plan, edit line by line, re-parse
    // each edited document to verify it.
    let mut text = String::new();
    for n in 0..200 {
        let image = &images[n % images.len()];
        text.push_str(&format!(
            "---\n# service {n}\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d{n}\nspec:\n  template:\n    metadata:\n      labels: {{app: d{n}}}\n    spec:\n      containers:\n      - name: c\n        image: {image} # tracked\n"
        ));
    }
    let batch = rt.block_on(adm.resolver.resolve_batch(
        &BatchRequest::default(),
        &images,
        Budget::from_now(Duration::from_secs(5)),
    ));
    let results: std::collections::HashMap<String, _> = images
        .iter()
        .cloned()
        .zip(batch.outcomes)
        .map(|(i, o)| match o {
            ImageOutcome::Resolved(_, o) => (i, o),
            other => panic!("{other:?}"),
        })
        .collect();
    let opts = pin::Options {
        mode: pin::Action::Pin,
        keep_tag: false,
        skip_prefixes: vec![],
        lookup_timeout: Duration::from_secs(5),
        skip_invalid: false,
        strict: false,
    };
    let source = pin::Source {
        name: "bench.yaml".into(),
        path: None,
        text,
    };
    g.bench_function("pin_render_200_documents", |b| {
        b.iter(|| {
            let plan = pin::plan_file(source.clone());
            let r = pin::render(&plan, &opts, &results);
            assert_eq!((r.pinned, r.edited, r.problems.len()), (200, 200, 0));
            black_box(r.text.len())
        })
    });
    g.finish();

    // The pieces of the cached path (issue 25), no I/O: classifying the 4 images of the cached
    // Pod by parsing each (one pass over the grammar; and with oci-client's `Reference`, a regex,
    // as every first sighting of a string did before `reference/grammar.rs`) against by the
    // resolver's kept parses (what an admission does now); building the answer (decide, the
    // patch, base64, the JSON) from the outcomes, and its base64 alone; and reading the review.
    let mut g = c.benchmark_group("pieces");
    g.measurement_time(Duration::from_secs(3));
    let four: Vec<String> = images.iter().chain(&many).take(4).cloned().collect();
    g.bench_function("parse_4_image_references", |b| {
        b.iter(|| {
            for i in &four {
                black_box(ImageRef::parse(black_box(i)).unwrap());
            }
        })
    });
    g.bench_function("parse_4_image_references_with_the_regex", |b| {
        b.iter(|| {
            for i in &four {
                black_box(oci_client::Reference::try_from(black_box(i.as_str())).unwrap());
            }
        })
    });
    g.bench_function("classify_4_images_seen_before", |b| {
        b.iter(|| {
            for i in &four {
                black_box(adm.resolver.classify(black_box(i)));
            }
        })
    });
    let four_refs: Vec<&str> = four.iter().map(String::as_str).collect();
    let body4 = serde_json::to_vec(&pod_review("bench-answer", &four_refs)).unwrap();
    let (api_version, req) = parse_review(&body4).unwrap();
    let p = plan(&req);
    let sites: Vec<&str> = p.sites.iter().map(|s| s.image.as_str()).collect();
    let outcomes = rt
        .block_on(adm.resolver.resolve_batch(
            &BatchRequest::default(),
            &sites,
            Budget::from_now(Duration::from_secs(5)),
        ))
        .outcomes;
    g.bench_function("answer_4_pins", |b| {
        b.iter(|| {
            let d = decide(&p, &outcomes, Endpoint::Mutate, false);
            let out = response(api_version.clone(), req.uid.clone(), &d);
            black_box(out.to_json())
        })
    });
    // The answer's patch in base64: the SIMD encoder the answer uses, against the base64 crate's
    // (which the answer used until issue 25's fifth pass).
    let patch = decide(&p, &outcomes, Endpoint::Mutate, false).patch;
    g.bench_function("base64_of_the_patch", |b| {
        b.iter(|| black_box(Base64Patch::encode(black_box(patch.as_bytes()))))
    });
    g.bench_function("base64_crate_of_the_patch", |b| {
        use base64::Engine as _;
        b.iter(|| {
            black_box(base64::engine::general_purpose::STANDARD.encode(black_box(patch.as_bytes())))
        })
    });
    // Reading a review (the 4-image Pod of tests/data/pod-create.json): tagpin's reader, which
    // scans the body and keeps only what it reads (the fast reader, and the same pruning driven
    // by serde_json), against serde_json building all of it as a `Value`.
    let review = serde_json::to_vec(&fixture("pod-create.json", &four_refs)).unwrap();
    g.bench_function("read_review_pod_create", |b| {
        b.iter(|| black_box(parse_review(black_box(&review)).unwrap()))
    });
    g.bench_function("read_review_pod_create_with_serde", |b| {
        b.iter(|| black_box(parse_review_with(black_box(&review), Reader::Serde).unwrap()))
    });
    g.bench_function("serde_json_value_of_the_review", |b| {
        b.iter(|| {
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(&review)).unwrap())
        })
    });
    g.finish();
}

criterion_group!(all, benches);
criterion_main!(all);
