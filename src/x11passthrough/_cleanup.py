"""
Cleanup that never raises: each step runs, failures are logged and the next step still runs.

Leaving a passthrough must not raise (the X server may be gone, a file
removed by hand) and must never replace the exception that ended the ``with`` body.
"""

from __future__ import annotations

import logging

from collections.abc import Callable


logger = logging.getLogger("x11passthrough")


class Cleanup:
    """Steps to undo, run last-added first by :meth:`close`."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def add(self, what: str, step: Callable[[], object]) -> None:
        """Register `step`, described as `what` in the log if it fails."""
        self._steps.append((what, step))

    def close(self) -> None:
        """Run every step once, newest first; log (never raise) what fails."""
        steps, self._steps = self._steps, []
        for what, step in reversed(steps):
            try:
                step()
            except Exception:
                logger.warning("cleanup: %s failed", what, exc_info=True)
