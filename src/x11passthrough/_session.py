"""
The session's files on the host: a private directory and the files the container mounts.

Design note: no path lookup after the checks can be redirected.

The threat: root writes a session's authority file and binds its relay socket in a directory
under a base that another user can write (``host_dir``, or the invoking user's
``$XDG_RUNTIME_DIR`` that ``sudo -E`` keeps). That user renames the fresh session directory and
puts a symlink to a directory of theirs in its place; every later lookup by path (the socket's
``bind()``, the authority file's ``open()``, Docker's bind mount) then lands in their directory,
and the cookie there opens the relay. An inotify watcher as the second local user
(``tests/infra/swapper.py``) stole the cookie and opened the relay in 113 of 160 starts with
the path-based code this module replaced; with this one, in none (the base is refused). With
the base check bypassed it still got nothing: of 20 swaps, 9 to 13 (a symlink) or 14 to 15
(a directory of theirs) landed between ``mkdirat`` and ``openat`` and were refused, and the
others came after and redirected nothing.

Two layers stop it (the first, and :class:`Directory`, in :mod:`._session_base`):

1. **The base must be safe, and this is checked where it is used.** The base directory is
   opened once and held (a descriptor); its owner and mode are read from that descriptor. It
   and every directory above it must belong to root or to the effective user, and none may be
   writable by group or others without the sticky bit (with it, as on ``/tmp``, others may add
   names but not rename ours). The real path is then confirmed to name the held directory. In
   such a chain only root and this user can change what the path names, so the path in
   :class:`~x11passthrough.DockerRunArgs` stays right for the session's life: Docker resolves
   it by path, later, in another process (so does a private Xvfb its ``-auth`` file). The
   rule is OpenSSH's ``StrictModes`` for ``authorized_keys``, with the sticky bit allowed.
   A named-user ACL entry shows in the group bits, so it is refused too. A default base that
   fails (``$XDG_RUNTIME_DIR`` of another user) is skipped for the temporary directory; a
   ``host_dir`` that fails is refused with a
   :class:`~x11passthrough.exceptions.ConfigurationError` naming it and the fix.
2. **Inside the base nothing is looked up by path again.** The session directory is made with
   ``mkdirat`` on the base's descriptor and opened with ``O_NOFOLLOW``; its owner and mode are
   checked on that descriptor (a symlink fails to open, another user's directory fails the
   owner check). Files are made with ``openat(O_CREAT | O_EXCL | O_NOFOLLOW)`` and their mode
   set with ``fchmod``. ``bind()`` takes a path, so the socket is bound at
   ``/proc/self/fd/N/XM``, N being the descriptor of its directory: the kernel resolves
   ``/proc/self/fd/N`` to the open directory itself (a "magic link", not a walk of its old
   path), so no rename anywhere above redirects it. That address is short, too (a UNIX address
   holds 107 bytes; a deep ``host_dir`` does not matter). ``fchdir`` would do the same but
   changes the working directory of every thread of the embedding program, so it is not used.
   Removal walks down descriptors as well and removes the session's name in the base only
   while that name is still the session's directory.

Either layer alone keeps the cookie from the swap above; only the first also keeps Docker's
later lookup right, and the second keeps this process's own lookups right should the first be
wrong (a file system whose modes do not tell who may write). The binding needs ``/proc``; where
it is not mounted the start fails with a message that says so.

Liveness, for the cleanup of dead sessions: a session directory holds a ``lock`` file that its
owner keeps locked (``flock``) for the session's life. The kernel drops the lock when the owner
dies, however it dies, and the lock is seen from every PID namespace that sees the file; pids
are not (a passthrough in another PID namespace has pids that mean nothing here, and was
removed as dead while it ran). ``flock``, not ``fcntl`` record locks: those belong to the
process, so a test by the same process always succeeds, and closing any descriptor of the file
drops them; an ``flock`` belongs to the open file, so a second open conflicts even in the same
process. The descriptor is close-on-exec: an Xvfb the session starts does not inherit it (a
child forked without exec does, and keeps the session alive while it runs, erring on the safe
side). A start removes every directory of this user in its base whose lock it can take, and
holds that lock while it removes it, so two starts never remove one directory at once. (On
NFS, ``flock`` is emulated with record locks; keep the base on a local file system.)
The lock file is locked under another name and then renamed to ``lock``: seen unlocked
for a moment, it made parallel starts (pytest-xdist workers) remove each other's new directory.
A directory without a lock file (being made; made by a process killed before it took its lock;
made by an older version) is removed only when it is older than a minute and its name's pid
and start time (``x11passthrough-<pid>-<start time>-<random>``) name no live process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import signal
import time

from collections.abc import Iterator
from pathlib import Path

from ._session_base import (
    DIRECTORY_FLAGS,
    ELSEWHERE,
    HOST_DIR,
    NEW_FILE_FLAGS,
    ONLY_YOURS,
    WRITABLE,
    Directory,
    cannot_create,
    check_made,
    default_base,
    open_base,
)
from .exceptions import X11PassthroughError


logger = logging.getLogger("x11passthrough")

PREFIX = "x11passthrough-"
_NAME = re.compile(rf"{re.escape(PREFIX)}(?P<pid>[0-9]+)-(?P<start>[0-9]+)-[0-9a-f]+")

#: The file whose ``flock`` the owner holds for the session's life.
LOCK_NAME = "lock"
#: Its name until it is locked.
_NEW_LOCK_NAME = "lock.new"
#: How old a session directory without a lock file must be before its pid is asked.
LOCKLESS_GRACE = 60.0

_NAME_ATTEMPTS = 16


def start_time(pid: int) -> int | None:
    """Return the kernel's start time of `pid` (clock ticks after boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])


