//! A circuit breaker per registry: after `threshold` consecutive outages, lookups to that registry
//! fail at once for a cool-down (a 429's `Retry-After` sets it), then one probe is let through.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::sync::Cache;

use crate::metrics::{Metrics, RegistryLabel};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// Cool-down over; one probe is in flight, everyone else still fails fast.
    HalfOpen,
}

/// Returned when a registry's breaker refuses a lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    pub remaining: Duration,
}

/// Breaker states of the registries that failed lately. A registry in good health has no entry,
/// and the set is bounded in size and time (registry hosts come from pod specs).
pub struct Breakers {
    threshold: u32,
    cooldown: Duration,
    states: Cache<Box<str>, State>,
    metrics: Arc<Metrics>,
}

/// Longest cool-down a `Retry-After` may impose.
const MAX_COOLDOWN: Duration = Duration::from_secs(600);

/// Registries whose breaker state is kept at once; past this the least recently used is
/// forgotten (its breaker closes).
const MAX_REGISTRIES: u64 = 4_096;

impl Breakers {
    pub fn new(threshold: u32, cooldown: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            states: Cache::builder()
                .name("breakers")
                .max_capacity(MAX_REGISTRIES)
                .time_to_idle(MAX_COOLDOWN.max(cooldown) * 2)
                .build(),
            metrics,
        }
    }

    fn gauge(&self, registry: &str, s: Option<State>) {
        let value = match s {
            None | Some(State::Closed { .. }) => 0,
            Some(State::Open { .. }) => 1,
            Some(State::HalfOpen) => 2,
        };
        let label = RegistryLabel {
            registry: self.metrics.registry_label(registry),
        };
        self.metrics.breaker_state.get_or_create(&label).set(value);
    }

    /// Applies `step` to `registry`'s state atomically; `None` means closed with no failures.
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
                changed = Some(after);
                match after {
                    Some(s) => Op::Put(s),
                    None => Op::Remove,
                }
            });
        if let Some(after) = changed.filter(Option::is_some) {
            self.gauge(registry, after);
        }
        // `and_compute_with` always runs the closure.
        result.expect("compute closure ran")
    }

    /// May a lookup to `registry` go out now?
    pub fn admit(&self, registry: &str, now: Instant) -> Result<(), Open> {
        self.update(registry, |s| match s {
            None | Some(State::Closed { .. }) => (s, Ok(())),
            Some(State::Open { until }) if now >= until => (Some(State::HalfOpen), Ok(())),
            Some(State::Open { until }) => (
                s,
                Err(Open {
                    remaining: until - now,
                }),
            ),
            Some(State::HalfOpen) => (
                s,
                Err(Open {
                    remaining: Duration::ZERO,
                }),
            ),
        })
    }

    /// The registry answered (whatever it said about the image). Its gauge reads 0 from now on
    /// (a registry that never failed shows up as closed, too).
    pub fn success(&self, registry: &str) {
        self.update(registry, |_| (None, ()));
        self.gauge(registry, None);
    }

    /// The registry failed. `retry_after` (from a 429) opens the breaker at once for that long.
    pub fn failure(&self, registry: &str, retry_after: Option<Duration>, now: Instant) {
        let open_for = |d: Duration| State::Open {
            until: now + d.min(MAX_COOLDOWN),
        };
        let opened = self.update(registry, |before| {
            let next = match (retry_after, before) {
                (Some(d), _) => open_for(d.max(Duration::from_secs(1))),
                (None, Some(State::HalfOpen)) => open_for(self.cooldown),
                (None, Some(State::Open { until })) => State::Open { until },
                (None, None) => State::Closed { failures: 1 },
                (None, Some(State::Closed { failures })) => State::Closed {
                    failures: failures + 1,
                },
            };
            let next = match next {
                State::Closed { failures } if failures >= self.threshold => open_for(self.cooldown),
                s => s,
            };
            let opened =
                matches!(next, State::Open { .. }) && !matches!(before, Some(State::Open { .. }));
            (Some(next), opened)
        });
        if opened {
            tracing::warn!(registry, cooldown = ?self.cooldown, "circuit breaker opened: lookups to this registry fail fast until the cool-down ends");
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
        Breakers::new(3, Duration::from_secs(30), Arc::new(Metrics::new()))
    }

    #[test]
    fn opens_after_threshold_then_half_opens_then_closes() {
        let b = b();
        let t0 = Instant::now();
        for _ in 0..2 {
            b.failure("r", None, t0);
            assert!(b.admit("r", t0).is_ok());
        }
        b.failure("r", None, t0);
        let e = b.admit("r", t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.remaining, Duration::from_secs(20));
        // Other registries are unaffected.
        assert!(b.admit("other", t0).is_ok());
        // After the cool-down exactly one probe goes through.
        let later = t0 + Duration::from_secs(31);
        assert!(b.admit("r", later).is_ok());
        assert!(b.admit("r", later).is_err());
        b.success("r");
        assert!(b.admit("r", later).is_ok());
    }

    #[test]
    fn failed_probe_reopens_and_success_resets_count() {
        let b = b();
        let t0 = Instant::now();
        b.failure("r", None, t0);
        b.failure("r", None, t0);
        b.success("r");
        b.failure("r", None, t0);
        b.failure("r", None, t0);
        assert!(b.admit("r", t0).is_ok(), "success reset the count");
        b.failure("r", None, t0);
        let probe_at = t0 + Duration::from_secs(30);
        assert!(b.admit("r", probe_at).is_ok());
        b.failure("r", None, probe_at);
        assert!(b.admit("r", probe_at + Duration::from_secs(29)).is_err());
    }

    #[test]
    fn retry_after_opens_immediately_for_that_long() {
        let b = b();
        let t0 = Instant::now();
        b.failure("r", Some(Duration::from_secs(5)), t0);
        assert_eq!(
            b.admit("r", t0).unwrap_err().remaining,
            Duration::from_secs(5)
        );
        assert!(b.admit("r", t0 + Duration::from_secs(5)).is_ok());
        // A huge Retry-After is capped.
        b.failure("x", Some(Duration::from_secs(86_400)), t0);
        assert_eq!(b.admit("x", t0).unwrap_err().remaining, MAX_COOLDOWN);
    }

    #[test]
    fn the_set_of_registries_is_bounded_and_healthy_ones_hold_nothing() {
        let b = b();
        let t0 = Instant::now();
        for i in 0..(MAX_REGISTRIES + 500) {
            b.failure(&format!("r{i}.example"), None, t0);
        }
        assert!(b.len() <= MAX_REGISTRIES, "{} states", b.len());
        b.failure("ok.example", None, t0);
        b.success("ok.example");
        assert!(b.admit("ok.example", t0).is_ok());
        let fresh = Breakers::new(3, Duration::from_secs(30), Arc::new(Metrics::new()));
        fresh.failure("x", None, t0);
        fresh.success("x");
        assert!(fresh.is_empty(), "a healthy registry holds no state");
    }
}
