"""
A real sshd on a loopback port with X11 forwarding, and ssh sessions that hold a forwarded
display open (what ``ssh -X``/``-Y`` users have).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .ci import E2ESetupError, run_checked
from .network import free_port
from .processes import set_pdeathsig, stop_process
from .xvfb import XServer, client_env


SSHD = Path("/usr/sbin/sshd")


@dataclass(frozen=True)
class ForwardedDisplay:
    """A display that an ``ssh -X``/``-Y`` session forwards, as the remote side sees it."""

    display: str  # e.g. "localhost:10.0"
    xauthority: Path  # the file sshd's xauth wrote the (fake) cookie into
    ssh_pid: int

    @property
    def number(self) -> int:
        """The display number N (the forwarding listens on TCP 6000+N)."""
        return int(self.display.rsplit(":", 1)[1].split(".")[0])

    @property
    def tcp_port(self) -> int:
        """The TCP port sshd listens on for this display."""
        return 6000 + self.number

    def env(self, **extra: str) -> dict[str, str]:
        """Return an environment for an X client of the forwarded display."""
        return client_env(self.display, self.xauthority, **extra)


@dataclass
class Sshd:
    """
    A private sshd on a loopback port that forwards X11 (``X11UseLocalhost yes``).

    sshd writes each session's fake cookie with ``xauth`` into the file named by the session's
    XAUTHORITY, which the client sends (``SetEnv``, accepted by ``AcceptEnv XAUTHORITY``), so
    no session touches the login user's ``~/.Xauthority``. ``PermitUserRC no`` keeps
    ``~/.ssh/rc`` out of the way; a system-wide ``/etc/ssh/sshrc`` would replace the xauth step,
    so :func:`start_sshd` refuses to run when one exists.
    """

    port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    user: str
    _sessions: int = 0

    @property
    def client_key(self) -> Path:
        """The private key the ssh client logs in with."""
        return self.workdir / "client_key"

    def ssh_argv(
        self, xserver: XServer | None, *, trusted: bool = True, xauthority: Path | None = None
    ) -> list[str]:
        """
        Return an ssh command line for this server (append the remote command).

        Args:
            xserver: The local display to forward (None: no X11 forwarding).
            trusted: ``-Y`` (trusted) or ``-X`` (untrusted, through the SECURITY extension).
            xauthority: Where the remote side's xauth writes the fake cookie.

        Returns:
            The argument list, without the remote command.
        """
        argv = ["ssh", "-F", "/dev/null", "-T", "-p", str(self.port), "-i", str(self.client_key)]
        for option in (
            "IdentitiesOnly=yes",
            "BatchMode=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "GlobalKnownHostsFile=/dev/null",
            "LogLevel=ERROR",
            "ExitOnForwardFailure=yes",
        ):
            argv += ["-o", option]
        if xserver is not None:
            argv.append("-Y" if trusted else "-X")
        if xauthority is not None:
            argv += ["-o", f"SetEnv=XAUTHORITY={xauthority}"]
        argv.append(f"{self.user}@127.0.0.1")
        return argv

    def _next_xauthority(self) -> Path:
        self._sessions += 1
        return self.workdir / f"session-{self._sessions}.xauth"

    def run(
        self, xserver: XServer, command: str, *, trusted: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """
        Run a remote shell command in an X11-forwarding ssh session and wait for it.

        Args:
            xserver: The local display to forward.
            command: The remote command (a shell command line).
            trusted: ``ssh -Y`` when True, ``ssh -X`` when False.
            timeout: Seconds before the session is killed (raises ``TimeoutExpired``).

        Returns:
            The finished ssh client process with text output.
        """
        argv = self.ssh_argv(xserver, trusted=trusted, xauthority=self._next_xauthority())
        return subprocess.run(
            [*argv, command],
            env=xserver.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    @contextlib.contextmanager
    def ssh_session(self, xserver: XServer, *, trusted: bool = True) -> Iterator[ForwardedDisplay]:
        """
        Hold an X11-forwarding ssh session open and yield its forwarded display.

        The remote command prints DISPLAY and XAUTHORITY and then waits for its input to
        close, which ends the session when the block exits.

        Args:
            xserver: The local display the session forwards (the ssh client uses its env).
            trusted: ``ssh -Y`` when True, ``ssh -X`` when False.

        Yields:
            The forwarded display (``localhost:N.0``) and the file with its fake cookie.

        Raises:
            E2ESetupError: The session did not report a forwarded display.
        """
        xauthority = self._next_xauthority()
        remote = 'echo "DISPLAY=$DISPLAY"; echo "XAUTHORITY=$XAUTHORITY"; exec cat >/dev/null'
        argv = [*self.ssh_argv(xserver, trusted=trusted, xauthority=xauthority), remote]
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(
                argv,
                env=xserver.env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                preexec_fn=set_pdeathsig,  # noqa: PLW1509 - only prctl, safe before exec
            )
            try:
                reported = _read_reported(process, ("DISPLAY", "XAUTHORITY"), timeout=30)
                if not reported.get("DISPLAY"):
                    errors.seek(0)
                    text = errors.read().decode(errors="replace").strip()
                    msg = f"ssh reported no forwarded DISPLAY ({reported}); ssh said: {text}"
                    raise E2ESetupError(msg)
                yield ForwardedDisplay(
                    reported["DISPLAY"], Path(reported["XAUTHORITY"]), process.pid
                )
            finally:
                _end_session(process)

    def stop(self) -> None:
        """Stop sshd and remove its files."""
        stop_process(self.process)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _read_reported(
    process: subprocess.Popen[bytes], names: Sequence[str], *, timeout: float
) -> dict[str, str]:
    """Read ``NAME=value`` lines from the process's stdout until all `names` were seen."""
    assert process.stdout is not None
    reported: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    fd = process.stdout.fileno()
    os.set_blocking(fd, False)
    buffer = b""
    while not all(n in reported for n in names) and time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            if process.poll() is not None:
                break
            time.sleep(0.01)
            continue
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            key, sep, value = line.decode(errors="replace").partition("=")
            if sep:
                reported[key] = value
    return reported


