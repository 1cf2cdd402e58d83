"""Helpers for the node cases: images that run, pods on the node, tagpin installed as users install
it (Helm, kubectl apply -k), and a paced admission loop. All traffic stays on this machine: the API
server and the registries on the node's bridge address, pods on the bridge (e2e/node.sh)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import signal
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import harness
from harness import kubectl, wait_for

SYSTEM_NS = "tagpin-system"
# The suite's registry CA, mounted into tagpin's pods (both registries are reached at the node's
# address; the private one over https with this CA).
REGISTRY_CA_CONFIGMAP = "tagpin-registry-ca"
REGISTRY_CA_DIR = "/etc/tagpin/registry-ca"


# --- images and pods ---------------------------------------------------------------------------


def push_app(registry: harness.Registry, repo: str, tag: str, says: str) -> str:
    """Pushes REPO:TAG, a busybox image that prints SAYS and then waits (a TERM ends it at once);
    returns its digest. Each call makes a new build (SAYS is in the image)."""
    command = f'echo "{says}"; trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'
    return registry.push_image(repo, tag, *harness.busybox_image(command, label=says))


def push_docker_image(registry: harness.Registry, repo: str, tag: str, config: bytes, layers: list[bytes]) -> str:
    """Pushes CONFIG and gzip LAYERS as REPO:TAG under a Docker (schema 2) manifest, where
    Registry.push_image writes an OCI one: the same image under another digest. Returns it."""
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": registry._blob(repo, config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                 "digest": registry._blob(repo, layer), "size": len(layer)}
                for layer in layers
            ],
        },
        sort_keys=True,
    ).encode()
    registry._request("PUT", f"/v2/{repo}/manifests/{tag}", manifest,
                      {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


def pod(name: str, image: str, pull_secret: str | None = None, policy: str = "IfNotPresent") -> dict:
    spec: dict = {
        "containers": [{"name": "app", "image": image, "imagePullPolicy": policy}],
        "terminationGracePeriodSeconds": 2,
        "automountServiceAccountToken": False,
    }
    if pull_secret:
        spec["imagePullSecrets"] = [{"name": pull_secret}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def create_pod(namespace: str, obj: dict) -> dict:
    kubectl("-n", namespace, "create", "-f", "-", "-o", "json", input=json.dumps(obj))
    return harness.get("pod", obj["metadata"]["name"], namespace)


def describe(namespace: str, name: str) -> str:
    r = kubectl("-n", namespace, "describe", "pod", name, check=False)
    return r.stdout[-3000:] + r.stderr[-500:]


def wait_running(namespace: str, name: str, timeout: float = 180) -> dict:
    """The pod once its container runs; fails with `kubectl describe` (events) otherwise."""

    def running():
        p = harness.get("pod", name, namespace)
        statuses = p.get("status", {}).get("containerStatuses") or []
        if statuses and all("running" in s.get("state", {}) for s in statuses):
            return p
        return None

    try:
        return wait_for(f"pod {namespace}/{name} running", running, timeout=timeout, interval=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- kubectl describe\n{describe(namespace, name)}") from None


def logs(namespace: str, name: str, timeout: float = 30) -> str:
    """`kubectl logs` (the API server asks the kubelet), once it has printed something."""
    return wait_for(
        f"logs of {namespace}/{name}",
        lambda: kubectl("-n", namespace, "logs", name).stdout,
        timeout=timeout,
        interval=0.5,
    )


def enabled_namespace(name: str) -> str:
    return harness.namespace(name, {"tagpin.io/mode": "enabled"})


def pull_secret(namespace: str, registry: harness.Registry, name: str = "private-pull") -> str:
    user, password = registry.user
    kubectl(
        "-n", namespace, "create", "secret", "docker-registry", name,
        f"--docker-server={registry.addr}", f"--docker-username={user}", f"--docker-password={password}",
    )
    return name


def admissions(pods: list[dict]) -> float:
    """tagpin_admissions_total summed over tagpin's pods, read from each pod's metrics port (the
    host reaches pod addresses over the bridge)."""
    total = 0.0
    for p in pods:
        ip = p["status"]["podIP"]
        with urllib.request.urlopen(f"http://{ip}:9090/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("tagpin_admissions_total{"):
                    total += float(line.rsplit(" ", 1)[1])
    return total


def tag_digest(registry: harness.Registry, repo: str, tag: str) -> str:
    """What the registry says REPO:TAG is now (Docker-Content-Digest of a manifest HEAD)."""
    _, headers, _ = registry._request(
        "HEAD", f"/v2/{repo}/manifests/{tag}", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
    )
    return {k.lower(): v for k, v in headers.items()}["docker-content-digest"]


def image_id(p: dict, container: int = 0) -> str:
    """The imageID the kubelet wrote for the pod's container (what the node runs)."""
    return p["status"]["containerStatuses"][container]["imageID"]


