"""The Helm chart (charts/tagpin) against the kustomize manifests, and the chart's own values checks.

Drift: the chart, rendered with settings equivalent to a kustomize install, must give the same
objects (same kinds, names, namespaces, fields) except for labels: each object's own
metadata.labels are free (Helm adds its bookkeeping labels, kustomize its own), and inside selectors
and pod templates only Helm's bookkeeping keys (app.kubernetes.io/instance, …) may differ. The
Namespace object is kustomize's alone (the chart leaves it to `helm install --create-namespace`).
Two more normalisations, both meaning-preserving: base64 values (Secret data, caBundle) without
the line breaks kustomize puts in, and the server's flags compared as a set after `serve`.

Reads the renders made by `scripts/check-manifests` ($TAGPIN_RENDERED_DIR), or makes them itself;
runs helm from $TAGPIN_HELM, else `scripts/helm` (which builds it on first use).

    python3 -m unittest discover -s tests/manifests -p test_chart.py -v
"""

import base64
import copy
import difflib
import os
import shutil
import subprocess
import tempfile
import unittest

import yaml

import rendered

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "charts", "tagpin")
NAMESPACE = "tagpin-system"
# Labels Helm charts carry for Helm's and the release's sake; no behaviour hangs on them.
BOOKKEEPING = {
    "helm.sh/chart",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
}

# `tagpin serve` flags the chart sets itself (ports, the mounted certificate, logFormat).
CHART_OWNED_FLAGS = {"listen", "metrics-listen", "tls-cert", "tls-key", "log-format"}

_RENDERED = {}
_HELM = []


def helm_binary():
    if not _HELM:
        path = os.environ.get("TAGPIN_HELM")
        if not path:
            path = subprocess.run([os.path.join(ROOT, "scripts", "helm"), "--path"], check=True,
                                  capture_output=True, text=True).stdout.strip()
        _HELM.append(path)
    return _HELM[0]


def setUpModule():
    _RENDERED.update(rendered.load())


def template(*args, release="tagpin", namespace=NAMESPACE):
    """`helm template` of the chart; (exit code, objects or None, stderr)."""
    run = subprocess.run([helm_binary(), "template", release, CHART, "--namespace", namespace, *args],
                         capture_output=True, text=True, timeout=120)
    docs = [d for d in yaml.safe_load_all(run.stdout) if d] if run.returncode == 0 else None
    return run.returncode, docs, run.stderr


def render_ok(testcase, *args, **kw):
    code, docs, err = template(*args, **kw)
    testcase.assertEqual(code, 0, err)
    return docs


