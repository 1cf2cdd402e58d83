//! The alerting rules, their promtool tests and the Grafana dashboard against a real scrape of
//! `tagpin serve`: every tagpin metric they name is on `/metrics`, and every tagpin series the
//! rule tests feed carries the labels `/metrics` gives it (plus the target labels a scrape adds),
//! with histogram buckets and paths that exist. The series of kube-state-metrics and of the API
//! server are not tagpin's: they are listed in [`NOT_TAGPIN`], the only names allowed besides.
//! (`promtool` itself runs in tests/manifests/test_alerts.py.)

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::post_over_http as post;
use common::*;

const RULES: &str = include_str!("../manifests/components/alerts/prometheusrule.yaml");
const RULE_TESTS: &str = include_str!("alerts/rules_test.yaml");
const DASHBOARD: &str = include_str!("../manifests/components/dashboard/tagpin.json");

/// Series the rules read that other programs expose: kube-state-metrics' and the API server's.
const NOT_TAGPIN: &[&str] = &[
    "kube_deployment_status_replicas_available",
    "apiserver_admission_webhook_fail_open_count",
    "apiserver_admission_webhook_rejection_count",
];
/// Labels Prometheus adds to every series of a target (`job`, `instance`) and those a
/// ServiceMonitor scrape adds from the pod and Service (`namespace`, `pod`, `service`, ...).
const TARGET_LABELS: &[&str] = &[
    "job",
    "instance",
    "namespace",
    "pod",
    "service",
    "container",
    "endpoint",
];
/// Prefixes of the metric names searched for in the files.
const PREFIXES: &[&str] = &["tagpin_", "kube_", "apiserver_"];

/// Metric names in `text`: words (letters, digits, `_`, `:`) that start with one of [`PREFIXES`].
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| PREFIXES.iter().any(|p| w.starts_with(p)))
        .map(str::to_string)
        .collect()
}

/// `name{a="1",b="2"}` (a sample line's series, or a promtool series) as name and labels.
fn parse_series(s: &str) -> (String, BTreeMap<String, String>) {
    let s = s.trim();
    let Some((name, rest)) = s.split_once('{') else {
        return (s.to_string(), BTreeMap::new());
    };
    let body = rest
        .strip_suffix('}')
        .unwrap_or_else(|| panic!("no closing brace: {s}"));
    let labels = body
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .unwrap_or_else(|| panic!("not k=\"v\": {p}"));
            (k.trim().to_string(), v.trim().trim_matches('"').to_string())
        })
        .collect();
    (name.trim().to_string(), labels)
}

/// Each sample of a text exposition: the series name and its labels.
fn scraped(exposition: &str) -> Vec<(String, BTreeMap<String, String>)> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            // The value follows the last space; label values here hold no spaces.
            let series = l.rsplit_once(' ').map_or(l, |(s, _)| s);
            parse_series(series)
        })
        .collect()
}

/// The `series` strings of every `input_series` in the promtool rule tests.
fn rule_test_series() -> Vec<String> {
    let doc: serde_json::Value = serde_saphyr::from_str(RULE_TESTS).unwrap();
    doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["input_series"].as_array().unwrap().iter())
        .map(|s| s["series"].as_str().unwrap().to_string())
        .collect()
}

