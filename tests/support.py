"""
Test support: a private Xvfb with MIT-MAGIC-COOKIE-1 auth, and the CI skip policy.

Every test that needs an X server uses the ``xvfb`` fixtures (conftest.py), never the
developer's own display. Tests that need a tool this machine lacks call :func:`require`, which
skips on a user's machine but fails under ``CI=true``: CI must never skip them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time

from dataclasses import dataclass, field
from pathlib import Path

import pytest


IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
STATE_DIR = Path("/tmp/x11passthrough-tests")


def require(what: str, ok: bool, hint: str = "") -> None:
    """Skip the test when `ok` is false, or fail it in CI, where nothing may be skipped."""
    if ok:
        return
    message = f"needs {what}" + (f" ({hint})" if hint else "")
    if IN_CI:
        pytest.fail(f"CI must not skip: {message}", pytrace=False)
    pytest.skip(message)


def require_executables(*names: str) -> None:
    """Require every named program on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    require(", ".join(missing), not missing, "install them, e.g. with .ci/run's apt line")


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child before exec
    """Make the child die with its parent, so a killed test run leaves no X server behind."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        if _pid_alive(owner) and owner != os.getpid():
            continue
        if _pid_alive(server):
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

    def stop(self) -> None:
        """Stop the server and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.owner_record.unlink(missing_ok=True)


def start_xvfb(workdir: Path, *, tcp: bool = False, extra_args: tuple[str, ...] = ()) -> XServer:
    """
    Start Xvfb on a free display with a fresh MIT-MAGIC-COOKIE-1 and wait until it answers.

    The server picks its own free display number (``-displayfd``), which also handles stale
    lock files. The client authority file is written with the real ``xauth`` program, so the
    fixture does not depend on the code under test.
    """
    require_executables("Xvfb", "xauth")
    workdir.mkdir(parents=True, exist_ok=True)
    cookie = secrets.token_bytes(16)
    server_auth = workdir / "server.xauth"
    client_auth = workdir / "client.xauth"
    subprocess.run(
        ["xauth", "-f", str(server_auth), "add", ":0", ".", cookie.hex()],
        check=True,
        capture_output=True,
    )
    read_fd, write_fd = os.pipe()
    args = ["Xvfb", "-displayfd", str(write_fd), "-auth", str(server_auth)]
    # -noreset: keep access-control changes (xhost) when the last client disconnects.
    args += ["-screen", "0", "1024x768x24", "-noreset"]
    args += ["-listen", "tcp"] if tcp else ["-nolisten", "tcp"]
    args += list(extra_args)
    with (workdir / "xvfb.log").open("wb") as log:
        process = subprocess.Popen(
            args,
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=log,
            preexec_fn=_set_pdeathsig,  # noqa: PLW1509 - only prctl, safe before exec
        )
    os.close(write_fd)
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    owner_record = STATE_DIR / f"{process.pid}.owner"
    owner_record.write_text(str(os.getpid()))
    try:
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


def _wait_answers(server: XServer) -> None:
    deadline = time.monotonic() + 10
    while True:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(server.unix_path)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
                continue
        return
