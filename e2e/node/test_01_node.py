"""Case 1a: the node registers Ready and runs a pod from the suite's registry (tagpin not installed
yet: the image stays as written)."""

from __future__ import annotations

import harness
import node as n


def test_node_ready_and_runs_a_pod(env, node, registry):
    obj = harness.get("node", node["node_name"])
    ready = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
    assert ready.get("Ready") == "True", obj["status"]["conditions"]
    info = obj["status"]["nodeInfo"]
    assert info["kubeletVersion"] == env["kube_version"], info
    assert info["containerRuntimeVersion"].startswith("containerd://"), info
    # The node's address is the bridge's, never the VM's own: nothing is sent off the machine.
    internal = [a["address"] for a in obj["status"]["addresses"] if a["type"] == "InternalIP"]
    assert internal == [node["node_addr"]], obj["status"]["addresses"]

    ns = harness.namespace("node-smoke")
    digest = n.push_app(registry, "e2e/hello", "1", "hello from the node")
    image = f"{registry.addr}/e2e/hello:1"
    created = n.create_pod(ns, n.pod("hello", image))
    assert created["spec"]["containers"][0]["image"] == image  # no webhook yet
    running = n.wait_running(ns, "hello")
    assert "hello from the node" in n.logs(ns, "hello")
    status = running["status"]["containerStatuses"][0]
    assert status["imageID"].endswith(digest), status
    harness.kubectl("delete", "namespace", ns, "--wait=false")