/// A real scrape of `tagpin serve` after the reviews that make every series the rules read: a
/// pinned pod (a lookup, the breaker, a cache miss), the same pod again (a cache hit), and a pod
/// whose registry refuses connections (a failing lookup, an unpinned answer), that pod on
/// `/enforce` (a denial).
async fn real_scrape() -> String {
    let reg = Registry::plain();
    let a = reg.addr.clone();
    reg.pusher().push("app", "1", Kind::Oci).await;
    // Port 1 on loopback: nothing listens, so the lookup fails as `unreachable`.
    let tp = Tagpin::spawn(&[
        "--insecure-registry",
        &a,
        "--insecure-registry",
        "127.0.0.1:1",
    ]);
    let c = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    for (uid, image, path) in [
        ("pinned", format!("{a}/app:1"), "mutate"),
        ("cached", format!("{a}/app:1"), "mutate"),
        ("unpinned", "127.0.0.1:1/app:1".to_string(), "mutate"),
        ("denied", "127.0.0.1:1/app:1".to_string(), "enforce"),
    ] {
        let review = pod_review(uid, &[&image]);
        let url = format!("https://{}/{path}", tp.https);
        let (status, _) = post(&c, &url, serde_json::to_vec(&review).unwrap()).await;
        assert_eq!(status, 200);
    }
    reqwest::get(format!("http://{}/metrics", tp.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn rules_rule_tests_and_dashboard_name_only_series_that_metrics_exposes() {
    init();
    let exposition = real_scrape().await;
    let samples = scraped(&exposition);
    let exposed: BTreeSet<&str> = samples.iter().map(|(n, _)| n.as_str()).collect();
    // The reviews above made the series that have labels, so they are samples, not only HELP.
    for name in [
        "tagpin_admissions_total",
        "tagpin_registry_lookups_total",
        "tagpin_breaker_state",
        "tagpin_admission_duration_seconds_bucket",
        "tagpin_tls_certificate_expiry_timestamp_seconds",
    ] {
        assert!(exposed.contains(name), "no {name} sample in\n{exposition}");
    }

    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));
    for (file, text) in [
        ("manifests/components/alerts/prometheusrule.yaml", RULES),
        ("tests/alerts/rules_test.yaml", RULE_TESTS),
        ("manifests/components/dashboard/tagpin.json", DASHBOARD),
    ] {
        let names = metric_names(text);
        assert!(
            names.iter().any(|n| n.starts_with("tagpin_")),
            "{file}: no tagpin metric found: the scan is broken"
        );
        for name in &names {
            if name.starts_with("tagpin_") {
                // A histogram is named in prose by its family name, in queries by a series.
                let family = ["", "_bucket", "_count", "_sum"]
                    .iter()
                    .any(|suffix| exposed.contains(format!("{name}{suffix}").as_str()));
                assert!(
                    family,
                    "{file} names {name}, which a scrape of tagpin serve does not have:\n{exposition}"
                );
            } else {
                assert!(
                    NOT_TAGPIN.contains(&name.as_str()),
                    "{file} names {name}: neither tagpin's nor one of the listed other series"
                );
            }
        }
    }
}

#[tokio::test]
async fn rule_tests_feed_series_with_the_labels_metrics_gives_them() {
    init();
    let exposition = real_scrape().await;
    let samples = scraped(&exposition);
    // Per metric name: the label-name sets and the values of `le` and `path` seen in the scrape.
    let mut label_sets: BTreeMap<&str, BTreeSet<BTreeSet<&str>>> = BTreeMap::new();
    let mut values: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for (name, labels) in &samples {
        label_sets
            .entry(name)
            .or_default()
            .insert(labels.keys().map(String::as_str).collect());
        for k in ["le", "path"] {
            if let Some(v) = labels.get(k) {
                values.entry((name, k)).or_default().insert(v);
            }
        }
    }
    let series = rule_test_series();
    assert!(series.len() >= 20, "{series:?}");
    let mut checked = 0;
    for s in &series {
        let (name, labels) = parse_series(s);
        if NOT_TAGPIN.contains(&name.as_str()) {
            continue;
        }
        let own: BTreeSet<&str> = labels
            .keys()
            .map(String::as_str)
            .filter(|k| !TARGET_LABELS.contains(k))
            .collect();
        let sets = label_sets
            .get(name.as_str())
            .unwrap_or_else(|| panic!("rule test series {s}: no {name} in the scrape"));
        assert!(
            sets.contains(&own),
            "rule test series {s}: labels {own:?}, but /metrics gives {name} {sets:?}"
        );
        for k in ["le", "path"] {
            if let Some(v) = labels.get(k) {
                let seen = &values[&(name.as_str(), k)];
                assert!(
                    seen.contains(v.as_str()),
                    "rule test series {s}: {k}=\"{v}\" is not one /metrics gives ({seen:?})"
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} tagpin series checked");
}

#[test]
fn the_checks_see_a_wrong_name_or_label() {
    let samples = scraped(
        "# TYPE tagpin_breaker_state gauge\ntagpin_breaker_state{registry=\"r:5000\"} 0\ntagpin_cache_hits_total 3\n",
    );
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0].0, "tagpin_breaker_state");
    assert_eq!(samples[0].1["registry"], "r:5000");
    assert_eq!(samples[1].0, "tagpin_cache_hits_total");
    let names = metric_names("rate(tagpin_breaker_states[5m]) / kube_pod_info{x=\"tagpin-a\"}");
    assert_eq!(
        names,
        BTreeSet::from(["tagpin_breaker_states".into(), "kube_pod_info".into()]),
        "a misspelt tagpin name and an unlisted foreign one are both found"
    );
    let (name, labels) = parse_series(r#"tagpin_admissions_total{path="mutate", outcome="ok"}"#);
    assert_eq!(name, "tagpin_admissions_total");
    assert_eq!(labels.keys().collect::<Vec<_>>(), ["outcome", "path"]);
}