def _end_session(process: subprocess.Popen[bytes]) -> None:
    """Close the session's input (the remote ``cat`` ends), then wait; kill if it lingers."""
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    if process.stdout is not None:
        process.stdout.close()


def start_sshd(workdir: Path) -> Sshd:
    """
    Start a private sshd on a free loopback port with X11 forwarding; wait until it answers.

    Host and client keys are generated into `workdir` (0700), the client key is its only
    authorized key, and the login user is the current one (root in CI). Needs root, because sshd
    must switch to the login user and requires its privilege separation directory.

    Args:
        workdir: A fresh directory for the configuration, keys, log and session authority files.

    Returns:
        The running server; call :meth:`Sshd.stop` when done.

    Raises:
        E2ESetupError: sshd would not start, or ``/etc/ssh/sshrc`` exists (it would take over
            the xauth step from sshd).
    """
    if Path("/etc/ssh/sshrc").exists():
        msg = "/etc/ssh/sshrc exists: sshd would run it instead of xauth; move it away to test"
        raise E2ESetupError(msg)
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    workdir.chmod(0o700)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    for key in ("host_key", "client_key"):
        run_checked(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key, "-f", str(workdir / key)],
            what="generating an ssh key",
        )
    (workdir / "authorized_keys").write_bytes((workdir / "client_key.pub").read_bytes())
    user = pwd.getpwuid(os.getuid()).pw_name
    last_error = ""
    for _ in range(5):
        port = free_port()
        config = workdir / "sshd_config"
        config.write_text(_sshd_config(workdir, port))
        log = workdir / "sshd.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                preexec_fn=set_pdeathsig,  # noqa: PLW1509 - only prctl, safe before exec
            )
        if _wait_ssh_banner(port, process):
            return Sshd(port, workdir, process, user)
        process.kill()
        process.wait()
        last_error = log.read_text(errors="replace")[-2000:]
    msg = f"sshd did not start: {last_error}"
    raise E2ESetupError(msg)


def _sshd_config(workdir: Path, port: int) -> str:
    return f"""\
Port {port}
ListenAddress 127.0.0.1
AddressFamily inet
HostKey {workdir / "host_key"}
AuthorizedKeysFile {workdir / "authorized_keys"}
PidFile none
UsePAM no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
PermitUserRC no
X11Forwarding yes
X11UseLocalhost yes
X11DisplayOffset 10
XAuthLocation /usr/bin/xauth
AcceptEnv XAUTHORITY
PrintMotd no
PrintLastLog no
LogLevel INFO
"""


def _wait_ssh_banner(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.02)
    return False