def deployment(name: str, image: str, replicas: int = 3, policy: str = "Always") -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod(name, image, policy=policy)["spec"]},
        },
    }


def running_pods(namespace: str, selector: str, count: int, timeout: float = 180) -> list[dict]:
    """The COUNT pods matching SELECTOR (none being deleted), once all of them run; sorted by name."""

    def all_running():
        items = json.loads(kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json").stdout)["items"]
        live = [p for p in items if not p["metadata"].get("deletionTimestamp")]
        ok = len(live) == count and all(
            (s := p.get("status", {}).get("containerStatuses")) and all("running" in c.get("state", {}) for c in s)
            for p in live
        )
        return sorted(live, key=lambda p: p["metadata"]["name"]) if ok else None

    try:
        return wait_for(f"{count} pods {selector} running in {namespace}", all_running, timeout=timeout, interval=0.5)
    except AssertionError as e:
        detail = kubectl("-n", namespace, "describe", "pods", "-l", selector, check=False).stdout[-3000:]
        raise AssertionError(f"{e}\n--- kubectl describe pods\n{detail}") from None


def respec(p: dict) -> dict:
    """A new pod object from a stored pod: its name, labels, annotations and spec as stored (tagpin's
    pinned image included), without what the cluster filled in for this one pod."""
    spec = {k: v for k, v in p["spec"].items() if k != "nodeName"}
    meta = {k: p["metadata"][k] for k in ("name", "labels", "annotations") if k in p["metadata"]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


class stopped:
    """`with stopped(env, "registry"):` the suite's process NAME (STATE/pids/NAME.pid) is SIGSTOPped:
    the kernel still accepts connections on its port, nothing answers. SIGCONT on the way out."""

    def __init__(self, env: dict, name: str):
        self.pid = int((Path(env["state"]) / "pids" / f"{name}.pid").read_text())

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGCONT)
        return False


def start_registry(env: dict, name: str) -> harness.Registry:
    """Another plain docker-registry on the node's address (a port it picks), as scripts/e2e starts
    its own: storage in STATE/NAME, access log STATE/NAME/access.log, log STATE/logs/NAME.log and
    pid in STATE/pids/NAME.pid, so that scripts/e2e stops it on exit if stop_registry does not."""
    state = Path(env["state"])
    d = state / name
    (d / "storage").mkdir(parents=True, exist_ok=True)
    (d / "config.yml").write_text(yaml.safe_dump({
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(d / "storage")}, "delete": {"enabled": True}},
        "http": {"addr": f"{env['node']['node_addr']}:0", "secret": "tagpin-e2e"},
    }))
    log = state / "logs" / f"{name}.log"
    with open(d / "access.log", "ab") as out, open(log, "ab") as err:
        p = subprocess.Popen(["docker-registry", "serve", str(d / "config.yml")], stdout=out, stderr=err,
                             stdin=subprocess.DEVNULL)
    (state / "pids" / f"{name}.pid").write_text(f"{p.pid}\n")
    pattern = re.compile(rf"listening on ({re.escape(env['node']['node_addr'])}:\d+)")

    def listening():
        assert p.poll() is None, f"{name} exited: {log.read_text()[-2000:]}"
        m = pattern.search(log.read_text())
        return m and m.group(1)

    addr = wait_for(f"{name} listening", listening, timeout=30)
    reg = harness.Registry(addr, state, name)
    reg.process = p
    return reg


def stop_registry(env: dict, name: str, reg: harness.Registry):
    reg.process.terminate()
    reg.process.wait(timeout=15)
    (Path(env["state"]) / "pids" / f"{name}.pid").unlink(missing_ok=True)


def containerd_manifest_answers(reg: harness.Registry, repo: str, ref: str) -> list[int]:
    """The status codes REG answered containerd's manifest requests for REPO at REF (a tag or a
    digest) with, in order (containerd asks a mirror with `?ns=UPSTREAM`, the registry without)."""
    pattern = re.compile(rf'"(?:HEAD|GET) /v2/{re.escape(repo)}/manifests/{re.escape(ref)}(?:\?\S*)? HTTP/[\d.]+" (\d{{3}}) .*"containerd/')
    return [int(m.group(1)) for line in reg.access_log.read_text().splitlines() if (m := pattern.search(line))]


