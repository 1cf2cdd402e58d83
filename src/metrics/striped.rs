//! A counter and a histogram each thread counts into its own part of. The cached path counts
//! every admission and cache hit from every review thread; one shared atomic (or a histogram's
//! lock) there moves its cache line between cores on every count (BENCHMARKS.md, "Eleventh
//! pass"). Here a thread adds to its own stripe and a scrape sums the stripes: each stripe only
//! grows, so the sum read by a later scrape is never below an earlier one's.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Stripes per metric. Threads beyond this share stripes (still counted exactly, only slower).
const STRIPES: usize = 16;

/// This thread's stripe, taken in turn the first time it counts.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// One stripe: a cache line pair of its own, so neighbouring stripes never share one.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// A monotonic counter (`prometheus_client`'s `Counter` as far as `/metrics` shows).
#[derive(Clone, Debug, Default)]
pub struct StripedCounter(Arc<[Padded<AtomicU64>; STRIPES]>);

impl StripedCounter {
    pub fn inc(&self) {
        self.inc_by(1);
    }

    pub fn inc_by(&self, n: u64) {
        self.0[stripe()].0.fetch_add(n, Relaxed);
    }

    /// The total over every thread.
    pub fn get(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.0.load(Relaxed)))
    }
}

impl TypedMetric for StripedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for StripedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Upper bounds of a [`StripedHistogram`]: at most this many, then `+Inf`.
pub const MAX_BOUNDS: usize = 23;

/// One stripe of a histogram: a count per bucket (the last is `+Inf`) and the sum of the
/// observations in nanoseconds (a `u64` holds 584 years of them).
#[derive(Debug)]
struct HistogramStripe {
    buckets: [AtomicU64; MAX_BOUNDS + 1],
    sum_nanos: AtomicU64,
}

impl Default for HistogramStripe {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

#[derive(Debug)]
struct HistogramInner {
    /// The bounds in seconds, as `/metrics` writes them, then `+Inf`.
    bounds: Vec<f64>,
    /// The same bounds in whole nanoseconds, compared with an observation without a float.
    bounds_nanos: Vec<u64>,
    stripes: [Padded<HistogramStripe>; STRIPES],
}

/// A histogram of durations with fixed bounds (`prometheus_client`'s `Histogram` as far as
/// `/metrics` shows). The count is the sum of the buckets, so `_count` always equals the `+Inf`
/// bucket; `_sum` may differ from them by the observations under way.
#[derive(Clone, Debug)]
pub struct StripedHistogram(Arc<HistogramInner>);

impl StripedHistogram {
    /// A histogram with `bounds` (seconds, ascending, finite; at most [`MAX_BOUNDS`], the rest
    /// dropped).
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let mut bounds: Vec<f64> = bounds
            .into_iter()
            .filter(|b| b.is_finite())
            .take(MAX_BOUNDS)
            .collect();
        // Saturating: a bound past u64 nanoseconds (584 years) is never reached anyway.
        let bounds_nanos = bounds.iter().map(|b| (b * 1e9).round() as u64).collect();
        bounds.push(f64::INFINITY);
        Self(Arc::new(HistogramInner {
            bounds,
            bounds_nanos,
            stripes: std::array::from_fn(|_| Padded::default()),
        }))
    }

    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let inner = &*self.0;
        let bucket = inner
            .bounds_nanos
            .iter()
            .position(|&b| nanos <= b)
            .unwrap_or(inner.bounds_nanos.len());
        let stripe = &inner.stripes[stripe()].0;
        stripe.sum_nanos.fetch_add(nanos, Relaxed);
        if let Some(b) = stripe.buckets.get(bucket) {
            b.fetch_add(1, Relaxed);
        }
    }

    /// Observations so far, over every thread.
    pub fn count(&self) -> u64 {
        self.buckets().iter().map(|(_, n)| n).sum()
    }

    /// Each bucket's own count (not cumulative), summed over the stripes.
    fn buckets(&self) -> Vec<(f64, u64)> {
        let inner = &*self.0;
        let mut out: Vec<(f64, u64)> = inner.bounds.iter().map(|&b| (b, 0)).collect();
        for s in &inner.stripes {
            for ((_, n), b) in out.iter_mut().zip(&s.0.buckets) {
                *n = n.wrapping_add(b.load(Relaxed));
            }
        }
        out
    }

    fn sum_seconds(&self) -> f64 {
        let nanos = self.0.stripes.iter().fold(0u128, |sum, s| {
            sum + u128::from(s.0.sum_nanos.load(Relaxed))
        });
        nanos as f64 / 1e9
    }
}

impl TypedMetric for StripedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for StripedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets = self.buckets();
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
    use prometheus_client::registry::Registry;

    use super::*;

    fn stripes_used(c: &StripedCounter) -> usize {
        c.0.iter().filter(|s| s.0.load(Relaxed) > 0).count()
    }

    #[test]
    fn threads_count_into_stripes_of_their_own_and_every_count_is_summed() {
        let c = StripedCounter::default();
        // One thread after the other: each takes the next stripe on its first count.
        for n in 1..=4u64 {
            let c = c.clone();
            std::thread::spawn(move || c.inc_by(n)).join().unwrap();
        }
        assert_eq!(c.get(), 10);
        assert!(stripes_used(&c) >= 2, "{c:?}");
        // Many at once: no count lost.
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| c.inc()))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(c.get(), 80_010);
    }

    /// The lines `/metrics` shows for `metric`, registered as `m`.
    fn exposition(metric: impl prometheus_client::registry::Metric) -> Vec<String> {
        let mut r = Registry::default();
        r.register("m", "help", metric);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out.lines().map(str::to_string).collect()
    }

    #[test]
    fn a_striped_histogram_shows_what_the_locked_one_shows() {
        let bounds = || exponential_buckets(0.0005, 2.0, 16);
        let (striped, locked) = (StripedHistogram::new(bounds()), Histogram::new(bounds()));
        // On a bound (counted in it, `le`), between bounds, past the last (`+Inf`).
        for ms in [1u64, 1, 3, 256, 1_000, 20_000] {
            let d = Duration::from_millis(ms);
            let s = striped.clone();
            std::thread::spawn(move || s.observe(d)).join().unwrap();
            locked.observe(d.as_secs_f64());
        }
        let (a, b) = (exposition(striped.clone()), exposition(locked));
        let without_sum = |v: &[String]| -> Vec<String> {
            v.iter()
                .filter(|l| !l.starts_with("m_sum"))
                .cloned()
                .collect()
        };
        assert_eq!(without_sum(&a), without_sum(&b));
        assert!(
            a.contains(&r#"m_bucket{le="0.001"} 2"#.to_string()),
            "{a:#?}"
        );
        assert!(
            a.contains(&r#"m_bucket{le="+Inf"} 6"#.to_string()),
            "{a:#?}"
        );
        assert!(a.contains(&"m_count 6".to_string()), "{a:#?}");
        assert!(a.contains(&"m_sum 21.261".to_string()), "{a:#?}");
        assert_eq!(striped.count(), 6);
    }

    #[test]
    fn a_counter_shows_as_a_counter() {
        let c = StripedCounter::default();
        c.inc_by(3);
        let lines = exposition(c);
        assert!(
            lines.contains(&"# TYPE m counter".to_string()),
            "{lines:#?}"
        );
        assert!(lines.contains(&"m_total 3".to_string()), "{lines:#?}");
    }
}
