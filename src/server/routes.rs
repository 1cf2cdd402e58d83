//! The HTTP handlers: `/mutate` and `/enforce` (a slot per review, a bounded body, the
//! admitter's answer), the probes, and `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt as _;
use tokio::sync::Semaphore;

use super::connection::HEADER_READ_TIMEOUT;
use crate::admission::{Admitter, Endpoint};
use crate::metrics::Metrics;

/// Default largest review body: the API server's own request limit (3 MiB).
pub const DEFAULT_MAX_BODY: usize = 3 << 20;
/// Default cap on reviews being answered at once.
pub const DEFAULT_MAX_CONCURRENT_REVIEWS: usize = 256;

/// Limits on one review request.
#[derive(Clone, Copy, Debug)]
pub struct ReviewLimits {
    pub max_body: usize,
    pub max_concurrent_reviews: usize,
}

impl Default for ReviewLimits {
    fn default() -> Self {
        Self {
            max_body: DEFAULT_MAX_BODY,
            max_concurrent_reviews: DEFAULT_MAX_CONCURRENT_REVIEWS,
        }
    }
}

#[derive(Clone)]
struct AppState {
    admitter: Admitter,
    limits: ReviewLimits,
    slots: Arc<Semaphore>,
}

/// A review's answer: 200 with its JSON.
fn answer(out: &crate::admission::ReviewOut) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        out.to_json(),
    )
        .into_response()
}

fn json_error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn body_too_large(max: usize) -> Response {
    json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("AdmissionReview body larger than {max} bytes (--max-body)"),
    )
}

/// Reads a body of at most `max` bytes by `until`; the error is the answer to send. A body that
/// comes in one frame (most do) is kept as it came, not copied: a view of the connection's read
/// buffer, held while the review is answered (as the copy was).
async fn read_body(body: Body, max: usize, hint: usize, until: Instant) -> Result<Bytes, Response> {
    let mut body = body;
    let mut first = Bytes::new();
    let mut joined: Option<Vec<u8>> = None;
    loop {
        match tokio::time::timeout_at(until.into(), body.frame()).await {
            Err(_) => {
                return Err(json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    "AdmissionReview body not received in time".into(),
                ))
            }
            Ok(None) => return Ok(joined.map_or(first, Bytes::from)),
            Ok(Some(Err(e))) => {
                return Err(json_error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                ))
            }
            Ok(Some(Ok(frame))) => {
                // Trailers, and empty data frames (an HTTP/2 client may end the stream with
                // one): nothing to add, and a body in one frame stays uncopied.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                let have = joined.as_ref().map_or(first.len(), Vec::len);
                if have + data.len() > max {
                    return Err(body_too_large(max));
                }
                match &mut joined {
                    Some(buf) => buf.extend_from_slice(&data),
                    None if first.is_empty() => first = data,
                    None => {
                        let mut buf = Vec::with_capacity(hint.min(max).max(have + data.len()));
                        buf.extend_from_slice(&first);
                        buf.extend_from_slice(&data);
                        first = Bytes::new();
                        joined = Some(buf);
                    }
                }
            }
        }
    }
}

