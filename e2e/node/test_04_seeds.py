"""What moving tags do to a real node, each story run twice: in a namespace tagpin does not serve
("without": no label) and in one it does ("with"). The images are tiny busybox builds printing
which build they are (node.push_app): `kubectl logs` tells which build runs, the kubelet's
`imageID` which digest the node pulled.

tagpin is installed once for the module with helm, with a 1 s cache TTL so that a tag moved by a
case is seen by the next admission; uninstalled at the end."""

from __future__ import annotations

import json
import time

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


def tell(line: str = ""):
    """One line of the story as it happens. Captured by pytest (shown with a failure); on the
    terminal under `scripts/demo node`, which runs this case with -s."""
    print(line, flush=True)


def short(digest: str) -> str:
    return digest[:19] + "…"


@pytest.mark.parametrize("served", SERVED)
def test_1_ifnotpresent_keeps_the_old_build(tagpin, registry, served):
    """The 51-minute outage: build 2 pushed under the tag the node already holds; the next pod
    (IfNotPresent, the default for a tag other than latest) runs build 1 without tagpin."""
    ns = seed_namespace("ifnotpresent", served)
    repo = f"e2e/ifnotpresent-{served}"
    image = f"{registry.addr}/{repo}:1.0"
    tell(f"\n==> {served} tagpin: namespace {ns}" + (" (tagpin.io/mode=enabled)" if served == "with" else " (no label)"))
    b1 = n.push_app(registry, repo, "1.0", "build 1")
    tell(f"pushed build 1 as {image}: {short(b1)}")
    n.create_pod(ns, n.pod("first", image))
    assert n.image_id(n.wait_running(ns, "first")).endswith(b1)
    assert says(ns, "first") == "build 1"
    tell(f'pod "first" runs; kubectl logs first: {says(ns, "first")}')

    b2 = n.push_app(registry, repo, "1.0", "build 2")
    assert b2 != b1 and n.tag_digest(registry, repo, "1.0") == b2, "the registry says build 2"
    tell(f"pushed build 2 under the same tag; the registry now says 1.0 is {short(b2)}")
    created = n.create_pod(ns, n.pod("second", image))
    running = n.wait_running(ns, "second")
    stored = created["spec"]["containers"][0]["image"]
    ran = (says(ns, "second"), n.image_id(running).rsplit("@", 1)[-1])
    tell(f'pod "second" (imagePullPolicy IfNotPresent) stored as {stored.replace(b2, short(b2))}')
    tell(f'kubectl logs second: {ran[0]}   (the node ran {short(ran[1])})')
    if served == "without":
        assert stored == image
        assert ran == ("build 1", b1)
        tell("=> the node already held a 1.0 and ran it again: build 1, not what the registry says")
    else:
        assert stored == f"{registry.addr}/{repo}@{b2}"
        assert ran == ("build 2", b2)
        tell("=> pinned at admission to what 1.0 is now: the node pulled and ran build 2")


@pytest.fixture(scope="module")
def mirror(env, node):
    """A third plain registry, filled once by the cases (a mirror that synced once and not since)."""
    reg = n.start_registry(env, "mirror")
    yield reg
    n.stop_registry(env, "mirror", reg)


