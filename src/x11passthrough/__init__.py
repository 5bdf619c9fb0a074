"""Let Docker containers open windows on the host's X display, safely and fast."""

from __future__ import annotations

from . import exceptions
from ._dockerargs import DockerRunArgs
from .exceptions import X11PassthroughError


__all__ = ["DockerRunArgs", "X11PassthroughError", "exceptions"]
