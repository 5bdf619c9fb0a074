"""
The session's files on the host: a private directory and the container's authority file.

Strictly private.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from pathlib import Path

from .exceptions import X11PassthroughError


def base_directory(host_dir: Path | None) -> Path | None:
    """Return where session directories go: `host_dir`, else ``$XDG_RUNTIME_DIR``, else None."""
    if host_dir is not None:
        return host_dir
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) if runtime and os.path.isdir(runtime) else None


def create_directory(host_dir: Path | None) -> Path:
    """
    Create the session's private directory (mode 0700).

    Raises:
        X11PassthroughError: It cannot be created; the message names the place and the option.
    """
    base = base_directory(host_dir)
    try:
        return Path(tempfile.mkdtemp(prefix="x11passthrough-", dir=base))
    except OSError as e:
        raise X11PassthroughError(
            f"cannot create a private directory in {base or tempfile.gettempdir()}: "
            f"{e.strerror or e}; pass host_dir=... pointing to a writable directory"
        ) from e


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
        raise X11PassthroughError(f"cannot create {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
    except OSError as e:
        path.unlink(missing_ok=True)
        raise X11PassthroughError(
            f"cannot write {path}: {e.strerror or e}; free some space there, or pass "
            "host_dir=... pointing to another directory"
        ) from e
