"""
Private Xvfb servers with MIT-MAGIC-COOKIE-1 auth: every test's X server.

Tests never use the developer's own display. A server started here dies with the test process
(``PR_SET_PDEATHSIG``), and one left by a killed run is reaped at the next session's start.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import threading
import time

from dataclasses import dataclass, field
from pathlib import Path

from .ci import require_executables
from .processes import pid_alive, set_pdeathsig, stop_process, wait_until


STATE_DIR = Path("/tmp/x11passthrough-tests")


def reap_stale_servers() -> list[int]:
    """
    Kill X servers left behind by earlier test runs whose pytest process is gone.

    Each server started here is recorded as ``STATE_DIR/<server pid>.owner`` holding the pid of
    the test process that started it. Returns the pids that were killed.
    """
    killed: list[int] = []
    if not STATE_DIR.is_dir():
        return killed
    for record in STATE_DIR.glob("*.owner"):
        try:
            server = int(record.stem)
            owner = int(record.read_text().strip())
        except (OSError, ValueError):
            record.unlink(missing_ok=True)
            continue
        if pid_alive(owner) and owner != os.getpid():
            continue
        if pid_alive(server):
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGKILL)
            killed.append(server)
        record.unlink(missing_ok=True)
    return killed


def client_env(display: str, xauthority: Path | None, **extra: str) -> dict[str, str]:
    """Return this process's environment with DISPLAY and XAUTHORITY (if any) replaced."""
    env = {k: v for k, v in os.environ.items() if k not in {"DISPLAY", "XAUTHORITY"}}
    env["DISPLAY"] = display
    if xauthority is not None:
        env["XAUTHORITY"] = str(xauthority)
    env.update(extra)
    return env


@dataclass
class XServer:
    """A running private Xvfb."""

    number: int
    cookie: bytes
    xauthority: Path
    process: subprocess.Popen[bytes]
    tcp: bool
    workdir: Path
    owner_record: Path = field(repr=False)

    @property
    def display(self) -> str:
        """The display name clients use, ``:N``."""
        return f":{self.number}"

    @property
    def unix_path(self) -> str:
        """The filesystem socket of the server."""
        return f"/tmp/.X11-unix/X{self.number}"

    @property
    def tcp_port(self) -> int:
        """The server's TCP port (only listening when started with ``tcp=True``)."""
        return 6000 + self.number

    def env(self, **extra: str) -> dict[str, str]:
        """Return an environment for a client of this server (DISPLAY and XAUTHORITY set)."""
        return client_env(self.display, self.xauthority, **extra)

    def xhost(self, *args: str) -> None:
        """Run ``xhost`` against this server with its cookie."""
        subprocess.run(["xhost", *args], env=self.env(), check=True, capture_output=True)

    def authority_file(self, path: Path, cookie: bytes) -> Path:
        """Write, with ``xauth``, an authority file at `path` giving `cookie` for this server."""
        subprocess.run(
            ["xauth", "-f", str(path), "add", self.display, ".", cookie.hex()],
            check=True,
            capture_output=True,
        )
        return path

    def stop(self) -> None:
        """Stop the server and wait for it."""
        stop_process(self.process, timeout=5)
        self.owner_record.unlink(missing_ok=True)


