//! A circuit breaker per registry: after `threshold` consecutive outages, lookups to that registry
//! fail at once for a cool-down (a 429's `Retry-After` sets it), then one probe is let through
//! while the lookups behind it wait for its outcome.
//!
//! Lookups that were already under way when a failure was recorded are the same outage seen
//! again, not a new one: a burst of lookups that all stall on one registry counts as one failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::sync::Cache;
use tokio::sync::Notify;

use crate::metrics::{Metrics, RegistryLabel};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
        /// When the last failure was recorded: lookups started before it saw the same outage.
        last: Instant,
    },
    Open {
        until: Instant,
        /// When it opened: a success of a lookup sent before does not close it.
        since: Instant,
        /// The registry asked for this pause (429 with `Retry-After`): lookups that can afford
        /// to wait it out do, instead of failing.
        asked: bool,
    },
    /// Cool-down over; one probe (sent at `since`) is in flight, and the lookups behind it wait
    /// for its outcome.
    HalfOpen { since: Instant },
}

/// Returned when a registry's breaker refuses a lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    pub remaining: Duration,
}

/// What the breaker says to a lookup about to go out.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Go,
    Refuse {
        open: Open,
        asked: bool,
    },
    /// A probe is in flight: wait for its outcome.
    Wait,
}

/// Breaker states of the registries that failed lately. A registry in good health has no entry,
/// and the set is bounded in size and time (registry hosts come from pod specs).
pub struct Breakers {
    threshold: u32,
    cooldown: Duration,
    /// A probe in flight longer than this is taken as lost and another one may go.
    probe_timeout: Duration,
    states: Cache<Box<str>, State>,
    /// Woken whenever a probe's outcome is recorded (any registry: waiters look again).
    probe_done: Notify,
    metrics: Arc<Metrics>,
}

/// Longest cool-down a `Retry-After` may impose.
const MAX_COOLDOWN: Duration = Duration::from_secs(600);

/// Registries whose breaker state is kept at once; past this the least recently used is
/// forgotten (its breaker closes).
const MAX_REGISTRIES: u64 = 4_096;