def find(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def container(docs):
    return find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def _strip(node):
    if isinstance(node, list):
        return [_strip(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        label_map = k in ("labels", "matchLabels") or (
            k == "selector" and isinstance(v, dict) and not {"matchLabels", "matchExpressions"} & set(v))
        if label_map and isinstance(v, dict):
            v = {lk: lv for lk, lv in v.items() if lk not in BOOKKEEPING}
        out[k] = _strip(v)
    return out


def normalise(obj):
    obj = copy.deepcopy(obj)
    obj.get("metadata", {}).pop("labels", None)
    # base64 as the API server reads it: kustomize wraps long values in lines, Helm does not.
    if obj.get("kind") == "Secret":
        obj["data"] = {k: "".join(v.split()) for k, v in (obj.get("data") or {}).items()}
    if obj.get("kind") == "MutatingWebhookConfiguration":
        for w in obj.get("webhooks", []):
            if "caBundle" in w.get("clientConfig", {}):
                w["clientConfig"]["caBundle"] = "".join(w["clientConfig"]["caBundle"].split())
    # Flags in any order (clap reads them all before acting): the chart renders `serve:` sorted by
    # name, base/deployment.yaml lists them as written. The subcommand stays first.
    if obj.get("kind") == "Deployment":
        for c in obj["spec"]["template"]["spec"].get("containers", []):
            if c.get("args"):
                c["args"] = c["args"][:1] + sorted(c["args"][1:])
    return _strip(obj)


def by_key(docs, drop_kinds=()):
    out = {}
    for d in docs:
        if d["kind"] in drop_kinds:
            continue
        key = (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
        assert key not in out, f"{key} twice"
        out[key] = normalise(d)
    return out


def blank_certificates(objs):
    """For two installs that each make their own certificates: same shape, any bytes."""
    for (kind, _, _), o in objs.items():
        if kind == "Secret":
            o["data"] = {k: "…" for k in o.get("data", {})}
        if kind == "MutatingWebhookConfiguration":
            for w in o["webhooks"]:
                if "caBundle" in w["clientConfig"]:
                    w["clientConfig"]["caBundle"] = "…"
    return objs


class NoDrift(unittest.TestCase):
    """The chart and the kustomize manifests render the same objects."""

    def assertSameObjects(self, kustomize, chart, drop_kinds=("Namespace",), blank=False):
        k = by_key(_RENDERED[kustomize], drop_kinds)
        c = by_key(_RENDERED[chart])
        if blank:
            k, c = blank_certificates(k), blank_certificates(c)
        self.assertEqual(sorted(k), sorted(c), f"{kustomize} and {chart} render different objects")
        for key in sorted(k):
            if k[key] != c[key]:
                a = yaml.safe_dump(k[key], sort_keys=True).splitlines()
                b = yaml.safe_dump(c[key], sort_keys=True).splitlines()
                diff = "\n".join(difflib.unified_diff(a, b, f"{kustomize}: {key}", f"{chart}: {key}", lineterm=""))
                self.fail(f"the chart drifted from manifests/ in {key[0]} {key[2]}:\n{diff}")

    def test_cert_manager_install(self):
        # kubectl apply -k manifests/  vs  helm install tagpin charts/tagpin (cert-manager present)
        self.assertSameObjects("default", "helm-cert-manager")

    def test_cert_manager_install_with_service_monitor(self):
        self.assertSameObjects("servicemonitor", "helm-servicemonitor")

    def test_cert_manager_install_with_alerts_and_dashboard(self):
        # the alerts and dashboard components vs. alerts.enabled and dashboard.enabled
        self.assertSameObjects("alerts", "helm-alerts")

    def test_plain_overlay_and_existing_secret(self):
        # manifests/overlays/plain makes Secret tagpin-tls itself; with the chart the operator does,
        # and passes the same CA, so even caBundle must be identical.
        self.assertSameObjects("plain", "helm-existing-secret", drop_kinds=("Namespace", "Secret"))

    def test_plain_overlay_and_generated_certificates(self):
        self.assertSameObjects("plain", "helm-generated", blank=True)

    def test_the_comparison_sees_a_changed_field(self):
        """The normalisation must not hide a real difference."""
        k = by_key(_RENDERED["default"], ("Namespace",))
        c = by_key(_RENDERED["helm-cert-manager"])
        self.assertEqual(k, c)
        key = ("Deployment", NAMESPACE, "tagpin")
        c[key]["spec"]["template"]["metadata"]["labels"]["tagpin.io/skip"] = "false"
        self.assertNotEqual(k, c, "a functional pod-template label must count")
        c = by_key(_RENDERED["helm-cert-manager"])
        c[("MutatingWebhookConfiguration", "", "tagpin")]["webhooks"][1]["failurePolicy"] = "Ignore"
        self.assertNotEqual(k, c)
        c = by_key(_RENDERED["helm-cert-manager"])
        c[key]["spec"]["template"]["spec"]["containers"][0]["args"][-1] = "--log-format=text"
        self.assertNotEqual(k, c, "a changed flag must count")


class Values(unittest.TestCase):
    """values.schema.json and the chart's own checks refuse what would not work."""

    def assertRefused(self, *args, says):
        code, _, err = template(*args)
        self.assertNotEqual(code, 0, f"helm template {' '.join(args)} was accepted")
        self.assertIn(says, err)

    def test_a_misspelt_key_fails(self):
        self.assertRefused("--set", "replicaz=3", says="replicaz")
        self.assertRefused("--set", "webhooks.enforce.enable=false", says="enable")
        self.assertRefused("--set", "serve.resolve-timout=5s", says="resolve-timout")

    def test_a_wrong_type_or_value_fails(self):
        self.assertRefused("--set", "replicas=two", says="replicas")
        self.assertRefused("--set", "logFormat=yaml", says="logFormat")
        self.assertRefused("--set", "serve.resolve-timeout=5", says="resolve-timeout")
        self.assertRefused("--set", "image.digest=sha256:abc", says="digest")
        self.assertRefused("--set", "certManager.enabled=yes", says="enabled")

    def test_the_chart_owns_listen_and_certificate_flags(self):
        self.assertRefused("--set", "serve.listen=0.0.0.0:1", says="listen")
        self.assertRefused("--set", "serve.tls-cert=/x", says="tls-cert")

    def test_webhook_timeout_must_exceed_resolve_timeout(self):
        self.assertRefused("--set", "serve.resolve-timeout=9s", says="timeoutSeconds (10) must be at least")
        docs = render_ok(self, "--set", "serve.resolve-timeout=9s", "--set", "webhooks.timeoutSeconds=11")
        self.assertIn("--resolve-timeout=9s", container(docs)["args"])
        self.assertEqual({w["timeoutSeconds"] for w in find(docs, "MutatingWebhookConfiguration")["webhooks"]}, {11})

    def test_termination_grace_must_cover_prestop_and_shutdown_grace(self):
        self.assertRefused("--set", "serve.shutdown-grace=25s", says="terminationGracePeriodSeconds (30)")
        render_ok(self, "--set", "serve.shutdown-grace=25s", "--set", "terminationGracePeriodSeconds=31")

    def test_certificate_modes_refuse_half_settings(self):
        self.assertRefused("--set", "certificates.existingSecret=mine", says="needs certificates.caBundle")
        self.assertRefused("--set", "certificates.existingSecret=mine", "--set", "certificates.caBundle=bm9wZQ==",
                           says="neither a PEM certificate")
        ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()
        self.assertRefused("--set", "certificates.existingSecret=mine", "--set", f"certificates.caBundle={ca}",
                           "--set", "certManager.enabled=true", says="exclusive")

    def test_at_least_one_webhook(self):
        self.assertRefused("--set", "webhooks.pods.enabled=false", "--set", "webhooks.enforce.enabled=false",
                           "--set", "webhooks.workloads.enabled=false", says="enable at least one")


class Rendering(unittest.TestCase):
    """What the values turn into."""

    def test_webhooks_can_be_turned_off_one_by_one(self):
        for off, left in (("pods", {"enforce.pods.tagpin.io", "workloads.tagpin.io"}),
                          ("enforce", {"pods.tagpin.io", "workloads.tagpin.io"}),
                          ("workloads", {"pods.tagpin.io", "enforce.pods.tagpin.io"})):
            docs = render_ok(self, "--set", f"webhooks.{off}.enabled=false")
            names = {w["name"] for w in find(docs, "MutatingWebhookConfiguration")["webhooks"]}
            self.assertEqual(names, left, off)

    def test_extra_namespace_exclusions_reach_every_webhook(self):
        docs = render_ok(self, "--set", "webhooks.excludeNamespaces={monitoring,ingress}")
        for w in find(docs, "MutatingWebhookConfiguration")["webhooks"]:
            expr = next(e for e in w["namespaceSelector"]["matchExpressions"] if e["key"] == "kubernetes.io/metadata.name")
            self.assertEqual(expr, {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                    "values": ["kube-system", NAMESPACE, "monitoring", "ingress"]})

    def test_serve_flags_become_args(self):
        docs = render_ok(
            self,
            "--set", "serve.cache-ttl=1m",
            "--set", "serve.cache-capacity=1000000",
            "--set", "serve.insecure-registry={registry.internal:5000,10.0.0.1:5000}",
            "--set", "serve.keep-tag=true",
            "--set", "serve.no-kube=false",
            "--set", "logFormat=text",
            "--set", "extraArgs={--breaker-threshold=7}",
        )
        args = container(docs)["args"]
        self.assertEqual(args[:5], ["serve", "--listen=0.0.0.0:8443", "--metrics-listen=0.0.0.0:9090",
                                    "--tls-cert=/etc/tagpin/tls/tls.crt", "--tls-key=/etc/tagpin/tls/tls.key"])
        for a in ("--cache-ttl=1m", "--cache-capacity=1000000", "--insecure-registry=registry.internal:5000",
                  "--insecure-registry=10.0.0.1:5000", "--keep-tag", "--log-format=text", "--breaker-threshold=7",
                  "--resolve-timeout=5s", "--shutdown-grace=20s"):
            self.assertIn(a, args)
        self.assertFalse([a for a in args if "no-kube" in a], "false leaves a switch out")
        binary = rendered.tagpin_binary()
        if binary:  # every rendered flag is one `tagpin serve` takes (clap checks all before --help)
            env = {k: v for k, v in os.environ.items() if not k.startswith("TAGPIN_")}
            run = subprocess.run([binary, *args, "--help"], env=env, capture_output=True, text=True, timeout=30)
            self.assertEqual(run.returncode, 0, run.stderr)

    def test_schema_lists_exactly_the_flags_of_tagpin_serve(self):
        binary = rendered.tagpin_binary()
        if not binary:
            self.skipTest("no tagpin binary (set TAGPIN_BIN, or run after cargo build/test)")
        import json
        with open(os.path.join(CHART, "values.schema.json")) as f:
            flags = json.load(f)["properties"]["serve"]["properties"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAGPIN_")}
        helptext = subprocess.run([binary, "serve", "--help"], env=env, capture_output=True, text=True).stdout
        for flag in flags:
            self.assertIn(f"--{flag}", helptext, f"values.schema.json lists serve.{flag}, tagpin serve has no --{flag}")
        # And the other way: a new flag of `tagpin serve` gets its line in the schema (under
        # properties.serve.properties, like its neighbours), so `--set serve.<flag>=…` works.
        import re
        served = set(re.findall(r"^\s+(?:-\w, )?--([a-z0-9-]+)", helptext, re.M)) - {"help", "version"}
        missing = served - set(flags) - CHART_OWNED_FLAGS
        self.assertEqual(missing, set(), "tagpin serve flags missing from charts/tagpin/values.schema.json")

    def test_image_by_tag_or_digest(self):
        self.assertEqual(container(render_ok(self))["image"], "ghcr.io/tagpin/tagpin:0.1.0")
        digest = "sha256:" + "ab" * 32
        docs = render_ok(self, "--set", "image.repository=registry.example.com/tagpin", "--set", f"image.digest={digest}")
        self.assertEqual(container(docs)["image"], f"registry.example.com/tagpin@{digest}")

    def test_scheduling_values(self):
        docs = render_ok(self, "--set", "priorityClassName=system-cluster-critical", "--set", "replicas=3",
                         "--set", "nodeSelector.pool=system",
                         "--set", "tolerations[0].key=dedicated,tolerations[0].operator=Exists",
                         "--set", "resources.limits.memory=512Mi")
        dep = find(docs, "Deployment")
        spec = dep["spec"]["template"]["spec"]
        self.assertEqual(dep["spec"]["replicas"], 3)
        self.assertEqual(spec["priorityClassName"], "system-cluster-critical")
        self.assertEqual(spec["nodeSelector"], {"pool": "system"})
        self.assertEqual(spec["tolerations"], [{"key": "dedicated", "operator": "Exists"}])
        self.assertEqual(container(docs)["resources"]["limits"]["memory"], "512Mi")
        self.assertIn("podAntiAffinity", spec["affinity"])

    def test_one_replica_has_no_pdb(self):
        # minAvailable 1 with one replica would block every drain.
        self.assertEqual([d for d in render_ok(self, "--set", "replicas=1") if d["kind"] == "PodDisruptionBudget"], [])

    def test_cert_manager_is_the_default_when_its_api_exists(self):
        docs = render_ok(self, "--api-versions", "cert-manager.io/v1/Certificate")
        self.assertEqual(len([d for d in docs if d["kind"] == "Certificate"]), 2)
        self.assertEqual([d for d in docs if d["kind"] == "Secret"], [])
        docs = render_ok(self)
        self.assertEqual([d for d in docs if d["kind"] == "Certificate"], [])
        self.assertEqual(len([d for d in docs if d["kind"] == "Secret"]), 1)

    def test_ca_bundle_as_pem_or_base64(self):
        with tempfile.TemporaryDirectory() as d:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-nodes", "-keyout", os.path.join(d, "ca.key"), "-subj", "/CN=test-ca", "-days", "1",
                            "-out", os.path.join(d, "ca.crt")], check=True, capture_output=True)
            with open(os.path.join(d, "ca.crt"), "rb") as f:
                pem = f.read()
        b64 = base64.b64encode(pem).decode()
        with tempfile.NamedTemporaryFile("wb", suffix=".crt") as f:
            f.write(pem)
            f.flush()
            a = render_ok(self, "--set", "certificates.existingSecret=mine", "--set-file", f"certificates.caBundle={f.name}")
        b = render_ok(self, "--set", "certificates.existingSecret=mine", "--set", f"certificates.caBundle={b64}")
        for docs in (a, b):
            for w in find(docs, "MutatingWebhookConfiguration")["webhooks"]:
                self.assertEqual(base64.b64decode(w["clientConfig"]["caBundle"]), pem)
            vol = find(docs, "Deployment")["spec"]["template"]["spec"]["volumes"][0]
            self.assertEqual(vol["secret"]["secretName"], "mine")

    def test_generated_certificate_is_valid_for_the_service(self):
        docs = render_ok(self, "--set", "certManager.enabled=false", release="web", namespace="infra")
        secret = find(docs, "Secret", "web-tagpin-tls")
        svc = find(docs, "Service")["metadata"]["name"]
        self.assertEqual(svc, "web-tagpin")
        for w in find(docs, "MutatingWebhookConfiguration")["webhooks"]:
            self.assertEqual(w["clientConfig"]["service"], {"name": svc, "namespace": "infra", "path": w["clientConfig"]["service"]["path"], "port": 443})
            self.assertEqual(w["clientConfig"]["caBundle"], secret["data"]["ca.crt"])
        with tempfile.TemporaryDirectory() as d:
            for k in ("ca.crt", "tls.crt"):
                with open(os.path.join(d, k), "wb") as f:
                    f.write(base64.b64decode(secret["data"][k]))
            run = subprocess.run(["openssl", "verify", "-CAfile", os.path.join(d, "ca.crt"), "-purpose", "sslserver",
                                  os.path.join(d, "tls.crt")], capture_output=True, text=True)
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
            for host in ("web-tagpin.infra.svc", "web-tagpin.infra.svc.cluster.local"):
                run = subprocess.run(["openssl", "x509", "-noout", "-in", os.path.join(d, "tls.crt"), "-checkhost", host],
                                     capture_output=True, text=True)
                self.assertIn("does match", run.stdout, host)

    def test_other_release_names_stay_consistent(self):
        docs = render_ok(self, "--set", "certManager.enabled=true", release="web", namespace="infra")
        mwc = find(docs, "MutatingWebhookConfiguration", "web-tagpin")
        ns, name = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
        crt = find(docs, "Certificate", name)
        self.assertEqual((ns, crt["metadata"]["namespace"]), ("infra", "infra"))
        self.assertIn("web-tagpin.infra.svc", crt["spec"]["dnsNames"])
        vol = find(docs, "Deployment")["spec"]["template"]["spec"]["volumes"][0]
        self.assertEqual(vol["secret"]["secretName"], crt["spec"]["secretName"])
        binding = find(docs, "ClusterRoleBinding")
        self.assertEqual(binding["subjects"], [{"kind": "ServiceAccount", "name": "web-tagpin", "namespace": "infra"}])
        self.assertEqual(find(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"], "web-tagpin")


class Notes(unittest.TestCase):
    """NOTES.txt, which `helm template` does not print: rendered through `tpl` in a scratch copy."""

    def notes(self, *args):
        with tempfile.TemporaryDirectory() as d:
            chart = os.path.join(d, "tagpin")
            shutil.copytree(CHART, chart)
            shutil.copy(os.path.join(chart, "templates", "NOTES.txt"), os.path.join(chart, "notes.txt"))
            with open(os.path.join(chart, "templates", "zz-notes.yaml"), "w") as f:
                f.write('kind: Notes\nmetadata: {name: notes}\ntext: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n')
            run = subprocess.run([helm_binary(), "template", "tagpin", chart, "--namespace", NAMESPACE,
                                  "--show-only", "templates/zz-notes.yaml", *args], capture_output=True, text=True)
            self.assertEqual(run.returncode, 0, run.stderr)
            return yaml.safe_load(run.stdout)["text"]

    def test_notes_say_how_to_enable_a_namespace_and_see_a_pinned_pod(self):
        text = self.notes()
        for line in ("kubectl -n tagpin-system rollout status deploy/tagpin",
                     "kubectl label namespace team-a tagpin.io/mode=enabled",
                     "kubectl -n team-a run web --image=nginx:1.27",
                     "kubectl label namespace team-a tagpin.io/mode=enforce --overwrite",
                     "kubectl label namespace team-a tagpin.io/workloads=enabled",
                     "kubectl delete mutatingwebhookconfiguration tagpin"):
            self.assertIn(line, text)
        self.assertIn("generated by the chart", text)

    def test_notes_suggest_alerts_until_they_are_on(self):
        self.assertIn("--set alerts.enabled=true --set dashboard.enabled=true", self.notes())
        text = self.notes("--set", "alerts.enabled=true", "--set", "dashboard.enabled=true")
        self.assertNotIn("alerts.enabled", text)

    def test_notes_follow_the_values(self):
        text = self.notes("--set", "webhooks.enforce.enabled=false", "--set", "certManager.enabled=true")
        self.assertNotIn("tagpin.io/mode=enforce", text)
        self.assertIn("serving certificate: cert-manager", text)



if __name__ == "__main__":
    unittest.main()