class mirrored:
    """`with mirrored(env, mirror):` containerd's hosts.toml for the suite's plain registry puts
    MIRROR first (containerd falls back to the registry itself when the mirror has no answer, e.g. a
    404); the file as node_up wrote it is put back on the way out. containerd reads the file on
    every pull."""

    def __init__(self, env: dict, mirror: harness.Registry):
        self.path = Path(env["state"]) / "node" / "certs.d" / env["registry"] / "hosts.toml"
        self.text = (
            f'server = "http://{env["registry"]}"\n'
            f'[host."http://{mirror.addr}"]\n  capabilities = ["pull", "resolve"]\n'
        )

    def __enter__(self):
        self.saved = self.path.read_text()
        self.path.write_text(self.text)
        return self

    def __exit__(self, *exc):
        self.path.write_text(self.saved)
        return False


def audit(env: dict, *args: str) -> tuple[int, dict]:
    """`tagpin audit ARGS -o json` with the release binary from the host, as the admin (the node's
    registries are on the node's private address, which audit refuses unless allowed); its exit
    code and report."""
    argv = [
        env["tagpin_bin"], "audit", "--kubeconfig", env["kubeconfig"],
        "--insecure-registry", env["registry"], "--registry-ca", env["registry_ca"],
        "--allow-registry-cidr", f"{env['node']['node_addr']}/32", *args, "-o", "json",
    ]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    try:
        return p.returncode, json.loads(p.stdout)
    except ValueError as e:
        raise AssertionError(f"tagpin audit: not JSON ({e}); exit {p.returncode}\n{p.stdout}\n{p.stderr}") from None


# --- tagpin, installed -------------------------------------------------------------------------


def tagpin_args(env: dict) -> list[str]:
    """The flags a user with these registries adds: the plain one is http, the private one has its
    own CA, and both sit on the node's (private) address, which serve refuses unless allowed."""
    node = env["node"]
    return [
        f"--insecure-registry={env['registry']}",
        f"--registry-ca={REGISTRY_CA_DIR}/ca.crt",
        f"--allow-registry-cidr={node['node_addr']}/32",
    ]


def helm(env: dict, *args: str, timeout: float = 300) -> harness.Result:
    argv = [env["node"]["helm"], *args]
    t = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    r = harness.Result(argv, p.returncode, p.stdout, p.stderr, time.monotonic() - t)
    if p.returncode != 0:
        raise AssertionError(f"helm failed:\n{r}")
    return r


@dataclass
class Installed:
    """tagpin as one install method put it in the cluster."""

    method: str  # "helm" or "kustomize"
    env: dict
    overlay: Path | None = None

    def deployment(self) -> dict:
        return harness.get("deployment", "tagpin", SYSTEM_NS)

    def pods(self) -> list[dict]:
        """tagpin's pods that are not terminating."""
        return [p for p in all_tagpin_pods() if not p["metadata"].get("deletionTimestamp")]

    def ready(self, replicas: int = 2) -> bool:
        d = self.deployment()
        s = d.get("status", {})
        return (
            s.get("observedGeneration") == d["metadata"]["generation"]
            and s.get("updatedReplicas") == replicas
            and s.get("readyReplicas") == replicas
            and s.get("availableReplicas") == replicas
            and s.get("replicas") == replicas
        )

    def wait_ready(self, timeout: float = 240):
        """Until the Deployment is 2/2 ready and its Service answers at its ClusterIP: kube-proxy
        programs a new Service's endpoints a moment after its pods are ready, and until then the
        API server's call is refused and the webhook fails open (a CI run admitted a pod
        unpinned 2 s after `kubectl apply -k`)."""
        try:
            wait_for(f"tagpin's Deployment ({self.method}) 2/2 ready", self.ready, timeout=timeout, interval=1)
        except AssertionError as e:
            detail = kubectl("-n", SYSTEM_NS, "describe", "pods", check=False).stdout[-4000:]
            raise AssertionError(f"{e}\n--- kubectl describe pods -n {SYSTEM_NS}\n{detail}") from None
        ip = harness.get("service", "tagpin", SYSTEM_NS)["spec"]["clusterIP"]
        wait_for(f"tagpin's Service ({self.method}) reachable at {ip}:443", lambda: service_connects(ip, 443), timeout=60, interval=0.5)

    @property
    def upgrade_command(self) -> str:
        return "helm upgrade --reuse-values --set serve.FLAG=VALUE" if self.method == "helm" else "kubectl apply -k of the edited overlay"

    def set_flag(self, flag: str, value: str):
        """Changes one flag of `tagpin serve` the way each README says to upgrade, without waiting
        for the rollout."""
        if self.method == "helm":
            chart = str(Path(self.env["root"]) / "charts" / "tagpin")
            helm(self.env, "upgrade", "tagpin", chart, "-n", SYSTEM_NS, "--reuse-values", "--set", f"serve.{flag}={value}")
        else:
            path = self.overlay / "kustomization.yaml"
            k = yaml.safe_load(path.read_text())
            ops = yaml.safe_load(k["patches"][0]["patch"])
            ops.append({"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": f"--{flag}={value}"})
            k["patches"][0]["patch"] = yaml.safe_dump(ops)
            path.write_text(yaml.safe_dump(k, sort_keys=False))
            kubectl("apply", "-k", str(self.overlay), timeout=180)

    def uninstall(self):
        """As the READMEs say: the webhook configuration first, then the rest, then the labels."""
        kubectl("delete", "mutatingwebhookconfiguration", "tagpin")
        if self.method == "helm":
            helm(self.env, "uninstall", "tagpin", "-n", SYSTEM_NS, "--wait", "--timeout", "120s")
        else:
            kubectl("delete", "-k", str(self.overlay), "--ignore-not-found", timeout=180)
        kubectl("label", "namespace", "--all", "tagpin.io/mode-", "tagpin.io/workloads-")


