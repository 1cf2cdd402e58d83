"""Helpers for the end-to-end cases (e2e/tests/test_cluster.py), which scripts/e2e runs against the
cluster it started. Everything here talks to 127.0.0.1 only: the API server through kubectl, the
registries over their HTTP API, tagpin through its PID and metrics port.

Also a command line for scripts/e2e:

    python harness.py overlay KUSTOMIZE_DIR OUT_DIR URL_BASE CA_FILE

writes the e2e overlay: OUT_DIR/kustomization.yaml over KUSTOMIZE_DIR that replaces each
webhook's clientConfig.service with url URL_BASE + the service's own path, and sets caBundle to
CA_FILE. Nothing else changes (test_01 checks that).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
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


# --- registries --------------------------------------------------------------------------------


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

    def push(self, repo: str, tag: str) -> str:
        """Pushes a new single-layer OCI image (unique content) as REPO:TAG; returns its digest,
        the sha256 of the manifest bytes sent."""
        layer = os.urandom(64)
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        ).encode()
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
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": self._blob(repo, layer),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        self._request(
            "PUT",
            f"/v2/{repo}/manifests/{tag}",
            manifest,
            {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        return "sha256:" + hashlib.sha256(manifest).hexdigest()

    def manifest_requests(self, repo: str) -> int:
        """Manifest HEADs and GETs for REPO in the access log, once the count has been stable for
        0.5 s (the registry logs after answering; bounded at 5 s)."""

        def count() -> int:
            try:
                text = self.access_log.read_text()
            except FileNotFoundError:
                return 0
            return sum(
                1
                for line in text.splitlines()
                if f'"HEAD /v2/{repo}/manifests/' in line or f'"GET /v2/{repo}/manifests/' in line
            )

        last, stable_since, deadline = count(), time.monotonic(), time.monotonic() + 5
        while time.monotonic() < deadline and time.monotonic() - stable_since < 0.5:
            time.sleep(0.1)
            now = count()
            if now != last:
                last, stable_since = now, time.monotonic()
        return last


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
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
