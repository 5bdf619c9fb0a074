"""``x11passthrough serve`` as the tests run it: a real process, waited on by its ready line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading

from collections.abc import Iterator, Sequence
from pathlib import Path

from .processes import set_pdeathsig, stop_process
from .xvfb import XServer


#: Display numbers the tests' served displays use: apart from the library's default range,
#: so that passthroughs of other tests running on the machine do not take them.
TEST_RANGE = range(600, 700)


class Served:
    """A running ``x11passthrough serve`` process and what it printed."""

    def __init__(self, process: subprocess.Popen[str], name: str, host_dir: Path) -> None:
        self.process = process
        self.name = name
        self.host_dir = host_dir
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if "serving" in line:
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait for the ready line; fail with the output if the process ended instead."""
        assert self._ready.wait(timeout), f"serve did not start within {timeout} s"
        assert self.process.poll() is None, self.output()

    def output(self) -> str:
        """What the process printed (stdout and stderr) so far."""
        self._reader.join(timeout=5 if self.process.poll() is not None else 0)
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the process and return its exit status."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)
        try:
            return self.process.wait(timeout)
        finally:
            stop_process(self.process)  # type: ignore[arg-type]
            self._reader.join(timeout=10)
            if self.process.stdout is not None:
                self.process.stdout.close()


def serve_argv(
    name: str, host_dir: Path, server: XServer, *extra: str, python: str = sys.executable
) -> list[str]:
    """The command line of ``serve --name NAME`` for `server`."""
    return [
        python,
        "-m",
        "x11passthrough",
        "serve",
        "--name",
        name,
        "--host-dir",
        str(host_dir),
        "--display",
        server.display,
        "--xauthority",
        str(server.xauthority),
        *extra,
    ]


@contextlib.contextmanager
def serving(
    name: str,
    host_dir: Path,
    server: XServer,
    *extra: str,
    argv: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Served]:
    """Run ``serve`` until the block ends (SIGTERM, then SIGKILL if it must)."""
    process = subprocess.Popen(
        list(argv) if argv is not None else serve_argv(name, host_dir, server, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=set_pdeathsig,  # noqa: PLW1509 - only prctl, safe before exec
    )
    served = Served(process, name, host_dir)
    try:
        yield served
    finally:
        served.stop()
