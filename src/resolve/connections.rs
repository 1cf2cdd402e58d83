//! One connection to an HTTP/2 registry, not one per lookup in flight.
//!
//! reqwest offers h2 and HTTP/1.1 by ALPN on every TLS connection, and its pool learns that a
//! host speaks h2 only once a connection to it has finished its handshake. Until then, each of
//! n requests sent at once to a host it holds no connection to opens its own TCP connection and
//! TLS handshake; the first to negotiate h2 is kept and carries every request, the others are
//! thrown away (tests/http2.rs counted 16 connections for a first admission of 16 images on
//! one registry). That is n - 1 TLS handshakes for the registry to serve for nothing, at the
//! moment a rollout asks most of it.
//!
//! So the first request to an HTTPS host that is cold (nothing known of it, or its last answer
//! is older than a pooled connection may be kept) goes alone, and the requests that come while
//! it is out wait for its answer: over HTTP/2 they then find its connection in the pool and
//! share it; over HTTP/1.1 the host is remembered as such and nothing ever waits for it again
//! (each request in flight needs a connection of its own anyway). If the first request fails,
//! the others go at once, as they would have. Plain HTTP is never held back: without TLS there is
//! no ALPN and tagpin speaks HTTP/1.1.
//!
//! The cost: on a cold HTTP/2 host, the requests behind the first one leave one round trip later
//! than they would have (they wait for its response head instead of its handshake); on a host
//! tagpin has never spoken to that turns out to be HTTP/1.1, two (its handshake and its answer:
//! their own handshakes start after it), once per process. Warm hosts, the case of every admission
//! after the first, never wait.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Version;
use tokio::sync::watch;

/// Hosts remembered at once; past this the least recently used is forgotten (it is cold again).
const MAX_HOSTS: u64 = 4_096;

/// How long after its last answer an HTTP/2 host is taken to still have its connection in the
/// pool: less than the pool's idle timeout ([`super::http::POOL_IDLE_TIMEOUT`], 90 s), so a
/// connection about to be dropped is not counted on.
pub const WARM_FOR: Duration = Duration::from_secs(60);

#[derive(Debug)]
enum State {
    /// Nothing known, or its connection may be gone.
    Cold,
    /// A first request is out (generation `n`); the requests that come meanwhile wait for it.
    Opening {
        n: u64,
        answered: watch::Receiver<()>,
    },
    /// Last answered over HTTP/2 at `at`.
    H2 { at: Instant },
    /// Answered over HTTP/1.x: a connection per request in flight, nothing to wait for.
    H1,
}

#[derive(Debug)]
struct Host {
    state: Mutex<State>,
}

/// What is known of the connections to each HTTPS host (`host:port`). Bounded in size and time:
/// hosts come from pod specs.
pub struct Connections {
    hosts: moka::sync::Cache<Box<str>, Arc<Host>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            hosts: moka::sync::Cache::builder()
                .name("registry-connections")
                .max_capacity(MAX_HOSTS)
                .time_to_idle(Duration::from_secs(3_600))
                .build(),
            generation: Default::default(),
        }
    }
}

/// Held by the first request to a cold host: the requests behind it go when it is dropped, after
/// [`First::answered`] (they share its connection) or without (it failed: they go on their own).
#[must_use]
pub struct First {
    host: Arc<Host>,
    n: u64,
    _answered: watch::Sender<()>,
}

impl First {
    /// The first request's answer came over `version`.
    pub fn answered(self, version: Version) {
        set_answered(&self.host, version);
    }
}

impl Drop for First {
    fn drop(&mut self) {
        // Unanswered (failed, or given up): the host is cold again. Its waiters are woken when
        // the sender drops, right after this.
        let mut s = lock(&self.host);
        if matches!(*s, State::Opening { n, .. } if n == self.n) {
            *s = State::Cold;
        }
    }
}

fn lock(host: &Host) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding this lock leaves a state that is still valid.
    host.state.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_answered(host: &Host, version: Version) {
    *lock(host) = if version == Version::HTTP_2 {
        State::H2 { at: Instant::now() }
    } else {
        State::H1
    };
}

impl Connections {
    fn host(&self, authority: &str) -> Arc<Host> {
        self.hosts.get_with(authority.into(), || {
            Arc::new(Host {
                state: Mutex::new(State::Cold),
            })
        })
    }

