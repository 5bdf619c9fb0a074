"""
The frame counter every client of ``bench_apps.py`` shares (runs inside the container).

A client calls :meth:`Frames.tick` once per frame it drew; the first `warmup` seconds are not
counted (window mapping, fonts, caches), then frames are counted for `seconds`, and
:meth:`Frames.report` makes one JSON line, ``{"rate": ..., "unit": ..., ...}``, the line
``bench_apps.py`` reads.
"""

from __future__ import annotations

import argparse
import json
import time


class Frames:
    """Counts frames for `seconds` after `warmup` seconds."""

    def __init__(self, seconds: float, warmup: float = 1.0) -> None:
        self.seconds = seconds
        self.warmup = warmup
        self.began: float | None = None
        self.start: float | None = None
        self.end: float | None = None
        self.count = 0

    @property
    def done(self) -> bool:
        """Whether the counting time is over."""
        return self.end is not None

    def tick(self, amount: int = 1) -> bool:
        """Count `amount` frames (or bytes) just drawn; False once the time is over."""
        now = time.monotonic()
        if self.began is None:
            self.began = now
        if self.start is None:
            if now - self.began >= self.warmup:
                self.start = now
            return True
        if self.end is None:
            self.count += amount
            if now - self.start >= self.seconds:
                self.end = now
        return self.end is None

    def report(self, unit: str = "fps", scale: float = 1.0) -> str:
        """The result line: the rate (count x `scale` per second) as JSON."""
        if self.start is None or self.end is None:
            raise SystemExit("the client ended before it drew for the time asked")
        elapsed = self.end - self.start
        rate = self.count * scale / elapsed
        result = {"rate": rate, "unit": unit, "count": self.count, "seconds": elapsed}
        return json.dumps(result)


def arguments(description: str) -> argparse.Namespace:
    """The options every client takes: ``--seconds`` and ``--warmup``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=float, default=5.0, help="counting time")
    parser.add_argument("--warmup", type=float, default=1.0, help="uncounted time first")
    return parser.parse_args()
