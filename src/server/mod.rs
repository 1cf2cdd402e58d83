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
//!
//! `routes.rs` holds the handlers, `listener.rs` the accept loops and their drain,
//! `connection.rs` one connection's timers, `workers.rs` the threads review connections are
//! served on; which certificate is served is `crate::tls`'s.

mod connection;
mod listener;
mod routes;
mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::Admitter;
use crate::metrics::Metrics;
use crate::tls;
use connection::App;
use listener::{connection_limit, Listener};
use workers::Workers;

pub use workers::WorkersError;

pub use connection::{DRAIN_QUIET, HEADER_READ_TIMEOUT, IDLE_TIMEOUT, TLS_HANDSHAKE_TIMEOUT};
pub use listener::{
    effective_max_connections, raise_fd_limit, DEFAULT_MAX_CONNECTIONS, FD_RESERVE,
    METRICS_MAX_CONNECTIONS,
};
pub use routes::{
    metrics_router, router, router_with, ReviewLimits, Reviews, DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONCURRENT_REVIEWS,
};

/// Every request answered by `router`.
fn router_app(router: axum::Router) -> App {
    Arc::new(move |req| {
        use tower::ServiceExt as _;
        let router = router.clone();
        Box::pin(async move {
            match router.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
        })
    })
}

/// Review POSTs answered by `reviews` without the router (its dispatch costs about a tenth of a
/// cached admission), every other request by the router (the probes, and the answers a router
/// gives: 404, 405).
fn review_app(reviews: Reviews, ready: Arc<AtomicBool>) -> App {
    let router = router_app(reviews.router(ready));
    Arc::new(move |req| match Reviews::endpoint(&req) {
        Some(endpoint) => {
            let reviews = reviews.clone();
            Box::pin(async move { reviews.answer(endpoint, req).await })
        }
        None => router(req),
    })
}

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
    /// Threads serving the review listener's connections, each with a runtime of its own.
    pub review_threads: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Workers(#[from] WorkersError),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves until `shutdown` resolves, then drains (see the module docs) and returns.
pub async fn serve(
    cfg: ServeConfig,
    admitter: Admitter,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = tls::for_reviews(
        cfg.tls_cert.as_deref(),
        cfg.tls_key.as_deref(),
        cfg.tls_reload_interval,
        cfg.client_ca.as_deref(),
        metrics.tls_not_after.clone(),
    )?;
    let max_connections = connection_limit(cfg.max_connections);
    let ready = Arc::new(AtomicBool::new(false));
    let review_listener = bind(cfg.listen).await?;
    let metrics_listener = bind(cfg.metrics_listen).await?;
    let addr = review_listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;
    let grace = cfg.shutdown_grace;
    let drain = drain_on(shutdown, ready.clone(), grace);
    let limits = ReviewLimits {
        max_body: cfg.max_body,
        max_concurrent_reviews: cfg.max_concurrent_reviews,
    };
    let reviews = Listener {
        name: "review",
        tcp: review_listener,
        tls: Some(tls),
        app: review_app(Reviews::new(admitter, limits), ready.clone()),
        max_connections,
        workers: Some(Workers::start(cfg.review_threads)?),
    };
    let probes = Listener {
        name: "metrics",
        tcp: metrics_listener,
        tls: None,
        app: router_app(metrics_router(metrics, ready.clone())),
        max_connections: METRICS_MAX_CONNECTIONS.min(max_connections),
        workers: None,
    };
    let a = tokio::spawn(reviews.run(drain.clone(), grace));
    let b = tokio::spawn(probes.run(drain, grace));
    ready.store(true, Ordering::Relaxed);
    tracing::info!(max_connections, review_threads = cfg.review_threads, "admission reviews on https://{addr} (POST /mutate, /enforce); metrics on http://{metrics_addr}/metrics");
    let (a, b) = tokio::join!(a, b);
    for r in [a, b] {
        if let Err(join) = r {
            return Err(ServeError::Io(std::io::Error::other(join.to_string())));
        }
    }
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Turns true when `shutdown` resolves (and `/readyz` turns not ready): the listeners drain.
fn drain_on(
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Arc<AtomicBool>,
    grace: Duration,
) -> watch::Receiver<bool> {
    let (drain_tx, drain_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        ready.store(false, Ordering::Relaxed);
        tracing::info!(grace = ?grace, "shutting down: no new connections, answering every request already sent");
        let _ = drain_tx.send(true);
    });
    drain_rx
}
