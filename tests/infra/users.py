"""
Another local user, for tests where another user is the threat: a squatter on an X endpoint.

The user is ``x11pt`` (uid 2000), made by ``scripts/setup-engines`` (which ``scripts/test``
runs). A :class:`Squatter` is a real process of that user that listens where an X server
should, accepts connections, and reports every byte it was sent.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess

from dataclasses import dataclass
from typing import Any, Self

from .ci import require
from .processes import set_pdeathsig, stop_process


OTHER_USER = "x11pt"
#: The squatter needs only the standard library; the test runner's interpreter may live where
#: the other user cannot read (under /root).
SYSTEM_PYTHON = "/usr/bin/python3"

_SQUATTER = r"""
import json, os, select, socket, sys
kind, address = sys.argv[1], sys.argv[2]
if kind == "tcp":
    host, port = address.rsplit(":", 1)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host.strip("[]"), int(port)))
else:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + address if kind == "abstract" else address)
listener.listen(64)
print(json.dumps({"uid": os.getuid()}), flush=True)
connections, received = 0, b""
clients = []
finishing = False
while True:
    # Once asked to report, drain what is already pending (a connection in the backlog, data
    # on the way) and stop when nothing is left.
    watched = [listener, *clients] + ([] if finishing else [sys.stdin])
    ready, _, _ = select.select(watched, [], [], 0 if finishing else None)
    if not ready and finishing:
        break
    if sys.stdin in ready:
        finishing = True
    if listener in ready:
        client, _ = listener.accept()
        connections += 1
        clients.append(client)
    for client in [c for c in clients if c in ready]:
        data = client.recv(65536)
        received += data
        if not data:
            clients.remove(client)
            client.close()
