"""
Writing Xauthority files safely: libXau's lock protocol and atomic 0600 replacement.

Import :func:`xauthority_lock` from :mod:`x11passthrough.xauth`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import time

from collections.abc import Iterator

from ..exceptions import XauthorityError, XauthorityLockError


logger = logging.getLogger("x11passthrough")

#: Default lock options, the ones xauth(1) uses: 10 tries, 2 s apart, stale after 600 s.
LOCK_RETRIES = 10
LOCK_WAIT = 2.0
LOCK_DEAD = 600.0
#: How often a lock attempt may find its ``-c`` file removed under it before giving up.
_LOCK_ENOENT_LIMIT = 100
#: How many random temporary names an atomic write tries before giving up.
_TEMP_ATTEMPTS = 100


def path_text(path: str | os.PathLike[str]) -> str:
    """Return `path` as a str, or raise XauthorityError for bytes paths."""
    text = os.fspath(path)
    if not isinstance(text, str):
        raise XauthorityError(f"Xauthority paths must be str or PathLike[str], not {text!r}")
    return text


# Locking ---------------------------------------------------------------------------------


def _check_lock_options(path: str, retries: int, wait: float, dead: float) -> None:
    if not path or path.endswith("/"):
        raise XauthorityError(f"cannot lock Xauthority path {path!r}: it must name a file")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
        raise XauthorityError(f"lock_retries must be an int of at least 1, not {retries!r}")
    if not isinstance(wait, (int, float)) or wait < 0:
        raise XauthorityError(f"lock_wait must be a number of seconds >= 0, not {wait!r}")
    if not isinstance(dead, (int, float)) or dead < 0:
        raise XauthorityError(f"lock_dead must be a number of seconds >= 0, not {dead!r}")


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _break_stale_lock(creat_name: str, link_name: str, dead: float) -> None:
    try:
        status = os.stat(creat_name)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise XauthorityError(f"cannot check the lock file {creat_name}: {exc.strerror}") from exc
    age = time.time() - status.st_ctime
    if dead == 0 or age > dead:
        logger.warning(
            "breaking the Xauthority lock %s / %s (%.0f s old, limit %.0f s)",
            creat_name,
            link_name,
            age,
            dead,
        )
        try:
            _remove_quietly(creat_name)
            _remove_quietly(link_name)
        except OSError as exc:
            raise XauthorityError(
                f"cannot remove the stale lock files {creat_name} and {link_name}: "
                f"{exc.strerror}; remove them by hand"
            ) from exc


def _create_lock_file(path: str, creat_name: str) -> tuple[int, int] | None:
    """Create ``PATH-c`` exclusively; return its (device, inode), or None when it exists."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(creat_name, flags, 0o600)
    except FileExistsError:
        return None
    except OSError as exc:
        directory = os.path.dirname(creat_name) or "."
        raise XauthorityError(
            f"cannot lock the Xauthority file {path}: cannot create {creat_name} "
            f"({exc.strerror}); check that the directory {directory} exists and is writable"
        ) from exc
    try:
        status = os.fstat(fd)
    finally:
        os.close(fd)
    return status.st_dev, status.st_ino


def _link_lock(creat_name: str, link_name: str) -> bool | None:
    """Link ``PATH-c`` to ``PATH-l``: True when locked, False when held, None when -c vanished."""
    try:
        links_supported = os.pathconf(creat_name, "PC_LINK_MAX") != 1
    except (OSError, ValueError):
        links_supported = True
    try:
        if links_supported:
            os.link(creat_name, link_name)
        else:
            os.rename(creat_name, link_name)
    except FileNotFoundError:
        return None
    except FileExistsError:
        return False
    except OSError as exc:
        raise XauthorityError(
            f"cannot lock: linking {creat_name} to {link_name} failed ({exc.strerror})"
        ) from exc
    return True


def _remove_own(creat_name: str, identity: tuple[int, int] | None) -> None:
    """Remove ``PATH-c`` if it is still the file this process created."""
    if identity is None:
        return
    with contextlib.suppress(OSError):
        status = os.stat(creat_name, follow_symlinks=False)
        if (status.st_dev, status.st_ino) == identity:
            os.remove(creat_name)


