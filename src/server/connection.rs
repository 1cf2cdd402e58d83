//! One connection: the TLS handshake, hyper serving it, and a watchdog applying the request-head
//! timeout, the idle timeout and the drain (see `server/mod.rs`).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum_server::tls_rustls::RustlsConfig;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::workers::Exec;

/// A TLS handshake must finish within this.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A request head must arrive whole within this of its first byte.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection without a request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// While draining, an HTTP/1 connection with no request in progress is closed after this long
/// without a byte.
pub const DRAIN_QUIET: Duration = Duration::from_millis(500);
/// How often each connection's timers are looked at.
const WATCHDOG_TICK: Duration = Duration::from_millis(250);

/// What a listener answers its requests with (the router, or on the review listener the
/// review POSTs directly and the rest by the router: `src/server/mod.rs`).
pub(super) type App = Arc<
    dyn Fn(
            hyper::Request<Body>,
        ) -> Pin<Box<dyn std::future::Future<Output = axum::response::Response> + Send>>
        + Send
        + Sync,
>;

/// Shared by the connections of one listener.
pub(super) struct Shared {
    pub(super) app: App,
    pub(super) tls: Option<RustlsConfig>,
    pub(super) draining: AtomicBool,
    pub(super) drain: watch::Receiver<bool>,
    pub(super) force: watch::Receiver<bool>,
    /// Where HTTP/2 streams run.
    pub(super) exec: Exec,
}

/// Timestamps of one connection, in milliseconds since it was accepted, and its listener's
/// shared state (held once per connection).
struct ConnState {
    shared: Arc<Shared>,
    epoch: Instant,
    last_io: AtomicU64,
    /// 1 + when the first byte of a request head arrived; 0 when no head is pending.
    head_since: AtomicU64,
    /// When a request last started or finished.
    last_request: AtomicU64,
    in_flight: AtomicUsize,
}

impl ConnState {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
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

/// Serves one accepted connection (after its TLS handshake, on the review listener); `_slot`
/// is the listener's connection slot, given back when the connection ends.
pub(super) async fn connection(
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

/// The answer to one request on a connection: the router's, with `Connection: close` on
/// HTTP/1 once draining. `state` counts the request as in flight until it is answered (or
/// dropped).
fn service(
    shared: Arc<Shared>,
    state: Arc<ConnState>,
    h2: bool,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<axum::response::Response, Infallible>>
                 + Send
                 + 'static,
> + Send {
    // Per request, only this connection's own `state` is cloned: `shared`'s reference count is
    // a cache line every serving thread would move between cores.
    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        state.request_started();
        let guard = InFlight(state.clone());
        let answer = (shared.app)(req.map(Body::new));
        async move {
            let mut resp = answer.await;
            if !h2 && guard.0.shared.draining.load(Ordering::SeqCst) {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            drop(guard);
            Ok::<_, Infallible>(resp)
        }
    })
}

/// HTTP/1 and, over TLS, HTTP/2 (by ALPN), with hyper's limits and keep-alives.
fn protocols(tls: bool, exec: Exec) -> hyper_util::server::conn::auto::Builder<Exec> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(exec);
    builder
        .http1()
        .timer(TokioTimer::new())
        // The head timeout is ours (the watchdog in `drive`): hyper's also runs while a
        // keep-alive connection waits for its next request, which would make the idle
        // timeout 5 s.
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
    if tls {
        builder
    } else {
        builder.http1_only()
    }
}

/// Serves one connection until it ends, applying the head and idle timeouts and the drain.
async fn drive<I>(io: I, h2: bool, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::new(shared.clone()));
    let io = Tracked {
        io,
        state: state.clone(),
    };
    let service = service(shared.clone(), state.clone(), h2);
    let builder = protocols(shared.tls.is_some(), shared.exec.clone());
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
}
