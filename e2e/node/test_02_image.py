"""Case: tagpin's image (scripts/image, built here without a daemon from Debian 12 packages) is the
image the Dockerfile describes: the same user, entrypoint, command, ports and binary path, on a
distroless-style base (nonroot 65532, CA bundle, glibc, no shell); and the binary runs from it as
65532 (chroot into the unpacked layers: the loader and libraries are there)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest


def dockerfile_final_stage(root: Path) -> dict:
    """USER, ENTRYPOINT, CMD, EXPOSE, the base and the COPY destination of the Dockerfile's last
    stage (instructions joined across `\\` continuations)."""
    text = (root / "Dockerfile").read_text()
    lines, cur = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cur += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            lines.append(cur.strip())
            cur = ""
    stages = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    last = lines[stages[-1]:]
    out: dict = {"from": last[0].split()[1], "expose": [], "copy": []}
    for line in last[1:]:
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op in ("ENTRYPOINT", "CMD"):
            out[op.lower()] = json.loads(rest)
        elif op == "USER":
            out["user"] = rest.strip()
        elif op == "EXPOSE":
            out["expose"] += rest.split()
        elif op == "COPY":
            out["copy"].append(rest.split()[-1])
    return out


@pytest.fixture(scope="module")
def image(node) -> dict:
    layout = Path(node["tagpin_image_layout"])
    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]

    def blob(d: str) -> bytes:
        return (layout / "blobs" / "sha256" / d.split(":", 1)[1]).read_bytes()

    manifest = json.loads(blob(entry["digest"]))
    return {
        "digest": entry["digest"],
        "config": json.loads(blob(manifest["config"]["digest"])),
        "layers": [layout / "blobs" / "sha256" / layer["digest"].split(":", 1)[1] for layer in manifest["layers"]],
    }


@pytest.fixture(scope="module")
def rootfs(image, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tagpin-image") / "rootfs"
    root.mkdir()
    for layer in image["layers"]:
        with tarfile.open(layer) as t:
            t.extractall(root, filter="fully_trusted")  # our own image, unpacked as root
    return root


def test_image_is_what_the_dockerfile_describes(env, node, image):
    want = dockerfile_final_stage(Path(env["root"]))
    cfg = image["config"]["config"]
    assert want["from"].startswith("gcr.io/distroless/cc-debian12:nonroot"), want
    assert cfg["User"] == want["user"] == "65532:65532"
    assert cfg["Entrypoint"] == want["entrypoint"] == ["/usr/local/bin/tagpin"]
    assert cfg["Cmd"] == want["cmd"]
    assert sorted(cfg["ExposedPorts"]) == sorted(f"{p}/tcp" for p in want["expose"])
    assert want["copy"] == [cfg["Entrypoint"][0]]
    assert image["config"]["os"] == "linux"
    # What the suite pushed and the kubelet pulls is this layout, byte for byte.
    assert image["digest"] == node["tagpin_image_digest"]


def test_image_base_is_distroless_style(env, rootfs):
    passwd = (rootfs / "etc/passwd").read_text()
    assert re.search(r"^nonroot:x:65532:65532:[^:]*:/home/nonroot:", passwd, re.M), passwd
    home = rootfs / "home/nonroot"
    assert (home.stat().st_uid, home.stat().st_gid) == (65532, 65532)
    assert (rootfs / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert 'VERSION_ID="12"' in (rootfs / "usr/lib/os-release").read_text()
    bundle = (rootfs / "etc/ssl/certs/ca-certificates.crt").read_text()
    assert bundle.count("BEGIN CERTIFICATE") > 100
    for absent in ("bin/sh", "bin/bash", "usr/bin/apt-get", "usr/bin/dpkg"):
        assert not (rootfs / absent).exists(), f"{absent} is in the image (distroless has no shell or package manager)"
    binary = rootfs / "usr/local/bin/tagpin"
    assert binary.stat().st_mode & 0o777 == 0o755 and binary.stat().st_uid == 0
    assert hashlib.sha256(binary.read_bytes()).hexdigest() == hashlib.sha256(Path(env["tagpin_bin"]).read_bytes()).hexdigest()


def test_binary_runs_from_the_image_as_nonroot(rootfs):
    """The dynamic loader and every library the binary needs are in the image: it runs there, as
    the image's user, with nothing of the host's root visible."""
    p = subprocess.run(
        ["chroot", "--userspec=65532:65532", str(rootfs), "/usr/local/bin/tagpin", "--version"],
        capture_output=True, text=True, timeout=30,
    )
    assert p.returncode == 0, p
    assert p.stdout.startswith("tagpin "), p.stdout
