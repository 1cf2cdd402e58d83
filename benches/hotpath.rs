//! The cached path in process, counted rather than timed: `ITERATIONS` (default 20,000) cached
//! admissions of the 4-image Pod review of `tests/data/pod-create.json` (body in, answer bytes
//! out, as `tagpin serve` answers a review POST, without the socket and TLS; `VIA=router`: through
//! the axum router instead), against a real `docker-registry` that resolves the tags once.
//!
//! Timing on a shared 2-core machine moves by more than the gains it is meant to show; counted
//! instructions do not. Run it twice under callgrind and take the difference:
//!
//! ```text
//! cargo bench --bench hotpath --no-run
//! B=$(ls -t target/release/deps/hotpath-* | grep -v '\.d$' | head -1)
//! for n in 2000 12000; do ITERATIONS=$n valgrind --tool=callgrind \
//!   --callgrind-out-file=/tmp/hot.$n $B 2>&1 | grep refs; done
//! ```
//!
//! (instructions of the second minus the first, over 10,000: instructions per admission; and
//! `callgrind_annotate --inclusive=yes /tmp/hot.12000` says where they go.) Run plainly, it
//! prints the wall time per admission.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use axum::body::Body;
use axum::http::Request;
use common::*;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

// The allocator the binary ships with (src/main.rs), so the counts are the shipped ones.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    // `cargo bench` passes `--bench`; a filter that names another bench skips this one.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"hotpath".contains(&a))
    {
        return;
    }
    let iterations: usize = std::env::var("ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reg = Registry::plain();
    let images: Vec<String> = rt.block_on(push_bench_images(&reg));
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();
    let adm = admitter(reg.resolver_config(), admission_config());
    let body = serde_json::to_vec(&fixture("pod-create.json", &refs)).unwrap();
    // As `tagpin serve` answers a review POST (src/server/mod.rs), or through the router with
    // VIA=router.
    let via_router = std::env::var("VIA").is_ok_and(|v| v == "router");
    let reviews = tagpin::server::Reviews::new(adm.clone(), Default::default());
    let router = router(adm);
    let answer = |body: Vec<u8>| {
        let router = router.clone();
        let reviews = reviews.clone();
        async move {
            let req = Request::post("/mutate?timeout=10s")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            let resp = match tagpin::server::Reviews::endpoint(&req) {
                Some(endpoint) if !via_router => reviews.answer(endpoint, req).await,
                _ => router.oneshot(req).await.unwrap(),
            };
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap().to_bytes()
        }
    };
    let first = rt.block_on(answer(body.clone()));
    assert!(
        std::str::from_utf8(&first).unwrap().contains("\"patch\""),
        "the tags resolve: {first:?}"
    );
    let started = Instant::now();
    let mut bytes = 0;
    rt.block_on(async {
        for _ in 0..iterations {
            bytes += answer(body.clone()).await.len();
        }
    });
    let took = started.elapsed();
    println!(
        "hotpath: {iterations} cached 4-image admissions ({}), {:.2} us each ({} answer bytes)",
        if via_router {
            "through the router"
        } else {
            "as serve answers them"
        },
        took.as_secs_f64() * 1e6 / iterations as f64,
        bytes / iterations.max(1)
    );
}