def start_xvfb(
    workdir: Path,
    *,
    tcp: bool = False,
    extra_args: tuple[str, ...] = (),
    number: int | None = None,
    cookie: bytes | None = None,
    noreset: bool = True,
) -> XServer:
    """
    Start Xvfb on a free display with a fresh MIT-MAGIC-COOKIE-1 and wait until it answers.

    The server picks its own free display number (``-displayfd``), which also handles stale
    lock files, unless `number` is given (with `cookie`, a restart of a server on its number,
    as a display manager restarts one with the same cookie). ``-displayfd`` takes no lock
    file and judges a number by the sockets it listens on, so a server without UNIX sockets
    needs `number` (from :func:`infra.users.free_display`): it could otherwise pick the number
    of a running server.
    The client authority file is written with the real ``xauth`` program, so the fixture does
    not depend on the code under test. ``noreset=False`` starts it as ``xvfb-run`` does: it
    resets (and briefly refuses connections) whenever its last client leaves.
    """
    require_executables("Xvfb", "xauth")
    workdir.mkdir(parents=True, exist_ok=True)
    cookie = cookie or secrets.token_bytes(16)
    server_auth = workdir / "server.xauth"
    client_auth = workdir / "client.xauth"
    subprocess.run(
        ["xauth", "-f", str(server_auth), "add", ":0", ".", cookie.hex()],
        check=True,
        capture_output=True,
    )
    read_fd, write_fd = os.pipe()
    chosen = ["-displayfd", str(write_fd)] if number is None else [f":{number}"]
    args = ["Xvfb", *chosen, "-auth", str(server_auth)]
    # -noreset: keep access-control changes (xhost) when the last client disconnects.
    args += ["-screen", "0", "1024x768x24", *(["-noreset"] if noreset else [])]
    args += ["-listen", "tcp"] if tcp else ["-nolisten", "tcp"]
    args += list(extra_args)
    with (workdir / "xvfb.log").open("wb") as log:
        process = subprocess.Popen(
            args,
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=log,
            preexec_fn=set_pdeathsig,  # noqa: PLW1509 - only prctl, safe before exec
        )
    os.close(write_fd)
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    owner_record = STATE_DIR / f"{process.pid}.owner"
    owner_record.write_text(str(os.getpid()))
    try:
        if number is None:
            number = _read_display_number(read_fd, process, workdir)
        subprocess.run(
            ["xauth", "-f", str(client_auth), "add", f":{number}", ".", cookie.hex()],
            check=True,
            capture_output=True,
        )
        server = XServer(number, cookie, client_auth, process, tcp, workdir, owner_record)
        _wait_answers(server)
    except BaseException:
        process.kill()
        process.wait()
        owner_record.unlink(missing_ok=True)
        raise
    finally:
        os.close(read_fd)
    return server


def _read_display_number(fd: int, process: subprocess.Popen[bytes], workdir: Path) -> int:
    deadline = time.monotonic() + 20
    data = b""
    os.set_blocking(fd, False)
    while not data.endswith(b"\n"):
        if time.monotonic() > deadline or process.poll() is not None:
            log = (workdir / "xvfb.log").read_text(errors="replace")
            msg = f"Xvfb did not start: {log[-2000:]}"
            raise RuntimeError(msg)
        try:
            chunk = os.read(fd, 64)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        if not chunk:
            time.sleep(0.01)
        data += chunk
    return int(data.strip())


def _answers(server: XServer) -> bool:
    """Tell whether the server accepts on its UNIX socket, or on TCP when it listens there."""
    places: list[tuple[socket.AddressFamily, str | tuple[str, int]]] = [
        (socket.AF_UNIX, server.unix_path)
    ]
    if server.tcp:
        places.append((socket.AF_INET, ("127.0.0.1", server.tcp_port)))
    for family, address in places:
        with socket.socket(family) as s:
            try:
                s.connect(address)
            except OSError:
                continue
            return True
    return False


def _wait_answers(server: XServer) -> None:
    wait_until(lambda: _answers(server), f"Xvfb :{server.number} to accept", timeout=10)


class CountingForwarder:
    """
    A UNIX socket at ``directory/X<number>`` that forwards every connection to `server`.

    It counts the connections made through it, so a test can tell how many times a program
    connected to the X server. Use as a context manager.
    """

    def __init__(self, server: XServer, directory: Path) -> None:
        self._server = server
        self.path = directory / f"X{server.number}"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(64)
        self.accepted = 0
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self._server.unix_path)
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                self._threads.append(thread)
                thread.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop forwarding and join every thread."""
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join()
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> CountingForwarder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
