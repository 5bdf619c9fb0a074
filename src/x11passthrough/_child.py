"""
Running the command a passthrough is lent to: signals passed on, statuses passed back.

Strictly private. One implementation for the command line (``run``, ``args``) and for anything
else that holds a passthrough open around a child process.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading

from collections.abc import Iterator, Sequence
from types import FrameType

from .exceptions import X11PassthroughError


#: The signals passed on to the child (and that end a wait): termination, hang-up, interrupt.
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def exit_status(returncode: int) -> int:
    """Return a shell's exit status for a child's return code: 128+N after signal N."""
    return 128 - returncode if returncode < 0 else returncode


@contextlib.contextmanager
def _handlers(handler: signal.Handlers | object) -> Iterator[None]:
    previous = {sig: signal.signal(sig, handler) for sig in FORWARDED}  # type: ignore[arg-type]
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run(argv: Sequence[str], *, env: dict[str, str] | None = None) -> int:
    """
    Run `argv`, passing SIGTERM, SIGHUP and SIGINT on to it, and return its exit status.

    The status is the child's own, or 128+N when signal N ended it (130 for SIGINT, 143 for
    SIGTERM), as a shell reports it.

    Raises:
        X11PassthroughError: The program cannot be started (not on PATH, not executable).
    """
    try:
        child = subprocess.Popen(list(argv), env=env)
    except OSError as e:
        raise X11PassthroughError(
            f"cannot run {argv[0]!r}: {e.strerror or e}; is it installed and on PATH?"
        ) from None

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    with _handlers(forward):
        returncode = child.wait()
    return exit_status(returncode)


def wait_for_signal() -> int:
    """Block until SIGTERM, SIGHUP or SIGINT arrives; return the signal number."""
    received: list[int] = []
    done = threading.Event()

    def note(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        done.set()

    with _handlers(note):
        while not done.wait(3600):
            pass
    return received[0]
