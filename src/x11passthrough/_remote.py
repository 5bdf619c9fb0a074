"""
Engines on another host, reached through OpenSSH: the display goes through the same SSH.

Where the engine is ``ssh://[user@]host[:port]`` (``DOCKER_HOST``, a Docker context, Podman's
``CONTAINER_HOST`` or a connection), its containers run on another kernel, so neither a
bind-mounted socket of this host nor a port of it reaches them. The relay listens here on its
private UNIX socket, as for a local engine, and one SSH connection (the ``ssh`` on ``PATH``,
so the user's ``~/.ssh/config``, keys and agent apply, as they do for the docker CLI) lends it:

1. ``ssh -M -S CONTROL host /bin/sh -c SCRIPT`` makes a private directory on the remote host
   (``mktemp -d`` under its ``$TMPDIR`` or ``/tmp``: mode 0700), writes the session authority
   file there from the connection's standard input (0644, or 0600 for ``auth="forward"``, as
   the local lend does), and prints the directory.
2. ``ssh -S CONTROL -O forward -R DIR/XM:LOCAL_SOCKET`` asks the same connection to listen on
   a UNIX socket there (OpenSSH 6.7+); the server makes it with ``StreamLocalBindMask``
   (default 0177: 0600, its login user's), so the script then makes it 0666, for container
   users other than the login user, inside the 0700 directory.
3. The script waits for its input to close, then removes the directory, so the directory goes
   when this process goes, even killed (its end of the pipe closes), or when the connection
   drops.

ssh's control socket and log live in a private directory here (``mkdtemp``, named by pid and
start time so that the next start removes one a killed process left). Containers on the
remote engine get ``DISPLAY=:M`` and bind mounts of the remote paths. The
real cookie never leaves this host (only the session cookie file does); nothing listens on a
network port for X on either side. A server that forbids forwarding (``DisableForwarding
yes``, ``AllowStreamLocalForwarding no``, ``restrict`` in authorized_keys) fails step 2, with
an error naming those options. A watcher thread waits on the ssh process: when the connection
drops, the lend is marked dead and a warning says that containers lost the display.

Measured (``benchmarks/bench_remote.py``: a second engine and sshd in namespaces of their own
on the same machine, 2 busy cores): a remote lend took 0.64 to 0.77 s (median of 5), a local
one 0.002 to 0.008 s; through the forward a 1 MB image took 3 to 7 times as long as through a
local lend, a round trip 1.2 to 2.3 times.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import selectors
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
import time

from pathlib import Path, PurePosixPath

import attrs

from . import _session
from ._args import DockerRunArgs
from ._cleanup import Cleanup
from ._destination import SshDestination
from ._lending import Lent
from .exceptions import RemoteEngineError


logger = logging.getLogger("x11passthrough")

#: Seconds the SSH connection may take to come up (and each step on it).
DEFAULT_TIMEOUT = 30.0

# The remote half, run by /bin/sh whatever the login shell: $1 the authority file's size,
# $2 its mode, $3 the socket's name. Quiet on success except for the two protocol lines.
_SCRIPT = r"""
umask 077
d=$(mktemp -d "${TMPDIR:-/tmp}/x11passthrough-XXXXXXXXXX") || exit 97
trap 'rm -rf "$d"' EXIT
trap 'exit 1' HUP INT TERM PIPE
if [ "$1" -gt 0 ]; then
  head -c "$1" >"$d/Xauthority" && chmod "$2" "$d/Xauthority" || exit 98
fi
printf 'x11passthrough-dir %s\n' "$d"
read -r step || exit 0
if [ -S "$d/$3" ] && chmod 666 "$d/$3"; then
  echo x11passthrough-ready
else
  echo x11passthrough-nosocket
