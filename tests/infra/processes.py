"""
Processes of the tests: die with the test run, tell whether a pid lives, stop, wait.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time

from collections.abc import Callable
from pathlib import Path


def set_pdeathsig() -> None:  # pragma: no cover - runs in the child before exec
    """Make the child die with its parent, so a killed test run leaves no server behind."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def process_gone(pid: int) -> bool:
    """Return True when `pid` no longer runs (a zombie counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return status.rsplit(")", 1)[-1].split()[0] in {"Z", "X"}


def pid_alive(pid: int) -> bool:
    """Return True while `pid` runs."""
    return not process_gone(pid)


def wait_until(
    predicate: Callable[[], bool], what: str, *, timeout: float = 10.0, interval: float = 0.005
) -> None:
    """
    Poll `predicate` until it holds.

    Raises:
        AssertionError: It did not hold within `timeout` seconds; the message names `what`.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 10) -> None:
    """Terminate `process` and wait for it; kill it if it does not end within `timeout`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def signal_pid(pid: int, sig: int) -> None:
    """Send `sig` to `pid` if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def run_forked(function: Callable[[], str], *, uid: int | None = None) -> str:
    """
    Run `function` in a forked child, as `uid` if given; return the text it returned.

    For what must not touch the test process: process-wide limits, another user's rights. An
    exception in the child comes back as the text ``unexpected <repr>``.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read_end)
        try:
            if uid is not None:
                os.setgid(uid)
                os.setuid(uid)
            message = function()
        except BaseException as exc:
            message = f"unexpected {exc!r}"
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(pid, 0)
    return text


#: x86_64 system call numbers of the sleeps a process can be waiting in.
_SLEEP_SYSCALLS = {"35", "230"}  # nanosleep, clock_nanosleep


def sleeping(pid: int) -> bool:
    """Tell whether `pid` is blocked in nanosleep(2) or clock_nanosleep(2) right now."""
    try:
        call = Path(f"/proc/{pid}/syscall").read_text().split()[0]
    except (OSError, IndexError):
        return False
    return call in _SLEEP_SYSCALLS
