"""The ``x11passthrough`` command as the tests run it: this interpreter's ``-m x11passthrough``."""

from __future__ import annotations

import contextlib
import subprocess
import sys

from collections.abc import Iterator

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


@contextlib.contextmanager
def cli_process(
    *args: str, env: dict[str, str] | None = None, stderr: int = subprocess.PIPE
) -> Iterator[subprocess.Popen[str]]:
    """
    Start the command, its output on text pipes (`stderr` may be ``subprocess.DEVNULL``).

    At the end of the block it is killed if it still runs, waited for, and its pipes closed.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "x11passthrough", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(60)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def display_options(server: XServer) -> tuple[str, ...]:
    """``--display`` and ``--xauthority`` naming `server` and its authority file."""
    return ("--display", server.display, "--xauthority", str(server.xauthority))
