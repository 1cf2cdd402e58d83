"""Checks on the rendered install manifests that schemas cannot express: the webhook
configuration does what manifests/README.md promises, and agrees with the Deployment's flags.
Every check runs on the kustomize renders and on the Helm chart's (helm-*: charts/tagpin in each
certificate mode).

Reads the renders made by `scripts/check-manifests` (directory in $TAGPIN_RENDERED_DIR); run alone,
it makes them itself with `scripts/check-manifests render` (kubectl must be on PATH). Needs PyYAML.

    python3 -m unittest discover -s tests/manifests -v
"""

import base64
import os
import re
import subprocess
import unittest

import rendered

NAMESPACE = "tagpin-system"
# Each overlay that installs tagpin, and each chart render, by the file scripts/check-manifests
# renders it to.
KUSTOMIZE = ("default", "cert-manager", "plain", "servicemonitor", "argo-rollouts")
CHART = ("helm-default", "helm-cert-manager", "helm-generated", "helm-existing-secret", "helm-servicemonitor")
INSTALLS = KUSTOMIZE + CHART
# How each gets its serving certificate.
CERT_MANAGER = ("default", "cert-manager", "servicemonitor", "argo-rollouts", "helm-cert-manager", "helm-servicemonitor")
SECRET_IN_RENDER = ("plain", "helm-default", "helm-generated")   # Secret and caBundle rendered together
EXISTING_SECRET = ("helm-existing-secret",)                       # Secret made by the operator

_RENDERED = {}


def setUpModule():
    _RENDERED.update(rendered.load(INSTALLS))


def objects(install, kind):
    return [o for o in _RENDERED[install] if o["kind"] == kind]


