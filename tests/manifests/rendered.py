"""The install renders the manifest tests read: those `scripts/check-manifests` made (directory in
$TAGPIN_RENDERED_DIR), or, for a test run alone, a fresh render."""

import os
import subprocess
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(names):
    """{name: [objects of NAME.yaml]} for each render name ("default", "audit", "helm-default", ...)."""
    out = os.environ.get("TAGPIN_RENDERED_DIR")
    if not out:
        out = tempfile.mkdtemp(prefix="tagpin-rendered-")
        subprocess.run([os.path.join(ROOT, "scripts", "check-manifests"), "render", out], check=True)
    rendered = {}
    for name in names:
        with open(os.path.join(out, name + ".yaml")) as f:
            rendered[name] = [d for d in yaml.safe_load_all(f) if d]
    return rendered
