//! Prometheus metrics. Label values are bounded sets (paths, outcomes, registry hosts): never an
//! image name or a namespace.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod striped;
pub use striped::{StripedCounter, StripedHistogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub path: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub registry: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabel {
    pub registry: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeReadLabels {
    /// `secret` or `serviceaccount`.
    pub kind: &'static str,
    /// `found`, `not_found`, `forbidden`, `timeout`, `error`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginRunLabels {
    /// The provider's `name` in the CredentialProviderConfig (bounded by the config).
    pub provider: String,
    /// `ok`, `timeout`, `exit`, `bad_response`, `spawn`.
    pub outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The admission paths and outcomes (`admission::Endpoint::path`, `Decision::outcome`, and the
/// admitter's `overloaded` and `invalid`), for [`AdmissionHandles`].
const PATHS: [&str; 2] = ["mutate", "enforce"];
const OUTCOMES: [&str; 8] = [
    "pinned",
    "unchanged",
    "ignored",
    "unpinned",
    "partial",
    "denied",
    "overloaded",
    "invalid",
];

/// The admission series already made, kept by path and outcome: an admission is counted without
/// hashing its labels or taking the families' lock (`Family::get_or_create`, 0.9k instructions
/// an admission, `benches/hotpath.rs`). A series is made on its first use, as before, so
/// `/metrics` shows the same series.
#[derive(Default)]
struct AdmissionHandles {
    counts: [[std::sync::OnceLock<StripedCounter>; OUTCOMES.len()]; PATHS.len()],
    seconds: [std::sync::OnceLock<StripedHistogram>; PATHS.len()],
}

pub struct Metrics {
    registry: Registry,
    /// The registry hosts that have a label value of their own; every other host is `other`.
    /// One set for every metric, bounded: hosts come from pod specs.
    registry_labels: std::sync::Mutex<std::collections::HashSet<Box<str>>>,
    max_registry_labels: usize,
    /// Striped, as are `admission_seconds` and `cache_hits`: every review thread counts into
    /// them on the cached path.
    pub admissions: Family<AdmissionLabels, StripedCounter>,
    pub admission_seconds: Family<PathLabel, StripedHistogram, fn() -> StripedHistogram>,
    admission_handles: AdmissionHandles,
    pub lookups: Family<LookupLabels, Counter>,
    pub lookup_seconds: HistogramFamily<RegistryLabel>,
    pub cache_hits: StripedCounter,
    pub cache_misses: Counter,
    pub stale_served: Counter,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: Family<RegistryLabel, Gauge>,
    pub kube_reads: Family<KubeReadLabels, Counter>,
    pub plugin_runs: Family<PluginRunLabels, Counter>,
    /// The serving certificate's `notAfter` (Unix seconds), set by `tls` at load and each reload.
    pub tls_not_after: Gauge,
    /// Log lines dropped because the log sink fell behind (`serve`'s non-blocking writer keeps
    /// the count; [`Metrics::record_log_lines_dropped`] copies it here before a scrape).
    pub log_lines_dropped: Counter,
}

fn admission_histogram() -> StripedHistogram {
    // 0.5 ms .. ~16 s
    StripedHistogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn lookup_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registry label values per process by default (`--metrics-max-registries`).
pub const DEFAULT_MAX_REGISTRY_LABELS: usize = 64;

impl Metrics {
    pub fn new() -> Self {
        Self::with_max_registries(DEFAULT_MAX_REGISTRY_LABELS)
    }

    /// The `registry` label value for `host`: the host itself for the first `max` hosts seen,
    /// `other` after that.
    pub fn registry_label(&self, host: &str) -> String {
        let Ok(mut seen) = self.registry_labels.lock() else {
            return "other".into();
        };
        if seen.contains(host) {
            return host.to_string();
        }
        if seen.len() < self.max_registry_labels {
            seen.insert(host.into());
            return host.to_string();
        }
        "other".into()
    }

    /// Metrics whose registry label keeps at most `max` hosts of their own.
    // One piece on purpose: it registers every exported metric, name and help, in one list
    // read top to bottom; splitting it would only scatter that list.
    pub fn with_max_registries(max: usize) -> Self {
        let mut registry = Registry::with_prefix("tagpin");
        let admissions = Family::<AdmissionLabels, StripedCounter>::default();
        registry.register(
            "admissions",
            "Admission reviews answered, by path and outcome",
            admissions.clone(),
        );
        let admission_seconds =
            Family::<PathLabel, StripedHistogram, fn() -> StripedHistogram>::new_with_constructor(
                admission_histogram,
            );
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission review",
            admission_seconds.clone(),
        );
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "registry_lookups",
            "Manifest lookups sent to registries, by registry and outcome",
            lookups.clone(),
        );
        let lookup_seconds: HistogramFamily<RegistryLabel> =
            Family::new_with_constructor(lookup_histogram);
        registry.register(
            "registry_lookup_duration_seconds",
            "Time of one manifest lookup (including auth round trips)",
            lookup_seconds.clone(),
        );
        let cache_hits = StripedCounter::default();
        registry.register("cache_hits", "Digest cache hits", cache_hits.clone());
        let cache_misses = Counter::default();
        registry.register("cache_misses", "Digest cache misses", cache_misses.clone());
        let stale_served = Counter::default();
        registry.register(
            "stale_digests_served",
            "Last known digests used because the registry failed",
            stale_served.clone(),
        );
        let breaker_state = Family::<RegistryLabel, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker per registry: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        let kube_reads = Family::<KubeReadLabels, Counter>::default();
        registry.register(
            "kube_reads",
            "Kubernetes API reads (get) of pull secrets and service accounts, by kind and outcome",
            kube_reads.clone(),
        );
        let plugin_runs = Family::<PluginRunLabels, Counter>::default();
        registry.register(
            "credential_plugin_runs",
            "Credential-provider plugin runs, by provider and outcome",
            plugin_runs.clone(),
        );
        let tls_not_after = Gauge::default();
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "Expiry (notAfter, Unix time) of the serving certificate in use; follows reloads",
            tls_not_after.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log sink (stderr) fell behind; admissions never wait for it",
            log_lines_dropped.clone(),
        );
        Self {
            log_lines_dropped,
            registry,
            registry_labels: Default::default(),
            max_registry_labels: max,
            admissions,
            admission_seconds,
            admission_handles: AdmissionHandles::default(),
            lookups,
            lookup_seconds,
            cache_hits,
            cache_misses,
            stale_served,
            breaker_state,
            kube_reads,
            plugin_runs,
            tls_not_after,
        }
    }

    /// Counts one admission answered on `path` with `outcome`, which took `seconds`.
    pub fn count_admission(&self, path: &'static str, outcome: &'static str, took: Duration) {
        let h = &self.admission_handles;
        let labels = AdmissionLabels { path, outcome };
        let p = PATHS.iter().position(|&x| x == path);
        let o = OUTCOMES.iter().position(|&x| x == outcome);
        match p.zip(o).and_then(|(p, o)| h.counts.get(p)?.get(o)) {
            Some(slot) => slot
                .get_or_init(|| self.admissions.get_or_create(&labels).clone())
                .inc(),
            None => self.admissions.get_or_create(&labels).inc(),
        };
        let path = PathLabel { path };
        match p.and_then(|p| h.seconds.get(p)) {
            Some(slot) => slot
                .get_or_init(|| self.admission_seconds.get_or_create(&path).clone())
                .observe(took),
            None => self.admission_seconds.get_or_create(&path).observe(took),
        }
    }

    /// Sets the dropped log lines counter to `total`, the writer's own count (never lowers it).
    pub fn record_log_lines_dropped(&self, total: u64) {
        self.log_lines_dropped
            .inner()
            .fetch_max(total, std::sync::atomic::Ordering::Relaxed);
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_log_lines_follow_the_writer_count_and_never_go_down() {
        let m = Metrics::new();
        assert!(m.encode().contains("tagpin_log_lines_dropped_total 0"));
        m.record_log_lines_dropped(42);
        assert!(m.encode().contains("tagpin_log_lines_dropped_total 42"));
        // An older, smaller reading (scrapes racing) never lowers it.
        m.record_log_lines_dropped(7);
        assert!(m.encode().contains("tagpin_log_lines_dropped_total 42"));
    }

    #[test]
    fn admissions_count_into_the_series_of_their_labels_made_on_first_use() {
        let m = Metrics::new();
        assert!(!m.encode().contains("tagpin_admissions_total{"));
        let ms = Duration::from_millis;
        m.count_admission("mutate", "pinned", ms(1));
        m.count_admission("mutate", "pinned", ms(2));
        m.count_admission("enforce", "invalid", ms(3));
        // Outside the kept handles: counted through the family, as before.
        m.count_admission("mutate", "unheard-of", ms(4));
        let series = |path, outcome| {
            m.admissions
                .get_or_create(&AdmissionLabels { path, outcome })
                .get()
        };
        assert_eq!(series("mutate", "pinned"), 2);
        assert_eq!(series("enforce", "invalid"), 1);
        assert_eq!(series("mutate", "unheard-of"), 1);
        let text = m.encode();
        assert!(
            !text.contains(r#"outcome="unchanged""#),
            "a series is made only when used: {text}"
        );
        assert!(
            text.contains(r#"tagpin_admission_duration_seconds_count{path="mutate"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tagpin_admission_duration_seconds_count{path="enforce"} 1"#),
            "{text}"
        );
    }
}
