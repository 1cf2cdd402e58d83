"""Where the tagpin binary is, for the Python suites (tests/docs, tests/manifests): one place, so
both find the same build."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tagpin_binary():
    """$TAGPIN_BIN, or the binary `cargo test` / `cargo build` left in the target directory
    (debug before release); None when there is none."""
    if os.environ.get("TAGPIN_BIN"):
        return os.environ["TAGPIN_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    for profile in ("debug", "release"):
        path = os.path.join(target, profile, "tagpin")
        if os.access(path, os.X_OK):
            return path
    return None
