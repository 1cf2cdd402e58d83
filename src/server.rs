//! HTTPS admission endpoints and the plain-HTTP metrics listener: bounded requests, bounded
//! connections, and a drain that answers every request already sent.
//!
//! Each listener runs its own accept loop (a flood on one cannot starve the other) with:
//! * at most `max_connections` open connections (a semaphore taken before `accept`, so excess
//!   connections wait in the kernel's backlog instead of costing file descriptors);
//! * a TLS handshake timeout ([`TLS_HANDSHAKE_TIMEOUT`]);
//! * a request-head timeout ([`HEADER_READ_TIMEOUT`], HTTP/1): from the first byte of a request
//!   until its head is parsed, not reset by bytes that trickle in;
//! * an idle timeout ([`IDLE_TIMEOUT`]): a connection with no request for that long is closed.
//!
//! Drain (after the shutdown signal): no new connections; every request already on an open
//! connection is read and answered. HTTP/1 answers carry `Connection: close` and the connection
//! closes after one; a connection with no request in progress is closed once it has been quiet
//! for [`DRAIN_QUIET`] (never while a request's bytes are arriving: hyper's own graceful shutdown
//! would drop those, hyperium/hyper#3792). HTTP/2 connections get a GOAWAY naming the last stream
//! that will be answered. What is still open when `--shutdown-grace` ends is closed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_server::tls_rustls::RustlsConfig;
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::admission::{Admitter, Endpoint};
use crate::metrics::Metrics;
use crate::tls;

/// Default largest review body: the API server's own request limit (3 MiB).
pub const DEFAULT_MAX_BODY: usize = 3 << 20;
/// Default cap on reviews being answered at once.
pub const DEFAULT_MAX_CONCURRENT_REVIEWS: usize = 256;
/// Default cap on open connections, per listener (the metrics listener takes at most
/// [`METRICS_MAX_CONNECTIONS`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 2048;
/// Open connections on the metrics/probe listener.
pub const METRICS_MAX_CONNECTIONS: usize = 64;
/// A TLS handshake must finish within this.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A request head must arrive whole within this of its first byte.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection without a request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// While draining, an HTTP/1 connection with no request in progress is closed after this long
/// without a byte.
pub const DRAIN_QUIET: Duration = Duration::from_millis(500);
/// File descriptors kept back from `--max-connections` for registry lookups, plugins and the
/// metrics listener.
pub const FD_RESERVE: u64 = 512;
/// How often each connection's timers are looked at.
const WATCHDOG_TICK: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_reload_interval: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Largest review body, in bytes (413 beyond).
    pub max_body: usize,
    /// Reviews answered at once; more wait for a slot within their deadline.
    pub max_concurrent_reviews: usize,
    /// Open connections on the review listener.
    pub max_connections: usize,
    /// When set, the review listener requires a client certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("--tls-cert and --tls-key go together: give both or neither")]
    HalfPair,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

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

fn json_error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn body_too_large(max: usize) -> Response {
    json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("AdmissionReview body larger than {max} bytes (--max-body)"),
    )
}

