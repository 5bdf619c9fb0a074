"""
The request filter frames a client's stream exactly as a real X server does (issue 17).

A differential test: random and adversarial request streams (malformed ``BigReqEnable``,
length-0 requests, big and oversized lengths, hidden and unknown extension majors, the four
byte orders ``l``/``B``/``r``/``R``, ``QueryExtension`` of near-miss names (other case, a NUL
inside the length, a longer name, an alias no server registers), ``GrabServer`` pairs,
``XvShmPutImage``, big requests the server may run twice, cut anywhere across reads, pipelined)
go through :class:`RequestFilter` to a real Xvfb. Every request takes a sequence number on the
server, so the reply to a final ``GetInputFocus`` carries the number of requests the *server*
counted; it must be the filter's count. The server's answers also show that no request of a
hidden extension ran: each is a BadRequest for major 0, never a reply or an error naming
MIT-SHM's major.

The number of streams is ``X11P_FRAMING_STREAMS`` (default 3000, about 15 s here); the seed is
``X11P_FRAMING_SEED`` (default: random, printed on failure), so a failure can be replayed.
"""

from __future__ import annotations

import os
import random
import socket
import struct

from collections.abc import Callable, Iterator

import attrs
import pytest

from x11passthrough._x11.extensions import ServerExtensions, learn_extensions
from x11passthrough._x11.handshake import handshake
from x11passthrough._x11.requests import BIG_REQUESTS, Hidden, RequestFilter

from infra.xvfb import XServer


STREAMS = int(os.environ.get("X11P_FRAMING_STREAMS", "3000"))
SEED = int(os.environ.get("X11P_FRAMING_SEED", str(random.SystemRandom().randrange(2**32))))
COOKIE_NAME = b"MIT-MAGIC-COOKIE-1"
NO_OPERATION = 127
GET_INPUT_FOCUS = 43
GET_ATOM_NAME = 17
LIST_EXTENSIONS = 99
QUERY_EXTENSION = 98
GRAB_SERVER = 36
RR_CREATE_LEASE = 45
UNGRAB_SERVER = 37
BAD_REQUEST = 1
#: Names a QueryExtension must not find: the hidden ones, and near misses the server
#: compares exactly (case, a NUL inside the length, a longer name, an unknown alias).
NOT_FOUND = (
    b"MIT-SHM",
    b"DRI3",
    b"mit-shm",
    b"MIT-SHM\0",
    b"MIT-SHMX",
    b"XFree86-MIT-SHM",
    b"dri3",
)


@attrs.frozen
class Server:
    """What the stream generator knows of the server."""

    extensions: ServerExtensions
    hidden: Hidden
    shm: int
    big: int
    allowed: tuple[int, ...]
    unknown: tuple[int, ...]
    #: Requests the server may execute twice (GrabServer, XTEST, GLX, RANDR CreateLease), as
    #: major and minor (None: any): closed in big form.
    reexecuted: tuple[tuple[int, int | None], ...]
    #: XVideo's major: its ShmPutImage (minor 19) reads MIT-SHM segments, so it is refused.
    xv: int


@attrs.define
class Made:
    """A generated stream, and what the server must answer to it."""

    data: bytearray = attrs.field(factory=bytearray)
    count: int = 0
    #: Sequence numbers of requests that must be answered BadRequest for major 0.
    refused: set[int] = attrs.field(factory=set)
    #: Sequence numbers of QueryExtension requests that must find nothing.
    absent: set[int] = attrs.field(factory=set)
    #: Whether the filter must close the connection at the end of `data`.
    closes: bool = False


@pytest.fixture(name="server", scope="module")
def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[XServer, Server]]:
    from infra.xvfb import start_xvfb

    xvfb = start_xvfb(tmp_path_factory.mktemp("framing"))
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(xvfb.unix_path)
            assert handshake(sock, COOKIE_NAME, xvfb.cookie, timeout=10).status.name == "SUCCESS"
            found = learn_extensions(sock, timeout=10)
        hidden = found.hidden()
        shm = found.majors[b"MIT-SHM"]
        big = found.majors[BIG_REQUESTS]
        allowed = tuple(sorted(set(found.majors.values()) - {shm, big}))
        unknown = tuple(m for m in range(128, 256) if m not in found.majors.values())
        assert {GRAB_SERVER, found.majors[b"XTEST"], found.majors[b"GLX"]} <= hidden.reexecuted
        assert hidden.reexecuted_minors == {found.majors[b"RANDR"]: {RR_CREATE_LEASE}}
        reexecuted = (
            *((major, None) for major in sorted(hidden.reexecuted)),
            (found.majors[b"RANDR"], RR_CREATE_LEASE),
        )
        xv = found.majors[b"XVideo"]
        yield xvfb, Server(found, hidden, shm, big, allowed, unknown, reexecuted, xv)
    finally:
        xvfb.stop()