def pid_namespace() -> str | None:
    """Return this process's PID namespace (``pid:[4026531836]``), or None if unknown."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


# -- directories held by descriptor -------------------------------------------------------------


class Session(Directory):
    """
    A session directory: private (0700), held, and locked for as long as it exists.

    Made by :func:`create_directory`; :meth:`remove` removes it.
    """

    def __init__(self, path: Path, fd: int, *, base: Directory, lock: int) -> None:
        super().__init__(path, fd)
        self.base = base
        self._lock = lock
        self._children: list[Directory] = []

    @classmethod
    def create_in(cls, base: Directory) -> Session:
        """
        Make a session directory in `base` (already checked) and take its lock.

        The session holds a descriptor of `base` of its own, to remove its name there.

        Raises:
            X11PassthroughError: It cannot be made; the message names the place and the option.
        """
        pid = os.getpid()
        for _ in range(_NAME_ATTEMPTS):
            name = f"{PREFIX}{pid}-{start_time(pid)}-{secrets.token_hex(4)}"
            try:
                os.mkdir(name, 0o700, dir_fd=base.fd)
                break
            except FileExistsError:
                continue
            except OSError as e:
                raise X11PassthroughError(
                    f"cannot create a private directory in {base.path}: {e.strerror or e}",
                    option="host_dir",
                    hint=WRITABLE,
                ) from e
        else:
            raise X11PassthroughError(
                f"cannot create a private directory in {base.path}: {_NAME_ATTEMPTS} random "
                "names were all taken",
                option="host_dir",
                hint=ELSEWHERE,
            )
        path = base.path / name
        try:
            fd = os.open(name, DIRECTORY_FLAGS, dir_fd=base.fd)
        except OSError as e:
            raise X11PassthroughError(
                f"{path} is not the private directory just made there ({e.strerror}): another "
                f"user can change {base.path}",
                option="host_dir",
                hint=ONLY_YOURS,
            ) from e
        try:
            check_made(fd, path)
        except BaseException:
            os.close(fd)  # not ours: touch nothing in it
            raise
        try:
            os.fchmod(fd, 0o700)
            lock = _take_lock(fd, path)
        except BaseException:
            with contextlib.suppress(OSError):
                _clear(fd)
                _remove_name(base.fd, name, os.fstat(fd))
            os.close(fd)
            raise
        return cls(path, fd, base=Directory(base.path, os.dup(base.fd)), lock=lock)

    def mkdir(self, name: str, mode: int) -> Directory:
        child = super().mkdir(name, mode)
        self._children.append(child)
        return child

    def record_process(self, name: str, pid: int) -> None:
        """Note that the session started `pid` (so a later start can stop it if we die)."""
        line = f"{pid} {start_time(pid)} {pid_namespace()}\n"
        self.write_file(f"{name}{PID_FILE_SUFFIX}", line.encode())

    def remove(self) -> None:
        """Remove the directory and everything in it, then let go of it. Idempotent; no raise."""
        if self.fd < 0:
            return
        try:
            _clear(self.fd)
            _remove_name(self.base.fd, self.path.name, os.fstat(self.fd))
        except OSError as e:
            logger.warning("cannot remove %s: %s", self.path, e.strerror or e)
        finally:
            for child in self._children:
                child.close()
            self.close()
            os.close(self._lock)
            self.base.close()


def _take_lock(fd: int, path: Path) -> int:
    """
    Create the session's lock file, locked before it has its name (see the module's note).

    A lock file that is there unlocked, even for a moment, is a dead session's to a cleanup
    in another process, which would remove the directory being made.
    """
    try:
        lock = os.open(_NEW_LOCK_NAME, NEW_FILE_FLAGS, 0o600, dir_fd=fd)
    except OSError as e:
        raise cannot_create(path / LOCK_NAME, e) from e
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(_NEW_LOCK_NAME, LOCK_NAME, src_dir_fd=fd, dst_dir_fd=fd)
    except OSError as e:
        os.close(lock)
        raise X11PassthroughError(
            f"cannot lock {path / LOCK_NAME}: {e.strerror or e}; the file system of "
            f"{path.parent} may not support locks: pass ",
            HOST_DIR,
            " on a local one",
            option="host_dir",
        ) from e
    return lock


def _clear(fd: int) -> None:
    """Remove everything in the directory `fd`, through descriptors (no symlink is followed)."""
    for name in os.listdir(fd):
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            continue
        except IsADirectoryError:
            try:
                child = os.open(name, DIRECTORY_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                continue
            try:
                _clear(child)
            finally:
                os.close(child)
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(name, dir_fd=fd)


def _remove_name(base_fd: int, name: str, info: os.stat_result) -> None:
    """Remove `name` from the base if it is still the directory `info` describes."""
    try:
        now = os.stat(name, dir_fd=base_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(name, dir_fd=base_fd)


# -- the base directory -------------------------------------------------------------------------


def create_directory(host_dir: Path | None) -> Session:
    """
    Create the session's private directory (mode 0700), after removing those of dead sessions.

    The base is `host_dir`, else ``$XDG_RUNTIME_DIR`` (when it is safe), else the system
    temporary directory.

    Raises:
        ConfigurationError: Another user can change names in the base (see the module's note).
        X11PassthroughError: It cannot be created; the message names the place and the option.
    """
    base = default_base() if host_dir is None else open_base(host_dir, what="host_dir=")
    try:
        remove_stale(base)
        return Session.create_in(base)
    finally:
        base.close()


# -- the cleanup of dead sessions ---------------------------------------------------------------


#: A file in a session directory naming a process the session started:
#: ``PID START PIDNAMESPACE``.
PID_FILE_SUFFIX = ".pid"


def remove_stale(base: Directory) -> list[Path]:
    """
    Remove the session directories in `base` whose owner is gone (its lock can be taken).

    Only directories of this user are touched; processes they recorded (a private Xvfb) and
    that still run in this PID namespace are stopped.

    Returns:
        The directories removed.
    """
    removed: list[Path] = []
    try:
        names = os.listdir(base.fd)
    except OSError:
        return removed
    for name in names:
        match = _NAME.fullmatch(name)
        if match is None:
            continue
        try:
            fd = os.open(name, DIRECTORY_FLAGS, dir_fd=base.fd)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if info.st_uid != os.geteuid():
                continue
            lock = _lock_if_dead(fd, info, match)
            if lock is None:
                continue
            try:
                _stop_orphans(fd)
                _clear(fd)
                _remove_name(base.fd, name, info)
            except OSError as e:
                logger.warning("cannot remove %s: %s", base.path / name, e.strerror or e)
                continue
            finally:
                if lock >= 0:
                    os.close(lock)
        finally:
            os.close(fd)
        logger.info("removed %s, left behind by a process that is gone", base.path / name)
        removed.append(base.path / name)
    return removed


def _lock_if_dead(fd: int, info: os.stat_result, match: re.Match[str]) -> int | None:
    """Return None if the session directory `fd` is alive; else its lock, held (-1: none)."""
    try:
        lock = os.open(LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except FileNotFoundError:
        # Being made right now, made by a process killed before it took its lock, or made by
        # an older version: only the last two are old, and only their pid can tell.
        if time.time() - info.st_mtime < LOCKLESS_GRACE:
            return None
        return None if start_time(int(match["pid"])) == int(match["start"]) else -1
    except OSError:
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock)
        return None
    return lock


def _stop_orphans(fd: int) -> None:
    """Terminate the live processes a dead session's pid files name (e.g. its Xvfb)."""
    here = pid_namespace()
    for name in os.listdir(fd):
        if not name.endswith(PID_FILE_SUFFIX):
            continue
        try:
            opened = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            with os.fdopen(opened) as f:
                fields = f.read().split()
            pid, started = int(fields[0]), fields[1]
        except (OSError, ValueError, IndexError):
            continue
        if len(fields) > 2 and fields[2] != str(here):
            # Its pid means another process here; that namespace's init takes its own down.
            logger.debug("not stopping process %d of another PID namespace", pid)
            continue
        if started != "None" and start_time(pid) == int(started):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
                logger.info("stopped process %d, left running by a killed session", pid)


# -- socket addresses ---------------------------------------------------------------------------


#: The longest path a UNIX socket address holds (``sun_path``, with its terminating NUL).
MAX_SOCKET_PATH = 107


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """
    Give a UNIX socket address for `path` that fits ``sun_path``, however deep `path` lies.

    A longer path is reached through its directory's descriptor (``/proc/self/fd/N/name``):
    the kernel resolves it like the path itself, so the socket is connected at `path`.
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
