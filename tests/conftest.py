"""Shared fixtures (infra/fixtures.py, infra/relay_peers.py) and stale-server cleanup."""

from __future__ import annotations

import pytest

from hypothesis import HealthCheck, settings

from infra.ci import IN_CI
from infra.xvfb import reap_stale_servers


pytest_plugins = ["pytester", "infra.fixtures", "infra.relay_peers", "infra.shm"]

# A busy 2-core machine (CI, or tests run with -n) must not fail a property test for being
# slow: the properties are about results, not time.
settings.register_profile(
    "x11passthrough",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=IN_CI,
)
settings.load_profile("x11passthrough")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Clean up servers that a killed earlier run left behind."""
    reap_stale_servers()