@pytest.mark.parametrize("served", SERVED)
def test_2_the_mirror_serves_a_stale_tag(tagpin, registry, mirror, env, served):
    """containerd's hosts.toml puts a mirror before the registry; the mirror still holds build 1
    under the tag. Pull policy Always does not help: the tag is resolved at the mirror. By digest
    the mirror has nothing (404) and containerd falls back to the registry."""
    ns = seed_namespace("mirror", served)
    repo = f"e2e/mirror-{served}"
    image = f"{registry.addr}/{repo}:1.0"
    b1 = n.push_app(registry, repo, "1.0", "build 1")
    assert n.push_app(mirror, repo, "1.0", "build 1") == b1, "the mirror synced build 1"
    b2 = n.push_app(registry, repo, "1.0", "build 2")
    assert (n.tag_digest(registry, repo, "1.0"), n.tag_digest(mirror, repo, "1.0")) == (b2, b1)
    with n.mirrored(env, mirror):
        created = n.create_pod(ns, n.pod("web", image, policy="Always"))
        running = n.wait_running(ns, "web")
    got = (says(ns, "web"), n.image_id(running).rsplit("@", 1)[-1])
    if served == "without":
        assert created["spec"]["containers"][0]["image"] == image
        assert got == ("build 1", b1)
        assert 200 in n.containerd_manifest_answers(mirror, repo, "1.0"), "the mirror resolved the tag"
        assert n.containerd_manifest_answers(registry, repo, "1.0") == [], "the registry was never asked"
    else:
        assert created["spec"]["containers"][0]["image"] == f"{registry.addr}/{repo}@{b2}"
        assert got == ("build 2", b2)
        assert set(n.containerd_manifest_answers(mirror, repo, b2)) == {404}, "the mirror, asked first, has no build 2"
        assert 200 in n.containerd_manifest_answers(registry, repo, b2), "then the registry itself"


@pytest.mark.parametrize("served", SERVED)
def test_3_a_rescheduled_pod_runs_another_build(tagpin, registry, env, served):
    """A 3-replica Deployment (pull policy Always: a replacement pulls, as on a node that never held
    the image); the tag moves and one pod is deleted. Without workload pinning its replacement runs
    the new build beside two old ones and `tagpin audit` reports `mixed` from the kubelet's
    imageIDs; with it the template names a digest, all three run one build, and audit reports no
    mixed build (only `moved`: the tag they were pinned from names build 2 now)."""
    ns = seed_namespace("reschedule", served, workloads=True)
    repo = f"e2e/reschedule-{served}"
    image = f"{registry.addr}/{repo}:1.0"
    b1 = n.push_app(registry, repo, "1.0", "build 1")
    kubectl("-n", ns, "create", "-f", "-", input=json.dumps(n.deployment("web", image)))
    template = harness.get("deployment", "web", ns)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert template == (image if served == "without" else f"{registry.addr}/{repo}@{b1}")
    before = n.running_pods(ns, "app=web", 3)
    assert {n.image_id(p).rsplit("@", 1)[-1] for p in before} == {b1}

    b2 = n.push_app(registry, repo, "1.0", "build 2")
    assert n.tag_digest(registry, repo, "1.0") == b2
    victim = before[0]["metadata"]["name"]
    # Waits until the pod is gone: while it terminates it still runs (and audit counts it).
    kubectl("-n", ns, "delete", "pod", victim, "--wait=true", timeout=120)
    after = wait_for(
        f"a replacement for {victim}",
        lambda: (lambda ps: ps if victim not in [p["metadata"]["name"] for p in ps] else None)(
            n.running_pods(ns, "app=web", 3)
        ),
        timeout=180,
        interval=0.5,
    )
    (new,) = [p for p in after if p["metadata"]["name"] not in {q["metadata"]["name"] for q in before}]
    builds = sorted((says(ns, p["metadata"]["name"]), n.image_id(p).rsplit("@", 1)[-1]) for p in after)
    code, report = n.audit(env, "-n", ns)
    mine = [f for f in report["findings"] if f["kind"] in ("mixed", "stale", "mismatch", "unknown")]
    if served == "without":
        assert builds == [("build 1", b1), ("build 1", b1), ("build 2", b2)], builds
        assert (says(ns, new["metadata"]["name"]), n.image_id(new).rsplit("@", 1)[-1]) == ("build 2", b2)
        (mixed,) = [f for f in mine if f["kind"] == "mixed"]
        assert mixed["digests"] == [{"digest": b1, "pods": 2}, {"digest": b2, "pods": 1}], mixed
        assert code == 1, report
    else:
        assert builds == [("build 1", b1)] * 3, builds
        # Only `moved`: the template's digest was pinned from a tag that moved (a rollout waits).
        assert {f["kind"] for f in report["findings"]} <= {"moved"}, report["findings"]
        assert code == 0, report


def rolled_out(ns: str, name: str = "web", replicas: int = 1) -> list[dict]:
    kubectl("-n", ns, "rollout", "status", f"deployment/{name}", "--timeout=150s", timeout=180)
    return n.running_pods(ns, f"app={name}", replicas)


