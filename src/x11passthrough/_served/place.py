"""
Where a served display lives on the host: its stable directory, lock, state and seats.

Strictly private.

A served display is named by the user (``devbox``), and everything a container needs is at a
path that follows from that name alone, so that it can be written once in ``compose.yaml`` or
``devcontainer.json``::

    $XDG_RUNTIME_DIR/x11passthrough-serve/devbox/       0700, the owner's
        lock            held (flock) by the serving process; a dead owner's is free again
        state.json      the display number M, kept from one serve to the next; the clients
        control         the serving process's control socket (mint, revoke)
        X11-unix/XM     0755 dir, 0666 socket: mounted (read-only) as /tmp/.X11-unix
        auth/Xauthority 0755 dir, 0644 file: mounted (read-only) as /tmp/.x11passthrough
        clients/<label>/X11-unix/XM, clients/<label>/auth/Xauthority: one container's own

Containers mount the two DIRECTORIES, not the files: a bind-mounted file keeps the inode it
was given when the container started, so a socket or authority file made again by a later
``serve`` would never be seen by a container that was started before (measured with Docker
Engine: a replaced socket under a file mount answers ECONNREFUSED until the container is
re-created; under a directory mount the next connection reaches the new one). The mounts are
read-only, so a container cannot replace the socket other containers connect to. The
directory is 0700: containers reach its contents only through their mounts (made by the
engine, or in a rootless engine's namespace by this user), exactly as for a ``run`` session
(see :mod:`x11passthrough._session`); the socket and authority directories inside it are
0755 and the authority file 0644 so that any container user can read it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile

from pathlib import Path, PurePosixPath

import attrs

from ..exceptions import ConfigurationError, Mention, ServeError


#: The directory mounted as the container's X socket directory.
CONTAINER_SOCKET_DIR = PurePosixPath("/tmp/.X11-unix")
#: The directory mounted for the container's authority file, and the file in it.
CONTAINER_AUTH_DIR = PurePosixPath("/tmp/.x11passthrough")
CONTAINER_XAUTHORITY = CONTAINER_AUTH_DIR / "Xauthority"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def check_name(value: object, *, what: str = "name") -> str:
    """
    Return `value` if it is a valid served-display name (or client label).

    Raises:
        ConfigurationError: It is not: 1-63 letters, digits, ``_ . -``, not starting with those.
    """
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise ConfigurationError(
            f"the {what} {value!r} is not valid: use 1 to 63 letters, digits, '_', '.' "
            "or '-', starting with a letter or digit (e.g. 'devbox')"
        )
    return value


def base_directory(host_dir: Path | None) -> Path:
    """
    Return the directory holding every served display of this user, creating it (0700).

    `host_dir` if given; else ``$XDG_RUNTIME_DIR/x11passthrough-serve``; else for root
    ``/run/x11passthrough-serve``; else ``/tmp/x11passthrough-serve-<uid>``.

    Raises:
        ServeError: It cannot be created, or exists and is not this user's private directory.
    """
    if host_dir is not None:
        base = Path(host_dir)
    else:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        if runtime and os.path.isdir(runtime):
            base = Path(runtime) / "x11passthrough-serve"
        elif os.geteuid() == 0 and os.path.isdir("/run"):
            base = Path("/run/x11passthrough-serve")
        else:
            base = Path(tempfile.gettempdir()) / f"x11passthrough-serve-{os.geteuid()}"
    private_directory(base, parents=host_dir is not None)
    return base


def private_directory(path: Path, *, parents: bool = False, mode: int = 0o700) -> None:
    """
    Create `path` with `mode` unless it exists; check it is this user's, not a link, not shared.

    Raises:
        ServeError: It cannot be created, or it is someone else's, a link, or open to others.
    """
    try:
        with contextlib.suppress(FileExistsError):
            if parents:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.mkdir(path, mode)
        info = os.lstat(path)
    except OSError as e:
        raise ServeError(
            f"cannot create {path}: {e.strerror or e}; pass ",
            Mention("host_dir"),
            " pointing to a writable directory",
            option="host_dir",
        ) from e
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise ServeError(
            f"{path} is not a directory of this user (uid {os.geteuid()}); remove it, or pass ",
            Mention("host_dir"),
            " pointing to a directory of your own",
            option="host_dir",
        )
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)


@attrs.frozen
class Seat:
    """The files of one seat: the shared one (`label` None) or one container's own."""

    label: str | None
    directory: Path
    number: int

    @property
    def socket_dir(self) -> Path:
        """The directory mounted as ``/tmp/.X11-unix``."""
        return self.directory / "X11-unix"

    @property
    def socket(self) -> Path:
        """The relay's socket for this seat."""
        return self.socket_dir / f"X{self.number}"

    @property
    def auth_dir(self) -> Path:
        """The directory mounted as ``/tmp/.x11passthrough``."""
        return self.directory / "auth"

    @property
    def xauthority(self) -> Path:
        """The seat's authority file."""
        return self.auth_dir / "Xauthority"


