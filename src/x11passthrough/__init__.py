"""
Let containers open windows on the host's X display, safely and fast.

The front door is :class:`X11Passthrough`::

    with X11Passthrough() as args:
        subprocess.run(["docker", "run", "--rm", *args, image, "xeyes"])

Two public submodules are a deliberate second tier for embedders:
:mod:`x11passthrough.display` (display names, locating, reserving) and
:mod:`x11passthrough.xauth` (Xauthority files). Everything else is private.
"""

from __future__ import annotations

from importlib.metadata import version as _version

from . import exceptions
from ._args import DockerRunArgs
from ._options import AuthMode
from ._passthrough import X11Passthrough
from ._relay.stats import RelayStats
from ._transport import Transport
from .exceptions import X11PassthroughError


__all__ = [
    "AuthMode",
    "DockerRunArgs",
    "RelayStats",
    "Transport",
    "X11Passthrough",
    "X11PassthroughError",
    "exceptions",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _version("x11passthrough")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