impl Breakers {
    /// `probe_timeout` is the longest one lookup may take (a probe that outlives it is lost).
    pub fn new(
        threshold: u32,
        cooldown: Duration,
        probe_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            probe_timeout,
            states: Cache::builder()
                .name("breakers")
                .max_capacity(MAX_REGISTRIES)
                .time_to_idle(MAX_COOLDOWN.max(cooldown) * 2)
                .build(),
            probe_done: Notify::new(),
            metrics,
        }
    }

    fn gauge(&self, registry: &str, s: Option<State>) {
        let value = match s {
            None | Some(State::Closed { .. }) => 0,
            Some(State::Open { .. }) => 1,
            Some(State::HalfOpen { .. }) => 2,
        };
        let label = RegistryLabel {
            registry: self.metrics.registry_label(registry),
        };
        self.metrics.breaker_state.get_or_create(&label).set(value);
    }

    /// Applies `step` to `registry`'s state atomically; `None` means closed with no failures.
    /// Wakes the lookups waiting on a probe when the state leaves half-open.
    fn update<R>(
        &self,
        registry: &str,
        step: impl FnOnce(Option<State>) -> (Option<State>, R),
    ) -> R {
        let mut result = None;
        let mut changed = None;
        self.states
            .entry(registry.into())
            .and_compute_with(|entry| {
                let before = entry.map(|e| e.into_value());
                let (after, r) = step(before);
                result = Some(r);
                if after == before {
                    return Op::Nop;
                }
                changed = Some((before, after));
                match after {
                    Some(s) => Op::Put(s),
                    None => Op::Remove,
                }
            });
        if let Some((before, after)) = changed {
            if after.is_some() {
                self.gauge(registry, after);
            }
            if matches!(before, Some(State::HalfOpen { .. }))
                && !matches!(after, Some(State::HalfOpen { .. }))
            {
                self.probe_done.notify_waiters();
            }
        }
        // `and_compute_with` always runs the closure.
        result.expect("compute closure ran")
    }

    fn verdict(&self, registry: &str, now: Instant) -> Verdict {
        let probe = Some(State::HalfOpen { since: now });
        self.update(registry, |s| match s {
            None | Some(State::Closed { .. }) => (s, Verdict::Go),
            Some(State::Open { until, .. }) if now >= until => (probe, Verdict::Go),
            Some(State::Open { until, asked, .. }) => (
                s,
                Verdict::Refuse {
                    open: Open {
                        remaining: until - now,
                    },
                    asked,
                },
            ),
            Some(State::HalfOpen { since })
                if now.saturating_duration_since(since) > self.probe_timeout =>
            {
                (probe, Verdict::Go)
            }
            Some(State::HalfOpen { .. }) => (s, Verdict::Wait),
        })
    }

    /// May a lookup to `registry` go out now? While a probe is in flight the answer is no (with
    /// nothing remaining): [`Breakers::admit_or_wait`] waits for the probe instead.
    pub fn admit(&self, registry: &str, now: Instant) -> Result<(), Open> {
        match self.verdict(registry, now) {
            Verdict::Go => Ok(()),
            Verdict::Refuse { open, .. } => Err(open),
            Verdict::Wait => Err(Open {
                remaining: Duration::ZERO,
            }),
        }
    }

    /// Like [`Breakers::admit`], but waits, until `wait_until` at the latest, where waiting can
    /// help: while a probe is in flight, for its outcome (its success lets this lookup go, its
    /// failure refuses it), and through a pause the registry asked for (`Retry-After`) that ends
    /// in time. A cool-down after an outage is not waited out: it fails fast.
    pub async fn admit_or_wait(&self, registry: &str, wait_until: Instant) -> Result<(), Open> {
        loop {
            let notified = self.probe_done.notified();
            tokio::pin!(notified);
            // Registered before the state is read: an outcome recorded in between still wakes us.
            notified.as_mut().enable();
            let now = Instant::now();
            match self.verdict(registry, now) {
                Verdict::Go => return Ok(()),
                Verdict::Refuse { open, asked } if asked && now + open.remaining <= wait_until => {
                    tokio::time::sleep(open.remaining).await;
                    continue;
                }
                Verdict::Refuse { open, .. } => return Err(open),
                Verdict::Wait => {}
            }
            let wake = wait_until.min(Instant::now() + self.probe_timeout);
            if tokio::time::timeout_at(wake.into(), notified)
                .await
                .is_err()
                && Instant::now() >= wait_until
            {
                return Err(Open {
                    remaining: Duration::ZERO,
                });
            }
        }
    }

    /// The registry answered a lookup sent at `started` (whatever it said about the image). Its
    /// gauge reads 0 from now on (a registry that never failed shows up as closed, too), unless
    /// the breaker opened after that lookup was sent: an answer to an older request does not end
    /// a pause the registry asked for, nor a cool-down.
    pub fn success(&self, registry: &str, started: Instant) {
        let closed = self.update(registry, |s| match s {
            Some(State::Open { since, .. }) if started < since => (s, false),
            _ => (None, true),
        });
        if closed {
            self.gauge(registry, None);
        }
    }

    /// The registry failed a lookup sent at `started`. `retry_after` (from a 429) opens the
    /// breaker at once for that long. A failure of a lookup sent before the last recorded one is
    /// that same outage, and does not count again.
    pub fn failure(
        &self,
        registry: &str,
        retry_after: Option<Duration>,
        started: Instant,
        now: Instant,
    ) {
        let open_for = |d: Duration, asked: bool| State::Open {
            until: now + d.min(MAX_COOLDOWN),
            since: now,
            asked,
        };
        let opened = self.update(registry, |before| {
            let next = match (retry_after, before) {
                (Some(d), _) => open_for(d.max(Duration::from_secs(1)), true),
                (None, Some(State::HalfOpen { .. })) => open_for(self.cooldown, false),
                (None, Some(s @ State::Open { .. })) => s,
                (None, None) => State::Closed {
                    failures: 1,
                    last: now,
                },
                (None, Some(s @ State::Closed { last, .. })) if started < last => s,
                (None, Some(State::Closed { failures, .. })) => State::Closed {
                    failures: failures + 1,
                    last: now,
                },
            };
            let next = match next {
                State::Closed { failures, .. } if failures >= self.threshold => {
                    open_for(self.cooldown, false)
                }
                s => s,
            };
            let opened = match next {
                State::Open { until, asked, .. } if !matches!(before, Some(State::Open { .. })) => {
                    Some((until, asked))
                }
                _ => None,
            };
            (Some(next), opened)
        });
        match opened {
            Some((until, true)) => {
                tracing::warn!(registry, pause = ?until.saturating_duration_since(now), "registry asked tagpin to wait (429 with Retry-After): no lookups to it until then; those that can afford it wait, the others fail fast")
            }
            Some((_, false)) => {
                tracing::warn!(registry, cooldown = ?self.cooldown, "circuit breaker opened: lookups to this registry fail fast until the cool-down ends")
            }
            None => {}
        }
    }

    /// Registries with a breaker state held (approximate until moka's housekeeping runs).
    pub fn len(&self) -> u64 {
        self.states.run_pending_tasks();
        self.states.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Breakers {
        Breakers::new(
            3,
            Duration::from_secs(30),
            Duration::from_secs(10),
            Arc::new(Metrics::new()),
        )
    }

    #[test]
    fn opens_after_threshold_then_half_opens_then_closes() {
        let b = b();
        let t0 = Instant::now();
        for _ in 0..2 {
            b.failure("r", None, t0, t0);
            assert!(b.admit("r", t0).is_ok());
        }
        b.failure("r", None, t0, t0);
        let e = b.admit("r", t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.remaining, Duration::from_secs(20));
        // Other registries are unaffected.
        assert!(b.admit("other", t0).is_ok());
        // After the cool-down exactly one probe goes through.
        let later = t0 + Duration::from_secs(31);
        assert!(b.admit("r", later).is_ok());
        assert!(b.admit("r", later).is_err());
        b.success("r", Instant::now());
        assert!(b.admit("r", later).is_ok());
    }

    #[test]
    fn failed_probe_reopens_and_success_resets_count() {
        let b = b();
        let t0 = Instant::now();
        b.failure("r", None, t0, t0);
        b.failure("r", None, t0, t0);
        b.success("r", Instant::now());
        b.failure("r", None, t0, t0);
        b.failure("r", None, t0, t0);
        assert!(b.admit("r", t0).is_ok(), "success reset the count");
        b.failure("r", None, t0, t0);
        let probe_at = t0 + Duration::from_secs(30);
        assert!(b.admit("r", probe_at).is_ok());
        b.failure("r", None, probe_at, probe_at);
        assert!(b.admit("r", probe_at + Duration::from_secs(29)).is_err());
    }

    #[test]
    fn retry_after_opens_immediately_for_that_long() {
        let b = b();
        let t0 = Instant::now();
        b.failure("r", Some(Duration::from_secs(5)), t0, t0);
        assert_eq!(
            b.admit("r", t0).unwrap_err().remaining,
            Duration::from_secs(5)
        );
        assert!(b.admit("r", t0 + Duration::from_secs(5)).is_ok());
        // A huge Retry-After is capped.
        b.failure("x", Some(Duration::from_secs(86_400)), t0, t0);
        assert_eq!(b.admit("x", t0).unwrap_err().remaining, MAX_COOLDOWN);
    }

    #[test]
    fn the_set_of_registries_is_bounded_and_healthy_ones_hold_nothing() {
        let b = b();
        let t0 = Instant::now();
        for i in 0..(MAX_REGISTRIES + 500) {
            b.failure(&format!("r{i}.example"), None, t0, t0);
        }
        assert!(b.len() <= MAX_REGISTRIES, "{} states", b.len());
        b.failure("ok.example", None, t0, t0);
        b.success("ok.example", Instant::now());
        assert!(b.admit("ok.example", t0).is_ok());
        let fresh = Breakers::new(
            3,
            Duration::from_secs(30),
            Duration::from_secs(10),
            Arc::new(Metrics::new()),
        );
        fresh.failure("x", None, t0, t0);
        fresh.success("x", Instant::now());
        assert!(fresh.is_empty(), "a healthy registry holds no state");
    }

    #[test]
    fn a_burst_of_lookups_failing_on_one_outage_counts_once() {
        let b = b();
        let t0 = Instant::now();
        // 16 lookups sent together all stall and time out one after another.
        for i in 0..16 {
            b.failure("r", None, t0, t0 + Duration::from_millis(5_000 + i));
        }
        assert!(
            b.admit("r", t0 + Duration::from_secs(6)).is_ok(),
            "one outage, one failure"
        );
        // The next two admissions' lookups, sent after it, are new observations.
        let t1 = t0 + Duration::from_secs(7);
        b.failure("r", None, t1, t1 + Duration::from_secs(5));
        assert!(b.admit("r", t1 + Duration::from_secs(5)).is_ok());
        let t2 = t1 + Duration::from_secs(6);
        b.failure("r", None, t2, t2 + Duration::from_secs(5));
        assert!(
            b.admit("r", t2 + Duration::from_secs(5)).is_err(),
            "third outage opens it"
        );
    }

    fn half_open(b: &Breakers) -> Instant {
        let t0 = Instant::now() - Duration::from_secs(31);
        for _ in 0..3 {
            b.failure("r", None, t0, t0);
        }
        assert!(b.admit("r", Instant::now()).is_ok(), "the probe goes");
        t0
    }

    #[tokio::test]
    async fn lookups_behind_a_probe_wait_for_its_success() {
        let b = Arc::new(b());
        half_open(&b);
        let far = Instant::now() + Duration::from_secs(60);
        let waiters: Vec<_> = (0..15)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { b.admit_or_wait("r", far).await })
            })
            .collect();
        tokio::task::yield_now().await;
        b.success("r", Instant::now());
        for w in waiters {
            assert_eq!(
                w.await.unwrap(),
                Ok(()),
                "a waiting lookup goes once the probe answered"
            );
        }
    }

    #[tokio::test]
    async fn lookups_behind_a_probe_are_refused_when_it_fails() {
        let b = Arc::new(b());
        half_open(&b);
        let far = Instant::now() + Duration::from_secs(60);
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.admit_or_wait("r", far).await })
        };
        tokio::task::yield_now().await;
        let now = Instant::now();
        b.failure("r", None, now, now);
        let open = waiter.await.unwrap().unwrap_err();
        assert!(open.remaining > Duration::from_secs(20), "{open:?}");
    }

    #[tokio::test]
    async fn a_waiting_lookup_gives_up_at_its_own_deadline() {
        let b = b();
        half_open(&b);
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(
            b.admit_or_wait("r", soon).await,
            Err(Open {
                remaining: Duration::ZERO
            })
        );
    }

    #[test]
    fn a_probe_lost_for_longer_than_a_lookup_may_take_lets_another_go() {
        let b = b();
        half_open(&b);
        let now = Instant::now();
        assert!(b.admit("r", now).is_err(), "one probe at a time");
        assert!(b.admit("r", now + Duration::from_secs(11)).is_ok());
    }
}