fi
cat >/dev/null
"""


class RemoteDisplay:
    """
    One SSH connection that lends the local relay's socket to a remote host.

    Args:
        where: The SSH destination.
        local_socket: The relay's private socket on this host.
        number: The display number M (the remote socket is ``XM``).
        xauthority: The session authority file's content (None: the display needs none).
        private_file: Keep the remote authority file 0600 (it holds the real cookie).
        control_dir: A private directory of this host for the control socket and ssh's log.
        timeout: Seconds the connection and each step may take.
    """

    def __init__(
        self,
        where: SshDestination,
        *,
        local_socket: Path,
        number: int,
        xauthority: bytes | None,
        private_file: bool,
        control_dir: Path,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.where = where
        self._local_socket = local_socket
        self._number = number
        self._xauthority = xauthority or b""
        self._mode = "600" if private_file else "644"
        self._control = control_dir / "ssh-control"
        self._log = control_dir / "ssh.log"
        self._timeout = timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._watcher: threading.Thread | None = None
        self._closing = threading.Event()
        self._dropped = threading.Event()
        self.directory: PurePosixPath | None = None
        #: The local lend's arguments (its socket and file on this host), for checks here.
        self.local_args: DockerRunArgs | None = None

    def __repr__(self) -> str:
        return f"<RemoteDisplay {self.where.shown} directory={self.directory} alive={self.alive}>"

    @property
    def alive(self) -> bool:
        """Whether the SSH connection still carries the display."""
        process = self._process
        return process is not None and process.poll() is None and not self._dropped.is_set()

    @property
    def socket(self) -> PurePosixPath:
        """The display's socket on the remote host (once open)."""
        return self._remote_directory() / f"X{self._number}"

    @property
    def xauthority(self) -> PurePosixPath | None:
        """The session authority file on the remote host, or None (once open)."""
        return self._remote_directory() / "Xauthority" if self._xauthority else None

    def _remote_directory(self) -> PurePosixPath:
        if self.directory is None:
            raise RemoteEngineError(f"the display is not lent to {self.where.shown} yet")
        return self.directory

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RemoteEngineError(f"the SSH connection to {self.where.shown} is closed")
        return self._process

    def _send(self, data: bytes) -> None:
        """Write to the remote script's input; a closed pipe shows up in its reply."""
        stdin = self._running().stdin
        if stdin is None:  # pragma: no cover - always a pipe
            return
        with contextlib.suppress(OSError):
            stdin.write(data)
            stdin.flush()

    def _ssh(self, *options: str) -> list[str]:
        return ["ssh", *options, *self.where.ssh_options(), "--", self.where.host]

    def open(self) -> None:
        """
        Connect, make the remote directory and forward the socket, until containers can connect.

        Raises:
            RemoteEngineError: ssh failed, the remote host could not make the directory, or
                the server refused the forward; everything started is stopped again.
        """
        started = time.monotonic()
        try:
            self._connect()
            self._forward()
            self._finish()
        except BaseException:
            self.close()
            raise
        logger.info(
            "display lent to %s at %s in %.2f s",
            self.where.shown,
            self.socket,
            time.monotonic() - started,
        )

    def _connect(self) -> None:
        command = shlex.join(
            [
                "/bin/sh",
                "-c",
                _SCRIPT,
                "x11passthrough",
                str(len(self._xauthority)),
                self._mode,
                f"X{self._number}",
            ]
        )
        argv = self._ssh(
            "-M",
            "-S",
            str(self._control),
            "-T",
            "-x",
            "-a",
            "-o",
            "ControlPersist=no",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={max(1, round(self._timeout))}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "ClearAllForwardings=yes",
            "-o",
            "PermitLocalCommand=no",
        )
        argv.append(command)
        with open(self._log, "wb") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # the terminal's Ctrl-C is for us, not for ssh
            )
        self._send(self._xauthority)
        line = self._read_line()
        if not line.startswith("x11passthrough-dir /"):
            self._fail_connect()
        self.directory = PurePosixPath(line.partition(" ")[2])
        self._watcher = threading.Thread(
            target=self._watch,
            args=(self._running(),),
            name=f"x11passthrough-ssh-{self.where.host}",
            daemon=True,
        )
        self._watcher.start()

    def _fail_connect(self) -> None:
        process = self._running()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(self._timeout)
        code = process.poll()
        said = self._said()
        if code == 97:
            raise RemoteEngineError(
                f"{self.where.shown} could not make a private directory (mktemp -d in its "
                "$TMPDIR or /tmp failed): make /tmp writable there, or set TMPDIR for the "
                f"SSH login. ssh said: {said or 'nothing'}"
            )
        if code == 98:
            raise RemoteEngineError(
                f"{self.where.shown} could not write the session authority file in its "
                f"private directory: is its /tmp full? ssh said: {said or 'nothing'}"
            )
        shown = shlex.join(["ssh", *self.where.ssh_options(), self.where.host, "true"])
        raise RemoteEngineError(
            f"cannot reach the engine's host {self.where.shown} ({self.where.source}="
            f"{self.where.url}) over SSH: ssh "
            + (f"exited {code}" if code is not None else "did not answer in time")
            + f": {said or 'it said nothing'}. Check that `{shown}` works without a prompt "
            "(a key in ssh-agent or ~/.ssh/config, the host in known_hosts)"
        )

    def _forward(self) -> None:
        remote = f"{self.socket}:{self._local_socket}"
        argv = self._ssh("-S", str(self._control), "-O", "forward", "-R", remote)
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self._timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RemoteEngineError(
                f"{self.where.shown} did not answer the request to forward the display's "
                f"socket within {self._timeout:g} s"
            ) from None
        if done.returncode == 0:
            return
        said = " ".join(done.stderr.decode(errors="replace").split())
        if "forwarding request failed" in said or "forwarding failed" in said:
            raise RemoteEngineError(
                f"the SSH server of {self.where.shown} refused to forward a UNIX socket "
                f"(ssh -R {self.socket}:...): {said}. Its sshd_config forbids it "
                "(AllowStreamLocalForwarding no, or DisableForwarding yes), or the key's "
                "authorized_keys line does (restrict, no-port-forwarding). Allow it for "
                "this login (AllowStreamLocalForwarding remote, or all, in a Match block), "
                "or run the engine where you may forward"
            )
        raise RemoteEngineError(
            f"forwarding the display's socket to {self.where.shown} failed: "
            f"{said or f'ssh exited {done.returncode}'}; {self._said()}"
        )

    def _finish(self) -> None:
        self._send(b"chmod\n")
        line = self._read_line()
        if line != "x11passthrough-ready":
            raise RemoteEngineError(
                f"the forwarded display socket {self.socket} did not appear on "
                f"{self.where.shown}: {line or self._said() or 'the connection ended'}"
            )

    def _read_line(self) -> str:
        """
        Read the remote script's next line (``x11passthrough-...``), waiting at most the timeout.

        Lines before it are skipped: a login shell's startup file may print something.
        """
        stdout = self._running().stdout
        if stdout is None:  # pragma: no cover - always a pipe
            return ""
        deadline = time.monotonic() + self._timeout
        data = b""
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    break
                chunk = os.read(stdout.fileno(), 1)
                if not chunk:
                    break
                data += chunk
                if data.endswith(b"\n"):
                    if data.startswith(b"x11passthrough-"):
                        break
                    data = b""
        return data.decode(errors="replace").strip()

    def _said(self) -> str:
        """Return the end of ssh's error output (no secret: the cookie never goes there)."""
        try:
            text = self._log.read_text(errors="replace")
        except OSError:
            return ""
        return " ".join(text.split()[-60:])

    def _watch(self, process: subprocess.Popen[bytes]) -> None:
        code = process.wait()
        if self._closing.is_set():
            return
        self._dropped.set()
        logger.warning(
            "the SSH connection to %s ended (ssh exited %s%s): containers on the remote "
            "engine no longer reach the display; start x11passthrough again",
            self.where.shown,
            code,
            f": {self._said()}" if self._said() else "",
        )

    def close(self) -> None:
        """Remove the remote directory and end the connection. Idempotent; never raises."""
        self._closing.set()
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            # The remote script's `cat` ends: it removes the directory and the SSH connection ends.
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            # Containers still connected keep ssh's forwarded channels (and ssh) open.
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(
                    self._ssh("-S", str(self._control), "-O", "exit"),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=5,
                    check=False,
                )
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(5)


