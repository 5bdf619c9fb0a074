"""
Running the command a passthrough is lent to: signals passed on, statuses passed back.

Strictly private. One implementation for the command line (``run``, ``args``) and for anything
else that holds a passthrough open around a child process.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading

from collections.abc import Callable, Iterator, Sequence
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


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    on_repeat: Callable[[], None] | None = None,
) -> int:
    """
    Run `argv`, passing SIGTERM, SIGHUP and SIGINT on to it, and return its exit status.

    The status is the child's own, or 128+N when signal N ended it (130 for SIGINT, 143 for
    SIGTERM), as a shell reports it.

    Args:
        argv: The command.
        env: Its environment (default: ours).
        on_repeat: Called once when a second signal arrives while the child still runs
            (e.g. to kill a container whose process 1 ignores signals).

    Raises:
        X11PassthroughError: The program cannot be started (not on PATH, not executable).
    """
    try:
        child = subprocess.Popen(list(argv), env=env)
    except OSError as e:
        raise X11PassthroughError(
            f"cannot run {argv[0]!r}: {e.strerror or e}; is it installed and on PATH?"
        ) from None
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)
        if len(received) == 2 and on_repeat is not None and child.poll() is None:
            on_repeat()

    with _handlers(forward):
        returncode = child.wait()
    return exit_status(returncode)


@contextlib.contextmanager
def caught_signals() -> Iterator[Callable[[], int]]:
    """
    Catch SIGTERM, SIGHUP and SIGINT from now on; yield a function that waits for one.

    A signal that arrives before the wait (while a passthrough starts, say) is kept, so the
    wait then returns at once, and the caller's cleanup always runs.
    """
    received: list[int] = []
    done = threading.Event()

    def note(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        done.set()

    def wait() -> int:
        while not done.wait(3600):
            pass
        return received[0]

    with _handlers(note):
        yield wait


def _start(argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
    try:
        return subprocess.Popen(list(argv), text=True, **kwargs)  # type: ignore[call-overload, no-any-return]
    except OSError as e:
        raise X11PassthroughError(
            f"cannot run {argv[0]!r}: {e.strerror or e}; is it installed and on PATH?"
        ) from None


def run_detached(argv: Sequence[str], engine: Sequence[str]) -> int:
    """
    Run a detached ``ENGINE run -d ...``, then hold on until its container exits.

    The engine prints the container's id and returns at once; the display must stay lent
    while the container runs, so this waits with ``ENGINE wait ID`` and returns the
    container's exit status. SIGTERM, SIGHUP and SIGINT are passed on to the container
    (``ENGINE kill --signal``), as ``docker run`` without ``-d`` passes them on.

    Args:
        argv: The whole command.
        engine: The words that run the engine (``docker``, ``sudo podman``, ...).

    Raises:
        X11PassthroughError: The engine cannot be started.
    """
    received: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    with _handlers(note):
        starter = _start(argv, stdout=subprocess.PIPE)
        output, _ = starter.communicate()
        sys.stdout.write(output)
        sys.stdout.flush()
        if starter.returncode != 0 or not output.strip():
            return exit_status(starter.returncode)
        container = output.strip().splitlines()[-1]
        for signum in received:
            _signal(engine, container, signum)
        sys.stderr.write(
            f"x11passthrough: holding the display until container {container[:12]} exits\n"
        )
        waiter = _start([*engine, "wait", container], stdout=subprocess.PIPE)

    def forward(signum: int, _frame: FrameType | None) -> None:
        _signal(engine, container, signum)

    with _handlers(forward):
        status, _ = waiter.communicate()
    try:
        return int(status.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return exit_status(waiter.returncode) or 1


def _signal(engine: Sequence[str], container: str, signum: int) -> None:
    name = signal.Signals(signum).name.removeprefix("SIG")
    subprocess.run(
        [*engine, "kill", "--signal", name, container],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