print(json.dumps({"connections": connections, "received": received.hex()}), flush=True)
"""


def other_user() -> pwd.struct_passwd:
    """Return the second local user; skip (fail in CI) where it or root rights are missing."""
    require("root (to act as another user)", os.geteuid() == 0, "run the tests as root")
    try:
        entry = pwd.getpwnam(OTHER_USER)
    except KeyError:
        require(f"the local user {OTHER_USER}", False, "run scripts/setup-engines as root")
        raise
    return entry


@dataclass
class Report:
    """What a squatter saw: how many connections, and every byte sent to it."""

    connections: int
    received: bytes


class UserProgram:
    """
    A Python program (standard library only) run as the second local user, or as this one.

    It speaks JSON, a line at a time, on its standard output; its first line says it started
    (:attr:`started`). Ended by :meth:`finish` (its input closed, its last line read) or
    :meth:`close`; a context manager.

    Args:
        what: Its name in the error raised when it stops without a line.
        source: The program.
        args: Its arguments.
        user: Run as the second local user (True) or as this process's user.
    """

    def __init__(self, what: str, source: str, *args: str, user: bool = True) -> None:
        self._what = what
        options: dict[str, object] = {}
        if user:
            entry = other_user()
            options = {
                "user": entry.pw_uid,
                "group": entry.pw_gid,
                "extra_groups": [],
                "env": {"PATH": "/usr/bin:/bin", "HOME": entry.pw_dir},
                "cwd": "/",
            }
        self._process = subprocess.Popen(
            [SYSTEM_PYTHON, "-I", "-c", source, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=set_pdeathsig,  # noqa: PLW1509 - only prctl, safe before exec
            **options,  # type: ignore[call-overload]
        )
        self.started = self.answer()

    def answer(self) -> dict[str, Any]:
        """Read the program's next line."""
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            assert self._process.stderr is not None
            raise RuntimeError(f"the {self._what} stopped: {self._process.stderr.read()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def tell(self, line: str) -> None:
        """Send the program a line."""
        assert self._process.stdin is not None
        self._process.stdin.write(f"{line}\n")
        self._process.stdin.flush()

    def finish(self) -> dict[str, Any]:
        """Close the program's input, read its last line, and stop it."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            return self.answer()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the program if it still runs."""
        stop_process(self._process)
        for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Squatter(UserProgram):
    """
    A process of another user listening on an X endpoint.

    Args:
        kind: ``"tcp"`` (`address` ``HOST:PORT``), ``"abstract"`` (`address` the name
            without its NUL byte) or ``"unix"`` (a path).
        address: Where to listen.
    """

    def __init__(self, kind: str, address: str) -> None:
        super().__init__("squatter", _SQUATTER, kind, address)
        self.uid: int = self.started["uid"]
        assert self.uid == other_user().pw_uid

    def report(self) -> Report:
        """Stop listening and return what was received."""
        done = self.finish()
        return Report(done["connections"], bytes.fromhex(done["received"]))


def free_display(start: int = 900) -> int:
    """Return a display number with no socket, lock, abstract socket or TCP listener."""
    for number in range(start, start + 200):
        taken = os.path.exists(f"/tmp/.X11-unix/X{number}") or os.path.exists(
            f"/tmp/.X{number}-lock"
        )
        with socket.socket(socket.AF_UNIX) as probe:
            if probe.connect_ex(f"\0/tmp/.X11-unix/X{number}") == 0:
                taken = True
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", 6000 + number)) == 0:
                taken = True
        if not taken:
            return number
    raise AssertionError("no free display number")


_FLOODER = r"""
import json, os, selectors, socket, sys, time
kind, address, count, procs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if kind == "tcp":
    host, port = address.rsplit(":", 1)
    family, where = socket.AF_INET, (host, int(port))
else:
    family, where = socket.AF_UNIX, ("\0" + address if kind == "abstract" else address)
stop_r, stop_w = os.pipe()
report_r, report_w = os.pipe()

def flood():
    # Hold `count` idle connections; reopen each one the relay drops, as fast as it can.
    sel = selectors.DefaultSelector()
    sel.register(stop_r, selectors.EVENT_READ, None)
    held, opened, most, ready = set(), 0, 0, False
    while True:
        failed = False
        while len(held) < count:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(where)
            except BlockingIOError:
                if family == socket.AF_UNIX:  # the backlog is full
                    sock.close()
                    failed = True
                    break
            except OSError:
                sock.close()
                failed = True
                break
            held.add(sock)
            sel.register(sock, selectors.EVENT_READ, sock)
            opened += 1
        most = max(most, len(held))
        if not ready and opened >= count:
            ready = True
            os.write(report_w, b"ready\n")
        for key, _ in sel.select(0.001 if failed else (0 if len(held) < count else None)):
            if key.data is None:
                os.write(report_w, (json.dumps({"opened": opened, "held": most}) + "\n").encode())
                return
            sel.unregister(key.data)
            held.discard(key.data)
            key.data.close()

children = []
for _ in range(procs):
    pid = os.fork()
    if pid == 0:
        os.close(stop_w)
        flood()
        os._exit(0)
    children.append(pid)
os.close(stop_r)
reports = os.fdopen(report_r)
os.close(report_w)
for _ in range(procs):
    assert reports.readline() == "ready\n"
print(json.dumps({"uid": os.getuid(), "pids": children}), flush=True)
sys.stdin.read()
os.close(stop_w)
opened = held = 0
for _ in range(procs):
    done = json.loads(reports.readline())
    opened += done["opened"]
    held += done["held"]
for pid in children:
    os.waitpid(pid, 0)
print(json.dumps({"opened": opened, "held": held}), flush=True)
"""


@dataclass
class FloodReport:
    """What a flood did: connections opened (reopened ones included), most held at once."""

    opened: int
    held: int


class Flooder(UserProgram):
    """
    Processes holding idle connections to an endpoint, reopening each one that is dropped.

    Each of `processes` processes keeps `count` connections open that never send a byte, and
    opens a new one as soon as one is closed, as fast as it can. Started, each process has
    opened `count` connections at least.

    Args:
        kind: ``"abstract"`` (`address` the name without its NUL byte), ``"unix"`` (a path)
            or ``"tcp"`` (``HOST:PORT``).
        address: Where to connect.
        count: Connections per process.
        processes: How many processes flood (each a peer of its own pid).
        user: Run as the second local user (True) or as this process's user.
    """

    def __init__(
        self, kind: str, address: str, *, count: int, processes: int = 1, user: bool = True
    ) -> None:
        super().__init__("flood", _FLOODER, kind, address, str(count), str(processes), user=user)
        self.uid: int = self.started["uid"]
        self.pids: list[int] = self.started["pids"]

    def report(self) -> FloodReport:
        """Stop flooding and return what the flood did."""
        done = self.finish()
        return FloodReport(done["opened"], done["held"])


_HOLDER = r"""
import json, os, socket, sys
prefix, low, high = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
for number in range(low, high):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind("\0" + prefix + str(number))
        sock.listen(0)
    except OSError:
        sock.close()
        continue
    held.append((number, sock))
print(json.dumps({"uid": os.getuid(), "pid": os.getpid(), "held": [n for n, _ in held]}),
      flush=True)
sys.stdin.read()
"""


class AbstractHolder(UserProgram):
    """
    A process of the second local user holding abstract names ``@<prefix><N>``, N in `numbers`.

    It listens on each (backlog 0) and never accepts. Names another process holds are skipped;
    :attr:`held` lists the numbers it got.
    """

    def __init__(self, numbers: range, prefix: str = "/tmp/.X11-unix/X") -> None:
        bounds = (str(numbers.start), str(numbers.stop))
        super().__init__("holder", _HOLDER, prefix, *bounds)
        self.uid: int = self.started["uid"]
        self.pid: int = self.started["pid"]
        self.held: list[int] = self.started["held"]
