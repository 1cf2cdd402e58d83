"""Helpers for the end-to-end cases (e2e/tests/test_*.py), which scripts/e2e runs against the
cluster it started. Everything here talks to this machine only (127.0.0.1, or with --node the
node's bridge address, e2e/node.sh): the API server through kubectl (and,
for bulk work kubectl is too slow for, directly: Api), the registries over their HTTP API, tagpin
through its PID and metrics port; the API server's audit log is read from its file.

Also a command line for scripts/e2e:

    python harness.py overlay KUSTOMIZE_DIR OUT_DIR URL_BASE CA_FILE

writes the e2e overlay: OUT_DIR/kustomization.yaml over KUSTOMIZE_DIR that replaces each
webhook's clientConfig.service with url URL_BASE + the service's own path, and sets caBundle to
CA_FILE. Nothing else changes (test_01 checks that).

    python harness.py push-busybox REGISTRY REPO:TAG COMMAND
    python harness.py push-layout REGISTRY REPO:TAG OCI_LAYOUT_DIR

push to the plain-HTTP registry at REGISTRY a busybox image running COMMAND (busybox_image), or
the image of an OCI layout (scripts/image writes one), and print its digest.
"""

from __future__ import annotations

import base64
import concurrent.futures
import gzip
import hashlib
import io
import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

WEBHOOK_CONFIG = "tagpin"


# --- the overlay ------------------------------------------------------------------------------


def kustomize(directory: str | Path) -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def write_overlay(src: str | Path, out: str | Path, url_base: str, ca_file: str | Path) -> Path:
    """The e2e overlay over SRC (manifests/base or manifests/overlays/plain, or a copy)."""
    src, out = Path(src).resolve(), Path(out).resolve()
    config = [
        d
        for d in kustomize(src)
        if d["kind"] == "MutatingWebhookConfiguration" and d["metadata"]["name"] == WEBHOOK_CONFIG
    ]
    if len(config) != 1:
        raise SystemExit(f"overlay: {src} renders no MutatingWebhookConfiguration {WEBHOOK_CONFIG}")
    ca = base64.b64encode(Path(ca_file).read_bytes()).decode()
    ops = []
    for i, hook in enumerate(config[0]["webhooks"]):
        service = hook["clientConfig"].get("service")
        if not service:
            raise SystemExit(f"overlay: webhook {hook['name']} has no clientConfig.service")
        path = service.get("path", "/")
        ops += [
            {"op": "remove", "path": f"/webhooks/{i}/clientConfig/service"},
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/url", "value": url_base + path},
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca},
        ]
    out.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(src, out)],
        "patches": [
            {
                "target": {
                    "group": "admissionregistration.k8s.io",
                    "version": "v1",
                    "kind": "MutatingWebhookConfiguration",
                    "name": WEBHOOK_CONFIG,
                },
                "path": "webhooks-url.yaml",
            }
        ],
    }
    (out / "webhooks-url.yaml").write_text(yaml.safe_dump(ops, width=4096, sort_keys=False))
    (out / "kustomization.yaml").write_text(
        "# The e2e overlay (e2e/tests/harness.py): the API server reaches tagpin on 127.0.0.1, not\n"
        "# through a Service. Only clientConfig changes.\n" + yaml.safe_dump(kustomization)
    )
    return out


# --- the cluster ------------------------------------------------------------------------------


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.args)}\n(exit {self.returncode} after {self.seconds:.1f} s)\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> Result:
    """Runs the real kubectl (PATH: the venv's); raises with its output unless check=False."""
    argv = ["kubectl", *args]
    t = time.monotonic()
    p = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    r = Result(argv, p.returncode, p.stdout, p.stderr, time.monotonic() - t)
    if check and p.returncode != 0:
        raise AssertionError(f"kubectl failed:\n{r}")
    return r


def get(kind: str, name: str, namespace: str | None = None) -> dict:
    args = ["get", kind, name, "-o", "json"]
    if namespace:
        args += ["-n", namespace]
    return json.loads(kubectl(*args).stdout)


def exists(kind: str, name: str, namespace: str | None = None) -> bool:
    args = ["get", kind, name, "--ignore-not-found", "-o", "name"]
    if namespace:
        args += ["-n", namespace]
    return kubectl(*args).stdout.strip() != ""


