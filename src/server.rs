//! HTTPS admission endpoints and the plain-HTTP metrics listener, with graceful drain.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_server::tls_rustls::RustlsConfig;

use crate::admission::{Admitter, Mode};
use crate::metrics::Metrics;
use crate::tls;

/// Largest review body accepted (an UPDATE carries object and oldObject).
pub const BODY_LIMIT: usize = 8 << 20;

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_reload_interval: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
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

#[derive(Clone)]
struct AppState {
    admitter: Admitter,
}

fn json_error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn admit(state: &AppState, mode: Mode, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rej) => {
            let status = rej.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("AdmissionReview body larger than {BODY_LIMIT} bytes")
            } else {
                rej.body_text()
            };
            return json_error(status, message);
        }
    };
    match state.admitter.review(&body, mode).await {
        Ok(out) => Json(out).into_response(),
        Err(e) => json_error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn mutate(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    admit(&s, Mode::Mutate, body).await
}

async fn enforce(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    admit(&s, Mode::Enforce, body).await
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

/// The admission router (no TLS, no socket): tests drive it with `oneshot`.
pub fn router(admitter: Admitter, ready: Arc<AtomicBool>) -> Router {
    let probes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ready.clone());
    Router::new()
        .route("/mutate", post(mutate))
        .route("/enforce", post(enforce))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(AppState { admitter })
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

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish (up to
/// the grace period) and returns.
pub async fn serve(
    cfg: ServeConfig,
    admitter: Admitter,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => {
            let (server_cfg, hash) = tls::load(cert, key)?;
            let tls = RustlsConfig::from_config(server_cfg);
            tokio::spawn(tls::reload_loop(
                tls.clone(),
                cert.clone(),
                key.clone(),
                cfg.tls_reload_interval,
                hash,
            ));
            tracing::info!(cert = %cert.display(), key = %key.display(), every = ?cfg.tls_reload_interval, "serving certificate loaded; reloaded when the files change");
            tls
        }
        (None, None) => {
            let (c, k) = tls::self_signed()?;
            tracing::warn!("no --tls-cert/--tls-key given: serving a self-signed certificate for localhost made in memory (fine on a laptop; a cluster needs a real one)");
            RustlsConfig::from_config(tls::server_config(&c, &k, ("generated", "generated"))?)
        }
        _ => return Err(ServeError::HalfPair),
    };

    let ready = Arc::new(AtomicBool::new(false));
    // Before /readyz turns ready: the first admission should not pay for one-time set-up.
    crate::reference::warm_up();
    let metrics_listener = tokio::net::TcpListener::bind(cfg.metrics_listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.metrics_listen,
            source,
        })?;
    let metrics_addr = metrics_listener.local_addr()?;

    let handle = axum_server::Handle::<SocketAddr>::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    {
        let handle = handle.clone();
        let ready = ready.clone();
        let grace = cfg.shutdown_grace;
        tokio::spawn(async move {
            shutdown.await;
            ready.store(false, Ordering::Relaxed);
            tracing::info!(grace = ?grace, "shutting down: no new connections, finishing in-flight requests");
            handle.graceful_shutdown(Some(grace));
            let _ = stop_tx.send(true);
        });
    }

    let app = router(admitter, ready.clone());
    let server = axum_server::bind_rustls(cfg.listen, tls)
        .handle(handle.clone())
        .serve(app.into_make_service());
    let server = tokio::spawn(server);
    let Some(addr) = handle.listening().await else {
        return match server.await {
            Ok(Err(source)) => Err(ServeError::Bind {
                addr: cfg.listen,
                source,
            }),
            _ => Err(ServeError::Bind {
                addr: cfg.listen,
                source: std::io::Error::other("listener did not start"),
            }),
        };
    };
    let mut stop = stop_rx.clone();
    let metrics_server = axum::serve(metrics_listener, metrics_router(metrics, ready.clone()))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    let metrics_server = tokio::spawn(async move { metrics_server.await });
    ready.store(true, Ordering::Relaxed);
    tracing::info!("admission reviews on https://{addr} (POST /mutate, /enforce); metrics on http://{metrics_addr}/metrics");

    let served = server.await;
    let _ = metrics_server.await;
    match served {
        Ok(r) => r.map_err(ServeError::Io),
        Err(join) => Err(ServeError::Io(std::io::Error::other(join.to_string()))),
    }
}
