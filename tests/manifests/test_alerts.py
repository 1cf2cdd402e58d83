"""tagpin's alerting rules and Grafana dashboard, as the kustomize components and the chart render
them.

- The chart's files/ are byte copies of the components' sources (one source of truth), and the
  chart renders the same PrometheusRule and ConfigMap as kustomize (test_chart.py, NoDrift), with
  the release's namespace, Deployment name and webhook timeout in place when they differ.
- `promtool check rules` on the rules of both renders; `promtool test rules` runs
  tests/alerts/rules_test.yaml against each; every alert has a firing and a quiet case there, a
  summary, a description and a runbook_url whose anchor is a heading of docs/alerts.md.
- Every dashboard query parses as PromQL: each is written as a recording rule (Grafana's variables
  replaced by values) and checked with `promtool check rules`.

That the metric names and labels used here are the ones /metrics exposes is checked against a real
scrape of `tagpin serve` by tests/alerts.rs (cargo test).

Reads the renders made by `scripts/check-manifests` ($TAGPIN_RENDERED_DIR), or makes them itself;
runs promtool from $TAGPIN_PROMTOOL, else `scripts/promtool` (which builds it on first use).

    python3 -m unittest discover -s tests/manifests -p test_alerts.py -v
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import yaml

import rendered
from test_chart import find, helm_binary, render_ok

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES_SOURCE = os.path.join(ROOT, "manifests", "components", "alerts", "prometheusrule.yaml")
DASHBOARD_SOURCE = os.path.join(ROOT, "manifests", "components", "dashboard", "tagpin.json")
CHART_FILES = os.path.join(ROOT, "charts", "tagpin", "files")
RULES_TEST = os.path.join(ROOT, "tests", "alerts", "rules_test.yaml")
ALERTS_DOC = os.path.join(ROOT, "docs", "alerts.md")
RUNBOOK_BASE = "https://github.com/tagpin/tagpin/blob/main/docs/alerts.md#"
# The renders with the alerts and the dashboard on: kustomize with both components, and the chart.
RENDERS = ("alerts", "helm-alerts")
# Grafana's variables in the dashboard's queries, and what they stand for when checked.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$webhook_timeout": "10"}

_RENDERED = {}
_PROMTOOL = []


def promtool():
    if not _PROMTOOL:
        path = os.environ.get("TAGPIN_PROMTOOL")
        if not path:
            path = subprocess.run([os.path.join(ROOT, "scripts", "promtool"), "--path"], check=True,
                                  capture_output=True, text=True).stdout.strip()
        _PROMTOOL.append(path)
    return _PROMTOOL[0]


def setUpModule():
    _RENDERED.update(rendered.load(list(RENDERS)))


def rule_groups(docs):
    return find(docs, "PrometheusRule")["spec"]["groups"]


def alerts(docs):
    return [r for g in rule_groups(docs) for r in g["rules"] if "alert" in r]


def dashboard(docs):
    cm = find(docs, "ConfigMap", "tagpin-dashboard")
    return json.loads(cm["data"]["tagpin.json"])


def dashboard_queries(dash):
    """(panel title, expr) of every query of every panel."""
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def run_promtool(testcase, *args, cwd=None):
    run = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=300, cwd=cwd)
    testcase.assertEqual(run.returncode, 0, f"promtool {' '.join(args)}:\n{run.stdout}\n{run.stderr}")
    return run.stdout


def anchors(markdown_path):
    """GitHub's anchors of a Markdown file's headings."""
    out = set()
    with open(markdown_path) as f:
        for line in f:
            m = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
            if m:
                text = re.sub(r"[`*]", "", m.group(1)).strip().lower()
                out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


class OneSource(unittest.TestCase):
    """The chart reads copies of the components' files; the copies must not drift."""

    def test_chart_files_are_copies_of_the_component_sources(self):
        for source, copy in [(RULES_SOURCE, "prometheusrule.yaml"), (DASHBOARD_SOURCE, "dashboard.json")]:
            with open(source, "rb") as a, open(os.path.join(CHART_FILES, copy), "rb") as b:
                self.assertEqual(a.read(), b.read(),
                                 f"charts/tagpin/files/{copy} differs from {os.path.relpath(source, ROOT)}: "
                                 f"edit the latter, then cp {os.path.relpath(source, ROOT)} charts/tagpin/files/{copy}")

    def test_chart_puts_in_its_release_namespace_deployment_and_timeout(self):
        docs = render_ok(self, "--set", "alerts.enabled=true", "--set", "dashboard.enabled=true",
                         "--set", "webhooks.timeoutSeconds=20", "--set", "dashboard.namespace=monitoring",
                         "--set", "alerts.labels.release=kube-prometheus-stack",
                         release="pin", namespace="infra")
        rule = find(docs, "PrometheusRule")
        self.assertEqual(rule["metadata"]["namespace"], "infra")
        self.assertEqual(rule["metadata"]["labels"]["release"], "kube-prometheus-stack")
        by_name = {r["alert"]: r for r in alerts(docs)}
        self.assertIn('namespace="infra", deployment="pin-tagpin"', by_name["TagpinNoReadyReplica"]["expr"])
        self.assertIn("> 0.8 * 20", by_name["TagpinAdmissionsNearTimeout"]["expr"])
        self.assertNotIn("tagpin-system", yaml.safe_dump(rule))
        cm = find(docs, "ConfigMap", "pin-tagpin-dashboard")
        self.assertEqual(cm["metadata"]["namespace"], "monitoring")
        self.assertEqual(cm["metadata"]["labels"]["grafana_dashboard"], "1")
        timeout = [v for v in json.loads(cm["data"]["tagpin.json"])["templating"]["list"]
                   if v["name"] == "webhook_timeout"]
        self.assertEqual(timeout[0]["query"], "20")

    def test_chart_refuses_a_source_without_what_it_substitutes(self):
        """An edit of the rules or dashboard that drops a substituted string fails the render
        instead of shipping the kustomize namespace or timeout."""
        for copy, old, says in [("prometheusrule.yaml", "> 0.8 * 10\n", "timeout threshold"),
                                ("prometheusrule.yaml", 'deployment="tagpin"', "Deployment selector"),
                                ("dashboard.json", '"query": "10"', "webhook_timeout constant")]:
            with tempfile.TemporaryDirectory() as d:
                chart = os.path.join(d, "tagpin")
                shutil.copytree(os.path.join(ROOT, "charts", "tagpin"), chart)
                path = os.path.join(chart, "files", copy)
                with open(path) as f:
                    text = f.read()
                self.assertIn(old, text)
                with open(path, "w") as f:
                    f.write(text.replace(old, old.replace("10", "12").replace("tagpin", "other")))
                run = subprocess.run([helm_binary(), "template", "tagpin", chart, "-n", "tagpin-system",
                                      "--set", "alerts.enabled=true", "--set", "dashboard.enabled=true"],
                                     capture_output=True, text=True, timeout=120)
                self.assertNotEqual(run.returncode, 0, f"{copy} without {old!r} rendered")
                self.assertIn(says, run.stderr)

    def test_off_by_default(self):
        docs = render_ok(self)
        self.assertEqual([d for d in docs if d["kind"] in ("PrometheusRule", "ConfigMap")], [])


