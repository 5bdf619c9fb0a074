"""Let Docker containers open windows on the host's X display, safely and fast."""

from __future__ import annotations

from importlib.metadata import version as _version

from . import exceptions
from ._display import (
    DEFAULT_DISPLAY_RANGE,
    DisplayLocator,
    DisplayName,
    Endpoint,
    Reservation,
)
from ._dockerargs import DockerRunArgs
from ._passthrough import AuthMode, X11Passthrough
from ._relay import Relay, RelayStats, RelayThread
from ._x11setup import CookieGate, SetupRequest
from ._xauth import MIT_MAGIC_COOKIE_1, Family, XauthEntry, Xauthority, xauthority_lock
from .exceptions import X11PassthroughError


__all__ = [
    "DEFAULT_DISPLAY_RANGE",
    "MIT_MAGIC_COOKIE_1",
    "AuthMode",
    "CookieGate",
    "DisplayLocator",
    "DisplayName",
    "DockerRunArgs",
    "Endpoint",
    "Family",
    "Relay",
    "RelayStats",
    "RelayThread",
    "Reservation",
    "SetupRequest",
    "X11Passthrough",
    "X11PassthroughError",
    "XauthEntry",
    "Xauthority",
    "exceptions",
    "xauthority_lock",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _version("x11passthrough")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
