"""
Served displays: the display lent under a stable name until stopped (``x11passthrough serve``).

A deliberate, documented second tier of the API, for containers that outlive any one command
(Compose ``up -d``, Dev Containers, engine-restarted services)::

    from x11passthrough.served import ServedDisplay, served_args

    args = served_args("devbox")          # the same every time: write it in compose.yaml
    with ServedDisplay("devbox") as args:  # serve it until the block ends
        web = ...                          # ServedDisplay.mint("web") / revoke("web")

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from ._served.display import ServedArgs, ServedDisplay, served_args


__all__ = ["ServedArgs", "ServedDisplay", "served_args"]
