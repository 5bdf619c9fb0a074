"""
MIT-SHM and DRI3 are kept from relayed clients: the X server itself says they are absent, and
a client that guesses the opcode gets BadRequest; the request stream stays in step.

Real Xvfb, real relay, and x11perf (which uses MIT-SHM whenever the server offers it).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess

from collections.abc import Callable, Iterator

import pytest

from x11passthrough import DockerRunArgs, X11Passthrough
from x11passthrough.xauth import Xauthority

from infra.ci import require_executables
from infra.xvfb import XServer, client_env


RANGE = range(660, 700)


def lend(server: XServer, **options: object) -> X11Passthrough:
    """A passthrough of `server` on TCP (127.0.0.1), in this file's display range."""
    return X11Passthrough(
        server.display,
        server.xauthority,
        transport="tcp",
        bind=["127.0.0.1"],
        display_range=RANGE,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture(name="lent")
def _lent(xvfb: XServer) -> Iterator[DockerRunArgs]:
    with lend(xvfb, container_hostname=socket.gethostname()) as args:
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


@contextlib.contextmanager
def untrusted_client(xvfb: XServer) -> Iterator[socket.socket]:
    """A client connected through a relay lending `xvfb` in untrusted mode, on TCP."""
    with (
        lend(xvfb, auth="untrusted") as args,
        connect(6000 + number(args), None, session_cookie(args)) as relayed,
    ):
        yield relayed


def test_untrusted_clients_get_no_mit_shm_from_the_server(xvfb: XServer) -> None:
    """In untrusted mode the SECURITY extension already hides it; the relay adds nothing."""
    with untrusted_client(xvfb) as relayed:
        assert query_extension(relayed, b"MIT-SHM") == (False, 0)
        assert b"MIT-SHM" not in list_extensions(relayed)


def read_packet(sock: socket.socket) -> bytes:
    """Read one reply (its 32 bytes; the rest is read and dropped) or error."""
    head = recv_exactly(sock, 32)
    if head[0] == 1:
        recv_exactly(sock, 4 * struct.unpack_from("<I", head, 4)[0])
    return head


@pytest.mark.parametrize("malformed", ["minor 1", "length 2", "length 0"])
def test_a_malformed_big_requests_enable_opens_no_window(
    xvfb: XServer, lent: DockerRunArgs, malformed: str
) -> None:
    """
    Issue 17, the exploit: a malformed BigReqEnable, then a length-0 request, then
    QueryExtension("MIT-SHM"). The server stays with 16-bit lengths (BadRequest/BadLength for
    the enable, BadLength for the 4-byte request); a filter that switched to 32-bit lengths
    read the QueryExtension's header as a length and let ~1 MB through unjudged, so the client
    learned MIT-SHM's real opcode and could attach the host's segments.
    """
    with connect(None, xvfb.unix_path, xvfb.cookie) as direct:
        present, big = query_extension(direct, b"BIG-REQUESTS")
        assert present
        shm_major = query_extension(direct, b"MIT-SHM")[1]
    enable = {
        "minor 1": struct.pack("<BBH", big, 1, 1),
        "length 2": struct.pack("<BBH", big, 0, 2) + b"\0" * 4,
        "length 0": struct.pack("<BBH", big, 0, 0),
    }[malformed]
    name = b"MIT-SHM"
    query = struct.pack("<BxHHxx", 98, 4, len(name)) + name + b"\0"
    with connect(6000 + number(lent), None, session_cookie(lent)) as relayed:
        relayed.sendall(
            enable
            + struct.pack("<BxH", 43, 0)  # GetInputFocus of length 0: 4 bytes, BadLength
            + query
            + struct.pack("<BBH", shm_major, 0, 1)  # ShmQueryVersion
            + struct.pack("<BxH", 43, 1)  # GetInputFocus
        )
        answers = [read_packet(relayed) for _ in range(5)]
    sequences = [struct.unpack_from("<H", packet, 2)[0] for packet in answers]
    assert sequences == [1, 2, 3, 4, 5]
    kinds = [(packet[0], packet[1] if packet[0] == 0 else None) for packet in answers]
    bad_enable = 1 if malformed == "minor 1" else 16  # BadRequest, BadLength
    assert kinds[:2] == [(0, bad_enable), (0, 16)]
    assert answers[2][0] == 1
    assert (answers[2][8], answers[2][9]) == (0, 0), "the client found MIT-SHM"
    assert kinds[3] == (0, 1)  # BadRequest: ShmQueryVersion never reached the server
    assert answers[3][10] == 0
    assert answers[4][0] == 1


def test_a_restarted_server_is_learned_again(
    xvfb_factory: Callable[..., XServer], caplog: pytest.LogCaptureFixture
) -> None:
    """
    Issue 17, item 6: the display restarts with another set of extensions, so MIT-SHM now has
    the major opcode another extension had. The relay learns the new numbers before it lets a
    client through; with the numbers of the first server, ShmQueryVersion was answered.
    """
    first = xvfb_factory(extra_args=("-extension", "MIT-SHM"))
    with lend(first) as args:
        port, cookie = 6000 + number(args), session_cookie(args)
        with connect(port, None, cookie) as relayed:
            assert query_extension(relayed, b"MIT-SHM") == (False, 0)
        first.stop()
        second = xvfb_factory(number=first.number, cookie=first.cookie)
        with connect(None, second.unix_path, second.cookie) as direct:
            present, shm_major = query_extension(direct, b"MIT-SHM")
        assert present
        caplog.set_level("INFO", logger="x11passthrough")
        with connect(port, None, cookie) as relayed:
            assert query_extension(relayed, b"MIT-SHM") == (False, 0)
            relayed.sendall(struct.pack("<BBH", shm_major, 0, 1))  # ShmQueryVersion
            error = read_packet(relayed)
            assert (error[0], error[1], error[10]) == (0, 1, 0), "MIT-SHM answered"
            assert struct.unpack_from("<H", error, 2)[0] == 2
        assert "extensions learned again" in caplog.text


def test_a_client_asking_for_a_hidden_extension_is_named_once_in_the_log(
    lent: DockerRunArgs, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 22, item 8: the log says which extension a client did not get, and why, once."""
    caplog.set_level("WARNING", logger="x11passthrough")
    for _ in range(2):
        with connect(6000 + number(lent), None, session_cookie(lent)) as relayed:
            assert query_extension(relayed, b"MIT-SHM") == (False, 0)
            assert query_extension(relayed, b"MIT-SHM") == (False, 0)
    told = [r.getMessage() for r in caplog.records if "MIT-SHM" in r.getMessage()]
    assert len(told) == 1, told
    assert "shared memory does not cross the container boundary" in told[0]


def test_untrusted_clients_are_told_which_extension_the_server_refused(
    xvfb: XServer, caplog: pytest.LogCaptureFixture
) -> None:
    """
    Issue 22, item 8: with --auth untrusted a GLX client (glxgears, Java) just finds no GLX;
    the log names the extension and the mode that refused it.
    """
    caplog.set_level("WARNING", logger="x11passthrough")
    with untrusted_client(xvfb) as relayed:
        assert query_extension(relayed, b"GLX") == (False, 0)
        # Still in step: the server's answer to the next request has the next number.
        relayed.sendall(struct.pack("<BxH", 43, 1))
        assert struct.unpack_from("<H", read_packet(relayed), 2)[0] == 2
    told = [r.getMessage() for r in caplog.records if "GLX" in r.getMessage()]
    assert len(told) == 1, told
    assert "untrusted" in told[0]


@pytest.mark.parametrize(
    "request_name", ["XTEST FakeInput", "GrabServer", "GLX QueryVersion", "RANDR CreateLease"]
)
def test_a_big_request_the_server_may_run_twice_closes_the_connection(
    xvfb: XServer, lent: DockerRunArgs, request_name: str
) -> None:
    """
    A request the server may put back and run again (``ResetCurrentRequest``: a FakeInput
    with a delay, GrabServer under another client's grab, GLX while GLX clients are blocked)
    is re-read with a length one word short when it came in big form, so its last word
    becomes the next request's header. Here that word is ShmQueryVersion's. The relay closes
    the connection rather than forward such a request; the requests before it were answered.
    """
    with connect(None, xvfb.unix_path, xvfb.cookie) as direct:
        big = query_extension(direct, b"BIG-REQUESTS")[1]
        shm_major = query_extension(direct, b"MIT-SHM")[1]
        xtest = query_extension(direct, b"XTEST")[1]
        glx = query_extension(direct, b"GLX")[1]
        randr = query_extension(direct, b"RANDR")[1]
    tail = bytes([shm_major, 0, 1, 0])  # ShmQueryVersion, where the server would look
    # MotionNotify to (5, 5) after a delay of 1 ms; the event's last word is the tail.
    event = struct.pack("<BBHIIIIhhhh", 6, 0, 0, 1, 0, 0, 0, 5, 5, 5, 5) + tail
    major, minor, body = {
        "XTEST FakeInput": (xtest, 2, event),
        "GrabServer": (36, 0, b""),
        "GLX QueryVersion": (glx, 7, struct.pack("<II", 1, 4) + tail),
        # Xwayland runs it again once the compositor answered: window, lease id, no CRTCs.
        "RANDR CreateLease": (randr, 45, struct.pack("<IIHH", 0, 0x00400001, 0, 0) + tail),
    }[request_name]
    with connect(6000 + number(lent), None, session_cookie(lent)) as relayed:
        relayed.sendall(struct.pack("<BBH", big, 0, 1) + struct.pack("<BxH", 43, 1))
        answers = [read_packet(relayed) for _ in range(2)]
        assert [(p[0], struct.unpack_from("<H", p, 2)[0]) for p in answers] == [(1, 1), (1, 2)]
        relayed.sendall(
            struct.pack("<BBHI", major, minor, 0, 2 + len(body) // 4)
            + body
            + struct.pack("<BxH", 43, 1)  # GetInputFocus
        )
        assert relayed.recv(32) == b"", "the relay forwarded a big request the server may rerun"


def test_xvideo_shm_put_image_never_reaches_the_server(xvfb: XServer, lent: DockerRunArgs) -> None:
    """
    XvShmPutImage reads from any client's attached MIT-SHM segment (the server looks the XID
    up as itself), so a container could read what host clients share with the server without
    an MIT-SHM request: it gets BadRequest for major 0; XVideo's other requests still work.
    """
    with connect(None, xvfb.unix_path, xvfb.cookie) as direct:
        present, xv = query_extension(direct, b"XVideo")
        assert present
    put = struct.pack("<BBHIIIIII", xv, 19, 13, 0x40, 0x200, 0x300, 0x00600001, 0x32595559, 0)
    put += struct.pack("<hhHHhhHHHHBxxx", 0, 0, 8, 8, 0, 0, 8, 8, 8, 8, 0)
    assert len(put) == 52
    with connect(6000 + number(lent), None, session_cookie(lent)) as relayed:
        relayed.sendall(
            struct.pack("<BBH", xv, 0, 1)  # XvQueryExtension
            + put
            + struct.pack("<BxH", 43, 1)  # GetInputFocus
        )
        answers = [read_packet(relayed) for _ in range(3)]
    assert [struct.unpack_from("<H", p, 2)[0] for p in answers] == [1, 2, 3]
    assert answers[0][0] == 1  # XVideo answers its version
    assert (answers[1][0], answers[1][1], answers[1][10]) == (0, 1, 0), answers[1].hex()
    assert answers[2][0] == 1
