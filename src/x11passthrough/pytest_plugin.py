"""
pytest fixtures that lend the test run's X display to containers.

Installed with the package and loaded automatically (entry point ``pytest11``)::

    def test_gui_app_in_container(x11passthrough):
        subprocess.run(["docker", "run", "--rm", *x11passthrough, IMAGE, "my-app"], check=True)

The fixtures use ``$DISPLAY`` (for example the one pytest-xvfb starts). Where no display is set
the test is skipped; pass ``--x11passthrough-required`` to make that an error instead (for CI).
Options for every passthrough come from the ini keys ``x11passthrough_auth`` and
``x11passthrough_bind``.
"""

from __future__ import annotations

import os

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ._args import DockerRunArgs
from ._passthrough import X11Passthrough


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the plugin's command-line and ini options."""
    group = parser.getgroup("x11passthrough")
    group.addoption(
        "--x11passthrough-required",
        action="store_true",
        help="fail, rather than skip, tests that need a display when none is set",
    )
    parser.addini(
        "x11passthrough_auth",
        "auth mode of the x11passthrough fixtures: substitute, untrusted or forward",
        default="substitute",
    )
    parser.addini(
        "x11passthrough_bind",
        "addresses the relay listens on (default: the docker0 address)",
        type="args",
        default=[],
    )


@pytest.fixture(name="x11passthrough_factory")
def _x11passthrough_factory(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., DockerRunArgs]]:
    """
    Start passthroughs with any :class:`~x11passthrough.X11Passthrough` options.

    Every passthrough started through the factory is closed when the test ends.
    """
    config = request.config
    started: list[X11Passthrough] = []

    def start(**options: Any) -> DockerRunArgs:
        if options.get("display") is None and not os.environ.get("DISPLAY"):
            message = "x11passthrough: no DISPLAY is set for this test run"
            if config.getoption("x11passthrough_required"):
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        options.setdefault("auth", config.getini("x11passthrough_auth"))
        bind = config.getini("x11passthrough_bind")
        if bind:
            options.setdefault("bind", bind)
        passthrough = X11Passthrough(**options)
        args = passthrough.start()
        started.append(passthrough)
        return args

    yield start
    for passthrough in reversed(started):
        passthrough.close()


@pytest.fixture(name="x11passthrough")
def _x11passthrough(x11passthrough_factory: Callable[..., DockerRunArgs]) -> DockerRunArgs:
    """Return the docker-run arguments of a passthrough of ``$DISPLAY``, open for this test."""
    return x11passthrough_factory()
