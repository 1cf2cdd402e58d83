//! A listener: its accept loop (bounded open connections, taken before `accept`), and its
//! drain after the shutdown signal (see `server/mod.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum_server::tls_rustls::RustlsConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::connection::{connection, App, Shared};
use super::workers::{Exec, StopOnDrop, Workers};

/// Default cap on open connections, per listener (the metrics listener takes at most
/// [`METRICS_MAX_CONNECTIONS`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 2048;
/// Open connections on the metrics/probe listener.
pub const METRICS_MAX_CONNECTIONS: usize = 64;
/// File descriptors kept back from `--max-connections` for registry lookups, plugins and the
/// metrics listener.
pub const FD_RESERVE: u64 = 512;

/// One listening socket and what its connections are served with.
pub(super) struct Listener {
    pub(super) name: &'static str,
    pub(super) tcp: TcpListener,
    pub(super) tls: Option<RustlsConfig>,
    pub(super) app: App,
    pub(super) max_connections: usize,
    /// The threads its connections are served on; `None`: the caller's runtime.
    pub(super) workers: Option<Arc<Workers>>,
}

impl Listener {
    /// Accepts until the drain starts, then stops listening and waits up to `grace` for the
    /// open connections to finish (closing those still open after it).
    pub(super) async fn run(self, mut drain: watch::Receiver<bool>, grace: Duration) {
        let Listener {
            name,
            tcp,
            tls,
            app,
            max_connections,
            workers,
        } = self;
        let _stop_on_drop = workers.clone().map(StopOnDrop);
        let max = u32::try_from(max_connections).unwrap_or(u32::MAX).max(1);
        let slots = Arc::new(Semaphore::new(max as usize));
        let (force_tx, force_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            app,
            tls,
            draining: AtomicBool::new(false),
            drain: drain.clone(),
            force: force_rx,
            exec: match &workers {
                Some(w) => Exec::Spread(w.clone()),
                None => Exec::Here,
            },
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
                a = tcp.accept() => a,
            };
            match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    serve(workers.as_deref(), name, stream, shared.clone(), slot);
                }
                Err(e) => {
                    // Out of descriptors (or a connection reset before accept): say so once a
                    // second at most, and give closing connections a moment.
                    if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        last_accept_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        // Stop listening: new connections are refused from here on.
        drop(tcp);
        shared.draining.store(true, Ordering::SeqCst);
        let all = slots.acquire_many(max);
        let done = tokio::time::timeout(grace, all).await.is_ok();
        if !done {
            let open = max as usize - slots.available_permits();
            tracing::warn!(
                listener = name,
                open,
                "shutdown grace over: closing the connections still open"
            );
            let _ = force_tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(1), slots.acquire_many(max)).await;
        }
        if let Some(workers) = &workers {
            workers.stop().await;
        }
    }
}

/// Serves an accepted connection on this runtime (no `workers`), or on the serving thread with
/// the fewest open connections.
fn serve(
    workers: Option<&Workers>,
    name: &'static str,
    stream: TcpStream,
    shared: Arc<Shared>,
    slot: OwnedSemaphorePermit,
) {
    let Some(workers) = workers else {
        tokio::spawn(connection(stream, shared, slot));
        return;
    };
    // Off this runtime's reactor, onto the serving thread's.
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(listener = name, error = %e, "cannot hand the connection to a serving thread");
            return;
        }
    };
    workers.spawn_connection(move || async move {
        match TcpStream::from_std(stream) {
            Ok(stream) => connection(stream, shared, slot).await,
            Err(e) => {
                tracing::debug!(listener = name, error = %e, "cannot serve the connection on its thread");
            }
        }
    });
}

/// `wanted` (`--max-connections`) after raising the open-file limit, lowered (with a warning)
/// to fit it.
pub(super) fn connection_limit(wanted: usize) -> usize {
    let fd_limit = raise_fd_limit();
    let max_connections = effective_max_connections(wanted, fd_limit);
    if max_connections < wanted {
        tracing::warn!(
            wanted,
            open_file_limit = fd_limit.unwrap_or(0),
            using = max_connections,
            "--max-connections lowered to fit the open-file limit"
        );
    }
    max_connections
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_descriptors_free() {
        assert_eq!(effective_max_connections(2048, Some(1_048_576)), 2048);
        assert_eq!(effective_max_connections(2048, Some(1024)), 512);
        assert_eq!(effective_max_connections(2048, Some(100)), 16);
        assert_eq!(effective_max_connections(0, None), 1);
    }
}
