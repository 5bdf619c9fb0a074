"""
A private Xvfb with cookie authentication, for hosts without a display (CI, servers).

:class:`Xvfb` is re-exported by the package.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import shutil
import socket
import subprocess
import time
import warnings

from pathlib import Path
from types import TracebackType

from . import _session
from ._x11.handshake import handshake
from ._x11.wire import MIT_MAGIC_COOKIE_1, SetupStatus
from ._xauth.format import Family, XauthEntry, dump
from .exceptions import ConfigurationError, X11SetupError, XvfbError


logger = logging.getLogger("x11passthrough")

#: How long Xvfb may take to start and accept a first client.
DEFAULT_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 5.0
_DEPTHS = (8, 15, 16, 24, 30)


def _positive(name: str, value: object, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ConfigurationError(f"{name}={value!r} must be a whole number from 1 to {limit}")
    return value


class Xvfb:
    """
    A private Xvfb (X virtual framebuffer) with its own cookie, for as long as it is open.

    ::

        with Xvfb() as xvfb, X11Passthrough(xvfb.display, xvfb.xauthority) as args:
            subprocess.run(["docker", "run", "--rm", *args, image, "my-app"])

    The server picks a free display number itself (``-displayfd``), listens on its UNIX socket
    only (no TCP), and admits only clients with its cookie, which is written to an authority
    file in a private directory (0700) that :meth:`close` removes, after stopping the server.

    Args:
        width: Screen width in pixels.
        height: Screen height in pixels.
        depth: Colour depth (24 for TrueColor, which screenshots need).
        executable: The X server to run: a name found on ``PATH`` or a path.
        extra_args: More arguments for the server (e.g. ``("+extension", "GLX")``).
        start_timeout: Seconds the server may take to accept its first client.

    Raises:
        ConfigurationError: An option is out of range.
    """

    def __init__(
        self,
        *,
        width: int = 1280,
        height: int = 1024,
        depth: int = 24,
        executable: str = "Xvfb",
        extra_args: tuple[str, ...] = (),
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        self.width = _positive("width", width, 32767)
        self.height = _positive("height", height, 32767)
        if depth not in _DEPTHS:
            raise ConfigurationError(
                f"depth={depth!r} is not one of {', '.join(map(str, _DEPTHS))}"
            )
        self.depth = depth
        if not isinstance(executable, str) or not executable:
            raise ConfigurationError(f"executable={executable!r} must name the X server program")
        self.executable = executable
        if isinstance(extra_args, str) or not all(isinstance(a, str) for a in extra_args):
            raise ConfigurationError(f"extra_args={extra_args!r} must be a tuple of strings")
        self.extra_args = tuple(extra_args)
        if isinstance(start_timeout, bool) or not isinstance(start_timeout, (int, float)):
            raise ConfigurationError(f"start_timeout={start_timeout!r} must be seconds")
        if not start_timeout > 0:
            raise ConfigurationError(f"start_timeout={start_timeout!r} must be above 0")
        self.start_timeout = float(start_timeout)
        self._process: subprocess.Popen[bytes] | None = None
        self._session: _session.Session | None = None
        self._number: int | None = None
        self._cookie = b""

    def __repr__(self) -> str:
        state = f"display {self.display}" if self._number is not None else "not running"
        return f"<Xvfb {self.width}x{self.height}x{self.depth}, {state}>"

    @property
    def number(self) -> int:
        """The display number N (raises ``RuntimeError`` before :meth:`start`)."""
        if self._number is None:
            raise RuntimeError("the Xvfb is not running: call start() or use `with`")
        return self._number

    @property
    def display(self) -> str:
        """The display name, ``:N``."""
        return f":{self.number}"

    @property
    def xauthority(self) -> Path:
        """The authority file holding the server's cookie (for this host's clients)."""
        self.number  # noqa: B018 - raises before start
        assert self._session is not None  # noqa: S101 - set together with the number
        return self._session.path / "Xauthority"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def environ(self) -> dict[str, str]:
        """Return this process's environment with ``DISPLAY`` and ``XAUTHORITY`` for the server."""
        return {**os.environ, "DISPLAY": self.display, "XAUTHORITY": str(self.xauthority)}

    def start(self) -> Xvfb:
        """
        Start the server and wait until it accepts a client with its cookie.

        Raises:
            XvfbError: The program is missing, exited, or did not answer in time; nothing is
                left running.
        """
        if self._process is not None:
            return self
        program = shutil.which(self.executable)
        if program is None:
            raise XvfbError(
                f"cannot start a private X server: {self.executable!r} is not on PATH; "
                "install it (Debian, Ubuntu: apt-get install xvfb; Fedora: dnf install "
                "xorg-x11-server-Xvfb)"
            )
        session = _session.create_directory(None)
        self._session = session
        try:
            self._cookie = secrets.token_bytes(16)
            # The server loads every cookie in its file, whatever display number it names.
            entry = XauthEntry(Family.WILD, b"", 0, MIT_MAGIC_COOKIE_1, self._cookie)
            server_auth = session.write_file("server.xauth", dump([entry]))
            self._spawn(session, program, server_auth)
        except BaseException:
            self.close()
            raise
        logger.info("started Xvfb on %s (pid %d)", self.display, self.pid)
        return self

    def _spawn(self, session: _session.Session, program: str, server_auth: Path) -> None:
        read_fd, write_fd = os.pipe()
        argv = [program, "-displayfd", str(write_fd), "-auth", str(server_auth)]
        argv += ["-screen", "0", f"{self.width}x{self.height}x{self.depth}"]
        argv += ["-nolisten", "tcp", "-noreset", *self.extra_args]
        log = session.open_new("xvfb.log")
        try:
            self._process = subprocess.Popen(
                argv,
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        except OSError as e:
            raise XvfbError(f"cannot run {program}: {e.strerror or e}") from None
        finally:
            os.close(write_fd)
            log.close()
        session.record_process("xvfb", self._process.pid)
        deadline = time.monotonic() + self.start_timeout
        try:
            self._number = self._read_number(read_fd, deadline)
        finally:
            os.close(read_fd)
        client = [
            XauthEntry(Family.WILD, b"", self._number, MIT_MAGIC_COOKIE_1, self._cookie),
            XauthEntry(
                Family.LOCAL,
                socket.gethostname().encode(),
                self._number,
                MIT_MAGIC_COOKIE_1,
                self._cookie,
            ),
        ]
        session.write_file("Xauthority", dump(client))
        self._wait_ready(deadline)

    def _log_tail(self) -> str:
        assert self._session is not None  # noqa: S101
        try:
            text = self._session.read_bytes("xvfb.log").decode(errors="replace")
        except OSError:
            return ""
        lines = [line for line in text.splitlines() if line.strip()]
        return "; ".join(lines[-3:])

    def _failed(self, what: str) -> XvfbError:
        tail = self._log_tail()
        return XvfbError(f"{what}{': ' + tail if tail else ''}")

    def _read_number(self, fd: int, deadline: float) -> int:
        assert self._process is not None  # noqa: S101
        data = b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failed(f"Xvfb did not start within {self.start_timeout:g} s")
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.1))
            if ready:
                chunk = os.read(fd, 64)
                if not chunk:
                    code = self._process.wait()
                    raise self._failed(f"Xvfb exited with status {code}")
                data += chunk
            elif self._process.poll() is not None:
                raise self._failed(f"Xvfb exited with status {self._process.returncode}")
        try:
            return int(data)
        except ValueError:
            raise self._failed(f"Xvfb announced no display number ({data!r})") from None

    def _wait_ready(self, deadline: float) -> None:
        path = f"/tmp/.X11-unix/X{self._number}"
        while True:
            problem = self._try_setup(path)
            if problem is None:
                return
            assert self._process is not None  # noqa: S101
            if self._process.poll() is not None:
                raise self._failed(f"Xvfb exited with status {self._process.returncode}")
            if time.monotonic() > deadline:
                raise self._failed(
                    f"Xvfb on :{self._number} did not accept a client within "
                    f"{self.start_timeout:g} s ({problem})"
                )
            time.sleep(0.01)

    def _try_setup(self, path: str) -> str | None:
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(path)
                reply = handshake(sock, MIT_MAGIC_COOKIE_1, self._cookie, timeout=2.0)
            except (OSError, X11SetupError) as e:
                return str(e)
        if reply.status is not SetupStatus.SUCCESS:
            return reply.reason.strip() or "refused"
        return None

    def close(self) -> None:
        """Stop the server and remove its files. Safe to call more than once."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        session, self._session = self._session, None
        if session is not None:
            session.remove()
        self._number = None

    def __enter__(self) -> Xvfb:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_process", None) is not None:
            with contextlib.suppress(Exception):
                warnings.warn(
                    f"{self!r} was not closed; stopping it now (use `with` or close())",
                    ResourceWarning,
                    stacklevel=2,
                )
                self.close()
