"""
Let containers open windows on the host's X display, safely and fast.

The front door is :class:`X11Passthrough`::

    with X11Passthrough() as args:
        subprocess.run(["docker", "run", "--rm", *args, image, "xeyes"])

Two public submodules are a deliberate second tier for embedders:
:mod:`x11passthrough.display` (display names, locating, reserving) and
:mod:`x11passthrough.xauth` (Xauthority files). Everything else is private: every module
and package whose name starts with an underscore (said once here and in each private
package, not in each module), and the pytest plugin's helpers.

The names below are imported when first used, so that the command line starts quickly.
"""

from __future__ import annotations

import importlib

from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from . import exceptions
    from ._args import DockerRunArgs
    from ._options import AuthMode, EngineChoice, Transport
    from ._passthrough import X11Passthrough
    from ._relay.stats import RelayStats
    from ._xvfb import Xvfb
    from .exceptions import X11PassthroughError


__all__ = [
    "AuthMode",
    "DockerRunArgs",
    "EngineChoice",
    "RelayStats",
    "Transport",
    "X11Passthrough",
    "X11PassthroughError",
    "Xvfb",
    "exceptions",
]

_HOMES = {
    "AuthMode": "._options",
    "DockerRunArgs": "._args",
    "EngineChoice": "._options",
    "RelayStats": "._relay.stats",
    "Transport": "._options",
    "X11Passthrough": "._passthrough",
    "X11PassthroughError": ".exceptions",
    "Xvfb": "._xvfb",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name], __name__), name)
        globals()[name] = value
        return value
    if name == "exceptions":
        return importlib.import_module(".exceptions", __name__)
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415 - only when asked

        return version("x11passthrough")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