async fn admit(state: &AppState, endpoint: Endpoint, req: Request) -> Response {
    let started = Instant::now();
    let max = state.limits.max_body;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return body_too_large(max);
    }
    let hint = declared.unwrap_or(64 << 10);
    let budget = state.admitter.config.resolve_timeout;
    let deadline = started + budget;
    // Wait for a slot before reading the body: waiting reviews hold no body. At most three
    // quarters of the deadline, so a review that gets a slot still has time to resolve.
    let slot_by = started + budget.mul_f64(0.75);
    let slot = tokio::time::timeout_at(slot_by.into(), state.slots.acquire()).await;
    match slot {
        Ok(Ok(_slot)) => {
            let body = match read_body(req.into_body(), max, hint, deadline).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match state.admitter.review_since(&body, endpoint, started).await {
                Ok(out) => answer(&out),
                Err(e) => json_error(StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
        _ => {
            let until = Instant::now() + HEADER_READ_TIMEOUT;
            let body = match read_body(req.into_body(), max, hint, until).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let limit = state.limits.max_concurrent_reviews;
            match state.admitter.overloaded(&body, endpoint, started, limit) {
                Ok(out) => answer(&out),
                Err(e) => json_error(StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
    }
}

async fn mutate(State(s): State<AppState>, req: Request) -> Response {
    admit(&s, Endpoint::Mutate, req).await
}

async fn enforce(State(s): State<AppState>, req: Request) -> Response {
    admit(&s, Endpoint::Enforce, req).await
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(ready): State<Arc<AtomicBool>>) -> Response {
    if ready.load(Ordering::Relaxed) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    }
}

/// `/mutate` and `/enforce` without the router: `serve`'s connections hand review POSTs to it
/// directly (the router's dispatch costs about a tenth of a cached admission) and everything
/// else to the router, which answers the same two routes the same way.
///
/// One `Arc` for the whole state: cloned for every review by the threads answering them, its
/// reference count is a cache line they share, so there is one count to move, not four.
#[derive(Clone)]
pub struct Reviews(Arc<AppState>);

impl Reviews {
    pub fn new(admitter: Admitter, limits: ReviewLimits) -> Self {
        let slots = Arc::new(Semaphore::new(limits.max_concurrent_reviews.max(1)));
        Self(Arc::new(AppState {
            admitter,
            limits,
            slots,
        }))
    }

    /// The endpoint `req` is a review for: a POST to `/mutate` or `/enforce` (any query, as
    /// the API server adds `?timeout=`); `None` for every other request.
    pub fn endpoint<B>(req: &axum::http::Request<B>) -> Option<Endpoint> {
        if req.method() != axum::http::Method::POST {
            return None;
        }
        match req.uri().path() {
            "/mutate" => Some(Endpoint::Mutate),
            "/enforce" => Some(Endpoint::Enforce),
            _ => None,
        }
    }

    /// The answer to a review request for `endpoint`.
    pub async fn answer(&self, endpoint: Endpoint, req: Request) -> Response {
        admit(&self.0, endpoint, req).await
    }

    /// The router answering these reviews (`/mutate`, `/enforce`) and the probes.
    pub fn router(&self, ready: Arc<AtomicBool>) -> Router {
        let probes = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(ready);
        Router::new()
            .route("/mutate", post(mutate))
            .route("/enforce", post(enforce))
            .with_state(AppState::clone(&self.0))
            .merge(probes)
    }
}

/// The admission router (no TLS, no socket) with default limits: tests drive it with `oneshot`.
pub fn router(admitter: Admitter, ready: Arc<AtomicBool>) -> Router {
    router_with(admitter, ready, ReviewLimits::default())
}

/// The admission router with the given limits.
pub fn router_with(admitter: Admitter, ready: Arc<AtomicBool>, limits: ReviewLimits) -> Router {
    Reviews::new(admitter, limits).router(ready)
}

/// `/metrics`, `/healthz` and `/readyz` over plain HTTP.
pub fn metrics_router(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    m.record_log_lines_dropped(crate::logging::dropped_lines());
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::AdmissionConfig;
    use crate::resolve::{Resolver, ResolverConfig};

    /// A body sent as these frames, one per poll (a chunked POST).
    struct Frames(std::collections::VecDeque<Bytes>);

    impl axum::body::HttpBody for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }

    async fn read(frames: &[&'static str], max: usize) -> Result<Bytes, StatusCode> {
        let body = Body::new(Frames(
            frames
                .iter()
                .map(|f| Bytes::from_static(f.as_bytes()))
                .collect(),
        ));
        let until = Instant::now() + std::time::Duration::from_secs(5);
        read_body(body, max, 4, until).await.map_err(|r| r.status())
    }

    #[tokio::test]
    async fn a_body_is_read_whole_from_its_frames_and_one_frame_is_not_copied() {
        assert_eq!(read(&[], 10).await, Ok(Bytes::new()));
        assert_eq!(read(&["", "ab", ""], 10).await, Ok(Bytes::from("ab")));
        assert_eq!(
            read(&["ab", "cd", "", "efg"], 10).await,
            Ok(Bytes::from("abcdefg"))
        );
        // Kept as it came: the same bytes, not a copy of them.
        const ONE: &str = "{\"kind\":\"AdmissionReview\"}";
        let body = read(&[ONE], 100).await.unwrap();
        assert_eq!(body.as_ptr(), ONE.as_ptr());
        let body = read(&["", ONE, ""], 100).await.unwrap();
        assert_eq!(body.as_ptr(), ONE.as_ptr());
        // Past `max`, in any frame: 413.
        assert_eq!(
            read(&["abcdefghijk"], 10).await,
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        );
        assert_eq!(
            read(&["abcde", "fghijk"], 10).await,
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        );
        assert_eq!(
            read(&["abc", "def", "ghi", "jk"], 10).await,
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        );
        assert_eq!(
            read(&["abcde", "fghij"], 10).await,
            Ok(Bytes::from("abcdefghij"))
        );
    }

    /// A review POST's future is boxed once per request (`server/mod.rs`) and moved whole while
    /// it is built, nested future by nested future. The Kubernetes reads, plugin runs and stale
    /// reads that only some admissions need are boxed where they are awaited, so a cached
    /// admission does not carry (and copy) their space: 14,584 bytes before they were.
    #[test]
    fn the_future_of_a_review_stays_small() {
        crate::install_crypto_provider();
        let metrics = Arc::new(Metrics::new());
        let admitter = Admitter {
            resolver: Resolver::new(ResolverConfig::default(), metrics.clone()).unwrap(),
            config: Arc::new(AdmissionConfig {
                keep_tag: false,
                resolve_timeout: std::time::Duration::from_secs(5),
                stale_on_error: true,
            }),
            metrics,
        };
        let reviews = Reviews::new(admitter, ReviewLimits::default());
        let answer = reviews.answer(Endpoint::Mutate, Request::new(Body::empty()));
        let size = std::mem::size_of_val(&answer);
        assert!(size <= 4096, "a review's future takes {size} bytes");
    }
}
