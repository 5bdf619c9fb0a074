"""
A relay in a process of its own, for the benchmarks: ``python _relay_runner.py CONFIG``.

CONFIG is JSON: ``{"display": ":N", "xauthority": PATH, "options": {...}, "async": false}``;
``options`` are keyword arguments of :class:`x11passthrough.X11Passthrough` (``transport``,
``auth``, ``bind``, ...). The process enters ``with X11Passthrough(...)`` (or ``async with``
in an asyncio event loop), prints ``{"args": [docker-run arguments]}`` as one line, then
answers every line on its stdin with the relay's :class:`~x11passthrough.RelayStats` as one
JSON line, and leaves the ``with`` when its stdin closes.

A process of its own, like socat, so that the benchmarks read the relay's CPU time alone and
the relay shares no interpreter lock with the script that measures it.
"""

from __future__ import annotations

import asyncio
import json
import sys

from typing import Any

from x11passthrough import RelayStats, X11Passthrough


STATS = ("bytes_up", "bytes_down", "connections_total", "errors", "rejected", "stalled")


def stats_line(stats: RelayStats) -> str:
    """One JSON line of the counters of `stats`."""
    return json.dumps({name: getattr(stats, name) for name in STATS})


def hello(args: list[str]) -> None:
    """Tell the benchmark the container's arguments: the relay serves."""
    print(json.dumps({"args": list(args)}), flush=True)


def serve(passthrough: X11Passthrough) -> None:
    """Serve until stdin closes, in the passthrough's own thread."""
    with passthrough as args:
        hello(list(args))
        for _ in sys.stdin:
            print(stats_line(passthrough.stats), flush=True)


async def serve_async(passthrough: X11Passthrough) -> None:
    """Serve until stdin closes, with ``async with``."""
    async with passthrough as args:
        hello(list(args))
        while await asyncio.to_thread(sys.stdin.readline):
            print(stats_line(passthrough.stats), flush=True)


def main(argv: list[str]) -> int:
    """Run the relay `argv[0]` describes."""
    config: dict[str, Any] = json.loads(argv[0])
    passthrough = X11Passthrough(config["display"], config["xauthority"], **config["options"])
    if config.get("async"):
        asyncio.run(serve_async(passthrough))
    else:
        serve(passthrough)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
