"""What the manifest tests share: the install renders they read (those `scripts/check-manifests`
made, directory in $TAGPIN_RENDERED_DIR, or, for a test run alone, a fresh render), and the
tagpin binary whose flags they check."""

import os
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
from tagpin_binary import tagpin_binary  # noqa: E402,F401  (the manifest tests call rendered.tagpin_binary)


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
