"""What moving tags do to a real node, each story run twice: in a namespace tagpin does not serve
("without": no label) and in one it does ("with"). The images are tiny busybox builds printing
which build they are (node.push_app): `kubectl logs` tells which build runs, the kubelet's
`imageID` which digest the node pulled.

tagpin is installed once for the module with helm, with a 1 s cache TTL so that a tag moved by a
case is seen by the next admission; uninstalled at the end."""

from __future__ import annotations

import json

import pytest

import harness
import node as n
from harness import kubectl, wait_for

SERVED = ["without", "with"]


@pytest.fixture(scope="module")
def tagpin(env, node):
    inst = n.install_helm(env, {"cache-ttl": "1s"})
    yield inst
    if harness.exists("mutatingwebhookconfiguration", "tagpin"):
        inst.uninstall()


def seed_namespace(story: str, served: str, workloads: bool = False) -> str:
    labels = {}
    if served == "with":
        labels["tagpin.io/mode"] = "enabled"
        if workloads:
            labels["tagpin.io/workloads"] = "enabled"
    return harness.namespace(f"seed-{story}-{served}", labels)


def says(namespace: str, name: str) -> str:
    return n.logs(namespace, name).strip()


@pytest.mark.parametrize("served", SERVED)
def test_1_ifnotpresent_keeps_the_old_build(tagpin, registry, served):
    """The 51-minute outage: build 2 pushed under the tag the node already holds; the next pod
    (IfNotPresent, the default for a tag other than latest) runs build 1 without tagpin."""
    ns = seed_namespace("ifnotpresent", served)
    repo = f"e2e/ifnotpresent-{served}"
    image = f"{registry.addr}/{repo}:1.0"
    b1 = n.push_app(registry, repo, "1.0", "build 1")
    n.create_pod(ns, n.pod("first", image))
    assert n.image_id(n.wait_running(ns, "first")).endswith(b1)
    assert says(ns, "first") == "build 1"

    b2 = n.push_app(registry, repo, "1.0", "build 2")
    assert b2 != b1 and n.tag_digest(registry, repo, "1.0") == b2, "the registry says build 2"
    created = n.create_pod(ns, n.pod("second", image))
    running = n.wait_running(ns, "second")
    if served == "without":
        assert created["spec"]["containers"][0]["image"] == image
        assert (says(ns, "second"), n.image_id(running).rsplit("@", 1)[-1]) == ("build 1", b1)
    else:
        assert created["spec"]["containers"][0]["image"] == f"{registry.addr}/{repo}@{b2}"
        assert (says(ns, "second"), n.image_id(running).rsplit("@", 1)[-1]) == ("build 2", b2)


@pytest.mark.parametrize("served", SERVED)
def test_5_latest_overwritten_on_every_build(tagpin, registry, env, served):
    """`:latest` (pull policy Always, its default) moved by every build: a pod deleted and created
    again from its stored spec comes back with another build, unless tagpin pinned that spec."""
    ns = seed_namespace("latest", served)
    repo = f"e2e/latest-{served}"
    image = f"{registry.addr}/{repo}:latest"
    b1 = n.push_app(registry, repo, "latest", "build 1")
    created = n.create_pod(ns, n.pod("web", image, policy="Always"))
    want = image if served == "without" else f"{registry.addr}/{repo}@{b1}"
    assert created["spec"]["containers"][0]["image"] == want
    stored = n.wait_running(ns, "web")
    assert (says(ns, "web"), n.image_id(stored).rsplit("@", 1)[-1]) == ("build 1", b1)

    _, report = n.audit(env, "-n", ns)
    latest = [f for f in report["findings"] if f["kind"] == "latest"]
    assert [(f["pod"], f["tag"]) for f in latest] == [("web", image)], report["findings"]
    if served == "with":
        assert latest[0]["pinned"] == b1, latest

    b2 = n.push_app(registry, repo, "latest", "build 2")
    assert n.tag_digest(registry, repo, "latest") == b2
    kubectl("-n", ns, "delete", "pod", "web", "--wait=true", timeout=120)
    again = n.create_pod(ns, n.respec(stored))
    assert again["spec"]["containers"][0]["image"] == want
    running = n.wait_running(ns, "web")
    got = (says(ns, "web"), n.image_id(running).rsplit("@", 1)[-1])
    assert got == (("build 2", b2) if served == "without" else ("build 1", b1))
