"""
The display layer: parse ``DISPLAY``, find a live X server, reserve a free display number.

A deliberate, documented second tier of the API, for embedders that need the pieces on their
own (:class:`~x11passthrough.X11Passthrough` uses them all)::

    from x11passthrough.display import DisplayLocator, DisplayName

    name = DisplayName.parse("localhost:10.0")
    endpoint = DisplayLocator().locate(name)

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from ._display._endpoint import Endpoint, EndpointKind
from ._display._locate import DisplayConnection
from ._display._locator import DisplayLocator
from ._display._name import X_TCP_PORT, DisplayName
from ._display._reserve import DEFAULT_DISPLAY_RANGE, Reservation
from ._validate import MAX_DISPLAY_NUMBER


__all__ = [
    "DEFAULT_DISPLAY_RANGE",
    "MAX_DISPLAY_NUMBER",
    "X_TCP_PORT",
    "DisplayConnection",
    "DisplayLocator",
    "DisplayName",
    "Endpoint",
    "EndpointKind",
    "Reservation",
]