def wait_for(what: str, fn, timeout: float = 60, interval: float = 0.25):
    """Polls fn() until it returns something truthy; fails naming WHAT after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except AssertionError as e:  # a kubectl that failed this time
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last}")
        time.sleep(interval)


def namespace(name: str, labels: dict[str, str] | None = None) -> str:
    """Creates namespace NAME with LABELS and waits for its default ServiceAccount (the
    ServiceAccount admission plugin refuses pods until the controller has made it)."""
    kubectl("create", "namespace", name)
    if labels:
        kubectl("label", "namespace", name, *[f"{k}={v}" for k, v in labels.items()])
    wait_for(f"serviceaccount {name}/default", lambda: exists("serviceaccount", "default", name))
    return name


def images(obj: dict, path: str = "spec") -> list[str]:
    node = obj
    for part in path.split("."):
        node = node[part]
    return [c["image"] for c in node.get("initContainers", []) + node["containers"]]


# --- the API server, directly ---------------------------------------------------------------


class ApiError(Exception):
    pass


# Plural resource names of the kinds the cases create through Api (lower-cased kind + "s"
# otherwise).
_PLURAL = {"NetworkPolicy": "networkpolicies"}


class Api:
    """A small HTTPS client to the API server with the admin certificate (e2e.json: api_server,
    kube_ca, admin_cert, admin_key), for bulk work: one keep-alive connection per thread. Every
    error raises ApiError with the API's own message."""

    def __init__(self, server: str, ca: str, cert: str, key: str):
        m = re.fullmatch(r"https://([^:/]+):(\d+)/?", server)
        if not m:
            raise ValueError(f"Api: {server} is not https://HOST:PORT")
        self.host, self.port = m.group(1), int(m.group(2))
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.load_cert_chain(cert, key)
        self._local = threading.local()

    @classmethod
    def from_env(cls, env: dict) -> "Api":
        return cls(env["api_server"], env["kube_ca"], env["admin_cert"], env["admin_key"])

    def _conn(self, fresh: bool = False) -> http.client.HTTPSConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=60)
            self._local.conn = conn
        return conn

    def request(self, method: str, path: str, body=None, content_type: str = "application/json") -> dict:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in (0, 1):
            conn = self._conn(fresh=attempt == 1)
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.HTTPException, ConnectionError, ssl.SSLError):
                if attempt == 1:  # a keep-alive connection the server closed: retried once, fresh
                    raise
        try:
            obj = json.loads(raw) if raw else {}
        except ValueError:
            obj = {"message": raw.decode(errors="replace")}
        if resp.status >= 300:
            raise ApiError(f"{method} {path}: {resp.status} {obj.get('reason', '')}: {obj.get('message', raw[:500])}")
        return obj

    @staticmethod
    def path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        resource = _PLURAL.get(kind, kind.lower() + "s")
        p = f"{base}/namespaces/{namespace}/{resource}" if namespace else f"{base}/{resource}"
        return f"{p}/{name}" if name else p

    def create(self, namespace: str | None, obj: dict, dry_run: bool = False) -> dict:
        """POST OBJ (any kind; apiVersion and kind from the object) into NAMESPACE; the stored
        object. dry_run: a server-side dry run (admission runs, nothing is stored), the object as
        it would be stored."""
        path = self.path(obj["apiVersion"], obj["kind"], namespace) + ("?dryRun=All" if dry_run else "")
        return self.request("POST", path, obj)

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict:
        return self.request("GET", self.path(api_version, kind, namespace, name))

    def list(self, api_version: str, kind: str, namespace: str | None = None, **query: str) -> list[dict]:
        """Every item, following continue tokens."""
        items, cont = [], ""
        while True:
            q = dict(query, limit="500", **({"continue": cont} if cont else {}))
            path = self.path(api_version, kind, namespace) + "?" + urllib.parse.urlencode(q)
            page = self.request("GET", path)
            items += page["items"]
            cont = page["metadata"].get("continue")
            if not cont:
                return items

    def patch_status(self, namespace: str, pod: str, status: dict) -> dict:
        """A merge patch of the pod's status subresource, which is what a kubelet writes."""
        return self.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{pod}/status",
            {"status": status},
            "application/merge-patch+json",
        )

    @staticmethod
    def bulk(fn, items, workers: int = 16) -> list:
        """fn(item) for every item on WORKERS threads; the results in ITEMS' order. The first
        error raises (after the others finished)."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(fn, items))


def kubelet_status(pod: dict, image_ids: dict[str, str], started_at: str | None = None) -> dict:
    """The status a kubelet writes for POD once all its containers run: phase Running, the five
    conditions True, the host and pod IP (127.0.0.1), and a status per container of the spec
    (init containers: terminated with exit 0) with its imageID from IMAGE_IDS (container name ->
    imageID as the runtime reports it: `docker-pullable://REPO@sha256:…` from dockershim /
    cri-dockerd, `REPO@sha256:…` from containerd and CRI-O)."""
    now = started_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    spec, meta = pod["spec"], pod["metadata"]

    def container_id(name: str) -> str:
        return "containerd://" + hashlib.sha256(f"{meta.get('uid')}/{name}".encode()).hexdigest()

    def status(c: dict, init: bool) -> dict:
        s = {
            "name": c["name"],
            "image": c["image"],
            "imageID": image_ids[c["name"]],
            "containerID": container_id(c["name"]),
            "ready": not init,
            "started": not init,
            "restartCount": 0,
        }
        if init:
            s["state"] = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now,
                                         "finishedAt": now, "containerID": container_id(c["name"])}}
        else:
            s["state"] = {"running": {"startedAt": now}}
        return s

    out = {
        "phase": "Running",
        "conditions": [
            {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
            for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
        ],
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": now,
        "containerStatuses": [status(c, False) for c in spec["containers"]],
    }
    if spec.get("initContainers"):
        out["initContainerStatuses"] = [status(c, True) for c in spec["initContainers"]]
    return out


# --- the API server's audit log ------------------------------------------------------------


def _stable(read, settle: float = 0.5, bound: float = 5):
    """read() until its value has not changed for SETTLE seconds (bounded at BOUND)."""
    last, since, deadline = read(), time.monotonic(), time.monotonic() + bound
    while time.monotonic() < deadline and time.monotonic() - since < settle:
        time.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return last


def audit_log_size(log_path: str | Path) -> int:
    """Where the audit log ends now (pass it to audit_events as SINCE), once it has stopped
    growing."""

    def size() -> int:
        try:
            return Path(log_path).stat().st_size
        except FileNotFoundError:
            return 0

    return _stable(size)


def audit_events(log_path: str | Path, user: str = "e2e-auditor", since: int = 0) -> list[dict]:
    """The API server's audit events of USER after byte offset SINCE (scripts/e2e logs only
    e2e-auditor, one event per request), once the file has stopped growing: dicts with verb,
    resource (with "/subresource"), namespace, name, requestURI and code. Requests made by another
    user impersonating USER (`kubectl --as`) are not USER's and are left out."""
    audit_log_size(log_path)
    with open(log_path, "rb") as f:
        f.seek(since)
        lines = f.read().decode().splitlines()
    out = []
    for line in lines:
        if not line.strip():
            continue
        e = json.loads(line)
        if e.get("user", {}).get("username") != user or e.get("stage") not in ("ResponseComplete", "Panic"):
            continue
        ref = e.get("objectRef", {})
        resource = ref.get("resource")
        if resource and ref.get("subresource"):
            resource += "/" + ref["subresource"]
        out.append(
            {
                "verb": e["verb"],
                "resource": resource,
                "namespace": ref.get("namespace"),
                "name": ref.get("name"),
                "requestURI": e["requestURI"],
                "code": e.get("responseStatus", {}).get("code"),
            }
        )
    return out