def lend_remote(
    lent: Lent,
    where: SshDestination,
    *,
    private_file: bool,
    cleanup: Cleanup,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[Lent, RemoteDisplay]:
    """
    Lend a local UNIX-transport lend to the remote host: the same relay, reached over SSH.

    Args:
        lent: What :func:`~._transport.lend` made for the UNIX transport (its private socket
            and session authority file).
        where: The engine's host.
        private_file: The authority file holds the real cookie (keep it 0600 there too).
        cleanup: Where the undo step goes.
        timeout: Seconds the connection and each step may take.

    Returns:
        The lend with the remote paths in its arguments, and the connection (``alive``).

    Raises:
        RemoteEngineError: The remote host cannot be reached or refuses the forward.
    """
    args = lent.args
    if args.socket is None:
        raise RemoteEngineError("the remote lend needs the relay's UNIX socket")
    data = _read_own(args.xauthority) if args.xauthority is not None else None
    # ssh's control socket and log: a fresh directory of ours (0700, short enough a path for
    # ControlPath), made with mkdtemp, so nothing another user controls is written through.
    control_dir = _control_directory()
    cleanup.add(f"removing {control_dir}", lambda: shutil.rmtree(control_dir, True))
    display = RemoteDisplay(
        where,
        local_socket=args.socket,
        number=lent.number,
        xauthority=data,
        private_file=private_file,
        control_dir=control_dir,
        timeout=timeout,
    )
    display.local_args = args
    display.open()
    cleanup.add(f"ending the SSH connection to {where.shown}", display.close)
    xauthority = display.xauthority
    remote_args = DockerRunArgs(
        display=args.display,
        xauthority=Path(xauthority) if xauthority is not None else None,
        container_xauthority=args.container_xauthority,
        socket=Path(display.socket),
        container_socket=args.container_socket,
        extra_hosts=args.extra_hosts,
        hostname=args.hostname,
    )
    return attrs.evolve(lent, args=remote_args), display


def _read_own(path: Path) -> bytes:
    """Read the session authority file the lend wrote, never through a symbolic link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise RemoteEngineError(f"cannot read {path}: {e.strerror or e}") from e
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_uid != os.geteuid():
            raise RemoteEngineError(f"{path} is not ours any more: it was replaced")
        return f.read(1 << 20)


_CONTROL_PREFIX = "x11passthrough-ssh-"
_CONTROL_NAME = re.compile(rf"{re.escape(_CONTROL_PREFIX)}(?P<pid>[0-9]+)-(?P<start>[0-9]+)-\w+")


def _control_directory() -> Path:
    """
    Make a private directory (mkdtemp: 0700) for ssh's control socket and log.

    Named by this process's pid and start time, like the session directory, so that the next
    start removes those of killed processes.
    """
    base = Path(tempfile.gettempdir())
    for entry in base.glob(f"{_CONTROL_PREFIX}*"):
        match = _CONTROL_NAME.fullmatch(entry.name)
        try:
            info = entry.lstat()
        except OSError:
            continue
        if match is None or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            continue
        if _session.start_time(int(match["pid"])) != int(match["start"]):
            shutil.rmtree(entry, ignore_errors=True)
    pid = os.getpid()
    prefix = f"{_CONTROL_PREFIX}{pid}-{_session.start_time(pid)}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
