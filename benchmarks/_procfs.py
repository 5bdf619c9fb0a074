"""What the benchmarks read of a forwarding process in ``/proc``."""

from __future__ import annotations

import time

from pathlib import Path


def wait_for_reaped_children(pid: int, timeout: float = 2.0) -> None:
    """Wait (up to `timeout` seconds) until process `pid` has no children left (socat's forks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return
        if not children:
            return
        time.sleep(0.02)