def _acquire(path: str, retries: int, wait: float, dead: float) -> None:
    creat_name = path + "-c"
    link_name = path + "-l"
    _break_stale_lock(creat_name, link_name, dead)
    created: tuple[int, int] | None = None
    vanished = 0
    tries = retries
    try:
        while tries > 0:
            if created is None:
                created = _create_lock_file(path, creat_name)
            if created is not None:
                linked = _link_lock(creat_name, link_name)
                if linked:
                    return
                if linked is None:
                    created = None
                    vanished += 1
                    if vanished <= _LOCK_ENOENT_LIMIT:
                        continue
            tries -= 1
            if tries > 0:
                time.sleep(wait)
    except BaseException:
        _remove_own(creat_name, created)
        raise
    _remove_own(creat_name, created)
    raise XauthorityLockError(
        f"cannot lock the Xauthority file {path}: the lock files {creat_name} / {link_name} "
        f"are held by another process (tried {retries} times, {wait:g} s apart). If no xauth, "
        f"display manager or sshd is writing the file right now, the lock is stale: remove "
        f"both files (rm -f {creat_name} {link_name}), or wait {dead:g} s after it was taken "
        "for it to be broken automatically"
    )


def _release(path: str) -> None:
    for name in (path + "-c", path + "-l"):
        try:
            _remove_quietly(name)
        except OSError as exc:
            logger.warning(
                "cannot remove the Xauthority lock file %s (%s); remove it by hand, or "
                "other programs will wait for it",
                name,
                exc.strerror,
            )


@contextlib.contextmanager
def xauthority_lock(
    path: str | os.PathLike[str],
    *,
    retries: int = LOCK_RETRIES,
    wait: float = LOCK_WAIT,
    dead: float = LOCK_DEAD,
) -> Iterator[None]:
    """
    Hold libXau's lock on an Xauthority file, the one xauth, xdm and sshd's xauth honour.

    The protocol (``XauLockAuth``): when ``PATH-c`` exists and its ctime is more than
    ``dead`` seconds old, it and ``PATH-l`` are removed as stale; then ``PATH-c`` is created
    exclusively (mode 0600) and hard-linked to ``PATH-l``. The lock is held when the link
    succeeds. If another process holds it, wait ``wait`` seconds and try again, ``retries``
    times in all; if ``PATH-c`` vanishes between creating and linking, try again at once.
    Leaving the block removes both files. A failed attempt removes the ``PATH-c`` it created.
    The names come from the path as given; symlinks are not resolved.

    Args:
        path: The Xauthority file.
        retries: How many times to try.
        wait: Seconds between tries.
        dead: Age in seconds after which a lock is stale (0: break any lock).

    Yields:
        Nothing; the lock is held inside the ``with`` block.

    Raises:
        XauthorityError: When the lock files cannot be created (e.g. missing directory).
        XauthorityLockError: When the lock is still held by another process after the tries.
    """
    text = path_text(path)
    _check_lock_options(text, retries, wait, dead)
    _acquire(text, retries, wait, dead)
    logger.debug("locked Xauthority file %s", text)
    try:
        yield
    finally:
        _release(text)
        logger.debug("unlocked Xauthority file %s", text)


# Writing ---------------------------------------------------------------------------------


def _temp_name(base: str) -> str:
    """Return a fresh random name for the temporary file next to the file `base`."""
    return f"{base}.tmp-{secrets.token_hex(8)}"


def _open_temporary(path: str, directory: str, base: str) -> tuple[str, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_TEMP_ATTEMPTS):
        temporary = os.path.join(directory, _temp_name(base))
        try:
            return temporary, os.open(temporary, flags, 0o600)
        except FileExistsError:
            logger.warning(
                "temporary file name %s is already taken (by a file or symlink); trying "
                "another name",
                temporary,
            )
        except OSError as exc:
            raise XauthorityError(
                f"cannot write the Xauthority file {path}: cannot create a temporary file in "
                f"{directory} ({exc.strerror}); check that the directory exists and is writable"
            ) from exc
    raise XauthorityError(
        f"cannot write the Xauthority file {path}: {_TEMP_ATTEMPTS} random temporary names in "
        f"{directory} were all taken; some other program is creating files there"
    )


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        logger.debug("cannot open %s to fsync it: %s", directory, exc.strerror)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            logger.warning("fsync of directory %s failed: %s", directory, exc.strerror)
    finally:
        os.close(fd)


def write_atomically(path: str, payload: bytes) -> None:
    directory, base = os.path.split(path)
    directory = directory or "."
    if not base:
        raise XauthorityError(f"cannot write the Xauthority file {path!r}: it must name a file")
    temporary, fd = _open_temporary(path, directory, base)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(exc, OSError):
            raise XauthorityError(
                f"cannot write the Xauthority file {path}: {exc.strerror or exc}; the file was "
                "left unchanged"
            ) from exc
        raise
    _fsync_directory(directory)
