"""
Running the command a passthrough is lent to: signals passed on, statuses passed back.

One implementation for the command line (``run``, ``args``) and for anything
else that holds a passthrough open around a child process.

SIGTERM (and SIGHUP) mean what ``docker stop`` means: passed on, then, after a grace period
(``stop_timeout``), the child is stopped for good. A container whose process 1 has no handler
(``sleep``, many entrypoints) ignores the signal; without the grace period it would run on, and
a supervisor's later SIGKILL would orphan it and the session's files.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading

from collections.abc import Callable, Iterator, Sequence
from types import FrameType

from .exceptions import X11PassthroughError


logger = logging.getLogger("x11passthrough")

#: The signals passed on to the child (and that end a wait): termination, hang-up, interrupt.
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
#: The signals that start the grace period (Ctrl-C is a person, who can press it again).
STOPPING = (signal.SIGTERM, signal.SIGHUP)


class _Grace:
    """After a stopping signal, `stop` the child for good unless it ends within `seconds`."""

    def __init__(self, seconds: float | None, stop: Callable[[], object]) -> None:
        self._seconds = seconds
        self._stop = stop
        self._timer: threading.Timer | None = None
        self.signum: int | None = None
        self.expired = threading.Event()

    def started_by(self, signum: int) -> None:
        """Start the grace period if `signum` stops the child and none has started."""
        if self._seconds is None or signum not in STOPPING or self._timer is not None:
            return
        self.signum = signum
        self._timer = threading.Timer(self._seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        name = signal.Signals(self.signum or signal.SIGTERM).name
        logger.warning(
            "the command did not end within %g s of %s (a container's process 1 may have no "
            "handler; `docker run --init` adds one): stopping it for good",
            self._seconds,
            name,
        )
        self.expired.set()
        self._stop()

    def cancel(self) -> None:
        """End the grace period (the child has ended)."""
        if self._timer is not None:
            self._timer.cancel()

    def status(self, status: int) -> int:
        """Return `status`, or 128+N when the child was stopped for good after signal N."""
        return 128 + self.signum if self.expired.is_set() and self.signum else status


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
    stop_timeout: float | None = None,
    stop: Callable[[], bool] | None = None,
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
        stop_timeout: Seconds the child has, after SIGTERM or SIGHUP, to end before `stop`
            is called (and the status is 128+N for that signal); None: no limit.
        stop: Stops the child for good, e.g. its container; when it returns False (or is
            not given) the child gets SIGKILL.

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

    def kill() -> None:
        if stop is None or not stop():
            with contextlib.suppress(ProcessLookupError):
                child.kill()

    grace = _Grace(stop_timeout, kill)

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)
        grace.started_by(signum)
        if len(received) == 2 and on_repeat is not None and child.poll() is None:
            on_repeat()

    with _handlers(forward):
        try:
            returncode = child.wait()
        finally:
            grace.cancel()
    return grace.status(exit_status(returncode))


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


def run_detached(
    argv: Sequence[str], engine: Sequence[str], *, stop_timeout: float | None = None
) -> int:
    """
    Run a detached ``ENGINE run -d ...``, then hold on until its container exits.

    The engine prints the container's id and returns at once; the display must stay lent
    while the container runs, so this waits with ``ENGINE wait ID`` and returns the
    container's exit status. SIGTERM, SIGHUP and SIGINT are passed on to the container
    (``ENGINE kill --signal``), as ``docker run`` without ``-d`` passes them on.

    Args:
        argv: The whole command.
        engine: The words that run the engine (``docker``, ``sudo podman``, ...).
        stop_timeout: Seconds the container has, after SIGTERM or SIGHUP, to end before it
            is killed (``ENGINE kill``); None: no limit.

    Raises:
        X11PassthroughError: The engine cannot be started.
    """
    received: list[tuple[int, bool]] = []  # each signal, and whether it was passed on
    started: list[tuple[str, _Grace]] = []  # the container, once known, and its grace period

    def forward(signum: int, _frame: FrameType | None) -> None:
        # One handler throughout: a signal before the id is known is kept, then passed on.
        received.append((signum, bool(started)))
        if started:
            container, grace = started[0]
            _signal(engine, container, signum)
            grace.started_by(signum)

    with _handlers(forward):
        starter = _start(argv, stdout=subprocess.PIPE)
        output, _ = starter.communicate()
        sys.stdout.write(output)
        sys.stdout.flush()
        if starter.returncode != 0 or not output.strip():
            return exit_status(starter.returncode)
        container = output.strip().splitlines()[-1]
        grace = _Grace(stop_timeout, lambda: _signal(engine, container, signal.SIGKILL))
        waiter = _start([*engine, "wait", container], stdout=subprocess.PIPE)
        try:
            started.append((container, grace))
            for signum, passed_on in list(received):
                if not passed_on:
                    _signal(engine, container, signum)
                    grace.started_by(signum)
            sys.stderr.write(
                f"x11passthrough: holding the display until container {container[:12]} exits\n"
            )
            status, _ = waiter.communicate()
        finally:
            grace.cancel()
    try:
        return grace.status(int(status.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return grace.status(exit_status(waiter.returncode) or 1)


def _signal(engine: Sequence[str], container: str, signum: int) -> None:
    name = signal.Signals(signum).name.removeprefix("SIG")
    subprocess.run(
        [*engine, "kill", "--signal", name, container],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
