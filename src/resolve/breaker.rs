//! A circuit breaker per registry: after `threshold` consecutive outages, lookups to that registry
//! fail at once for a cool-down (a 429's `Retry-After` sets it), then one probe is let through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

pub struct Breakers {
    threshold: u32,
    cooldown: Duration,
    states: Mutex<HashMap<String, State>>,
    metrics: Arc<Metrics>,
}

/// Longest cool-down a `Retry-After` may impose.
const MAX_COOLDOWN: Duration = Duration::from_secs(600);

impl Breakers {
    pub fn new(threshold: u32, cooldown: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            states: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn set(&self, states: &mut HashMap<String, State>, registry: &str, s: State) {
        let gauge = match s {
            State::Closed { .. } => 0,
            State::Open { .. } => 1,
            State::HalfOpen => 2,
        };
        self.metrics
            .breaker_state
            .get_or_create(&RegistryLabel {
                registry: registry.to_string(),
            })
            .set(gauge);
        states.insert(registry.to_string(), s);
    }

    /// May a lookup to `registry` go out now?
    pub fn admit(&self, registry: &str, now: Instant) -> Result<(), Open> {
        let Ok(mut states) = self.states.lock() else {
            return Ok(());
        };
        match states.get(registry).copied() {
            None | Some(State::Closed { .. }) => Ok(()),
            Some(State::Open { until }) if now >= until => {
                self.set(&mut states, registry, State::HalfOpen);
                Ok(())
            }
            Some(State::Open { until }) => Err(Open {
                remaining: until - now,
            }),
            Some(State::HalfOpen) => Err(Open {
                remaining: Duration::ZERO,
            }),
        }
    }

    /// The registry answered (whatever it said about the image).
    pub fn success(&self, registry: &str) {
        if let Ok(mut states) = self.states.lock() {
            if states.get(registry) != Some(&State::Closed { failures: 0 }) {
                self.set(&mut states, registry, State::Closed { failures: 0 });
            }
        }
    }

    /// The registry failed. `retry_after` (from a 429) opens the breaker at once for that long.
    pub fn failure(&self, registry: &str, retry_after: Option<Duration>, now: Instant) {
        let Ok(mut states) = self.states.lock() else {
            return;
        };
        let open_for = |d: Duration| State::Open {
            until: now + d.min(MAX_COOLDOWN),
        };
        let next = match (retry_after, states.get(registry).copied()) {
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
        if matches!(next, State::Open { .. })
            && !matches!(states.get(registry), Some(State::Open { .. }))
        {
            tracing::warn!(registry, cooldown = ?self.cooldown, "circuit breaker opened: lookups to this registry fail fast until the cool-down ends");
        }
        self.set(&mut states, registry, next);
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
}
