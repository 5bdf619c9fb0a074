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


class Squatter:
    """
    A process of another user listening on an X endpoint.

    Args:
        kind: ``"tcp"`` (`address` ``HOST:PORT``), ``"abstract"`` (`address` the name
            without its NUL byte) or ``"unix"`` (a path).
        address: Where to listen.
    """

    def __init__(self, kind: str, address: str) -> None:
        user = other_user()
        self.uid = user.pw_uid
        self._process = subprocess.Popen(
            [SYSTEM_PYTHON, "-I", "-c", _SQUATTER, kind, address],
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            env={"PATH": "/usr/bin:/bin", "HOME": user.pw_dir},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            preexec_fn=set_pdeathsig,  # noqa: PLW1509 - only prctl, safe before exec
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            assert self._process.stderr is not None
            message = f"the squatter did not start: {self._process.stderr.read().decode()}"
            raise RuntimeError(message)
        started = json.loads(line)
        assert started["uid"] == self.uid

    def report(self) -> Report:
        """Stop listening and return what was received."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.close()
        line = self._process.stdout.readline()
        stop_process(self._process)
        self._process.stdout.close()
        if self._process.stderr is not None:
            self._process.stderr.close()
        done = json.loads(line)
        return Report(done["connections"], bytes.fromhex(done["received"]))

    def close(self) -> None:
        """Stop the squatter if it still runs."""
        if self._process.poll() is None:
            stop_process(self._process)
        for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Squatter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
