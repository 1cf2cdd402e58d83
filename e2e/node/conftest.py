"""Fixtures for the node suite (scripts/e2e --node): the cluster with its node, described in
$TAGPIN_E2E_STATE/e2e.json (its "node" part written by scripts/e2e from e2e/node.sh). Run the
cases through `scripts/e2e --node`, never on their own."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The shared helpers live beside the API suite's cases.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import harness  # noqa: E402
from fixtures import env, private_registry, registry  # noqa: E402,F401 (fixtures, by name)


@pytest.fixture(scope="session")
def node(env) -> dict:
    if not env.get("node"):
        pytest.exit("the node cases need the node: run them with scripts/e2e --node", returncode=2)
    return env["node"]


@pytest.fixture(scope="session")
def api(env) -> harness.Api:
    return harness.Api.from_env(env)
