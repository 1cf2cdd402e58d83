"""`tagpin audit` against the real API server (started by scripts/e2e), run as a plain user
(e2e-auditor, a client certificate) bound to the shipped read-only ClusterRole of manifests/audit.
Pods never run here (no kubelet): the cases write each pod's status through the status subresource
as a kubelet would (harness.kubelet_status), with the imageID forms container runtimes report.
The API server's audit log records e2e-auditor's requests, the registry's access log its own.

This file runs before test_cluster.py (file order), while tagpin is installed: the opted-in
namespace needs the webhook to pin its Deployment.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from harness import (
    Api,
    Result,
    audit_events,
    audit_log_size,
    kubectl,
    kubelet_status,
    kustomize,
    namespace,
    wait_for,
)

RUN = uuid.uuid4().hex[:6]  # names of this run's namespaces
SELECT = "e2e.tagpin.io/audit"  # label on every pod of the main scenario (value RUN)
KINDS = ("unpinned", "stale", "mixed", "moved", "mismatch", "latest", "unknown")
FIELDS = {
    "kind", "namespace", "pod", "container", "owner", "workload", "image", "tag", "running",
    "resolved", "pinned", "digests", "opted_in", "skip_label", "check", "detail",
}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
PINNED = "tagpin.io/pinned"


def run(argv: list[str], extra_env: dict | None = None) -> Result:
    t = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, **(extra_env or {})})
    return Result(argv, p.returncode, p.stdout, p.stderr, time.monotonic() - t)


def audit_args(env, *args: str, kubeconfig: str | None = None) -> list[str]:
    """The arguments after `tagpin audit`: as e2e-auditor (KUBECONFIG, else the auditor's; "" for
    no --kubeconfig at all), with the flags the test registries need. Images of ghcr.io (tagpin's
    own pods, which never run here) are never looked up: every packet stays on 127.0.0.1."""
    out = [] if kubeconfig == "" else ["--kubeconfig", kubeconfig or env["auditor_kubeconfig"]]
    out += [
        "--insecure-registry", env["registry"],
        "--registry-ca", env["registry_ca"],
        "--allow-registry-cidr", "127.0.0.0/8",
        "--skip-prefix", "ghcr.io/",
    ]
    return out + list(args)


def audit(env, *args: str, kubeconfig: str | None = None, extra_env: dict | None = None) -> Result:
    """`tagpin audit ...` with the binary scripts/e2e uses (e2e.json: tagpin_bin)."""
    return run([env["tagpin_bin"], "audit", *audit_args(env, *args, kubeconfig=kubeconfig)], extra_env)


def report(r: Result) -> dict:
    try:
        return json.loads(r.stdout)
    except ValueError as e:
        raise AssertionError(f"not JSON ({e}):\n{r}") from e


def digest_of(image_id: str) -> str:
    return image_id.rsplit("@", 1)[1]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pod(name: str, containers: list[tuple[str, str]], labels: dict | None = None, init=()) -> dict:
    spec = {"containers": [{"name": n, "image": i} for n, i in containers]}
    if init:
        spec["initContainers"] = [{"name": n, "image": i} for n, i in init]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def owned_pods(ns: str, uid: str) -> list[dict]:
    items = json.loads(kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
    return sorted(
        (p for p in items if any(r.get("uid") == uid and r.get("controller") for r in p["metadata"].get("ownerReferences", []))),
        key=lambda p: p["metadata"]["name"],
    )


def rows(findings: list[dict], ns: str | None = None, kind: str | None = None) -> list[dict]:
    return [f for f in findings if (ns is None or f["namespace"] == ns) and (kind is None or f["kind"] == kind)]


def shape(findings: list[dict]) -> set[tuple]:
    return {(f["kind"], f["namespace"], f["pod"], f["container"]) for f in findings}


# --- the shipped role, bound to e2e-auditor ---------------------------------------------------


@pytest.fixture(scope="module")
def api(env) -> Api:
    return Api.from_env(env)


@pytest.fixture(scope="module")
def auditor(env):
    """manifests/audit accepted by the API server (server dry run of all of it), its ClusterRole
    applied and bound to User e2e-auditor."""
    objs = kustomize(Path(env["root"]) / "manifests" / "audit")
    r = kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(objs))
    assert "error" not in r.stderr.lower(), r
    (role,) = [o for o in objs if o["kind"] == "ClusterRole"]
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "e2e-auditor"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "e2e-auditor"}],
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all([role, binding]))

    def can(*args: str) -> str:
        return kubectl("auth", "can-i", *args, "--as", "e2e-auditor", check=False).stdout.strip()

    wait_for("RBAC to let e2e-auditor list pods", lambda: can("list", "pods", "-A") == "yes")
    assert can("create", "pods", "-n", "default") == "no"
    assert can("patch", "pods/status", "-n", "default") == "no"
    assert can("list", "secrets", "-A") == "no", "get by name only"
    assert can("get", "secrets", "-n", "default") == "yes"
    yield
    kubectl("delete", "clusterrolebinding", "e2e-auditor", "--ignore-not-found")


# --- the main scenario ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenario(env, registry, api, auditor) -> dict:
    """Two namespaces of pods with written statuses; every pod labelled SELECT=RUN.

    audit-plain-RUN (not opted in):
      stale       web:1, runs an old digest of the tag (docker-pullable:// form)
      current     web:1, runs the current digest (plain form); init container migrate, web:1
      untagged    latest-repo (no tag), runs its current digest
      latest      latest-repo:latest, runs its current digest
      mixed-*     ReplicaSet `mixed`, 3 replicas of rs:1: two run digest A (current), one B (old)
      mismatch    pinned@sha256:X, runs pinned@sha256:Y
      dead        two containers on a registry that does not answer (127.0.0.1:closed port)
    audit-pinned-RUN (tagpin.io/mode=enabled, tagpin.io/workloads=enabled):
      web-*       Deployment `web`, 2 replicas of app:1, pinned by tagpin; app:1 pushed again after
      skipped     skip:1, labelled tagpin.io/skip=true (left unpinned by the webhook)
    """
    reg = env["registry"]
    plain = namespace(f"audit-plain-{RUN}")
    pinned = namespace(f"audit-pinned-{RUN}", {"tagpin.io/mode": "enabled", "tagpin.io/workloads": "enabled"})
    sel = {SELECT: RUN}

    web_old = registry.push("e2e/audit-web", "1")
    web_new = registry.push("e2e/audit-web", "1")
    latest = registry.push("e2e/audit-latest", "latest")
    rs_b = registry.push("e2e/audit-rs", "1")
    rs_a = registry.push("e2e/audit-rs", "1")
    x = registry.push("e2e/audit-pinned", "1")
    y = registry.push("e2e/audit-pinned", "1")
    app_old = registry.push("e2e/audit-app", "1")
    skip = registry.push("e2e/audit-skip", "1")
    dead = f"127.0.0.1:{closed_port()}"
    assert len({web_old, web_new, rs_a, rs_b, x, y}) == 6

    R = f"{reg}/e2e"
    plain_pods = {
        "stale": (pod("stale", [("main", f"{R}/audit-web:1")], sel), {"main": f"docker-pullable://{R}/audit-web@{web_old}"}),
        "current": (
            pod("current", [("main", f"{R}/audit-web:1")], sel, init=[("migrate", f"{R}/audit-web:1")]),
            {"main": f"{R}/audit-web@{web_new}", "migrate": f"{R}/audit-web@{web_new}"},
        ),
        "untagged": (pod("untagged", [("main", f"{R}/audit-latest")], sel), {"main": f"{R}/audit-latest@{latest}"}),
        "latest": (pod("latest", [("main", f"{R}/audit-latest:latest")], sel), {"main": f"docker-pullable://{R}/audit-latest@{latest}"}),
        "mismatch": (pod("mismatch", [("main", f"{R}/audit-pinned@{x}")], sel), {"main": f"{R}/audit-pinned@{y}"}),
        "dead": (
            pod("dead", [("a", f"{dead}/e2e/dead:1"), ("b", f"{dead}/e2e/dead:2")], sel),
            {"a": f"{dead}/e2e/dead@sha256:{'1' * 64}", "b": f"{dead}/e2e/dead@sha256:{'2' * 64}"},
        ),
    }
    for name, (obj, ids) in plain_pods.items():
        stored = api.create(plain, obj)
        api.patch_status(plain, name, kubelet_status(stored, ids))

    rs = api.create(
        plain,
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": "mixed"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "mixed"}},
                "template": {"metadata": {"labels": {"app": "mixed", **sel}}, "spec": {"containers": [{"name": "main", "image": f"{R}/audit-rs:1"}]}},
            },
        },
    )
    rs_pods = wait_for("the ReplicaSet's 3 pods", lambda: (p := owned_pods(plain, rs["metadata"]["uid"])) and len(p) == 3 and p)
    for p, d in zip(rs_pods, (rs_a, rs_a, rs_b)):
        api.patch_status(plain, p["metadata"]["name"], kubelet_status(p, {"main": f"{R}/audit-rs@{d}"}))

    # The Deployment: its template pinned by the workloads webhook, the pods carry the digest and
    # the record of the tag.
    app = f"{R}/audit-app:1"
    deploy = api.create(
        pinned,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web", **sel}}, "spec": {"containers": [{"name": "web", "image": app}]}},
            },
        },
    )
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == f"{R}/audit-app@{app_old}", "pinned by tagpin"
    rs_web = wait_for("the Deployment's ReplicaSet", lambda: [
        r for r in json.loads(kubectl("get", "rs", "-n", pinned, "-o", "json").stdout)["items"]
        if any(o["uid"] == deploy["metadata"]["uid"] for o in r["metadata"].get("ownerReferences", []))
    ])
    web_pods = wait_for("the Deployment's 2 pods", lambda: (p := owned_pods(pinned, rs_web[0]["metadata"]["uid"])) and len(p) == 2 and p)
    for p in web_pods:
        assert p["spec"]["containers"][0]["image"] == f"{R}/audit-app@{app_old}"
        assert json.loads(p["metadata"]["annotations"][PINNED]) == {"web": app}
        api.patch_status(pinned, p["metadata"]["name"], kubelet_status(p, {"web": f"{R}/audit-app@{app_old}"}))

    skipped = api.create(pinned, pod("skipped", [("main", f"{R}/audit-skip:1")], {**sel, "tagpin.io/skip": "true"}))
    assert skipped["spec"]["containers"][0]["image"] == f"{R}/audit-skip:1", "the skip label leaves it as written"
    api.patch_status(pinned, "skipped", kubelet_status(skipped, {"main": f"{R}/audit-skip@{skip}"}))

    app_new = registry.push("e2e/audit-app", "1")  # the tag moves: a rollout of `web` is waiting
    return {
        "plain": plain, "pinned": pinned, "dead": dead, "R": R,
        "web_old": web_old, "web_new": web_new, "latest": latest, "rs_a": rs_a, "rs_b": rs_b, "x": x, "y": y,
        "app_old": app_old, "app_new": app_new, "skip": skip,
        "rs_pods": [p["metadata"]["name"] for p in rs_pods],
        "web_pods": [p["metadata"]["name"] for p in web_pods],
        "web_rs": rs_web[0]["metadata"]["name"],
    }


def expected(s: dict) -> set[tuple]:
    """(kind, namespace, pod, container) of every finding but `moved` (checked on its own)."""
    plain, pinned = s["plain"], s["pinned"]
    out = {("unpinned", plain, p, c) for p, c in [("stale", "main"), ("current", "main"), ("current", "init/migrate"),
                                                  ("untagged", "main"), ("latest", "main"), ("dead", "a"), ("dead", "b")]}
    out |= {("unpinned", plain, p, "main") for p in s["rs_pods"]}
    out |= {("stale", plain, "stale", "main"), ("stale", plain, s["rs_pods"][2], "main")}
    out |= {("latest", plain, "untagged", "main"), ("latest", plain, "latest", "main")}
    out |= {("mixed", plain, None, "main"), ("mismatch", plain, "mismatch", "main")}
    out |= {("unknown", plain, "dead", "a"), ("unknown", plain, "dead", "b")}
    out |= {("unpinned", pinned, "skipped", "main")}
    return out


# --- 14 -------------------------------------------------------------------------------------------


def test_14_audit_finds_every_kind_in_json(env, scenario, registry):
    s = scenario
    plain, pinned, R = s["plain"], s["pinned"], s["R"]
    tags = [("e2e/audit-web", "1"), ("e2e/audit-latest", "latest"), ("e2e/audit-rs", "1"), ("e2e/audit-app", "1"), ("e2e/audit-skip", "1")]
    before = {t: registry.manifest_requests(*t) for t in tags}
    pinned_before = registry.manifest_requests("e2e/audit-pinned")

    r = audit(env, "-A", "-l", f"{SELECT}={RUN}", "-o", "json")
    assert r.returncode == 1, f"stale, mixed and mismatch are in the default --fail-on\n{r}"
    out = report(r)
    assert set(out) == {"findings", "summary", "registries_unreachable", "warnings", "requests"}, out.keys()
    findings = out["findings"]

    # Every field always there, with its type.
    for f in findings:
        assert set(f) == FIELDS, f
        assert f["kind"] in KINDS and isinstance(f["namespace"], str) and isinstance(f["container"], str)
        assert isinstance(f["image"], str) and isinstance(f["detail"], str) and f["detail"], f
        for k in ("pod", "tag", "running", "resolved", "pinned"):
            assert f[k] is None or isinstance(f[k], str), (k, f)
        for k in ("owner", "workload"):
            assert f[k] is None or (set(f[k]) == {"kind", "name"} and all(isinstance(v, str) for v in f[k].values())), (k, f)
        for k in ("opted_in", "skip_label"):
            assert f[k] is None or isinstance(f[k], bool), (k, f)
        assert f["check"] in (None, "stale", "moved"), f
        assert f["digests"] is None or all(set(d) == {"digest", "pods"} and isinstance(d["pods"], int) for d in f["digests"]), f
        for k in ("running", "resolved", "pinned"):
            assert f[k] is None or re.fullmatch(r"sha256:[0-9a-f]{64}", f[k]), (k, f)

    moved = rows(findings, kind="moved")
    assert shape([f for f in findings if f["kind"] != "moved"]) == expected(s)
    assert len(findings) - len(moved) == len(expected(s)), "one row per finding"

    def one(kind: str, pod_: str | None, container: str = "main", ns: str = plain) -> dict:
        (f,) = [f for f in findings if (f["kind"], f["namespace"], f["pod"], f["container"]) == (kind, ns, pod_, container)]
        return f

    # unpinned: not opted in, no skip label; the skip label in an opted-in namespace.
    f = one("unpinned", "stale")
    assert (f["opted_in"], f["skip_label"], f["image"], f["tag"]) == (False, False, f"{R}/audit-web:1", f"{R}/audit-web:1"), f
    assert (f["owner"], f["workload"], f["check"], f["digests"]) == (None, None, None, None), f
    f = one("unpinned", "skipped", ns=pinned)
    assert (f["opted_in"], f["skip_label"]) == (True, True), f
    # stale: the docker-pullable:// imageID read as a digest; the plain form (current) is not stale.
    f = one("stale", "stale")
    assert (f["running"], f["resolved"], f["tag"]) == (s["web_old"], s["web_new"], f"{R}/audit-web:1"), f
    assert not [g for g in findings if g["pod"] == "current" and g["kind"] != "unpinned"]
    f = one("stale", s["rs_pods"][2])
    assert (f["running"], f["resolved"]) == (s["rs_b"], s["rs_a"]), f
    assert f["owner"] == f["workload"] == {"kind": "ReplicaSet", "name": "mixed"}, f
    # latest: no tag, and :latest.
    assert one("latest", "untagged")["image"] == f"{R}/audit-latest"
    assert one("latest", "latest")["image"] == f"{R}/audit-latest:latest"
    # mixed: the controller, both digests, most pods first.
    f = one("mixed", None)
    assert f["owner"] == f["workload"] == {"kind": "ReplicaSet", "name": "mixed"}, f
    assert f["digests"] == [{"digest": s["rs_a"], "pods": 2}, {"digest": s["rs_b"], "pods": 1}], f
    # mismatch: the spec's digest against the node's.
    f = one("mismatch", "mismatch")
    assert (f["pinned"], f["running"], f["image"]) == (s["x"], s["y"], f"{R}/audit-pinned@{s['x']}"), f
    # unknown: the registry that does not answer, named once.
    for c in ("a", "b"):
        f = one("unknown", "dead", c)
        assert (f["check"], f["resolved"]) == ("stale", None), f
        assert f["running"] == f"sha256:{('1' if c == 'a' else '2') * 64}", f
    assert [u["registry"] for u in out["registries_unreachable"]] == [s["dead"]], out["registries_unreachable"]
    assert all(isinstance(u["error"], str) and u["error"] for u in out["registries_unreachable"])
    # moved: the Deployment's pods, pinned to the old digest of a tag that moved since.
    assert moved, findings
    for f in moved:
        assert f["namespace"] == pinned and f["workload"] == {"kind": "Deployment", "name": "web"}, f
        assert (f["pinned"], f["resolved"], f["tag"]) == (s["app_old"], s["app_new"], f"{R}/audit-app:1"), f
        assert f["image"] == f"{R}/audit-app@{s['app_old']}", f
    pods_named = sorted(f["pod"] for f in moved)
    assert pods_named == sorted(s["web_pods"]) or pods_named == [None], f"one row per pod, or one for the workload: {moved}"
    if pods_named != [None]:
        assert all(f["owner"] == {"kind": "ReplicaSet", "name": s["web_rs"]} for f in moved), moved

    summary = out["summary"]
    for k in KINDS:
        assert summary[k] == len(rows(findings, kind=k)), (k, summary)
    assert (summary["unpinned"], summary["stale"], summary["mixed"], summary["mismatch"], summary["latest"], summary["unknown"]) == (11, 2, 1, 1, 2, 2), summary
    assert (summary["namespaces"], summary["pods"], summary["containers"]) == (2, 12, 14), summary
    assert all(isinstance(w, str) for w in out["warnings"]) and out["warnings"] == [], out["warnings"]

    # One registry request per distinct tag (untagged and :latest are one tag); none for a digest
    # without a recorded tag.
    after = {t: registry.manifest_requests(*t) for t in tags}
    assert {t: after[t] - before[t] for t in tags} == {t: 1 for t in tags}
    assert registry.manifest_requests("e2e/audit-pinned") == pinned_before
    assert out["requests"]["tags_resolved"] == 7, (
        "7 distinct tags: 5 on the test registry (REPO and REPO:latest are one tag, looked up once) and 2 on the "
        f"registry that does not answer: {out['requests']}"
    )


# --- 15 -------------------------------------------------------------------------------------------


def table_rows(text: str, n: int) -> tuple[list[dict], str]:
    """The rows of `-o table` (columns cut at the header's offsets) and its last line."""
    lines = text.rstrip("\n").split("\n")
    header = lines[0]
    cols = ["NAMESPACE", "OWNER", "POD", "CONTAINER", "FINDING", "DETAIL"]
    assert re.fullmatch(r"NAMESPACE\s+OWNER\s+POD\s+CONTAINER\s+FINDING\s+DETAIL", header.rstrip()), header
    starts = [header.index(c) for c in cols] + [None]
    out = [{c: line[starts[i]:starts[i + 1]].strip() for i, c in enumerate(cols)} for line in lines[1 : 1 + n]]
    return out, lines[-1]


def test_15_table_sorted_by_namespace_and_owner_with_a_summary_line(env, scenario):
    as_json = report(audit(env, "-A", "-l", f"{SELECT}={RUN}", "-o", "json"))
    findings = as_json["findings"]
    r = audit(env, "-A", "-l", f"{SELECT}={RUN}")  # -o table is the default
    assert r.returncode == 1, r
    (Path(env["state"]) / "audit-example.txt").write_text(r.stdout)
    table, last = table_rows(r.stdout, len(findings))
    assert len(table) == len(findings)

    def owner(f):
        return f"{f['owner']['kind']}/{f['owner']['name']}" if f["owner"] else "-"

    def key(row):
        return (row["NAMESPACE"], "" if row["OWNER"] == "-" else row["OWNER"])

    assert {(t["NAMESPACE"], t["POD"], t["CONTAINER"], t["FINDING"]) for t in table} == {
        (f["namespace"], f["pod"] or "-", f["container"], f["kind"]) for f in findings
    }
    assert [key(t) for t in table] == sorted(key(t) for t in table), "sorted by namespace, then owner"
    assert {t["OWNER"] for t in table} == {owner(f) for f in findings}
    for k in KINDS:
        n = as_json["summary"][k]
        assert re.search(rf"\b{n} {k}\b", last), f"summary line lacks '{n} {k}': {last}"
    assert scenario["dead"] in r.stdout, "the registry that does not answer is named"


# --- 16 -------------------------------------------------------------------------------------------


def test_16_exit_codes(env, scenario, tmp_path):
    plain, pinned = scenario["plain"], scenario["pinned"]
    r = audit(env, "-n", plain, "-o", "json", "--fail-on", "moved")
    assert r.returncode == 0, f"no moved in {plain}\n{r}"
    assert report(r)["summary"]["moved"] == 0
    r = audit(env, "-n", pinned, "-o", "json", "--fail-on", "moved")
    assert r.returncode == 1, f"moved in {pinned}\n{r}"
    r = audit(env, "-n", pinned, "-o", "json")
    assert r.returncode == 0, f"only unpinned and moved in {pinned}: nothing of the default --fail-on\n{r}"

    # Could not run: 2.
    cfg = yaml.safe_load(Path(env["auditor_kubeconfig"]).read_text())
    cfg["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{closed_port()}"
    closed = tmp_path / "closed.kubeconfig"
    closed.write_text(yaml.safe_dump(cfg))
    for kubeconfig, why in (
        (str(closed), "the API server does not answer"),
        (str(tmp_path / "missing.kubeconfig"), "no such kubeconfig"),
        (env["unbound_kubeconfig"], "e2e-unbound may not list pods"),
    ):
        r = audit(env, "-n", plain, "-o", "json", kubeconfig=kubeconfig)
        assert r.returncode == 2, f"{why}\n{r}"
        assert r.stderr.strip(), r
    assert kubectl("auth", "can-i", "list", "pods", "-n", plain, "--as", "e2e-unbound", check=False).stdout.strip() == "no"


# --- 17 -------------------------------------------------------------------------------------------


def test_17_requests_one_list_per_namespace_no_writes_one_lookup_per_tag(env, scenario, registry):
    plain, pinned = scenario["plain"], scenario["pinned"]
    log = env["apiserver_audit_log"]
    plain_tags = [("e2e/audit-web", "1"), ("e2e/audit-latest", "latest"), ("e2e/audit-rs", "1")]
    other_tags = [("e2e/audit-app", "1"), ("e2e/audit-skip", "1")]
    before = {t: registry.manifest_requests(*t) for t in plain_tags + other_tags}
    mark = audit_log_size(log)
    r = audit(env, "-n", plain, "-o", "json")
    assert r.returncode == 1, r
    out = report(r)
    events = audit_events(log, since=mark)
    assert events, "the API server's audit log records e2e-auditor"
    lists = [e for e in events if (e["verb"], e["resource"]) == ("list", "pods")]
    assert [(e["namespace"], e["code"]) for e in lists] == [(plain, 200)], lists
    assert out["requests"]["pod_list_pages"] == 1
    assert not [e for e in events if e["verb"] in WRITE_VERBS], events
    assert not [e for e in events if e["resource"] == "secrets" and e["verb"] != "get"], events
    ns_reads = [e for e in events if e["resource"] == "namespaces"]
    assert out["requests"]["namespace_reads"] == len(ns_reads), (out["requests"], ns_reads)
    after = {t: registry.manifest_requests(*t) for t in plain_tags + other_tags}
    assert {t: after[t] - before[t] for t in plain_tags + other_tags} == {**{t: 1 for t in plain_tags}, **{t: 0 for t in other_tags}}
    assert out["summary"]["namespaces"] == 1 and out["summary"]["pods"] == 9, out["summary"]

    # No -n, no -A: the context's namespace.
    cfg = yaml.safe_load(Path(env["auditor_kubeconfig"]).read_text())
    cfg["contexts"][0]["context"]["namespace"] = pinned
    ctx = Path(env["state"]) / f"auditor-{pinned}.kubeconfig"
    ctx.write_text(yaml.safe_dump(cfg))
    mark = audit_log_size(log)
    r = audit(env, "-o", "json", kubeconfig=str(ctx))
    assert r.returncode == 0, r
    lists = [e for e in audit_events(log, since=mark) if (e["verb"], e["resource"]) == ("list", "pods")]
    assert [e["namespace"] for e in lists] == [pinned], lists
    assert {f["namespace"] for f in report(r)["findings"]} == {pinned}

    # -A: one paged list of all pods, pages of --chunk-size.
    total = len(Api.from_env(env).list("v1", "Pod", None, labelSelector=f"{SELECT}={RUN}"))
    mark = audit_log_size(log)
    r = audit(env, "-A", "-l", f"{SELECT}={RUN}", "-o", "json", "--chunk-size", "5")
    out = report(r)
    events = audit_events(log, since=mark)
    lists = [e for e in events if (e["verb"], e["resource"]) == ("list", "pods")]
    assert all(e["namespace"] is None and "limit=5" in e["requestURI"] for e in lists), lists
    assert len(lists) == out["requests"]["pod_list_pages"] >= math.ceil(total / 5), (total, lists)
    assert sum("continue=" in e["requestURI"] for e in lists) == len(lists) - 1, lists
    assert out["summary"]["pods"] == total == 12
    assert not [e for e in events if e["verb"] in WRITE_VERBS], events


# --- 18 -------------------------------------------------------------------------------------------


def test_18_kubectl_plugin(env, scenario, tmp_path):
    """The same binary, as `kubectl-tagpin` on PATH, answers `kubectl tagpin audit`; kubectl
    passes the environment (KUBECONFIG) and the arguments after `tagpin` on."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl-tagpin").symlink_to(env["tagpin_bin"])
    kube = {"KUBECONFIG": env["auditor_kubeconfig"]}
    args = audit_args(env, "-n", scenario["plain"], "-o", "json", kubeconfig="")
    direct = run([env["tagpin_bin"], "audit", *args], kube)
    via = run([shutil.which("kubectl"), "tagpin", "audit", *args], {**kube, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert via.returncode == direct.returncode == 1, f"{via}\n{direct}"
    assert report(via) == report(direct)
    assert report(via)["summary"]["pods"] == 9


# --- 19 -------------------------------------------------------------------------------------------


def test_19_two_thousand_pods(env, registry, api, auditor, capsys):
    """2,000 pods in 4 namespaces, 10 tags, half of them running an old digest: one paged list,
    one registry request per tag. Wall time and request counts are reported, never asserted."""
    namespaces = [namespace(f"audit-bulk-{RUN}-{i}") for i in range(4)]
    repo = "e2e/audit-bulk"
    tags = [f"t{i}" for i in range(10)]
    old = {t: registry.push(repo, t) for t in tags}
    new = {t: registry.push(repo, t) for t in tags}
    image = f"{env['registry']}/{repo}"
    items = []
    for k in range(2000):
        t = tags[k % 10]
        stale = (k // 10) % 2 == 0
        ns = namespaces[k % 4]
        items.append((ns, f"p{k:04d}", t, f"docker-pullable://{image}@{old[t]}" if stale else f"{image}@{new[t]}"))

    t0 = time.monotonic()

    def create(item):
        ns, name, t, image_id = item
        stored = api.create(ns, pod(name, [("main", f"{image}:{t}")], {"e2e.tagpin.io/bulk": RUN}))
        api.patch_status(ns, name, kubelet_status(stored, {"main": image_id}))

    try:
        Api.bulk(create, items)
        setup = time.monotonic() - t0
        log = env["apiserver_audit_log"]
        access = Path(env["state"]) / "registry" / "access.log"
        per_tag = {t: registry.manifest_requests(repo, t) for t in tags}
        registry_lines = len(access.read_text().splitlines())
        cluster_pods = len(api.list("v1", "Pod"))
        # The floor, in the same run: the same paged list by kubectl, as the same user.
        floor = kubectl("--kubeconfig", env["auditor_kubeconfig"], "get", "pods", "-A", "-o", "json", "--chunk-size", "500").seconds
        mark = audit_log_size(log)
        r = audit(env, "-A", "-o", "json")
        wall = r.seconds
        events = audit_events(log, since=mark)
        registry_after = len(access.read_text().splitlines())
        per_tag_after = {t: registry.manifest_requests(repo, t) for t in tags}
        assert len(api.list("v1", "Pod")) == cluster_pods, "the cluster changed during the run"
        assert r.returncode == 1, r
        out = report(r)
        bulk = [f for f in out["findings"] if f["namespace"] in namespaces]
        kinds = {k: len(rows(bulk, kind=k)) for k in KINDS}
        lists = [e for e in events if (e["verb"], e["resource"]) == ("list", "pods")]
        summary = (
            f"tagpin audit -A over {out['summary']['pods']} pods ({cluster_pods} in the cluster, 2000 in 4 "
            f"namespaces, 10 tags): {wall:.2f} s wall, {wall / floor:.1f}x `kubectl get pods -A -o json` ({floor:.2f} s, "
            f"the same paged list) in the same run; {len(events)} API requests ({len(lists)} pod list pages, "
            f"{out['requests']['namespace_reads']} namespace reads), {registry_after - registry_lines} registry "
            f"requests ({sum(per_tag_after.values()) - sum(per_tag.values())} for the 10 tags); "
            f"findings in the 4 namespaces: {kinds}; setup (create + status of 2000 pods) {setup:.1f} s"
        )
        # pytest captures file descriptor 2 itself (sys.__stderr__ included): suspend it so the
        # line reaches the CI log on success too.
        with capsys.disabled():
            print(f"\ne2e: {summary}", file=sys.__stderr__, flush=True)
        (Path(env["state"]) / "audit-2000.txt").write_text(summary + "\n")

        assert kinds == {**{k: 0 for k in KINDS}, "unpinned": 2000, "stale": 1000}, kinds
        assert all(f["opted_in"] is False for f in rows(bulk, kind="unpinned"))
        assert out["summary"]["pods"] == cluster_pods
        assert len(lists) == out["requests"]["pod_list_pages"] == math.ceil(cluster_pods / 500), (cluster_pods, len(lists))
        assert all(e["namespace"] is None and "limit=500" in e["requestURI"] for e in lists), lists
        assert not [e for e in events if e["verb"] in WRITE_VERBS]
        assert {t: per_tag_after[t] - per_tag[t] for t in tags} == {t: 1 for t in tags}
    finally:
        kubectl("delete", "namespace", *namespaces, "--wait=false")
        # Later cases share the 2 cores: let the namespace controller finish (bounded; not asserted).
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and any(
            kubectl("get", "namespace", ns, "--ignore-not-found", "-o", "name").stdout.strip() for ns in namespaces
        ):
            time.sleep(1)


# --- 20 -------------------------------------------------------------------------------------------


def test_20_pull_secrets_resolve_private_images_as_the_webhook_does(env, private_registry, api, auditor):
    """A private image (the htpasswd registry) running an old build. With the pod's pull secret,
    read with the auditor's own rights, the tag is resolved and the pod is `stale`; the same image
    without a secret is `unknown`, naming the refusal, not a guess (and not an outage)."""
    ns = namespace(f"audit-private-{RUN}")
    repo = "e2e/audit-private"
    old = private_registry.push(repo, "1")
    new = private_registry.push(repo, "1")
    image = f"{private_registry.addr}/{repo}:1"
    kubectl(
        "create", "secret", "docker-registry", "regcred", "-n", ns,
        f"--docker-server={private_registry.addr}",
        f"--docker-username={env['registry_user']}",
        f"--docker-password={env['registry_password']}",
    )
    with_secret = pod("with-secret", [("main", image)])
    with_secret["spec"]["imagePullSecrets"] = [{"name": "regcred"}]
    try:
        for obj in (with_secret, pod("without", [("main", image)])):
            stored = api.create(ns, obj)
            api.patch_status(ns, obj["metadata"]["name"], kubelet_status(stored, {"main": f"{private_registry.addr}/{repo}@{old}"}))
        r = audit(env, "-n", ns, "-o", "json")
        assert r.returncode == 1, r
        out = report(r)
        got = {(f["kind"], f["pod"]) for f in out["findings"]}
        assert got == {("unpinned", "with-secret"), ("stale", "with-secret"), ("unpinned", "without"), ("unknown", "without")}, out
        (stale,) = rows(out["findings"], kind="stale")
        assert (stale["running"], stale["resolved"]) == (old, new), stale
        (unknown,) = rows(out["findings"], kind="unknown")
        assert unknown["check"] == "stale" and "401" in unknown["detail"], unknown
        assert out["registries_unreachable"] == [], "a refusal is an answer about the image, not an outage"
        assert env["registry_password"] not in r.stdout + r.stderr
    finally:
        kubectl("delete", "namespace", ns, "--wait=false")
