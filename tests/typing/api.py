"""
Type checks of the public API, as users write it. Checked by mypy (``nox -s typing``), never run.

Each line must type-check under ``mypy --strict``; a change that breaks a user's annotations
breaks this file first.
"""

from __future__ import annotations

import subprocess

from pathlib import Path
from typing import Any

import x11passthrough

from x11passthrough import AuthMode, DockerRunArgs, RelayStats, X11Passthrough, X11PassthroughError
from x11passthrough.display import DisplayConnection, DisplayLocator, DisplayName, Endpoint
from x11passthrough.exceptions import ConfigurationError, DisplayError
from x11passthrough.xauth import MIT_MAGIC_COOKIE_1, Family, XauthEntry, Xauthority


def run(image: str) -> int:
    mode: AuthMode = "untrusted"
    with X11Passthrough(auth=mode, display=":0") as args:
        argv: list[str] = ["docker", "run", "--rm", *args, image, "xeyes"]
        environment: dict[str, str] = dict(args.environment)
        kwargs: dict[str, Any] = args.docker_py()
        compose: dict[str, Any] = args.compose()
        display: str = args.display
        file: Path | None = args.xauthority
        del environment, kwargs, compose, display, file
        return subprocess.call(argv)


async def run_async(image: str) -> None:
    passthrough = X11Passthrough(bind="172.17.0.1", allow=["172.17.0.0/16"])
    async with passthrough as args:
        assert isinstance(args, DockerRunArgs)
    stats: RelayStats = passthrough.stats
    total: int = stats.connections_total
    del total


def explicit() -> None:
    passthrough = X11Passthrough(":0", "/home/me/.Xauthority", display_range=range(50, 60))
    args: DockerRunArgs = passthrough.start()
    del args
    passthrough.close()
    version: str = x11passthrough.__version__
    del version


def errors() -> None:
    try:
        X11Passthrough(auth="substitute", connect_timeout=1.5, setup_timeout=3)
    except ConfigurationError as e:
        value_error: ValueError = e
        del value_error
    except DisplayError:
        pass
    except X11PassthroughError:
        pass


def second_tier(cookie: bytes) -> None:
    name: DisplayName = DisplayName.parse("localhost:10.0")
    locator = DisplayLocator(connect_timeout=1.0)
    endpoint: Endpoint = locator.locate(name)
    with locator.connect(name) as connection:
        checked: DisplayConnection = connection
        entry = Xauthority.load().for_connection(checked.socket, name.number)
        data: bytes | None = None if entry is None else entry.data
        del data
    with locator.reserve(range=range(50, 60), bind=["127.0.0.1"]) as reservation:
        number: int = reservation.number
        del number
    wild = XauthEntry(Family.WILD, b"", 5, MIT_MAGIC_COOKIE_1, cookie)
    Xauthority([wild]).save("/tmp/session.xauth")
    del endpoint
