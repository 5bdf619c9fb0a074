"""
MIT-SHM and DRI3 are kept from relayed clients: the X server itself says they are absent, and
a client that guesses the opcode gets BadRequest; the request stream stays in step.

Real Xvfb, real relay, and x11perf (which uses MIT-SHM whenever the server offers it).
"""

from __future__ import annotations

import socket
import struct
import subprocess

from collections.abc import Iterator

import pytest

from x11passthrough import DockerRunArgs, X11Passthrough
from x11passthrough.xauth import Xauthority

from infra.ci import require_executables
from infra.xvfb import XServer, client_env


RANGE = range(660, 700)


@pytest.fixture(name="lent")
def _lent(xvfb: XServer) -> Iterator[DockerRunArgs]:
    with X11Passthrough(
        xvfb.display,
        xvfb.xauthority,
        transport="tcp",
        bind=["127.0.0.1"],
        display_range=RANGE,
        container_hostname=socket.gethostname(),
    ) as args:
        yield args


def number(args: DockerRunArgs) -> int:
    return int(args.display.rsplit(":", 1)[1])


def connect(port: int | None, path: str | None, cookie: bytes) -> socket.socket:
    """Open an X connection with `cookie` and read the whole setup reply."""
    if path is not None:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
    else:
        assert port is not None
        sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(10)
    name = b"MIT-MAGIC-COOKIE-1"
    sock.sendall(struct.pack("<BxHHHHxx", 0x6C, 11, 0, len(name), 16) + name + b"\0\0" + cookie)
    head = recv_exactly(sock, 8)
    assert head[0] == 1, head
    recv_exactly(sock, 4 * struct.unpack_from("<H", head, 6)[0])
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the connection closed"
        data += chunk
    return data


def query_extension(sock: socket.socket, name: bytes) -> tuple[bool, int]:
    body = struct.pack("<Hxx", len(name)) + name + b"\0" * (-len(name) % 4)
    sock.sendall(struct.pack("<BxH", 98, 1 + len(body) // 4) + body)
    reply = recv_exactly(sock, 32)
    assert reply[0] == 1
    return bool(reply[8]), reply[9]


def list_extensions(sock: socket.socket) -> list[bytes]:
    sock.sendall(struct.pack("<BxH", 99, 1))
    head = recv_exactly(sock, 32)
    body = recv_exactly(sock, 4 * struct.unpack_from("<I", head, 4)[0])
    names, at = [], 0
    for _ in range(head[1]):
        names.append(body[at + 1 : at + 1 + body[at]])
        at += 1 + body[at]
    return names


def session_cookie(args: DockerRunArgs) -> bytes:
    assert args.xauthority is not None
    return Xauthority.load(args.xauthority)[0].data


def test_the_server_itself_answers_mit_shm_absent(xvfb: XServer, lent: DockerRunArgs) -> None:
    """QueryExtension finds no MIT-SHM through the relay; the server does have it."""
    with connect(None, xvfb.unix_path, xvfb.cookie) as direct:
        present, shm_major = query_extension(direct, b"MIT-SHM")
        assert present
    with connect(6000 + number(lent), None, session_cookie(lent)) as relayed:
        assert query_extension(relayed, b"MIT-SHM") == (False, 0)
        assert query_extension(relayed, b"RANDR")[0]
        # The list still names it: clients ask QueryExtension before they use one.
        assert b"MIT-SHM" in list_extensions(relayed)
        # A client that guesses the opcode: ShmQueryVersion gets BadRequest, not a reply.
        relayed.sendall(struct.pack("<BBH", shm_major, 0, 1))
        error = recv_exactly(relayed, 32)
        assert (error[0], error[1]) == (0, 1)  # an error, BadRequest
        assert struct.unpack_from("<H", error, 2)[0] == 4  # the fourth request's
        assert error[10] == 0  # the major opcode the server saw
        # The stream is still in step: GetInputFocus answers with the next sequence number.
        relayed.sendall(struct.pack("<BxH", 43, 1))
        reply = recv_exactly(relayed, 32)
        assert reply[0] == 1
        assert struct.unpack_from("<H", reply, 2)[0] == 5


def test_x11perf_shm_test_is_skipped_not_crashed(xvfb: XServer, lent: DockerRunArgs) -> None:
    """
    x11perf -shmput runs ShmPutImage where the server offers MIT-SHM: through the relay it
    finds none and skips the test, instead of failing with BadAccess or BadRequest.
    """
    require_executables("x11perf")
    command = ["x11perf", "-repeat", "1", "-reps", "100", "-shmput10"]
    env = client_env(f"localhost:{number(lent)}", lent.xauthority)
    relayed = subprocess.run(
        command, check=False, env=env, capture_output=True, text=True, timeout=60
    )
    assert relayed.returncode == 0, relayed.stderr
    assert "Sync time adjustment" in relayed.stdout  # it ran, and found nothing to measure
    assert "ShmPutImage" not in relayed.stdout
    direct = subprocess.run(
        command, check=False, env=xvfb.env(), capture_output=True, text=True, timeout=60
    )
    assert direct.returncode == 0, direct.stderr
    assert "ShmPutImage 10x10 square" in direct.stdout


def test_untrusted_clients_get_no_mit_shm_from_the_server(xvfb: XServer) -> None:
    """In untrusted mode the SECURITY extension already hides it; the relay adds nothing."""
    with (
        X11Passthrough(
            xvfb.display,
            xvfb.xauthority,
            transport="tcp",
            bind=["127.0.0.1"],
            display_range=RANGE,
            auth="untrusted",
        ) as args,
        connect(6000 + number(args), None, session_cookie(args)) as relayed,
    ):
        assert query_extension(relayed, b"MIT-SHM") == (False, 0)
        assert b"MIT-SHM" not in list_extensions(relayed)