/// Reads a body of at most `max` bytes by `until`; the error is the answer to send.
async fn read_body(
    body: Body,
    max: usize,
    hint: usize,
    until: Instant,
) -> Result<Vec<u8>, Response> {
    let mut body = body;
    let mut buf = Vec::with_capacity(hint.min(max));
    loop {
        match tokio::time::timeout_at(until.into(), body.frame()).await {
            Err(_) => {
                return Err(json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    "AdmissionReview body not received in time".into(),
                ))
            }
            Ok(None) => return Ok(buf),
            Ok(Some(Err(e))) => {
                return Err(json_error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                ))
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > max {
                        return Err(body_too_large(max));
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

async fn admit(state: &AppState, mode: Endpoint, req: Request) -> Response {
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
    let slot = tokio::time::timeout_at(slot_by.into(), state.slots.clone().acquire_owned()).await;
    match slot {
        Ok(Ok(_slot)) => {
            let body = match read_body(req.into_body(), max, hint, deadline).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match state.admitter.review_since(&body, mode, started).await {
                Ok(out) => Json(out).into_response(),
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
            match state.admitter.overloaded(&body, mode, started, limit) {
                Ok(out) => Json(out).into_response(),
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

/// The admission router (no TLS, no socket) with default limits: tests drive it with `oneshot`.
pub fn router(admitter: Admitter, ready: Arc<AtomicBool>) -> Router {
    router_with(admitter, ready, ReviewLimits::default())
}

/// The admission router with the given limits.
pub fn router_with(admitter: Admitter, ready: Arc<AtomicBool>, limits: ReviewLimits) -> Router {
    let probes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ready.clone());
    let slots = Arc::new(Semaphore::new(limits.max_concurrent_reviews.max(1)));
    Router::new()
        .route("/mutate", post(mutate))
        .route("/enforce", post(enforce))
        .with_state(AppState {
            admitter,
            limits,
            slots,
        })
        .merge(probes)
}

/// `/metrics`, `/healthz` and `/readyz` over plain HTTP.
pub fn metrics_router(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
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

/// Raises the open-file soft limit to the hard limit; returns the soft limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::Resource::NOFILE.get_soft().ok()
        }
    }
}

/// `--max-connections`, lowered so that connections leave [`FD_RESERVE`] descriptors free.
pub fn effective_max_connections(wanted: usize, fd_limit: Option<u64>) -> usize {
    let wanted = wanted.max(1);
    match fd_limit {
        Some(n) => {
            let room = n.saturating_sub(FD_RESERVE).max(16);
            wanted.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
        None => wanted,
    }
}

/// Serves until `shutdown` resolves, then drains (see the module docs) and returns.
pub async fn serve(
    cfg: ServeConfig,
    admitter: Admitter,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let client_ca = match &cfg.client_ca {
        Some(path) => {
            let v = tls::client_verifier(path)?;
            tracing::info!(ca = %path.display(), "review listener requires client certificates signed by this CA");
            Some(v)
        }
        None => None,
    };
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => {
            let (server_cfg, hash) = tls::load(cert, key, client_ca.clone())?;
            let tls = RustlsConfig::from_config(server_cfg);
            tokio::spawn(tls::reload_loop(
                tls.clone(),
                cert.clone(),
                key.clone(),
                cfg.tls_reload_interval,
                hash,
                client_ca.clone(),
            ));
            tracing::info!(cert = %cert.display(), key = %key.display(), every = ?cfg.tls_reload_interval, "serving certificate loaded; reloaded when the files change");
            tls
        }
        (None, None) => {
            let (c, k) = tls::self_signed()?;
            tracing::warn!("no --tls-cert/--tls-key given: serving a self-signed certificate for localhost made in memory (fine on a laptop; a cluster needs a real one)");
            RustlsConfig::from_config(tls::server_config_with(
                &c,
                &k,
                ("generated", "generated"),
                client_ca.clone(),
            )?)
        }
        _ => return Err(ServeError::HalfPair),
    };

    let fd_limit = raise_fd_limit();
    let max_connections = effective_max_connections(cfg.max_connections, fd_limit);
    if max_connections < cfg.max_connections {
        tracing::warn!(
            wanted = cfg.max_connections,
            open_file_limit = fd_limit.unwrap_or(0),
            using = max_connections,
            "--max-connections lowered to fit the open-file limit"
        );
    }

    let ready = Arc::new(AtomicBool::new(false));
    // Before /readyz turns ready: the first admission should not pay for one-time set-up.
    crate::reference::warm_up();
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })
    };
    let review_listener = bind(cfg.listen).await?;
    let metrics_listener = bind(cfg.metrics_listen).await?;
    let addr = review_listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;

    let (drain_tx, drain_rx) = watch::channel(false);
    let grace = cfg.shutdown_grace;
    {
        let ready = ready.clone();
        tokio::spawn(async move {
            shutdown.await;
            ready.store(false, Ordering::Relaxed);
            tracing::info!(grace = ?grace, "shutting down: no new connections, answering every request already sent");
            let _ = drain_tx.send(true);
        });
    }

    let limits = ReviewLimits {
        max_body: cfg.max_body,
        max_concurrent_reviews: cfg.max_concurrent_reviews,
    };
    let reviews = Listener {
        name: "review",
        tcp: review_listener,
        tls: Some(tls),
        app: router_with(admitter, ready.clone(), limits),
        max_connections,
    };
    let probes = Listener {
        name: "metrics",
        tcp: metrics_listener,
        tls: None,
        app: metrics_router(metrics, ready.clone()),
        max_connections: METRICS_MAX_CONNECTIONS.min(max_connections),
    };
    let a = tokio::spawn(reviews.run(drain_rx.clone(), grace));
    let b = tokio::spawn(probes.run(drain_rx, grace));
    ready.store(true, Ordering::Relaxed);
    tracing::info!(max_connections, "admission reviews on https://{addr} (POST /mutate, /enforce); metrics on http://{metrics_addr}/metrics");
    let (a, b) = tokio::join!(a, b);
    for r in [a, b] {
        if let Err(join) = r {
            return Err(ServeError::Io(std::io::Error::other(join.to_string())));
        }
    }
    Ok(())
}

struct Listener {
    name: &'static str,
    tcp: TcpListener,
    tls: Option<RustlsConfig>,
    app: Router,
    max_connections: usize,
}

/// Shared by the connections of one listener.
struct Shared {
    app: Router,
    tls: Option<RustlsConfig>,
    draining: AtomicBool,
    drain: watch::Receiver<bool>,
    force: watch::Receiver<bool>,
}

impl Listener {
    async fn run(self, mut drain: watch::Receiver<bool>, grace: Duration) {
        let max = u32::try_from(self.max_connections)
            .unwrap_or(u32::MAX)
            .max(1);
        let slots = Arc::new(Semaphore::new(max as usize));
        let (force_tx, force_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            app: self.app,
            tls: self.tls,
            draining: AtomicBool::new(false),
            drain: drain.clone(),
            force: force_rx,
        });
        let mut last_accept_error: Option<Instant> = None;
        loop {
            let slot = tokio::select! {
                biased;
                _ = drain.wait_for(|d| *d) => break,
                s = slots.clone().acquire_owned() => s,
            };
            let Ok(slot) = slot else { break };
            let accepted = tokio::select! {
                biased;
                _ = drain.wait_for(|d| *d) => break,
                a = self.tcp.accept() => a,
            };
            match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(stream, shared.clone(), slot));
                }
                Err(e) => {
                    // Out of descriptors (or a connection reset before accept): say so once a
                    // second at most, and give closing connections a moment.
                    if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                        tracing::warn!(listener = self.name, error = %e, "accept failed");
                        last_accept_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        // Stop listening: new connections are refused from here on.
        drop(self.tcp);
        shared.draining.store(true, Ordering::SeqCst);
        let all = slots.acquire_many(max);
        let done = tokio::time::timeout(grace, all).await.is_ok();
        if !done {
            let open = max as usize - slots.available_permits();
            tracing::warn!(
                listener = self.name,
                open,
                "shutdown grace over: closing the connections still open"
            );
            let _ = force_tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(1), slots.acquire_many(max)).await;
        }
    }
}

