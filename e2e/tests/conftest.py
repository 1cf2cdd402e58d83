"""Fixtures for the end-to-end cases: the cluster scripts/e2e started (described in
$TAGPIN_E2E_STATE/e2e.json). Run the cases through scripts/e2e, never on their own."""

from __future__ import annotations

import pytest

import harness
from fixtures import env, private_registry, registry  # noqa: F401 (fixtures, by name)


@pytest.fixture(scope="session")
def tagpin(env) -> harness.Tagpin:
    return harness.Tagpin(env["state"], env["tagpin_metrics"])


@pytest.fixture(scope="session")
def app(registry) -> tuple[str, str]:
    """REGISTRY/e2e/app:1 and its digest."""
    return f"{registry.addr}/e2e/app:1", registry.push("e2e/app", "1")
