//! A stand-in registry for what a real `docker-registry` will not do on demand: answer
//! `429 Retry-After`. Counts requests per path and the most it had in flight at once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, Uri};

/// What the stand-in saw.
#[derive(Default)]
pub struct Limiter {
    pub requests: Mutex<HashMap<String, usize>>,
    in_flight: AtomicUsize,
    pub most: AtomicUsize,
    pub limited: HashSet<String>,
}

/// Serves the stand-in on 127.0.0.1; returns its address. It answers every request with a digest
/// (the sha256 of the path) after 5 ms, except the first request for each path in `limited`,
/// answered `429 Retry-After: 1`.
pub fn rate_limiting_registry(limited: HashSet<String>) -> (String, Arc<Limiter>) {
    let state = Arc::new(Limiter {
        limited,
        ..Limiter::default()
    });
    let s = state.clone();
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let s = s.clone();
        async move {
            let now = s.in_flight.fetch_add(1, SeqCst) + 1;
            s.most.fetch_max(now, SeqCst);
            let path = uri.path().to_string();
            let seen = {
                let mut m = s.requests.lock().unwrap();
                let n = m.entry(path.clone()).or_default();
                *n += 1;
                *n
            };
            tokio::time::sleep(Duration::from_millis(5)).await;
            s.in_flight.fetch_sub(1, SeqCst);
            let mut h = HeaderMap::new();
            if seen == 1 && s.limited.contains(&path) {
                h.insert("retry-after", "1".parse().unwrap());
                return (StatusCode::TOO_MANY_REQUESTS, h);
            }
            let digest = super::sha256(path.as_bytes());
            h.insert("docker-content-digest", digest.parse().unwrap());
            h.insert(
                "content-type",
                "application/vnd.oci.image.manifest.v1+json"
                    .parse()
                    .unwrap(),
            );
            (StatusCode::OK, h)
        }
    });
    (super::fake_kube::serve_in_thread(app), state)
}