/// Timestamps of one connection, in milliseconds since it was accepted.
struct ConnState {
    epoch: Instant,
    last_io: AtomicU64,
    /// 1 + when the first byte of a request head arrived; 0 when no head is pending.
    head_since: AtomicU64,
    /// When a request last started or finished.
    last_request: AtomicU64,
    in_flight: AtomicUsize,
}

impl ConnState {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_io: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            last_request: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            now: self.now(),
            last_io: self.last_io.load(Ordering::Relaxed),
            head_since: self.head_since.load(Ordering::SeqCst),
            last_request: self.last_request.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::SeqCst),
        }
    }
    fn on_read(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let _ =
                self.head_since
                    .compare_exchange(0, now + 1, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
    fn on_write(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }
    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(0, Ordering::SeqCst);
        self.last_request.store(self.now(), Ordering::Relaxed);
    }
    fn request_finished(&self) {
        self.last_request.store(self.now(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One look at a connection's timers (milliseconds since it was accepted).
#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    now: u64,
    last_io: u64,
    /// 1 + when the pending request head began; 0 when none is pending.
    head_since: u64,
    last_request: u64,
    in_flight: usize,
}

/// What the watchdog does with a connection.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// Close now, without an answer: a request head took longer than [`HEADER_READ_TIMEOUT`].
    Drop,
    /// Close once nothing is under way (HTTP/2: GOAWAY first).
    Close,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The head, idle and drain rules. Pure.
fn verdict(s: &Snapshot, h2: bool, draining: bool) -> Verdict {
    if s.in_flight > 0 {
        return Verdict::Keep;
    }
    let head_pending = s.head_since > 0;
    if !h2 && head_pending && s.now.saturating_sub(s.head_since - 1) > ms(HEADER_READ_TIMEOUT) {
        return Verdict::Drop;
    }
    let idle = s.now.saturating_sub(s.last_request);
    let quiet = s.now.saturating_sub(s.last_io);
    let drained = draining && !h2 && !head_pending && quiet >= ms(DRAIN_QUIET);
    if (idle >= ms(IDLE_TIMEOUT) && !head_pending) || drained {
        return Verdict::Close;
    }
    Verdict::Keep
}

/// Decrements `in_flight` even when the request future is dropped.
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The connection's byte stream, noting when bytes move.
struct Tracked<I> {
    io: I,
    state: Arc<ConnState>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.state.on_write();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.state.on_write();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

async fn connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    match &shared.tls {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.get_inner());
            let mut force = shared.force.clone();
            let tls_stream = tokio::select! {
                _ = force.wait_for(|f| *f) => return,
                r = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                },
            };
            let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
            drive(tls_stream, h2, shared).await;
        }
        None => drive(stream, false, shared).await,
    }
}