@attrs.frozen
class Place:
    """The stable directory of the served display `name`."""

    name: str
    directory: Path

    @classmethod
    def of(cls, name: str, host_dir: Path | None = None) -> Place:
        """
        Return the place of `name`, creating its private directory.

        Raises:
            ConfigurationError: `name` is not valid.
            ServeError: The directory cannot be created or is not this user's.
        """
        check_name(name)
        directory = base_directory(host_dir) / name
        private_directory(directory)
        return cls(name, directory)

    @property
    def control(self) -> Path:
        """The serving process's control socket."""
        return self.directory / "control"

    @property
    def lock_path(self) -> Path:
        """The lock the serving process holds."""
        return self.directory / "lock"

    @property
    def state_path(self) -> Path:
        """The state file (display number, client labels)."""
        return self.directory / "state.json"

    def seat(self, label: str | None, number: int) -> Seat:
        """Return the files of the shared seat (None) or of the client `label`."""
        if label is None:
            return Seat(None, self.directory, number)
        return Seat(label, self.directory / "clients" / check_name(label, what="label"), number)

    # -- state ------------------------------------------------------------------------------

    def read_state(self) -> dict[str, object]:
        """
        Return the saved state ({} when there is none).

        Raises:
            ServeError: The state file is unreadable or malformed.
        """
        try:
            text = self.state_path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise ServeError(f"cannot read {self.state_path}: {e.strerror or e}") from e
        try:
            state = json.loads(text)
            number = state.get("number")
            clients = state.get("clients", [])
            ok = isinstance(number, int) and isinstance(clients, list)
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise ServeError(
                f"{self.state_path} is not a state file of x11passthrough; remove it (the "
                f"served display {self.name!r} then gets a new display number)"
            )
        return dict(state)

    def write_state(self, state: dict[str, object]) -> None:
        """Replace the state file (written whole, then renamed over the old one; 0600)."""
        temporary = self.directory / f".state.{os.getpid()}.tmp"
        data = json.dumps(state, indent=1, sort_keys=True).encode() + b"\n"
        replace_file(temporary, self.state_path, data, mode=0o600)

    # -- the lock -------------------------------------------------------------------------------

    def lock(self) -> int:
        """
        Take the served display's lock for this process's life; return its descriptor.

        A lock of a process that died is free again (the kernel releases it), so a display
        left by a killed ``serve`` is taken over.

        Raises:
            ServeError: Another live process serves this name.
        """
        try:
            fd = os.open(
                self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
        except OSError as e:
            raise ServeError(f"cannot open {self.lock_path}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (process {int(os.pread(fd, 32, 0).split()[0])})"
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ServeError(f"cannot lock {self.lock_path}: {e.strerror or e}") from e
            raise ServeError(
                f"the served display {self.name!r} is already being served{holder}; stop that "
                f"one first (x11passthrough serve --name {self.name} --stop), or pick another "
                "name"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def holder(self) -> int | None:
        """Return the pid of the process serving this name, or None if none is."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    return int(os.pread(fd, 32, 0).split()[0])
                return -1
            return None
        finally:
            os.close(fd)


def replace_file(temporary: Path, path: Path, data: bytes, *, mode: int) -> None:
    """
    Write `data` to `temporary` (new, `mode`) and rename it over `path`: all or nothing.

    Raises:
        ServeError: It cannot be written; nothing is left behind.
    """
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(temporary, mode)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
    except OSError as e:
        raise ServeError(f"cannot write {path}: {e.strerror or e}") from e


def remove_tree(path: Path) -> None:
    """Remove `path` and everything below it (no error if it is gone)."""
    shutil.rmtree(path, ignore_errors=True)