class Writer:
    """Encode requests in one byte order, and count them as the server will."""

    def __init__(self, order: bytes, made: Made) -> None:
        self.fmt = ">" if order in b"BR" else "<"
        self.made = made
        self.big = False

    def raw(self, data: bytes) -> int:
        self.made.data += data
        self.made.count += 1
        return self.made.count

    def request(self, major: int, minor: int, body: bytes) -> int:
        """A request with a 16-bit length."""
        body += b"\0" * (-len(body) % 4)
        return self.raw(struct.pack(self.fmt + "BBH", major, minor, 1 + len(body) // 4) + body)

    def zero(self, major: int, minor: int) -> int:
        """A length-0 request without BIG-REQUESTS: the server reads 4 bytes."""
        assert not self.big
        return self.raw(struct.pack(self.fmt + "BBH", major, minor, 0))

    def big_request(self, major: int, minor: int, body: bytes) -> int:
        body += b"\0" * (-len(body) % 4)
        return self.raw(struct.pack(self.fmt + "BBHI", major, minor, 0, 2 + len(body) // 4) + body)

    def query(self, name: bytes, *, big: bool = False, extra: int = 0) -> int:
        body = struct.pack(self.fmt + "Hxx", len(name)) + name + b"\0" * (-len(name) % 4)
        body += b"\0" * (4 * extra)
        if big:
            return self.big_request(QUERY_EXTENSION, 0, body)
        return self.request(QUERY_EXTENSION, 0, body)


def setup_request(order: bytes, cookie: bytes) -> bytes:
    fmt = ">" if order in b"BR" else "<"
    head = order + b"\0" + struct.pack(fmt + "HHHHxx", 11, 0, len(COOKIE_NAME), len(cookie))
    return head + COOKIE_NAME + b"\0" * (-len(COOKIE_NAME) % 4) + cookie


def generate(rng: random.Random, writer: Writer, server: Server) -> None:  # noqa: PLR0912
    """Append random requests to `writer`'s stream, as the server would count them."""
    made = writer.made
    if rng.random() < 0.25:
        # The exploit's shape: a malformed enable, a length-0 request, then MIT-SHM.
        writer.request(server.big, rng.choice([1, 2, 255]), b"")
        writer.zero(GET_INPUT_FOCUS, 0)
        made.absent.add(writer.query(b"MIT-SHM"))
        made.refused.add(writer.request(server.shm, 0, b""))
    for _ in range(rng.randint(0, 30)):
        kind = rng.random()
        big = writer.big
        if kind < 0.10:
            words = rng.choice([1, 1, 2, rng.randint(1, 300)])
            writer.request(NO_OPERATION, rng.randrange(256), rng.randbytes(4 * (words - 1)))
        elif kind < 0.15:
            writer.request(GET_INPUT_FOCUS, 0, bytes(4 * rng.choice([0, 0, 1])))
        elif kind < 0.18:
            writer.request(LIST_EXTENSIONS, 0, b"")
        elif kind < 0.21:
            writer.request(GET_ATOM_NAME, 0, struct.pack(writer.fmt + "I", rng.randrange(1, 80)))
        elif kind < 0.33:
            name = rng.choice([*NOT_FOUND, b"RANDR", b"MIT-SHN", b"XKEYBOARD", b"SHM"])
            extra = rng.choice([0, 0, 0, 1])
            sequence = writer.query(name, big=big and rng.random() < 0.5, extra=extra)
            if name in NOT_FOUND and not extra:
                made.absent.add(sequence)
        elif kind < 0.43:
            if big:
                major = rng.choice([NO_OPERATION, server.shm, rng.choice(server.unknown)])
                sequence = writer.big_request(major, 0, rng.randbytes(4 * rng.randint(0, 40)))
            else:
                unknown, allowed = rng.choice(server.unknown), rng.choice(server.allowed)
                major = rng.choice(
                    [NO_OPERATION, GET_INPUT_FOCUS, QUERY_EXTENSION, server.big, server.shm]
                )
                major = rng.choice([major, unknown, allowed])
                sequence = writer.zero(major, rng.choice([0, 0, 1]))
            if major == server.shm or major in server.unknown:
                made.refused.add(sequence)
        elif kind < 0.50:
            if server.extensions.max_request and rng.random() < 0.6:
                writer.request(server.big, 0, b"")
                writer.big = True
            else:
                minor, body = rng.choice([(1, b""), (7, b""), (0, b"abcd"), (0, b"12345678")])
                writer.request(server.big, minor, body)
        elif kind < 0.65:
            body = rng.randbytes(4 * rng.randint(0, 6))
            if big and rng.random() < 0.3:
                sequence = writer.big_request(server.shm, rng.randrange(8), body)
            else:
                sequence = writer.request(server.shm, rng.randrange(8), body)
            made.refused.add(sequence)
        elif kind < 0.75:
            body = rng.randbytes(4 * rng.randint(0, 3))
            made.refused.add(writer.request(rng.choice(server.unknown), rng.randrange(256), body))
        elif kind < 0.90:
            # Version queries (minor 0) of extensions the server offers, of random lengths.
            body = rng.randbytes(4 * rng.randint(0, 3))
            writer.request(rng.choice(server.allowed), 0, body)
        elif kind < 0.905 and big:
            # A large big request: 256 KB or more, beyond any 16-bit length.
            writer.big_request(NO_OPERATION, 0, bytes(4 * rng.randint(65536, 66000)))
        elif kind < 0.907:
            # XvShmPutImage (any length, big or not) is refused; XvQueryExtension answered.
            body = rng.randbytes(4 * rng.choice([12, 12, rng.randint(0, 14)]))
            if big and rng.random() < 0.3:
                made.refused.add(writer.big_request(server.xv, 19, body))
            else:
                made.refused.add(writer.request(server.xv, 19, body))
            writer.request(server.xv, 0, b"")
        elif kind < 0.91:
            # A grab and its release in 16-bit form: the server reads nothing differently.
            writer.request(GRAB_SERVER, 0, b"")
            writer.request(UNGRAB_SERVER, 0, b"")
        elif kind < 0.93 and big:
            if rng.random() < 0.5:
                words = rng.choice([0, 1, server.extensions.max_request + 1, 0x40000001])
                made.data += struct.pack(writer.fmt + "BBHI", NO_OPERATION, 0, 0, words)
            else:
                # A request the server may run twice, in big form: it would re-read it 4
                # bytes short (ResetCurrentRequest), so the filter closes.
                major, only = rng.choice(server.reexecuted)
                minor = rng.randrange(8) if only is None else only
                writer.big_request(major, minor, rng.randbytes(4 * rng.randint(0, 9)))
            made.closes = True
            return


def cuts(rng: random.Random, size: int) -> list[int]:
    """Where the stream is cut into reads: nowhere (pipelined), anywhere, or everywhere."""
    choice = rng.random()
    if choice < 0.3:
        return []
    if choice < 0.9:
        return sorted(rng.sample(range(size), min(size, rng.randint(1, 12))))
    return list(range(0, size, rng.randint(1, 4)))


def read_packet(sock: socket.socket, fmt: str) -> bytes:
    head = recv_exactly(sock, 32)
    if head[0] == 1:
        (extra,) = struct.unpack_from(fmt + "I", head, 4)
        recv_exactly(sock, 4 * extra)
    return head


def until_sync(
    sock: socket.socket, fmt: str, sync: int, index: int
) -> Iterator[tuple[int, bytes]]:
    """Yield the packets of stream `index`, with their numbers, up to the reply to `sync`."""
    while True:
        packet = read_packet(sock, fmt)
        (sequence,) = struct.unpack_from(fmt + "H", packet, 2)
        yield sequence, packet
        if packet[0] == 1 and sequence == sync:
            return
        assert sequence < sync, f"stream {index}: the server counted more requests"


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the X server closed the connection"
        data += chunk
    return bytes(data)


def run_stream(xvfb: XServer, server: Server, rng: random.Random, index: int) -> None:
    # r and R: the byte orders of a client the server marks not local; framed alike.
    order = rng.choice([b"l", b"B", b"l", b"B", b"r", b"R"])
    made = Made()
    writer = Writer(order, made)
    generate(rng, writer, server)
    request_filter = RequestFilter(server.hidden)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(20)
        sock.connect(xvfb.unix_path)
        setup = setup_request(order, xvfb.cookie)
        sock.sendall(request_filter.feed(bytearray(setup)))
        head = recv_exactly(sock, 8)
        assert head[0] == 1, f"stream {index}: the setup failed"
        recv_exactly(sock, 4 * struct.unpack_from(writer.fmt + "H", head, 6)[0])
        stream = bytes(made.data)
        start = 0
        for end in [*cuts(rng, len(stream)), len(stream)]:
            passed = request_filter.feed(bytearray(stream[start:end]))
            start = end
            if request_filter.problem is not None:
                break
            sock.sendall(passed)
        if made.closes:
            assert request_filter.problem is not None, f"stream {index}: not closed"
            assert request_filter.requests <= made.count
            return
        assert request_filter.problem is None, f"stream {index}: {request_filter.problem}"
        assert request_filter.requests == made.count, f"stream {index}"
        sync = writer.request(GET_INPUT_FOCUS, 0, b"")
        sock.sendall(request_filter.feed(bytearray(made.data[len(stream) :])))
        assert request_filter.requests == sync
        answers: dict[int, bytes] = {}
        for sequence, packet in until_sync(sock, writer.fmt, sync, index):
            assert packet[0] in (0, 1), f"stream {index}: an event {packet[0]}"
            if packet[0] == 0:
                assert packet[10] != server.shm, f"stream {index}: MIT-SHM reached the server"
            answers.setdefault(sequence, packet)
    for sequence in made.refused:
        refused = answers.get(sequence)
        assert refused is not None, f"stream {index}: request {sequence} was not refused"
        assert (refused[0], refused[1], refused[10]) == (0, BAD_REQUEST, 0), f"stream {index}"
    for sequence in made.absent:
        found = answers[sequence]
        assert (found[0], found[8]) == (1, 0), f"stream {index}: MIT-SHM was found"


def test_the_filter_counts_what_the_server_counts(server: tuple[XServer, Server]) -> None:
    xvfb, known = server
    assert known.extensions.max_request > 65535
    rng = random.Random(SEED)
    for index in range(STREAMS):
        try:
            run_stream(xvfb, known, rng, index)
        except (AssertionError, OSError) as e:
            raise AssertionError(f"X11P_FRAMING_SEED={SEED}: {e}") from e


# -- MIT-SHM granted: its requests pass, and each ShmAttach is judged where the server reads it


BAD_VALUE = 2
BAD_ACCESS = 10


@attrs.define
class Attaches:
    """What the server must answer to the attaches of a stream, by sequence number."""

    #: Attaches the relay refused: BadAccess for MIT-SHM's major, minor 1.
    refused: set[int] = attrs.field(factory=set)
    #: Attaches the relay let through, of a segment the server may attach: no error.
    attached: set[int] = attrs.field(factory=set)
    #: Whether the server mapped the allowed segment writable (None: not attached yet).
    writable: bool | None = None
    #: How many attaches the relay must have judged.
    judged: int = 0


def generate_shm(  # noqa: PLR0912, PLR0917 - one branch per kind of request
    rng: random.Random,
    writer: Writer,
    server: Server,
    attaches: Attaches,
    segments: tuple[int, int],
    new_id: Callable[[], int],
) -> None:
    """Append MIT-SHM requests (attaches of the allowed and the denied segment among them)."""
    allowed, denied = segments
    made = writer.made
    for _ in range(rng.randint(1, 30)):
        kind = rng.random()
        big = writer.big and rng.random() < 0.4
        if kind < 0.35:
            shmid = rng.choice(segments)
            read_only = rng.choice([0, 1, 1, 2])
            body = struct.pack(writer.fmt + "IIB", new_id(), shmid, read_only)
            if big:
                sequence = writer.big_request(server.shm, 1, body)
            else:
                sequence = writer.request(server.shm, 1, body)
            attaches.judged += read_only < 2
            if read_only < 2 and shmid == allowed:
                # The server keeps one mapping per segment: read-only if the first attach was,
                # and then it refuses a writable attach itself (BadAccess, as the relay does).
                if attaches.writable is None:
                    attaches.writable = not read_only
                if read_only or attaches.writable:
                    attaches.attached.add(sequence)
                else:
                    attaches.refused.add(sequence)
            elif read_only < 2:
                attaches.refused.add(sequence)
        elif kind < 0.45:
            # Attaches of the wrong length: BadLength, judged by nobody.
            body = struct.pack(writer.fmt + "II", new_id(), denied)
            body += rng.choice([b"", b"\0" * 8])
            writer.request(server.shm, 1, body)
        elif kind < 0.65:
            minor = rng.choice([0, 2, 8, rng.randrange(9, 256)])
            writer.request(server.shm, minor, rng.randbytes(4 * rng.randint(0, 6)))
        elif kind < 0.75:
            made.absent.discard(writer.query(b"MIT-SHM"))
        elif kind < 0.85 and not writer.big and server.extensions.max_request:
            writer.request(server.big, 0, b"")
            writer.big = True
        elif kind < 0.95:
            writer.request(NO_OPERATION, 0, rng.randbytes(4 * rng.randint(0, 20)))
        else:
            writer.request(GET_INPUT_FOCUS, 0, b"")


def run_shm_stream(
    xvfb: XServer, server: Server, rng: random.Random, index: int, segments: tuple[int, int]
) -> None:
    order = rng.choice([b"l", b"B"])
    made = Made()
    writer = Writer(order, made)
    attaches = Attaches()
    checked: list[tuple[int, bool]] = []

    def check(shmid: int, read_only: bool) -> bool:
        checked.append((shmid, read_only))
        return shmid == segments[0]

    request_filter = RequestFilter(server.hidden.granting_shm(), attach_check=check)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(20)
        sock.connect(xvfb.unix_path)
        sock.sendall(request_filter.feed(bytearray(setup_request(order, xvfb.cookie))))
        head = recv_exactly(sock, 8)
        assert head[0] == 1, f"stream {index}: the setup failed"
        body = recv_exactly(sock, 4 * struct.unpack_from(writer.fmt + "H", head, 6)[0])
        (base,) = struct.unpack_from(writer.fmt + "I", body, 4)
        ids = iter(range(base + 1, base + 100000))
        generate_shm(rng, writer, server, attaches, segments, lambda: next(ids))
        sync = writer.request(GET_INPUT_FOCUS, 0, b"")
        stream = bytes(made.data)
        start = 0
        for end in [*cuts(rng, len(stream)), len(stream)]:
            sock.sendall(request_filter.feed(bytearray(stream[start:end])))
            start = end
        assert request_filter.problem is None, f"stream {index}: {request_filter.problem}"
        assert request_filter.requests == sync, f"stream {index}"
        assert len(checked) == attaches.judged, f"stream {index}"
        errors: dict[int, bytes] = {}
        for sequence, packet in until_sync(sock, writer.fmt, sync, index):
            if packet[0] == 0:
                errors[sequence] = packet
    for sequence in attaches.refused:
        error = errors.get(sequence)
        assert error is not None, f"stream {index}: refused attach {sequence} ran"
        (minor,) = struct.unpack_from(writer.fmt + "H", error, 8)
        assert (error[1], error[10], minor) == (BAD_ACCESS, server.shm, 1), f"stream {index}"
    for sequence in attaches.attached:
        assert sequence not in errors, f"stream {index}: attach {sequence}: {errors[sequence]!r}"


def test_with_mit_shm_granted_attaches_are_judged_where_the_server_reads_them(
    server: tuple[XServer, Server], segments: Callable[[int], int]
) -> None:
    """
    The same differential test with MIT-SHM passed on: the server (root) would attach both
    segments; the one the check refuses must come back BadAccess at its own sequence number.
    """
    xvfb, known = server
    pair = (segments(0o600), segments(0o600))
    rng = random.Random(SEED)
    for index in range(max(1, STREAMS // 6)):
        try:
            run_shm_stream(xvfb, known, rng, index, pair)
        except (AssertionError, OSError) as e:
            raise AssertionError(f"X11P_FRAMING_SEED={SEED}: {e}") from e