/// Serves one connection until it ends, applying the head and idle timeouts and the drain.
async fn drive<I>(io: I, h2: bool, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::new());
    let io = Tracked {
        io,
        state: state.clone(),
    };
    let service = {
        let shared = shared.clone();
        let state = state.clone();
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let shared = shared.clone();
            state.request_started();
            let guard = InFlight(state.clone());
            async move {
                use tower::ServiceExt as _;
                let resp = shared.app.clone().oneshot(req.map(Body::new)).await;
                let mut resp = match resp {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                if !h2 && shared.draining.load(Ordering::SeqCst) {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                drop(guard);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The head timeout is ours (below): hyper's also runs while a keep-alive connection
        // waits for its next request, which would make the idle timeout 5 s.
        .header_read_timeout(None)
        .max_buf_size(64 << 10)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .max_header_list_size(64 << 10)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = if shared.tls.is_none() {
        builder.http1_only()
    } else {
        builder
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut drain = shared.drain.clone();
    let mut force = shared.force.clone();
    let mut tick = tokio::time::interval(WATCHDOG_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = force.wait_for(|f| *f) => return,
            _ = drain.wait_for(|d| *d), if !draining => {
                draining = true;
                shared.draining.store(true, Ordering::SeqCst);
                if h2 && !closing {
                    // GOAWAY: streams already opened are answered, no new ones are accepted.
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = tick.tick() => {
                if closing {
                    continue;
                }
                match verdict(&state.snapshot(), h2, draining) {
                    Verdict::Keep => {}
                    Verdict::Drop => {
                        tracing::debug!("request head not received in time: closing the connection");
                        return;
                    }
                    Verdict::Close => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_idle_and_drain_rules() {
        let s = |now, last_io, head_since, last_request, in_flight| Snapshot {
            now,
            last_io,
            head_since,
            last_request,
            in_flight,
        };
        // A head that began at 1,000 ms and is still trickling at 6,001 ms (last byte just now):
        // bytes arriving do not reset the timer.
        assert_eq!(
            verdict(&s(6_001, 6_000, 1_001, 0, 0), false, false),
            Verdict::Drop
        );
        assert_eq!(
            verdict(&s(5_999, 5_998, 1_001, 0, 0), false, false),
            Verdict::Keep
        );
        // Not for HTTP/2 (frames such as PING are not a request head), nor while a request runs.
        assert_eq!(
            verdict(&s(6_001, 6_000, 1_001, 0, 0), true, false),
            Verdict::Keep
        );
        assert_eq!(
            verdict(&s(6_001, 6_000, 1_001, 0, 1), false, false),
            Verdict::Keep
        );
        // Idle: 90 s after the last request, whatever the protocol.
        assert_eq!(verdict(&s(89_999, 0, 0, 0, 0), false, false), Verdict::Keep);
        assert_eq!(
            verdict(&s(90_000, 0, 0, 0, 0), false, false),
            Verdict::Close
        );
        assert_eq!(
            verdict(&s(90_000, 80_000, 0, 0, 0), true, false),
            Verdict::Close
        );
        // Draining: an HTTP/1 connection quiet for 0.5 s with nothing under way is closed;
        // one whose next request is arriving, or that spoke just now, is not.
        assert_eq!(
            verdict(&s(10_500, 10_000, 0, 9_000, 0), false, true),
            Verdict::Close
        );
        assert_eq!(
            verdict(&s(10_400, 10_000, 0, 9_000, 0), false, true),
            Verdict::Keep
        );
        assert_eq!(
            verdict(&s(10_600, 10_000, 10_001, 9_000, 0), false, true),
            Verdict::Keep
        );
        assert_eq!(
            verdict(&s(10_600, 10_000, 0, 9_000, 1), false, true),
            Verdict::Keep
        );
        // HTTP/2 drains through GOAWAY instead.
        assert_eq!(
            verdict(&s(10_600, 10_000, 0, 9_000, 0), true, true),
            Verdict::Keep
        );
    }

    #[test]
    fn connections_leave_descriptors_free() {
        assert_eq!(effective_max_connections(2048, Some(1_048_576)), 2048);
        assert_eq!(effective_max_connections(2048, Some(1024)), 512);
        assert_eq!(effective_max_connections(2048, Some(100)), 16);
        assert_eq!(effective_max_connections(0, None), 1);
    }
}
