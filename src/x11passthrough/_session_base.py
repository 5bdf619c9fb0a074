"""
The session directory's base: held by descriptor, and checked before anything is made in it.

Layer 1 of :mod:`._session`'s design note: the base (``host_dir``, else
``$XDG_RUNTIME_DIR`` when it is safe, else the temporary directory) is opened once and held;
it and every directory above it must belong to root or this user and be writable by no one
else without the sticky bit. :class:`Directory` is a directory held by its descriptor, in
which names are made and opened with ``*at`` calls only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import stat
import tempfile

from pathlib import Path
from typing import BinaryIO

from .exceptions import ConfigurationError, Mention, X11PassthroughError


logger = logging.getLogger("x11passthrough")

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: How many random names a session directory tries when one is taken.
#: The option that names another base, in messages (``host_dir=...``, ``--host-dir ...``).
HOST_DIR = Mention("host_dir")
WRITABLE = ("pass ", HOST_DIR, " pointing to a writable directory")
ONLY_YOURS = ("pass ", HOST_DIR, " naming a directory only you can write")
ELSEWHERE = ("pass ", HOST_DIR, " pointing to another directory")


def cannot_create(path: Path, error: OSError) -> X11PassthroughError:
    """Return the error for a file of the session that cannot be made at `path`."""
    return X11PassthroughError(
        f"cannot create {path}: {error.strerror or error}", option="host_dir", hint=ELSEWHERE
    )


class Directory:
    """
    A directory held open: what is made in it is made relative to its descriptor.

    `path` is where it was when opened, for messages and for other processes
    (Docker's mounts); this process never looks it up again.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def open(cls, path: Path) -> Directory:
        """Open `path` (following symlinks: a base's own path may have some) and hold it."""
        return cls(path, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))

    def __repr__(self) -> str:
        return f"<Directory {self.path} fd={self.fd}>"

    def address(self, name: str) -> str:
        """
        Return a path to `name` in this directory that no rename can redirect.

        For system calls that take only a path (``bind()``, ``connect()``):
        ``/proc/self/fd/N/name``. It is at most 40 bytes, whatever the directory's depth.
        """
        if not os.path.isdir(f"/proc/self/fd/{self.fd}"):
            raise X11PassthroughError(
                f"cannot reach {self.path / name} through /proc/self/fd: /proc is not mounted "
                "here; mount it (mount -t proc proc /proc), or pass transport='tcp'"
            )
        return f"/proc/self/fd/{self.fd}/{name}"

    def mkdir(self, name: str, mode: int) -> Directory:
        """
        Make the directory `name` here with exactly `mode`, and hold it.

        Raises:
            X11PassthroughError: It cannot be made, or what was opened is not what was made.
        """
        path = self.path / name
        try:
            os.mkdir(name, 0o700, dir_fd=self.fd)
            fd = os.open(name, DIRECTORY_FLAGS, dir_fd=self.fd)
        except OSError as e:
            raise X11PassthroughError(f"cannot create {path}: {e.strerror or e}") from e
        try:
            check_made(fd, path)
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        return Directory(path, fd)

    def chmod(self, name: str, mode: int) -> None:
        """Set the mode of `name` here (a name only this user can have made: no symlink)."""
        os.chmod(name, mode, dir_fd=self.fd)

    def write_file(self, name: str, data: bytes, *, mode: int = 0o600) -> Path:
        """
        Create `name` here (it must not exist) holding `data`, with `mode`; return its path.

        Raises:
            X11PassthroughError: It cannot be written (e.g. the disk is full); no partial file
                is left behind.
        """
        path = self.path / name
        try:
            fd = os.open(name, NEW_FILE_FLAGS, 0o600, dir_fd=self.fd)
        except OSError as e:
            raise cannot_create(path, e) from e
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), mode)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self.fd)
            raise X11PassthroughError(
                f"cannot write {path}: {e.strerror or e}",
                option="host_dir",
                hint=(
                    "free some space there, or pass ",
                    HOST_DIR,
                    " pointing to another directory",
                ),
            ) from e
        return path

    def open_new(self, name: str) -> BinaryIO:
        """Create `name` here (0600, it must not exist) and return it open for writing."""
        try:
            fd = os.open(name, NEW_FILE_FLAGS, 0o600, dir_fd=self.fd)
        except OSError as e:
            raise X11PassthroughError(f"cannot create {self.path / name}: {e.strerror}") from e
        return os.fdopen(fd, "wb")

    def read_bytes(self, name: str) -> bytes:
        """Return the content of the file `name` here (no symlink is followed)."""
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def close(self) -> None:
        """Let go of the directory. Idempotent."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def check_made(fd: int, path: Path) -> None:
    """Check that `fd`, opened right after this user made `path`, is that directory."""
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise X11PassthroughError(
            f"{path} is not the private directory just made there (it belongs to uid "
            f"{info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}): another user can change "
            f"{path.parent}",
            option="host_dir",
            hint=ONLY_YOURS,
        )


def _who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _unsafe(info: os.stat_result) -> str | None:
    """Say why another user could rename entries of the directory `info` describes, or None."""
    euid = os.geteuid()
    if info.st_uid not in (0, euid):
        owner = "root" if euid == 0 else f"you ({_who(euid)}) or root"
        return f"belongs to {_who(info.st_uid)}, not to {owner}"
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        mode = stat.S_IMODE(info.st_mode)
        return f"is writable by other users (mode {mode:04o}) and has no sticky bit"
    return None


def _fix(path: Path, problem: str) -> tuple[str | Mention, ...]:
    if problem.startswith("belongs"):
        return (
            "use a directory of your own: pass ",
            HOST_DIR,
            " naming one (e.g. mkdir -m 0700 ~/.x11passthrough)",
        )
    return (
        f"make it private (chmod go-w {path}) or give it the sticky bit (chmod +t {path}), or "
        "pass ",
        HOST_DIR,
        " naming a directory only you can write",
    )


def _named(what: str, path: Path) -> tuple[str | Mention, ...]:
    """Name `path` in a message: ``host_dir=PATH`` for the option, else `what` and the path."""
    if what == "host_dir=":
        return (Mention("host_dir", path),)
    return (f"{what}{path}",)


def open_base(path: Path, *, what: str) -> Directory:
    """
    Open the base directory `path` and check that no other user can redirect names in it.

    Args:
        path: The base directory.
        what: What messages put before its path (``"host_dir="``, or ``""``).

    Raises:
        ConfigurationError: Another user could rename the session directory there, or what
            its path names (see the module's note); the message names the directory and the fix.
        X11PassthroughError: It cannot be opened (missing, not a directory).
    """
    try:
        base = Directory.open(path)
    except OSError as e:
        raise X11PassthroughError(
            f"cannot create a private directory in {path}: {e.strerror or e}",
            option="host_dir",
            hint=WRITABLE,
        ) from e
    try:
        base.path = _checked(base.fd, path, what)
    except OSError as e:
        base.close()
        raise X11PassthroughError(
            "cannot check ",
            *_named(what, path),
            f": {e.strerror or e}",
            option="host_dir",
            hint=ONLY_YOURS,
        ) from e
    except BaseException:
        base.close()
        raise
    return base


def _unsafe_base(
    what: str, path: Path, problem: str, fix: tuple[str | Mention, ...]
) -> ConfigurationError:
    return ConfigurationError(
        *_named(what, path), problem, option="host_dir", value=path, hint=fix
    )


def _checked(fd: int, path: Path, what: str) -> Path:
    """Check the base held as `fd` (opened as `path`) and the chain above it; return its path."""
    real = Path(os.path.realpath(path))
    held = os.fstat(fd)
    problem = _unsafe(held)
    if problem is not None:
        raise _unsafe_base(
            what,
            real,
            f" {problem}: another user could swap the session directory made there for a "
            "symlink, and so read its cookie",
            _fix(real, problem),
        )
    for parent in reversed(real.parents):
        info = os.stat(parent, follow_symlinks=False)
        problem = _unsafe(info) or (None if stat.S_ISDIR(info.st_mode) else "is not a directory")
        if problem is not None:
            raise _unsafe_base(
                what,
                real,
                f" lies in {parent}, which {problem}: another user could swap {real} for a "
                "symlink to a directory of theirs",
                _fix(parent, problem),
            )
    named = os.stat(real)
    if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
        raise ConfigurationError(
            *_named(what, path),
            " changed while it was checked: another user may be changing it",
            option="host_dir",
            value=path,
            hint=ONLY_YOURS,
        )
    return real


def default_base() -> Directory:
    """``$XDG_RUNTIME_DIR`` if it is safe (``sudo -E`` keeps another user's), else the temp dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        try:
            return open_base(Path(runtime), what="")
        except X11PassthroughError as e:
            logger.info("not using $XDG_RUNTIME_DIR: %s; using the temporary directory", e)
    return open_base(Path(tempfile.gettempdir()), what="the temporary directory ")
