"""tagpin installed on the node as users install it: `helm install` of charts/tagpin, and (a separate
install, after the first is uninstalled) `kubectl apply -k` of an overlay over
manifests/overlays/plain. Its image is the one scripts/image built, pulled by the kubelet from the
suite's registry; the API server calls the webhook through its Service (a ClusterIP that kube-proxy
rewrites to a pod); tagpin reads the API with its in-cluster ServiceAccount token, through the
`kubernetes` Service. No `url` overlay.

The cases of one install run in order: ready, pinning, pull secrets, availability, uninstall."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import harness
import node as n
from harness import kubectl

METHODS = ["helm", "kustomize"]


@pytest.fixture(scope="module", params=METHODS)
def installed(request, env, node):
    inst = n.install_helm(env) if request.param == "helm" else n.install_kustomize(env)
    yield inst
    if harness.exists("mutatingwebhookconfiguration", "tagpin"):  # a case failed before uninstalling
        inst.uninstall()


def report(capsys, env, line: str):
    """A measured line that reaches the CI log on success too (pytest captures fd 2 itself)."""
    with capsys.disabled():
        print(f"\ne2e --node: {line}", file=sys.__stderr__, flush=True)
    with open(Path(env["state"]) / "node-report.txt", "a") as f:
        f.write(line + "\n")


def test_1_ready_with_the_shipped_probes_and_pdb(installed, node):
    """Two replicas Ready through the shipped readiness probe, running tagpin's image by the
    digest the suite pushed; the PodDisruptionBudget is counted by the disruption controller. The
    NetworkPolicy is stored; the CNI bridge plugin does not enforce NetworkPolicy, so nothing here
    shows it filtering."""
    pods = installed.pods()
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    for p in pods:
        c = p["spec"]["containers"][0]
        assert c["image"].startswith(node["tagpin_image_repository"] + ":"), c["image"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert p["spec"]["securityContext"]["runAsUser"] == 65532
        st = p["status"]["containerStatuses"][0]
        assert st["ready"] is True and "running" in st["state"], st
        assert st["imageID"].endswith(node["tagpin_image_digest"]), st
        assert p["spec"]["nodeName"] == node["node_name"]
    pdb = harness.wait_for(
        "the PodDisruptionBudget's status",
        lambda: (lambda o: o if o.get("status", {}).get("currentHealthy") == 2 else None)(
            harness.get("pdb", "tagpin", n.SYSTEM_NS)
        ),
        timeout=60,
    )
    assert pdb["status"]["disruptionsAllowed"] == 1, pdb["status"]
    assert harness.exists("networkpolicy", "tagpin", n.SYSTEM_NS)
    hook = harness.get("mutatingwebhookconfiguration", "tagpin")
    for w in hook["webhooks"]:
        assert "url" not in w["clientConfig"], w["clientConfig"]
        assert w["clientConfig"]["service"]["name"] == "tagpin", w["clientConfig"]


def test_2_pod_pinned_through_the_service_and_run_by_digest(installed, registry, env):
    ns = n.enabled_namespace(f"pin-{installed.method}")
    digest = n.push_app(registry, "e2e/web", installed.method, f"web built for {installed.method}")
    image = f"{registry.addr}/e2e/web:{installed.method}"
    before = n.admissions(installed.pods())
    created = n.create_pod(ns, n.pod("web", image))
    pinned = created["spec"]["containers"][0]["image"]
    assert pinned == f"{registry.addr}/e2e/web@{digest}", created["spec"]["containers"][0]
    # tagpin's own pods answered (their counters moved): the call went through the Service.
    assert n.admissions(installed.pods()) > before
    running = n.wait_running(ns, "web")
    status = running["status"]["containerStatuses"][0]
    assert status["imageID"].endswith(digest), status
    assert f"web built for {installed.method}" in n.logs(ns, "web")


def test_3_private_image_pinned_with_the_pods_pull_secret(installed, private_registry):
    """tagpin reads the pod's pull secret with its in-cluster ServiceAccount token (its RBAC as
    shipped) and resolves the tag on the htpasswd registry; the kubelet pulls with the same
    secret."""
    ns = f"pin-{installed.method}"
    digest = n.push_app(private_registry, "e2e/private", installed.method, "private build")
    image = f"{private_registry.addr}/e2e/private:{installed.method}"
    secret = n.pull_secret(ns, private_registry)
    created = n.create_pod(ns, n.pod("private", image, pull_secret=secret))
    assert created["spec"]["containers"][0]["image"] == f"{private_registry.addr}/e2e/private@{digest}"
    running = n.wait_running(ns, "private")
    assert running["status"]["containerStatuses"][0]["imageID"].endswith(digest)
    assert "private build" in n.logs(ns, "private")


def test_4_available_while_a_pod_is_deleted_and_while_upgraded(installed, api, registry, env, capsys):
    """About 20 server-side dry-run creations a second for 30 s while one of tagpin's two pods is
    deleted (preStop sleep, then drain), then the same while a flag is changed (`helm upgrade`, or
    `kubectl apply -k` of the edited overlay: a rolling update). No creation may fail; the target
    is that none is admitted unpinned while the registry is up."""
    ns = f"pin-{installed.method}"
    n.push_app(registry, "e2e/loop", installed.method, "loop")
    image = f"{registry.addr}/e2e/loop:{installed.method}"
    victim = installed.pods()[0]["metadata"]["name"]

    def delete_one():
        kubectl("-n", n.SYSTEM_NS, "delete", "pod", victim, "--wait=false")

    deleted = n.admission_loop(api, ns, image, seconds=30, rate=20, actions=[(5, delete_one)])
    report(capsys, env, f"{installed.method}: one of two tagpin pods deleted at 5 s: {deleted}")
    installed.wait_ready()

    def change_flag():
        installed.set_flag("cache-ttl", "2m")

    upgraded = n.admission_loop(api, ns, image, seconds=30, rate=20, actions=[(3, change_flag)])
    report(capsys, env, f"{installed.method}: flag changed at 3 s ({installed.upgrade_command}): {upgraded}")
    installed.wait_ready()
    args = installed.deployment()["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--cache-ttl=2m" in args, args

    for what, c in (("pod deleted", deleted), ("upgrade", upgraded)):
        assert c.sent >= 550, (what, str(c))
        assert c.failed == 0, (what, str(c), c.errors)
        assert c.unpinned == 0, (what, str(c))


def test_5_uninstall_as_the_readme_says(installed, registry):
    """The pods already running keep running (the node does not need tagpin); new pods are created
    as written, unpinned."""
    ns = f"pin-{installed.method}"
    installed.uninstall()
    harness.wait_for(
        "tagpin's pods gone (terminating ones included)",
        lambda: not n.all_tagpin_pods() and not harness.exists("deployment", "tagpin", n.SYSTEM_NS),
        timeout=120,
        interval=1,
    )
    web = harness.get("pod", "web", ns)
    assert "running" in web["status"]["containerStatuses"][0]["state"], web["status"]
    assert web["status"]["containerStatuses"][0]["restartCount"] == 0
    image = f"{registry.addr}/e2e/web:{installed.method}"
    created = n.create_pod(ns, n.pod("after", image))
    assert created["spec"]["containers"][0]["image"] == image
    n.wait_running(ns, "after")
    kubectl("delete", "namespace", ns, "--wait=false")