def service_connects(ip: str, port: int) -> bool:
    """Whether a TCP connection to a Service's ClusterIP succeeds from the host (where the API
    server runs): kube-proxy rejects it until the Service has ready endpoints programmed."""
    try:
        with socket.create_connection((ip, port), timeout=2):
            return True
    except OSError:
        return False


def registry_ca_configmap(env: dict):
    ca = Path(env["registry_ca"]).read_text()
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": REGISTRY_CA_CONFIGMAP, "namespace": SYSTEM_NS},
        "data": {"ca.crt": ca},
    }
    kubectl("apply", "-f", "-", input=json.dumps(cm))


def previous_install_gone(timeout: float = 180):
    """Waits until no pod of an earlier install is left, terminating ones included: both install
    methods label their pods alike, so a new Service would also select an old pod that is still
    draining (kube-proxy sends to serving, terminating endpoints while no new one is ready), and
    that pod presents the old install's certificate. Then until an earlier install's namespace
    (kubectl delete -k removes it) is gone or active."""
    wait_for(
        "the pods of an earlier install gone",
        lambda: not all_tagpin_pods(),
        timeout=timeout,
        interval=1,
    )
    wait_for(
        f"namespace {SYSTEM_NS} gone or active",
        lambda: (lambda o: not o or not json.loads(o)["metadata"].get("deletionTimestamp"))(
            kubectl("get", "namespace", SYSTEM_NS, "--ignore-not-found", "-o", "json").stdout.strip()
        ),
        timeout=timeout,
        interval=1,
    )


def all_tagpin_pods() -> list[dict]:
    """tagpin's pods, terminating ones included."""
    out = kubectl("-n", SYSTEM_NS, "get", "pods", "-l", "app.kubernetes.io/name=tagpin", "-o", "json").stdout
    return json.loads(out)["items"]


def install_helm(env: dict, serve: dict | None = None) -> Installed:
    """`helm install` of charts/tagpin as its README says, with a values file pointing the image at
    the suite's registry and setting the registry flags (`serve:`, as the chart's README lists
    them; Helm merges them with the chart's defaults) and CA, plus the flags in SERVE (e.g.
    {"cache-ttl": "1s"}). The chart generates the serving certificate (no cert-manager here)."""
    node = env["node"]
    values = {
        "image": {"repository": node["tagpin_image_repository"], "tag": node["tagpin_image_tag"]},
        "serve": {
            "insecure-registry": [env["registry"]],
            "registry-ca": f"{REGISTRY_CA_DIR}/ca.crt",
            "allow-registry-cidr": [f"{node['node_addr']}/32"],
        },
        "extraVolumes": [{"name": "registry-ca", "configMap": {"name": REGISTRY_CA_CONFIGMAP}}],
        "extraVolumeMounts": [{"name": "registry-ca", "mountPath": REGISTRY_CA_DIR, "readOnly": True}],
    }
    values["serve"].update(serve or {})
    path = Path(env["state"]) / "helm-values.yaml"
    path.write_text(yaml.safe_dump(values))
    previous_install_gone()
    if not harness.exists("namespace", SYSTEM_NS):
        kubectl("create", "namespace", SYSTEM_NS)
    registry_ca_configmap(env)
    chart = str(Path(env["root"]) / "charts" / "tagpin")
    helm(env, "install", "tagpin", chart, "-n", SYSTEM_NS, "--create-namespace", "-f", str(path))
    installed = Installed("helm", env)
    installed.wait_ready()
    return installed


