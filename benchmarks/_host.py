"""What the benchmarks ask of this host: free display numbers, and processes in ``/proc``."""

from __future__ import annotations

import socket
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


def free_display(avoid: set[int], start: int = 20, stop: int = 200) -> int | None:
    """Return a display number whose socket, lock file and TCP port 6000+N are all free."""
    for number in range(start, stop):
        if number in avoid:
            continue
        if Path(f"/tmp/.X11-unix/X{number}").exists() or Path(f"/tmp/.X{number}-lock").exists():
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", 6000 + number))
            except OSError:
                continue
        return number
    return None
