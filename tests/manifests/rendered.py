"""What the manifest tests share: the install renders they read (those `scripts/check-manifests`
made, directory in $TAGPIN_RENDERED_DIR, or, for a test run alone, a fresh render), and the
tagpin binary whose flags they check."""

import os
import subprocess
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(names=None):
    """{name: [objects of NAME.yaml]} for each render name ("default", "audit", "helm-default", ...);
    every render when NAMES is None."""
    out = os.environ.get("TAGPIN_RENDERED_DIR")
    if not out:
        out = tempfile.mkdtemp(prefix="tagpin-rendered-")
        subprocess.run([os.path.join(ROOT, "scripts", "check-manifests"), "render", out], check=True)
    if names is None:
        names = sorted(n[:-5] for n in os.listdir(out) if n.endswith(".yaml"))
    rendered = {}
    for name in names:
        with open(os.path.join(out, name + ".yaml")) as f:
            rendered[name] = [d for d in yaml.safe_load_all(f) if d]
    return rendered


def tagpin_binary():
    """$TAGPIN_BIN, or the binary `cargo test` / `cargo build` left in the target directory."""
    if os.environ.get("TAGPIN_BIN"):
        return os.environ["TAGPIN_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    for profile in ("debug", "release"):
        path = os.path.join(target, profile, "tagpin")
        if os.access(path, os.X_OK):
            return path
    return None