def one(install, kind, name=None):
    found = [o for o in objects(install, kind) if name is None or o["metadata"]["name"] == name]
    if len(found) != 1:
        raise AssertionError(f"{install}: expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def tagpin_container(install):
    spec = one(install, "Deployment", "tagpin")["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == "tagpin")


def seconds(text):
    """A humantime duration as tagpin's flags take it (5s, 500ms, 1m30s, 2h) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"cannot read duration {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def flag(container, name, default):
    """The value of --name from the container's args (either --name=V or --name V), else its
    TAGPIN_* variable, else the server's default."""
    args = list(container.get("command", [])) + list(container.get("args", []))
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    env = "TAGPIN_" + name.upper().replace("-", "_")
    for e in container.get("env", []):
        if e["name"] == env and "value" in e:
            return e["value"]
    return default


def selects(selector, labels):
    """A LabelSelector evaluated as the API server does (an empty selector matches everything)."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def ns_labels(name, **labels):
    # The API server labels every namespace with its own name.
    return {"kubernetes.io/metadata.name": name, **labels}


POD_RULES = {
    ("", "v1", "pods", ("CREATE", "UPDATE")),
    ("", "v1", "pods/ephemeralcontainers", ("UPDATE",)),
}
WORKLOAD_RULES = {
    ("apps", "v1", r, ("CREATE", "UPDATE"))
    for r in ("deployments", "statefulsets", "daemonsets", "replicasets")
} | {
    ("", "v1", r, ("CREATE", "UPDATE")) for r in ("replicationcontrollers", "podtemplates")
} | {("batch", "v1", r, ("CREATE", "UPDATE")) for r in ("jobs", "cronjobs")}

# What components/argo-rollouts adds, to workloads.tagpin.io only.
ROLLOUT_RULES = {("argoproj.io", "v1alpha1", "rollouts", ("CREATE", "UPDATE"))}

# name -> (path, failurePolicy, namespace label, value, rules)
EXPECTED = {
    "pods.tagpin.io": ("/mutate", "Ignore", "tagpin.io/mode", "enabled", POD_RULES),
    "enforce.pods.tagpin.io": ("/enforce", "Fail", "tagpin.io/mode", "enforce", POD_RULES),
    "workloads.tagpin.io": ("/mutate", "Ignore", "tagpin.io/workloads", "enabled", WORKLOAD_RULES),
}


def rules_of(webhook):
    out = set()
    for r in webhook["rules"]:
        for g in r["apiGroups"]:
            for v in r["apiVersions"]:
                for res in r["resources"]:
                    out.add((g, v, res, tuple(sorted(r["operations"]))))
    return out


class WebhookConfiguration(unittest.TestCase):
    def each(self):
        """(install, webhook, tagpin container) for every webhook of every install variant."""
        return [
            (install, wh, tagpin_container(install))
            for install in INSTALLS
            for wh in one(install, "MutatingWebhookConfiguration", "tagpin")["webhooks"]
        ]

    def test_exactly_the_three_webhooks(self):
        for install in INSTALLS:
            names = [w["name"] for w in one(install, "MutatingWebhookConfiguration")["webhooks"]]
            self.assertEqual(sorted(names), sorted(EXPECTED), install)
            self.assertEqual(objects(install, "ValidatingWebhookConfiguration"), [], install)

    def test_path_failure_policy_and_rules(self):
        for install, wh, _ in self.each():
            with self.subTest(install=install, webhook=wh["name"]):
                path, policy, _, _, rules = EXPECTED[wh["name"]]
                if install == "argo-rollouts" and wh["name"] == "workloads.tagpin.io":
                    rules = rules | ROLLOUT_RULES
                self.assertEqual(wh["clientConfig"]["service"]["path"], path)
                self.assertEqual(wh["failurePolicy"], policy)
                self.assertEqual(rules_of(wh), rules)
                self.assertTrue(all(r.get("scope") == "Namespaced" for r in wh["rules"]))

    def test_common_settings(self):
        for install, wh, _ in self.each():
            with self.subTest(install=install, webhook=wh["name"]):
                self.assertEqual(wh["admissionReviewVersions"], ["v1"])
                self.assertEqual(wh["sideEffects"], "None")
                self.assertEqual(wh["matchPolicy"], "Equivalent")
                self.assertEqual(wh["reinvocationPolicy"], "IfNeeded")

    def test_timeout_above_resolve_timeout_with_margin(self):
        for install, wh, container in self.each():
            with self.subTest(install=install, webhook=wh["name"]):
                resolve = seconds(flag(container, "resolve-timeout", "5s"))
                timeout = wh["timeoutSeconds"]
                # The API server gives up at timeoutSeconds (at most 30); tagpin answers by
                # --resolve-timeout plus its own work: keep at least 2 s between the two.
                self.assertLessEqual(timeout, 30)
                self.assertGreaterEqual(timeout, resolve + 2, f"timeoutSeconds {timeout} vs --resolve-timeout {resolve}s")

    def test_service_reference_reaches_the_https_port(self):
        for install, wh, container in self.each():
            with self.subTest(install=install, webhook=wh["name"]):
                ref = wh["clientConfig"]["service"]
                self.assertEqual(ref["namespace"], NAMESPACE)
                svc = one(install, "Service", ref["name"])
                port = next(p for p in svc["spec"]["ports"] if p["port"] == ref.get("port", 443))
                cport = next(p for p in container["ports"] if p["name"] == port["targetPort"] or p["containerPort"] == port["targetPort"])
                listen = flag(container, "listen", "0.0.0.0:8443")
                self.assertEqual(cport["containerPort"], int(listen.rsplit(":", 1)[1]))

    def test_namespace_opt_in_and_exclusions(self):
        for install, wh, _ in self.each():
            with self.subTest(install=install, webhook=wh["name"]):
                _, _, key, value, _ = EXPECTED[wh["name"]]
                sel = wh["namespaceSelector"]
                self.assertIn({"key": key, "operator": "In", "values": [value]}, sel["matchExpressions"])
                # Evaluated as the API server would, on namespaces as they would be labelled.
                self.assertTrue(selects(sel, ns_labels("team-a", **{key: value})))
                self.assertFalse(selects(sel, ns_labels("team-b")), "an unlabelled namespace must not match")
                other = {"tagpin.io/mode": "enabled", "tagpin.io/workloads": "enabled"}
                other[key] = "nope"
                self.assertFalse(selects(sel, ns_labels("team-c", **other)))
                # kube-system and tagpin-system are out by name, even if someone labels them.
                for ns in ("kube-system", NAMESPACE):
                    self.assertFalse(selects(sel, ns_labels(ns, **{key: value})), ns)

    def test_tagpin_namespace_as_installed_never_matches(self):
        for install in INSTALLS:
            # The chart leaves the namespace to `helm install --create-namespace`: no labels but
            # the one the API server sets.
            found = objects(install, "Namespace")
            self.assertEqual(len(found), 1 if install in KUSTOMIZE else 0, install)
            labels = ns_labels(NAMESPACE, **(found[0]["metadata"].get("labels", {}) if found else {}))
            for wh in one(install, "MutatingWebhookConfiguration")["webhooks"]:
                self.assertFalse(selects(wh["namespaceSelector"], labels), (install, wh["name"]))

    def test_skip_label_excludes_objects(self):
        for install, wh, _ in self.each():
            if wh["clientConfig"]["service"]["path"] == "/enforce":
                continue
            with self.subTest(install=install, webhook=wh["name"]):
                sel = wh["objectSelector"]
                self.assertIn({"key": "tagpin.io/skip", "operator": "NotIn", "values": ["true"]}, sel["matchExpressions"])
                self.assertFalse(selects(sel, {"tagpin.io/skip": "true", "app": "x"}))
                self.assertTrue(selects(sel, {"app": "x"}))
                self.assertTrue(selects(sel, {}))

    def test_enforce_ignores_the_skip_label(self):
        # Enforcement must not be opt-out for the pod authors it constrains (issue 14, row 12):
        # only the namespace exclusions apply.
        for install, wh, _ in self.each():
            if wh["clientConfig"]["service"]["path"] != "/enforce":
                continue
            with self.subTest(install=install, webhook=wh["name"]):
                self.assertTrue(selects(wh.get("objectSelector", {}), {"tagpin.io/skip": "true"}))
                self.assertNotIn("objectSelector", wh)


class Deployment(unittest.TestCase):
    def test_termination_grace_covers_prestop_and_shutdown_grace(self):
        for install in INSTALLS:
            spec = one(install, "Deployment", "tagpin")["spec"]["template"]["spec"]
            for c in spec["containers"]:
                with self.subTest(install=install, container=c["name"]):
                    grace = seconds(flag(c, "shutdown-grace", "20s"))
                    pre = c.get("lifecycle", {}).get("preStop", {})
                    sleep = pre.get("sleep", {}).get("seconds", 0)
                    self.assertNotIn("exec", pre, "the distroless image has no shell for an exec hook")
                    self.assertGreater(sleep, 0, "a preStop sleep lets endpoints drop the pod first")
                    self.assertGreater(spec.get("terminationGracePeriodSeconds", 30), sleep + grace)

    def test_probes_hit_the_metrics_listener(self):
        for install in INSTALLS:
            c = tagpin_container(install)
            metrics = int(flag(c, "metrics-listen", "0.0.0.0:9090").rsplit(":", 1)[1])
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = c[probe]["httpGet"]
                self.assertEqual(get["path"], path)
                self.assertEqual(ports.get(get["port"], get["port"]), metrics)

    def test_two_replicas_and_a_pdb_that_keeps_one(self):
        for install in INSTALLS:
            dep = one(install, "Deployment", "tagpin")
            self.assertGreaterEqual(dep["spec"]["replicas"], 2)
            pdb = one(install, "PodDisruptionBudget", "tagpin")
            self.assertEqual(pdb["spec"]["minAvailable"], 1)
            self.assertTrue(selects(pdb["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"]))

    def test_serving_certificate_is_mounted_where_the_flags_point(self):
        for install in INSTALLS:
            spec = one(install, "Deployment", "tagpin")["spec"]["template"]["spec"]
            c = tagpin_container(install)
            cert, key = flag(c, "tls-cert", None), flag(c, "tls-key", None)
            self.assertTrue(cert and key, "without --tls-cert the server makes a self-signed certificate")
            mount = next(m for m in c["volumeMounts"] if cert.startswith(m["mountPath"].rstrip("/") + "/"))
            vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
            secret = vol["secret"]["secretName"]
            self.assertEqual(os.path.dirname(key), mount["mountPath"].rstrip("/"))
            files = {os.path.basename(cert), os.path.basename(key)}
            if install in SECRET_IN_RENDER:
                data = one(install, "Secret", secret)["data"]
                self.assertLessEqual(files, set(data))
            elif install in EXISTING_SECRET:
                self.assertEqual(objects(install, "Secret"), [], "the operator's Secret is not the chart's")
                self.assertEqual(secret, "tagpin-tls")   # as scripts/check-manifests names it
            else:
                issued = [x for x in objects(install, "Certificate") if x["spec"]["secretName"] == secret]
                self.assertEqual(len(issued), 1, f"no cert-manager Certificate writes Secret {secret}")
                self.assertEqual(files, {"tls.crt", "tls.key"})



class ServerFlags(unittest.TestCase):
    def test_the_binary_accepts_the_deployment_args(self):
        """Every flag and value in the Deployment is one `tagpin serve` takes: clap checks each
        argument in order, and a trailing --help then exits 0 without serving."""
        binary = rendered.tagpin_binary()
        if not binary:
            self.skipTest("no tagpin binary (set TAGPIN_BIN, or run after cargo build/test)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAGPIN_")}
        for install in INSTALLS:
            c = tagpin_container(install)
            with self.subTest(install=install):
                argv = [binary] + list(c.get("command", [])) + list(c["args"]) + ["--help"]
                run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
                self.assertEqual(run.returncode, 0, f"{' '.join(argv[1:])}\n{run.stderr}")


class Certificates(unittest.TestCase):
    def test_every_install_has_one_certificate_source(self):
        self.assertEqual(sorted(CERT_MANAGER + SECRET_IN_RENDER + EXISTING_SECRET), sorted(INSTALLS))
        for install in INSTALLS:
            mwc = one(install, "MutatingWebhookConfiguration", "tagpin")
            injected = "cert-manager.io/inject-ca-from" in mwc["metadata"].get("annotations", {})
            bundles = [w["clientConfig"].get("caBundle") for w in mwc["webhooks"]]
            self.assertEqual(injected, install in CERT_MANAGER, install)
            self.assertEqual(all(bundles), install not in CERT_MANAGER, install)
            self.assertEqual(bool(objects(install, "Certificate")), install in CERT_MANAGER, install)

    def test_cert_manager_injects_the_ca_of_the_serving_certificate(self):
        for install in CERT_MANAGER:
            mwc = one(install, "MutatingWebhookConfiguration", "tagpin")
            ns, name = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
            self.assertEqual(ns, NAMESPACE)
            crt = one(install, "Certificate", name)
            self.assertEqual(crt["metadata"]["namespace"], NAMESPACE)
            for wh in mwc["webhooks"]:
                svc = wh["clientConfig"]["service"]
                self.assertIn(f"{svc['name']}.{svc['namespace']}.svc", crt["spec"]["dnsNames"])
            # The serving certificate is signed by a CA issuer whose CA is a cert-manager Certificate
            # from an existing self-signed issuer: renewals of the serving certificate keep caBundle.
            issuer = one(install, "Issuer", crt["spec"]["issuerRef"]["name"])
            ca = one(install, "Certificate", next(
                c["metadata"]["name"] for c in objects(install, "Certificate")
                if c["spec"]["secretName"] == issuer["spec"]["ca"]["secretName"]))
            self.assertTrue(ca["spec"]["isCA"])
            self.assertIn("selfSigned", one(install, "Issuer", ca["spec"]["issuerRef"]["name"])["spec"])

    def test_rendered_secret_carries_its_ca_in_every_webhook(self):
        for install in SECRET_IN_RENDER:
            with self.subTest(install=install):
                secret = one(install, "Secret", "tagpin-tls")
                self.assertEqual(secret["type"], "kubernetes.io/tls")
                ca_pem = base64.b64decode("".join(secret["data"]["ca.crt"].split()))
                self.assertTrue(ca_pem.startswith(b"-----BEGIN CERTIFICATE-----"), ca_pem[:40])
                mwc = one(install, "MutatingWebhookConfiguration", "tagpin")
                self.assertNotIn("cert-manager.io/inject-ca-from", mwc["metadata"].get("annotations", {}))
                for wh in mwc["webhooks"]:
                    self.assertEqual(base64.b64decode("".join(wh["clientConfig"]["caBundle"].split())), ca_pem, wh["name"])

    def test_existing_secret_mode_carries_the_given_ca(self):
        for install in EXISTING_SECRET:
            for wh in one(install, "MutatingWebhookConfiguration", "tagpin")["webhooks"]:
                pem = base64.b64decode("".join(wh["clientConfig"]["caBundle"].split()))
                self.assertTrue(pem.startswith(b"-----BEGIN CERTIFICATE-----"), (install, wh["name"]))


class Monitoring(unittest.TestCase):
    def test_service_monitor_selects_the_service_and_its_metrics_port(self):
        for install in ("servicemonitor", "helm-servicemonitor"):
            sm = one(install, "ServiceMonitor", "tagpin")
            svc = one(install, "Service", "tagpin")
            self.assertTrue(selects(sm["spec"]["selector"], svc["metadata"]["labels"]), install)
            self.assertIn(svc["metadata"]["namespace"], sm["spec"]["namespaceSelector"]["matchNames"])
            ports = {p["name"] for p in svc["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                self.assertIn(ep["port"], ports, install)


if __name__ == "__main__":
    unittest.main()