class Rules(unittest.TestCase):
    """The alerting rules, as rendered."""

    def test_promtool_check_rules_on_both_renders(self):
        for name in RENDERS:
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "rules.yaml")
                with open(path, "w") as f:
                    yaml.safe_dump({"groups": rule_groups(_RENDERED[name])}, f, sort_keys=False)
                out = run_promtool(self, "check", "rules", path)
                self.assertIn(f"SUCCESS: {len(alerts(_RENDERED[name]))} rules found", out, name)

    def test_promtool_test_rules_on_both_renders(self):
        for name in RENDERS:
            with tempfile.TemporaryDirectory() as d:
                with open(os.path.join(d, "rules.yaml"), "w") as f:
                    yaml.safe_dump({"groups": rule_groups(_RENDERED[name])}, f, sort_keys=False)
                shutil.copy(RULES_TEST, os.path.join(d, "rules_test.yaml"))
                out = run_promtool(self, "test", "rules", "rules_test.yaml", cwd=d)
                self.assertIn("SUCCESS", out, name)

    def test_promtool_test_rules_fails_when_an_alert_changes(self):
        """The unit tests can fail: with one threshold changed they do."""
        docs = _RENDERED["alerts"]
        groups = rule_groups(docs)
        changed = [dict(g, rules=[dict(r, expr=r["expr"].replace("> 0.2", "> 0.6"))
                                  if r.get("alert") == "TagpinRegistryLookupsFailing" else r
                                  for r in g["rules"]]) for g in groups]
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "rules.yaml"), "w") as f:
                yaml.safe_dump({"groups": changed}, f, sort_keys=False)
            shutil.copy(RULES_TEST, os.path.join(d, "rules_test.yaml"))
            run = subprocess.run([promtool(), "test", "rules", "rules_test.yaml"], cwd=d,
                                 capture_output=True, text=True, timeout=300)
            self.assertNotEqual(run.returncode, 0, run.stdout)
            self.assertIn("TagpinRegistryLookupsFailing", run.stdout + run.stderr)

    def test_every_alert_fires_in_one_case_and_stays_quiet_in_another(self):
        with open(RULES_TEST) as f:
            tests = yaml.safe_load(f)["tests"]
        firing, quiet = set(), set()
        for t in tests:
            for case in t.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
        names = {r["alert"] for r in alerts(_RENDERED["alerts"])}
        self.assertGreaterEqual(len(names), 7)
        self.assertEqual(names - firing, set(), "alerts with no firing case in tests/alerts/rules_test.yaml")
        self.assertEqual(names - quiet, set(), "alerts with no quiet case in tests/alerts/rules_test.yaml")

    def test_every_alert_says_what_to_do_and_links_a_section_that_exists(self):
        headings = anchors(ALERTS_DOC)
        for r in alerts(_RENDERED["alerts"]):
            a = r["annotations"]
            self.assertTrue(a.get("summary"), r["alert"])
            self.assertGreater(len(a.get("description", "")), 80, r["alert"])
            self.assertIn(r["labels"]["severity"], ("warning", "critical"), r["alert"])
            url = a.get("runbook_url", "")
            self.assertTrue(url.startswith(RUNBOOK_BASE), f"{r['alert']}: {url}")
            anchor = url[len(RUNBOOK_BASE):]
            self.assertEqual(anchor, r["alert"].lower(), "the section is named after the alert")
            self.assertIn(anchor, headings, f"{r['alert']}: docs/alerts.md has no heading #{anchor}")

    def test_the_anchor_check_sees_a_missing_section(self):
        self.assertIn("tagpinimagesleftunpinned", anchors(ALERTS_DOC))
        self.assertNotIn("tagpinnosuchalert", anchors(ALERTS_DOC))


