"""
The session's files on the host: a private directory and the files the container mounts.

Strictly private.

A session directory is named ``x11passthrough-<pid>-<start time>-<random>``: the process that
made it, by pid and by the kernel's start time of that pid (so a reused pid is not mistaken
for the owner). A process killed by SIGKILL cannot remove its directory; the next start in the
same base directory removes every directory of this user whose owner process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import tempfile

from collections.abc import Iterator
from pathlib import Path

from .exceptions import X11PassthroughError


logger = logging.getLogger("x11passthrough")

PREFIX = "x11passthrough-"
_NAME = re.compile(rf"{re.escape(PREFIX)}(?P<pid>[0-9]+)-(?P<start>[0-9]+)-[0-9a-f]+")


def base_directory(host_dir: Path | None) -> Path:
    """Return where session directories go: `host_dir`, else ``$XDG_RUNTIME_DIR``, else /tmp."""
    if host_dir is not None:
        return host_dir
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime)
    return Path(tempfile.gettempdir())


def start_time(pid: int) -> int | None:
    """Return the kernel's start time of `pid` (clock ticks after boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])


def remove_stale(base: Path) -> list[Path]:
    """
    Remove the session directories in `base` whose owner process is gone.

    Only directories of this user are touched, and only those whose name says which process
    made them; a directory of a live process (or of a reused pid started later) is kept.

    Returns:
        The directories removed.
    """
    removed: list[Path] = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        match = _NAME.fullmatch(name)
        if match is None:
            continue
        path = base / name
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            continue
        if start_time(int(match["pid"])) == int(match["start"]):
            continue
        _stop_orphans(path)
        shutil.rmtree(path, ignore_errors=True)
        logger.info("removed %s, left behind by process %s", path, match["pid"])
        removed.append(path)
    return removed


#: A file in a session directory naming a process the session started: ``PID START``.
PID_FILE_SUFFIX = ".pid"


def record_process(directory: Path, name: str, pid: int) -> None:
    """Note in `directory` that the session started `pid` (so a later start can stop it)."""
    write_file(directory / f"{name}{PID_FILE_SUFFIX}", f"{pid} {start_time(pid)}\n".encode())


def _stop_orphans(directory: Path) -> None:
    """Terminate the live processes a dead session's pid files name (e.g. its Xvfb)."""
    for pid_file in directory.glob(f"*{PID_FILE_SUFFIX}"):
        try:
            pid_text, started = pid_file.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if started != "None" and start_time(pid) == int(started):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
                logger.info("stopped process %d, left running by a killed session", pid)


#: The longest path a UNIX socket address holds (``sun_path``, with its terminating NUL).
MAX_SOCKET_PATH = 107


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """
    Give a UNIX socket address for `path` that fits ``sun_path``, however deep `path` lies.

    A longer path is reached through its directory's descriptor (``/proc/self/fd/N/name``):
    the kernel resolves it like the path itself, so the socket is bound (or connected) at
    `path`.
    """
    text = str(path)
    if len(os.fsencode(text)) <= MAX_SOCKET_PATH:
        yield text
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def create_directory(host_dir: Path | None) -> Path:
    """
    Create the session's private directory (mode 0700), after removing stale ones.

    Raises:
        X11PassthroughError: It cannot be created; the message names the place and the option.
    """
    base = base_directory(host_dir)
    remove_stale(base)
    pid = os.getpid()
    name = f"{PREFIX}{pid}-{start_time(pid)}-{secrets.token_hex(4)}"
    path = base / name
    try:
        os.mkdir(path, 0o700)
    except OSError as e:
        raise X11PassthroughError(
            f"cannot create a private directory in {base}: {e.strerror or e}; pass "
            "host_dir=... pointing to a writable directory"
        ) from e
    return path


def remove_directory(directory: Path) -> None:
    """Remove the session directory and everything in it."""
    shutil.rmtree(directory, ignore_errors=True)


def write_file(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """
    Create `path` (which must not exist) holding `data`, with `mode`.

    Raises:
        X11PassthroughError: It cannot be written (e.g. the disk is full); no partial file
            is left behind.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except OSError as e:
        raise X11PassthroughError(
            f"cannot create {path}: {e.strerror or e}; pass host_dir=... pointing to another "
            "directory"
        ) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
    except OSError as e:
        with contextlib.suppress(OSError):
            path.unlink()
        raise X11PassthroughError(
            f"cannot write {path}: {e.strerror or e}; free some space there, or pass "
            "host_dir=... pointing to another directory"
        ) from e
