"""Fixtures both end-to-end suites share (e2e/tests/conftest.py, e2e/node/conftest.py): the cluster
scripts/e2e started, described in $TAGPIN_E2E_STATE/e2e.json, and its two registries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import harness


@pytest.fixture(scope="session")
def env() -> dict:
    state = os.environ.get("TAGPIN_E2E_STATE")
    if not state or not (Path(state) / "e2e.json").exists():
        pytest.exit("run the end-to-end cases with scripts/e2e (it starts the cluster)", returncode=2)
    e = json.loads((Path(state) / "e2e.json").read_text())
    e["state"] = Path(state)
    return e


@pytest.fixture(scope="session")
def registry(env) -> harness.Registry:
    return harness.Registry(env["registry"], env["state"], "registry")


@pytest.fixture(scope="session")
def private_registry(env) -> harness.Registry:
    return harness.Registry(
        env["private_registry"],
        env["state"],
        "private-registry",
        user=(env["registry_user"], env["registry_password"]),
        ca=env["registry_ca"],
    )
