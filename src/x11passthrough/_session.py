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
import stat
import tempfile

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
        shutil.rmtree(path, ignore_errors=True)
        logger.info("removed %s, left behind by process %s", path, match["pid"])
        removed.append(path)
    return removed


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
