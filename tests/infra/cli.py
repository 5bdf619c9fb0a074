"""The ``x11passthrough`` command as the tests run it: this interpreter's ``-m x11passthrough``."""

from __future__ import annotations

import subprocess
import sys

from .xvfb import XServer


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the command to its end, output captured as text; never raises on its status."""
    return subprocess.run(
        [sys.executable, "-m", "x11passthrough", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=timeout,
    )


def display_options(server: XServer) -> tuple[str, ...]:
    """``--display`` and ``--xauthority`` naming `server` and its authority file."""
    return ("--display", server.display, "--xauthority", str(server.xauthority))