# --- registries --------------------------------------------------------------------------------


# --- images that run ------------------------------------------------------------------------------

BUSYBOX = "/bin/busybox"  # Debian's busybox-static: one static binary, runs on an empty root
BUSYBOX_APPLETS = ("sh", "sleep", "echo", "cat", "ls", "date", "hostname", "wget", "true")


def busybox_image(command: str, label: str = "") -> tuple[bytes, list[bytes]]:
    """(config, [gzip layer]) of a one-layer image of Debian's static busybox whose entrypoint runs
    COMMAND with sh. LABEL goes into the config, so two builds of the same command differ."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d, mode in (("bin", 0o755), ("tmp", 0o1777), ("etc", 0o755)):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        data = Path(BUSYBOX).read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in BUSYBOX_APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    layer = raw.getvalue()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": ["/bin/busybox", "sh", "-c", command],
                "Env": ["PATH=/bin"],
                "Labels": {"e2e.tagpin.io/build": label},
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
        },
        sort_keys=True,
    ).encode()
    return config, [gzip.compress(layer, mtime=0)]


class Registry:
    """A docker-registry started by scripts/e2e: push images over its API, read its access log."""

    def __init__(self, addr: str, state: Path, name: str, user=None, ca: str | None = None):
        self.addr = addr
        self.access_log = state / name / "access.log"
        self.user = user
        self.scheme = "https" if ca else "http"
        self.ctx = ssl.create_default_context(cafile=ca) if ca else None

    def _request(self, method: str, url: str, body: bytes = b"", headers=None):
        if url.startswith("/"):
            url = f"{self.scheme}://{self.addr}{url}"
        req = urllib.request.Request(url, data=body if method in ("POST", "PUT") else None, method=method)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        if self.user:
            token = base64.b64encode(f"{self.user[0]}:{self.user[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, context=self.ctx, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()

    def _blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        _, headers, _ = self._request("POST", f"/v2/{repo}/blobs/uploads/")
        location = headers["Location"]
        if location.startswith("/"):
            location = f"{self.scheme}://{self.addr}{location}"
        sep = "&" if "?" in location else "?"
        self._request(
            "PUT",
            f"{location}{sep}digest={digest}",
            data,
            {"Content-Type": "application/octet-stream"},
        )
        return digest

    def push_image(
        self, repo: str, tag: str, config: bytes, layers: list[bytes],
        layer_type: str = "application/vnd.oci.image.layer.v1.tar+gzip",
    ) -> str:
        """Pushes an OCI image (CONFIG, LAYERS of LAYER_TYPE) as REPO:TAG; returns the digest of
        the manifest bytes sent."""
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": self._blob(repo, config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": layer_type,
                        "digest": self._blob(repo, layer),
                        "size": len(layer),
                    }
                    for layer in layers
                ],
            },
            sort_keys=True,
        ).encode()
        return self._put_manifest(repo, tag, manifest)

    def push_layout(self, repo: str, tag: str, layout: str | Path) -> str:
        """Pushes the one image of an OCI image layout, byte for byte (its digest is kept)."""
        layout = Path(layout)
        index = json.loads((layout / "index.json").read_text())
        (entry,) = index["manifests"]

        def blob(digest: str) -> bytes:
            return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

        manifest = blob(entry["digest"])
        parsed = json.loads(manifest)
        for d in [parsed["config"]] + parsed["layers"]:
            if self._blob(repo, blob(d["digest"])) != d["digest"]:
                raise AssertionError(f"{layout}: blob {d['digest']} does not hash to its name")
        return self._put_manifest(repo, tag, manifest)

    def _put_manifest(self, repo: str, tag: str, manifest: bytes) -> str:
        self._request(
            "PUT",
            f"/v2/{repo}/manifests/{tag}",
            manifest,
            {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        return "sha256:" + hashlib.sha256(manifest).hexdigest()

    def push(self, repo: str, tag: str) -> str:
        """Pushes a new single-layer OCI image (unique content, never run) as REPO:TAG; returns its
        digest, the sha256 of the manifest bytes sent."""
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        ).encode()
        return self.push_image(repo, tag, config, [os.urandom(64)], "application/vnd.oci.image.layer.v1.tar")

    def manifest_requests(self, repo: str, reference: str | None = None) -> int:
        """Manifest HEADs and GETs for REPO (only of REFERENCE, a tag or digest, if given) in the
        access log, once the count has been stable for 0.5 s (the registry logs after answering;
        bounded at 5 s)."""
        ref = f"{reference} " if reference is not None else ""

        def count() -> int:
            try:
                text = self.access_log.read_text()
            except FileNotFoundError:
                return 0
            return sum(
                1
                for line in text.splitlines()
                if f'"HEAD /v2/{repo}/manifests/{ref}' in line or f'"GET /v2/{repo}/manifests/{ref}' in line
            )

        return _stable(count)


# --- tagpin as a process -------------------------------------------------------------------


class Tagpin:
    """The tagpin process scripts/e2e started; restarted from the same command line
    (STATE/tagpin.argv), its PID kept in STATE/pids/tagpin.pid so scripts/e2e stops it on exit."""

    def __init__(self, state: Path, metrics: str):
        self.state = state
        self.metrics = metrics
        self.pidfile = state / "pids" / "tagpin.pid"

    @property
    def pid(self) -> int:
        return int(self.pidfile.read_text())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.metrics}/readyz", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        # A zombie (exited, not yet reaped by scripts/e2e's shell) counts as gone.
        try:
            return Path(f"/proc/{self.pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    def stop(self):
        os.kill(self.pid, signal.SIGTERM)
        wait_for("tagpin to exit after SIGTERM", lambda: not self.alive(), timeout=30)

    def start(self):
        argv = (self.state / "tagpin.argv").read_text().splitlines()
        log = open(self.state / "logs" / "tagpin.log", "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.pidfile.write_text(f"{p.pid}\n")
        self._popen = p  # reaped by Popen when it exits
        wait_for("tagpin /readyz", self.ready, timeout=60)

    def hang(self):
        """SIGSTOP: the kernel still accepts connections on its port; nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.pid, signal.SIGCONT)
        wait_for("tagpin /readyz after SIGCONT", self.ready, timeout=30)


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[0] == "overlay":
        write_overlay(*argv[1:])
        return 0
    if len(argv) == 4 and argv[0] in ("push-busybox", "push-layout"):
        registry = Registry(argv[1], Path("/nonexistent"), "registry")
        repo, _, tag = argv[2].rpartition(":")
        if argv[0] == "push-busybox":
            print(registry.push_image(repo, tag, *busybox_image(argv[3], label=argv[2])))
        else:
            print(registry.push_layout(repo, tag, argv[3]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