def build_of(ns: str, p: dict) -> tuple[str, str]:
    return says(ns, p["metadata"]["name"]), n.image_id(p).rsplit("@", 1)[-1]


@pytest.mark.parametrize("served", SERVED)
def test_4_the_old_build_can_no_longer_be_rolled_back_to(tagpin, registry, served):
    """A Deployment at build 1 (`kubectl apply`), the tag moved, build 2 rolled out, then `kubectl
    rollout undo`. With workload pinning the re-apply of the unchanged manifest rolls out build 2
    (the template is re-pinned) and the undo returns to build 1's digest. Without, the re-apply
    does nothing (a `rollout restart` brings build 2) and the undo returns to the tag: build 2."""
    ns = seed_namespace("rollback", served, workloads=True)
    repo = f"e2e/rollback-{served}"
    image = f"{registry.addr}/{repo}:1.0"
    manifest = json.dumps(n.deployment("web", image, replicas=1))
    b1 = n.push_app(registry, repo, "1.0", "build 1")
    kubectl("-n", ns, "apply", "-f", "-", input=manifest)
    resolved = time.monotonic()
    (p,) = rolled_out(ns)
    assert build_of(ns, p) == ("build 1", b1)
    generation = harness.get("deployment", "web", ns)["metadata"]["generation"]

    b2 = n.push_app(registry, repo, "1.0", "build 2")
    # The re-apply comes after the 1 s cache TTL, however fast build 1 rolled out (once in under
    # a second, and the re-apply was answered from the cache: build 1 again).
    time.sleep(max(0.0, 1.5 - (time.monotonic() - resolved)))
    kubectl("-n", ns, "apply", "-f", "-", input=manifest)
    template = lambda: harness.get("deployment", "web", ns)["spec"]["template"]["spec"]["containers"][0]["image"]
    if served == "without":
        assert harness.get("deployment", "web", ns)["metadata"]["generation"] == generation, "nothing to roll out"
        kubectl("-n", ns, "rollout", "restart", "deployment/web")
    else:
        assert template() == f"{registry.addr}/{repo}@{b2}", "re-pinned on re-apply"
    (p,) = rolled_out(ns)
    assert build_of(ns, p) == ("build 2", b2)

    kubectl("-n", ns, "rollout", "undo", "deployment/web")
    (p,) = rolled_out(ns)
    if served == "without":
        assert template() == image
        assert build_of(ns, p) == ("build 2", b2), "back to the tag, which names build 2 now"
    else:
        assert template() == f"{registry.addr}/{repo}@{b1}"
        assert build_of(ns, p) == ("build 1", b1)


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


def test_7_audit_against_the_kubelets_statuses(tagpin, registry, env):
    """`tagpin audit` reads what the kubelet wrote: containerd's imageID for a pull by the kubelet
    is `REPO@sha256:…`, for a tag and for a digest alike. A tag moved under a running unpinned pod
    is `stale`; under a pinned one it is `moved` (the pod runs what its spec says)."""
    without = seed_namespace("audit", "without")
    served = seed_namespace("audit", "with")
    repo = "e2e/audit-node"
    image = f"{registry.addr}/{repo}:1.0"
    b1 = n.push_app(registry, repo, "1.0", "build 1")
    n.create_pod(without, n.pod("web", image))
    n.create_pod(served, n.pod("web", image))
    ids = [n.image_id(n.wait_running(ns, "web")) for ns in (without, served)]
    assert ids == [f"{registry.addr}/{repo}@{b1}"] * 2, ids

    code, report = n.audit(env, "-n", without)
    assert [f["kind"] for f in report["findings"]] == ["unpinned"] and code == 0, report
    b2 = n.push_app(registry, repo, "1.0", "build 2")
    code, report = n.audit(env, "-n", without)
    (stale,) = [f for f in report["findings"] if f["kind"] == "stale"]
    assert (stale["pod"], stale["running"], stale["resolved"], stale["tag"]) == ("web", b1, b2, image), stale
    assert code == 1, report
    code, report = n.audit(env, "-n", served)
    assert [(f["kind"], f["pod"], f["pinned"], f["resolved"]) for f in report["findings"]] == [("moved", "web", b1, b2)], report
    assert code == 0, report