    /// Before a request to `authority` over HTTPS: returns at once when its connection can be
    /// counted on (or there is none to share); waits while a first request to it is out; or
    /// makes this request the first (`Some`), to be told [`First::answered`].
    pub async fn before(&self, authority: &str) -> Option<First> {
        let host = self.host(authority);
        let mut waiting = {
            let mut s = lock(&host);
            match &*s {
                State::H1 => return None,
                State::H2 { at } if at.elapsed() < WARM_FOR => return None,
                State::Opening { answered, .. } => answered.clone(),
                State::Cold | State::H2 { .. } => {
                    let n = self
                        .generation
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (tx, rx) = watch::channel(());
                    *s = State::Opening { n, answered: rx };
                    drop(s);
                    return Some(First {
                        host,
                        n,
                        _answered: tx,
                    });
                }
            }
        };
        // Ends when the first request's guard drops (its sender with it), answered or not.
        let _ = waiting.changed().await;
        None
    }

    /// Any request to `authority` over HTTPS was answered over `version`.
    pub fn answered(&self, authority: &str, version: Version) {
        if let Some(host) = self.hosts.get(authority) {
            let s = lock(&host);
            // A first request out is told by its own guard.
            if !matches!(*s, State::Opening { .. }) {
                drop(s);
                set_answered(&host, version);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn poll<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn behind_a_first_request_to_a_cold_host_others_wait_for_its_answer() {
        let c = Connections::default();
        let Poll::Ready(Some(first)) = poll(pin!(c.before("reg:443"))) else {
            panic!("the first request to a cold host goes at once, as the first")
        };
        let mut second = pin!(c.before("reg:443"));
        assert!(poll(second.as_mut()).is_pending(), "the second waits");
        // Another host is not held back by this one.
        assert!(matches!(
            poll(pin!(c.before("other:443"))),
            Poll::Ready(Some(_))
        ));
        first.answered(Version::HTTP_2);
        assert!(matches!(poll(second.as_mut()), Poll::Ready(None)));
        // Warm over HTTP/2: nobody waits or leads.
        assert!(matches!(poll(pin!(c.before("reg:443"))), Poll::Ready(None)));
    }

    #[test]
    fn an_http1_host_never_holds_anyone_back_again() {
        let c = Connections::default();
        let Poll::Ready(Some(first)) = poll(pin!(c.before("reg:443"))) else {
            panic!("first")
        };
        first.answered(Version::HTTP_11);
        for _ in 0..3 {
            assert!(matches!(poll(pin!(c.before("reg:443"))), Poll::Ready(None)));
        }
    }

    #[test]
    fn a_failed_first_request_lets_the_others_go_and_leaves_the_host_cold() {
        let c = Connections::default();
        let Poll::Ready(Some(first)) = poll(pin!(c.before("reg:443"))) else {
            panic!("first")
        };
        let mut waiters: Vec<_> = (0..3).map(|_| Box::pin(c.before("reg:443"))).collect();
        for w in &mut waiters {
            assert!(poll(w.as_mut()).is_pending());
        }
        drop(first);
        for w in &mut waiters {
            assert!(matches!(poll(w.as_mut()), Poll::Ready(None)), "released");
        }
        // Cold again: the next request is a first one.
        assert!(matches!(
            poll(pin!(c.before("reg:443"))),
            Poll::Ready(Some(_))
        ));
    }

    #[test]
    fn an_http2_host_whose_last_answer_is_old_is_cold_again() {
        let c = Connections::default();
        let host = c.host("reg:443");
        *lock(&host) = State::H2 {
            at: Instant::now() - WARM_FOR - Duration::from_secs(1),
        };
        assert!(matches!(
            poll(pin!(c.before("reg:443"))),
            Poll::Ready(Some(_))
        ));
        // Answers to requests that were not first keep a warm host warm.
        let c = Connections::default();
        let Poll::Ready(Some(first)) = poll(pin!(c.before("reg:443"))) else {
            panic!("first")
        };
        first.answered(Version::HTTP_2);
        c.answered("reg:443", Version::HTTP_11);
        assert!(matches!(*lock(&c.host("reg:443")), State::H1));
    }
}
