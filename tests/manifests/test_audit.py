"""manifests/audit (the optional `tagpin audit` CronJob): read-only RBAC, the same image and
hardening as the server's Deployment, and the audit command line.

Reads the renders made by `scripts/check-manifests` ($TAGPIN_RENDERED_DIR: audit.yaml and
default.yaml), or makes them itself.

    python3 -m unittest discover -s tests/manifests -p test_audit.py -v
"""

import unittest

import rendered

_RENDERED = {}


def setUpModule():
    _RENDERED.update(rendered.load(("audit", "default")))


def one(install, kind, name):
    found = [o for o in _RENDERED[install] if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(found) != 1:
        raise AssertionError(f"{install}: expected one {kind} {name}, found {len(found)}")
    return found[0]


class Audit(unittest.TestCase):
    def test_objects(self):
        self.assertEqual(
            sorted((o["kind"], o["metadata"]["name"]) for o in _RENDERED["audit"]),
            [("ClusterRole", "tagpin-audit"), ("ClusterRoleBinding", "tagpin-audit"), ("CronJob", "tagpin-audit"),
             ("NetworkPolicy", "tagpin-audit"), ("ServiceAccount", "tagpin-audit")],
        )

    def test_the_role_reads_only(self):
        rules = one("audit", "ClusterRole", "tagpin-audit")["rules"]
        granted = {(r, v) for rule in rules for r in rule["resources"] for v in rule["verbs"]}
        self.assertTrue(all(rule["apiGroups"] == [""] for rule in rules))
        self.assertEqual(granted, {("pods", "list"), ("namespaces", "get"), ("namespaces", "list"),
                                   ("secrets", "get")})
        binding = one("audit", "ClusterRoleBinding", "tagpin-audit")
        self.assertEqual(binding["roleRef"]["name"], "tagpin-audit")
        self.assertEqual(binding["subjects"], [{"kind": "ServiceAccount", "name": "tagpin-audit", "namespace": "tagpin-system"}])

    def test_same_image_and_hardening_as_the_server(self):
        job = one("audit", "CronJob", "tagpin-audit")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        server = one("default", "Deployment", "tagpin")["spec"]["template"]["spec"]
        (audit,) = job["containers"]
        tagpin = server["containers"][0]
        self.assertEqual(job["serviceAccountName"], "tagpin-audit")
        for key in ("image", "imagePullPolicy", "securityContext", "resources"):
            self.assertEqual(audit[key], tagpin[key], key)
        pod_ctx = {k: v for k, v in server["securityContext"].items() if k != "fsGroup"}  # no volumes here
        self.assertEqual(job["securityContext"], pod_ctx)
        self.assertEqual(audit["args"], ["audit", "-A", "-o", "json", "--fail-on", "stale,mixed,mismatch"])


if __name__ == "__main__":
    unittest.main()