def test_7_mismatch_is_one_image_under_two_manifests(tagpin, registry, env):
    """How `mismatch` comes about on containerd: one image (one config, the same layers) pushed as
    an OCI manifest and as a Docker one, two digests. containerd keeps one image per config and the
    kubelet's imageID names it by the digest it was first pulled by, so a pod pinned to the second
    digest shows the first, and audit reports the pod as a mismatch although the node runs exactly
    the content its spec names (containerd checks every digest it pulls)."""
    ns = seed_namespace("mismatch", "without")
    repo = "e2e/two-manifests"
    command = 'echo "one image"; trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'
    config, layers = harness.busybox_image(command, label="one image")
    oci = registry.push_image(repo, "oci", config, layers)
    docker = n.push_docker_image(registry, repo, "docker", config, layers)
    assert oci != docker
    n.create_pod(ns, n.pod("first", f"{registry.addr}/{repo}@{oci}"))
    first = n.wait_running(ns, "first")
    n.create_pod(ns, n.pod("second", f"{registry.addr}/{repo}@{docker}"))
    second = n.wait_running(ns, "second")
    assert says(ns, "second") == "one image"
    assert [n.image_id(first), n.image_id(second)] == [f"{registry.addr}/{repo}@{oci}"] * 2

    code, report = n.audit(env, "-n", ns)
    (mismatch,) = [f for f in report["findings"] if f["kind"] == "mismatch"]
    assert (mismatch["pod"], mismatch["pinned"], mismatch["running"]) == ("second", docker, oci), mismatch
    assert [f for f in report["findings"] if f["pod"] == "first"] == [], report["findings"]
    assert code == 1, report


def test_6_fail_open_on_a_node(tagpin, registry, env):
    """The registry stops answering (SIGSTOP: connections accepted, no answer). A pod whose tag the
    node already holds is created with tagpin's warning and runs (IfNotPresent needs no registry);
    in an enforce namespace the same pod is refused with tagpin's message. tagpin's own pods keep
    running (their image is on the same registry but already on the node)."""
    repo = "e2e/failopen"
    image = f"{registry.addr}/{repo}:1.0"
    n.push_app(registry, repo, "1.0", "build 1")
    without = seed_namespace("failopen", "without")
    served = seed_namespace("failopen", "with")
    enforce = harness.namespace("seed-failopen-enforce", {"tagpin.io/mode": "enforce"})
    n.create_pod(without, n.pod("warm", image))  # the node pulls the tag; tagpin never sees it
    n.wait_running(without, "warm")

    with n.stopped(env, "registry"):
        r = kubectl("-n", served, "create", "-f", "-", "-o", "json", input=json.dumps(n.pod("cold", image)), check=False)
        assert r.returncode == 0, r
        assert "Warning: tagpin: " in r.stderr and image in r.stderr, r
        assert json.loads(r.stdout)["spec"]["containers"][0]["image"] == image, "left as written"
        refused = kubectl("-n", enforce, "create", "-f", "-", input=json.dumps(n.pod("cold", image)), check=False)
        assert refused.returncode != 0, refused
        assert 'admission webhook "enforce.pods.tagpin.io" denied the request' in refused.stderr, refused
        assert image in refused.stderr, refused
        assert not harness.exists("pod", "cold", enforce)
        n.wait_running(served, "cold")
        assert says(served, "cold") == "build 1"
        assert all(p["status"]["containerStatuses"][0]["ready"] for p in tagpin.pods())

    # The registry answers again: pinning resumes (once tagpin's breaker lets it through).
    def pinned():
        out = kubectl("-n", served, "create", "--dry-run=server", "-f", "-", "-o", "json",
                      input=json.dumps(n.pod("after", image))).stdout
        return "@sha256:" in json.loads(out)["spec"]["containers"][0]["image"]

    wait_for("tagpin pinning again after SIGCONT", pinned, timeout=90, interval=1)

