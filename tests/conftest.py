"""Shared fixtures: private Xvfb servers with cookie auth (see support.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from support import XServer, reap_stale_servers, start_xvfb


pytest_plugins = ["e2e_fixtures"]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Clean up servers that a killed earlier run left behind."""
    reap_stale_servers()


@pytest.fixture(name="xvfb_factory")
def _xvfb_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., XServer]]:
    """Start any number of private Xvfb servers; all are stopped after the test."""
    servers: list[XServer] = []

    def start(*, tcp: bool = False, extra_args: tuple[str, ...] = ()) -> XServer:
        server = start_xvfb(tmp_path_factory.mktemp("xvfb"), tcp=tcp, extra_args=extra_args)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(name="xvfb")
def _xvfb(xvfb_factory: Callable[..., XServer]) -> XServer:
    """A private Xvfb with cookie auth, listening on its UNIX socket only."""
    return xvfb_factory()


@pytest.fixture(name="xvfb_tcp")
def _xvfb_tcp(xvfb_factory: Callable[..., XServer]) -> XServer:
    """A private Xvfb with cookie auth that also listens on TCP 6000+N."""
    return xvfb_factory(tcp=True)