class Dashboard(unittest.TestCase):
    """The Grafana dashboard, as rendered."""

    def test_every_query_parses_as_promql(self):
        for name in RENDERS:
            dash = dashboard(_RENDERED[name])
            queries = dashboard_queries(dash)
            self.assertGreaterEqual(len(queries), 10)
            rules = []
            for i, (title, expr) in enumerate(queries):
                for var, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(var, value)
                self.assertNotIn("$", expr, f"{title}: a Grafana variable this test does not know")
                rules.append({"record": f"tagpin:dashboard_query_{i}", "expr": expr})
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "dashboard.yaml")
                with open(path, "w") as f:
                    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
                out = run_promtool(self, "check", "rules", path)
                self.assertIn(f"SUCCESS: {len(rules)} rules found", out)

    def test_the_parse_check_sees_a_broken_query(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "broken.yaml")
            with open(path, "w") as f:
                yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
                    {"record": "tagpin:broken", "expr": "sum by (registry (rate(tagpin_registry_lookups_total[5m]))"}]}]}, f)
            run = subprocess.run([promtool(), "check", "rules", path], capture_output=True, text=True, timeout=60)
            self.assertNotEqual(run.returncode, 0)

    def test_panels_cover_what_an_operator_needs(self):
        dash = dashboard(_RENDERED["alerts"])
        exprs = " ".join(e for _, e in dashboard_queries(dash))
        for metric in ["tagpin_admissions_total", "tagpin_admission_duration_seconds_bucket",
                       "tagpin_registry_lookups_total", "tagpin_breaker_state", "tagpin_cache_hits_total",
                       "tagpin_stale_digests_served_total", "tagpin_tls_certificate_expiry_timestamp_seconds",
                       "$webhook_timeout", 'outcome=~"unpinned|partial|overloaded"']:
            self.assertIn(metric, exprs)
        self.assertEqual(len({p["id"] for p in dash["panels"]}), len(dash["panels"]), "panel ids are unique")

    def test_configmap_is_labelled_for_the_grafana_sidecar(self):
        for name in RENDERS:
            cm = find(_RENDERED[name], "ConfigMap", "tagpin-dashboard")
            self.assertEqual(cm["metadata"]["labels"]["grafana_dashboard"], "1", name)
            self.assertEqual(cm["metadata"]["namespace"], "tagpin-system", name)


if __name__ == "__main__":
    unittest.main()
