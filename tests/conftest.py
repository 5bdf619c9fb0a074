"""Shared fixtures (infra/fixtures.py, infra/relay_peers.py) and stale-server cleanup."""

from __future__ import annotations

import pytest

from hypothesis import HealthCheck, settings

from infra.ci import IN_CI
from infra.xvfb import reap_stale_servers


pytest_plugins = ["pytester", "infra.fixtures", "infra.relay_peers"]

# A busy 2-core CI machine must not fail a property test for being slow: the properties are
# about results, not time.
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
if IN_CI:
    settings.load_profile("ci")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Clean up servers that a killed earlier run left behind."""
    reap_stale_servers()