def install_kustomize(env: dict) -> Installed:
    """`manifests/overlays/plain/make-certs` then `kubectl apply -k` of an overlay over
    manifests/overlays/plain that does what a user with these registries does: `images:` names the
    suite's registry, a ConfigMap carries the registry CA, a patch adds the flags and mounts it."""
    node = env["node"]
    previous_install_gone()
    work = Path(env["state"]) / "kustomize"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(Path(env["root"]) / "manifests", work / "manifests")
    plain = work / "manifests" / "overlays" / "plain"
    for f in ("ca.crt", "ca.key", "tls.crt", "tls.key"):
        (plain / f).unlink(missing_ok=True)
    subprocess.run([str(plain / "make-certs")], check=True, capture_output=True, text=True)
    overlay = work / "node"
    overlay.mkdir()
    shutil.copy(env["registry_ca"], overlay / "ca.crt")
    patch = [{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": a} for a in tagpin_args(env)]
    patch += [
        {"op": "add", "path": "/spec/template/spec/volumes/-",
         "value": {"name": "registry-ca", "configMap": {"name": REGISTRY_CA_CONFIGMAP}}},
        {"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts/-",
         "value": {"name": "registry-ca", "mountPath": REGISTRY_CA_DIR, "readOnly": True}},
    ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../manifests/overlays/plain"],
        "images": [{"name": "ghcr.io/tagpin/tagpin", "newName": node["tagpin_image_repository"], "newTag": node["tagpin_image_tag"]}],
        "configMapGenerator": [{
            "name": REGISTRY_CA_CONFIGMAP, "namespace": SYSTEM_NS, "files": ["ca.crt"],
            "options": {"disableNameSuffixHash": True},
        }],
        "patches": [{"target": {"kind": "Deployment", "name": "tagpin"}, "patch": yaml.safe_dump(patch)}],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    kubectl("apply", "-k", str(overlay), timeout=180)
    installed = Installed("kustomize", env, overlay=overlay)
    installed.wait_ready()
    return installed


# --- a paced admission loop --------------------------------------------------------------------


@dataclass
class LoopCounts:
    sent: int = 0
    failed: int = 0
    pinned: int = 0
    unpinned: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"{self.sent} server-side dry-run pod creations in {self.seconds:.1f} s: {self.pinned} pinned, "
            f"{self.unpinned} admitted unpinned, {self.failed} failed"
        )


def admission_loop(api: harness.Api, namespace: str, image: str, seconds: float = 30, rate: float = 20,
                   actions: list[tuple[float, object]] = ()) -> LoopCounts:
    """Creates pods with IMAGE in NAMESPACE as server-side dry runs (the webhooks run, nothing is
    stored, no container starts), RATE per second for SECONDS, on 8 threads; each action
    (after_seconds, fn) runs once on its own thread at its time. Counts what came back."""
    counts = LoopCounts()
    lock = threading.Lock()
    stamp = int(time.time() * 1000)

    def one(i: int):
        obj = pod(f"loop-{stamp}-{i}", image)
        try:
            out = api.create(namespace, obj, dry_run=True)
        except Exception as e:  # noqa: BLE001 - every failure is counted, whatever its kind
            with lock:
                counts.failed += 1
                if len(counts.errors) < 5:
                    counts.errors.append(f"{type(e).__name__}: {e}")
            return
        got = out["spec"]["containers"][0]["image"]
        with lock:
            if re.search(r"@sha256:[0-9a-f]{64}$", got):
                counts.pinned += 1
            else:
                counts.unpinned += 1

    side, failures = [], []

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - re-raised on the loop's thread below
                failures.append(e)

        return run

    t0 = time.monotonic()
    for after, fn in actions:
        th = threading.Timer(after, guarded(fn))
        th.start()
        side.append(th)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = []
        i = 0
        while (due := t0 + i / rate) < t0 + seconds:
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, i))
            i += 1
        for f in futures:
            f.result()
    counts.sent = i
    counts.seconds = time.monotonic() - t0
    for th in side:
        th.join()
    if failures:
        raise failures[0]
    return counts
