"""
The request filter: hidden extensions are taken out of a client's request stream, however the
stream is cut into reads, and nothing else changes.

Streams are built from an independent encoder written from the protocol: a setup request, then
requests with 16-bit lengths, and big requests (length 0, then a 32-bit length) after the
client sent BIG-REQUESTS' enable request.
"""

from __future__ import annotations

import struct

import attrs
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from x11passthrough._x11.requests import Hidden, RequestFilter


SHM_MAJOR = 130
DRI3_MAJOR = 149
BIGREQ_MAJOR = 133
XV_MAJOR = 150  # XVideo: its ShmPutImage (minor 19) reads MIT-SHM segments
XV_SHM_PUT_IMAGE = 19
OTHER_MAJORS = frozenset(range(128, 160)) - {SHM_MAJOR, DRI3_MAJOR, BIGREQ_MAJOR}
HIDDEN = Hidden(
    names=frozenset({b"MIT-SHM", b"DRI3"}),
    majors=frozenset({SHM_MAJOR, DRI3_MAJOR}),
    big_requests=BIGREQ_MAJOR,
    extensions=OTHER_MAJORS | {SHM_MAJOR, DRI3_MAJOR, BIGREQ_MAJOR},
    max_request=4194303,
    minors={XV_MAJOR: frozenset({XV_SHM_PUT_IMAGE})},
)


@attrs.frozen
class Request:
    """One encoded request and what the filter must make of it."""

    data: bytes
    expected: bytes
    enables_big: bool = False


def setup(order: bytes, name: bytes = b"MIT-MAGIC-COOKIE-1", cookie: bytes = b"c" * 16) -> bytes:
    fmt = ">" if order == b"B" else "<"
    head = order + b"\0" + struct.pack(fmt + "HHHHxx", 11, 0, len(name), len(cookie))
    return head + name + b"\0" * (-len(name) % 4) + cookie + b"\0" * (-len(cookie) % 4)


def request(order: bytes, major: int, minor: int, body: bytes, *, big: bool = False) -> bytes:
    """Encode a request; `body` is padded to a multiple of 4."""
    fmt = ">" if order == b"B" else "<"
    body += b"\0" * (-len(body) % 4)
    if big:
        return struct.pack(fmt + "BBHI", major, minor, 0, 2 + len(body) // 4) + body
    return struct.pack(fmt + "BBH", major, minor, 1 + len(body) // 4) + body


def query(order: bytes, name: bytes, *, big: bool = False) -> bytes:
    fmt = ">" if order == b"B" else "<"
    return request(order, 98, 0, struct.pack(fmt + "Hxx", len(name)) + name, big=big)


def hide_name(data: bytes, name: bytes) -> bytes:
    at = data.rindex(name)
    return data[:at] + b"\0" + data[at + 1 :]


def run(stream: bytes, cuts: list[int]) -> tuple[bytes, RequestFilter]:
    """Feed `stream` cut at `cuts` (sorted offsets); return what the filter let through."""
    request_filter = RequestFilter(HIDDEN)
    out = b""
    start = 0
    for end in [*cuts, len(stream)]:
        out += bytes(request_filter.feed(bytearray(stream[start:end])))
        start = end
    return out, request_filter


KINDS = [
    "plain",
    "unknown",
    "query",
    "hidden-query",
    "shm",
    "dri3",
    "bigreq",
    "bad-enable",
    "xv-shm",
]


@st.composite
def requests(draw: st.DrawFn, order: bytes) -> list[Request]:
    big = False
    made: list[Request] = []
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(KINDS))
        as_big = big and draw(st.booleans())
        if kind == "plain":
            majors = st.integers(1, 127).filter(lambda m: m != 98) | st.sampled_from(
                sorted(OTHER_MAJORS)
            )
            major = draw(majors)
            body = draw(st.binary(max_size=40))
            minor = draw(st.integers(0, 255))
            # GrabServer in big form closes the connection (the server may run it twice).
            data = request(
                order, major, minor, body, big=as_big and major not in HIDDEN.reexecuted
            )
            blocked = major == XV_MAJOR and minor == XV_SHM_PUT_IMAGE
            made.append(Request(data, b"\0" + data[1:] if blocked else data))
        elif kind == "xv-shm":
            data = request(
                order, XV_MAJOR, XV_SHM_PUT_IMAGE, draw(st.binary(max_size=52)), big=as_big
            )
            made.append(Request(data, b"\0" + data[1:]))
        elif kind == "unknown":
            major = draw(st.integers(160, 255))
            data = request(order, major, draw(st.integers(0, 255)), b"", big=as_big)
            made.append(Request(data, b"\0" + data[1:]))
        elif kind == "bad-enable":
            # Any other minor, or another length, enables nothing (BadRequest, BadLength).
            minor, body = draw(
                st.sampled_from([(1, b""), (0, b"xxxx"), (255, b""), (0, b"12345678")])
            )
            data = request(order, BIGREQ_MAJOR, minor, body)
            if draw(st.booleans()) and not big:
                data = data[:2] + b"\0\0"  # length 0: a 4-byte request
            made.append(Request(data, data))
        elif kind == "query":
            name = draw(st.sampled_from([b"RANDR", b"MIT-SHN", b"DRI2", b"XInputExtension"]))
            data = query(order, name, big=as_big)
            made.append(Request(data, data))
        elif kind == "hidden-query":
            name = draw(st.sampled_from([b"MIT-SHM", b"DRI3"]))
            data = query(order, name, big=as_big)
            made.append(Request(data, hide_name(data, name)))
        elif kind in ("shm", "dri3"):
            major = SHM_MAJOR if kind == "shm" else DRI3_MAJOR
            data = request(order, major, draw(st.integers(0, 20)), draw(st.binary(max_size=24)))
            if as_big:
                data = request(order, major, data[1], data[4:], big=True)
            made.append(Request(data, b"\0" + data[1:]))
        else:
            data = request(order, BIGREQ_MAJOR, 0, b"")
            made.append(Request(data, data, enables_big=True))
            big = True
    return made


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, bytes, list[int]]:
    order = draw(st.sampled_from([b"l", b"B"]))
    made = draw(requests(order))
    head = setup(order, cookie=draw(st.binary(max_size=20)))
    stream = head + b"".join(r.data for r in made)
    expected = head + b"".join(r.expected for r in made)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    return stream, expected, cuts


@given(streams())
@settings(max_examples=400, deadline=None)
def test_only_hidden_extensions_change_however_the_stream_is_cut(
    case: tuple[bytes, bytes, list[int]],
) -> None:
    stream, expected, cuts = case
    out, request_filter = run(stream, cuts)
    assert request_filter.problem is None
    assert out == expected


def test_a_query_for_mit_shm_finds_nothing_and_its_requests_become_bad_requests() -> None:
    stream = setup(b"l") + query(b"l", b"MIT-SHM") + request(b"l", SHM_MAJOR, 0, b"")
    stream += query(b"l", b"RANDR")
    out, request_filter = run(stream, [])
    assert b"MIT-SHM" not in out
    assert b"\0IT-SHM" in out
    assert b"RANDR" in out
    assert request_filter.queries_hidden == 1
    assert request_filter.requests_blocked == 1


def test_a_split_query_is_held_back_until_it_can_be_judged() -> None:
    head = setup(b"l")
    wanted = query(b"l", b"MIT-SHM")
    request_filter = RequestFilter(HIDDEN)
    assert bytes(request_filter.feed(bytearray(head + wanted[:10]))) == head
    assert bytes(request_filter.feed(bytearray(wanted[10:]))) == hide_name(wanted, b"MIT-SHM")


def test_a_large_request_passes_without_being_held() -> None:
    """A 1 MB PutImage-like request goes on read by read: only headers are looked at."""
    head = setup(b"l")
    image = request(b"l", BIGREQ_MAJOR, 0, b"") + request(
        b"l", 72, 2, b"\xab" * 1_000_000, big=True
    )
    request_filter = RequestFilter(HIDDEN)
    passed = [len(request_filter.feed(bytearray(head + image[:100])))]
    for start in range(100, len(image), 65536):
        chunk = bytearray(image[start : start + 65536])
        passed.append(len(request_filter.feed(chunk)))
        assert passed[-1] == len(chunk)
    assert sum(passed) == len(head) + len(image)


@pytest.mark.parametrize(
    ("stream", "problem"),
    [
        (
            request(b"l", BIGREQ_MAJOR, 0, b"") + struct.pack("<BBHI", 1, 0, 0, 1),
            "big request of 1 words",
        ),
        (
            request(b"l", BIGREQ_MAJOR, 0, b"") + struct.pack("<BBHI", 1, 0, 0, 0),
            "big request of 0 words",
        ),
        (
            request(b"l", BIGREQ_MAJOR, 0, b"") + struct.pack("<BBHI", 1, 0, 0, 4194304),
            "over the X server's maximum of 4194303",
        ),
        (
            request(b"l", BIGREQ_MAJOR, 0, b"") + struct.pack("<BBHI", 1, 0, 0, 0x40000001),
            "over the X server's maximum",
        ),
    ],
)
def test_a_stream_the_server_could_read_otherwise_closes_the_connection(
    stream: bytes, problem: str
) -> None:
    out, request_filter = run(setup(b"l") + stream, [])
    assert request_filter.problem is not None
    assert problem in request_filter.problem
    assert len(out) < len(setup(b"l") + stream)
    assert bytes(request_filter.feed(bytearray(b"more"))) == b""


def test_length_zero_without_big_requests_is_a_four_byte_request() -> None:
    """The server reads a 4-byte request (and answers BadLength); so does the filter."""
    stream = setup(b"l") + request(b"l", 43, 0, b"")[:2] + b"\0\0" + query(b"l", b"MIT-SHM")
    out, request_filter = run(stream, [])
    assert request_filter.problem is None
    assert out == hide_name(stream, b"MIT-SHM")
    assert request_filter.requests == 2


@pytest.mark.parametrize("order", [b"l", b"B"])
@pytest.mark.parametrize(
    "enable",
    [
        request(b"l", BIGREQ_MAJOR, 1, b""),  # minor 1: BadRequest
        request(b"l", BIGREQ_MAJOR, 0, b"pad!"),  # length 2: BadLength
        request(b"l", BIGREQ_MAJOR, 0, b"")[:2] + b"\0\0",  # length 0: BadLength
    ],
)
def test_a_malformed_enable_leaves_16_bit_lengths(order: bytes, enable: bytes) -> None:
    """
    Issue 17: the exploit's stream. The server stays with 16-bit lengths after a malformed
    BigReqEnable, so the length-0 request after it is 4 bytes and the QueryExtension after that
    is judged, wherever the reads are cut.
    """
    fmt = ">" if order == b"B" else "<"
    major, minor, words = struct.unpack("<BBH", enable[:4])
    enable = struct.pack(fmt + "BBH", major, minor, words) + enable[4:]
    zero = struct.pack(fmt + "BBH", 43, 0, 0)
    stream = setup(order) + enable + zero + query(order, b"MIT-SHM")
    stream += request(order, SHM_MAJOR, 1, b"\1\2\3\4" * 3)
    expected = hide_name(stream, b"MIT-SHM")
    at = len(expected) - 16
    expected = expected[:at] + b"\0" + expected[at + 1 :]
    for cut in range(len(stream) + 1):
        out, request_filter = run(stream, [cut])
        assert request_filter.problem is None
        assert out == expected
        assert request_filter.requests == 4


def test_unknown_extension_majors_become_bad_requests() -> None:
    stream = setup(b"l") + request(b"l", 200, 0, b"abcd") + request(b"l", 140, 0, b"")
    out, request_filter = run(stream, [])
    assert out == setup(b"l") + b"\0" + request(b"l", 200, 0, b"abcd")[1:] + stream[-4:]
    assert request_filter.requests_blocked == 1


def test_an_enable_the_server_refuses_the_relay_never_reaches_it() -> None:
    """An enable the server would not grant never reaches it: framing stays 16-bit."""
    no_big = RequestFilter(attrs.evolve(HIDDEN, max_request=0))
    enable = request(b"l", BIGREQ_MAJOR, 0, b"")
    stream = setup(b"l") + enable + struct.pack("<BBHI", 1, 0, 0, 3)
    out = bytes(no_big.feed(bytearray(stream)))
    assert no_big.problem is None
    assert out == setup(b"l") + b"\0" + enable[1:] + stream[-8:]
    assert no_big.requests == 3


def test_queries_for_refused_extensions_are_reported() -> None:
    asked: list[bytes] = []
    refused = attrs.evolve(HIDDEN, refused={b"GLX": "untrusted", b"MIT-SHM": "hidden"})
    request_filter = RequestFilter(refused, on_query=asked.append)
    stream = setup(b"B") + query(b"B", b"GLX") + query(b"B", b"MIT-SHM") + query(b"B", b"XKB")
    out = bytes(request_filter.feed(bytearray(stream)))
    assert asked == [b"GLX", b"MIT-SHM"]
    assert out == hide_name(stream, b"MIT-SHM")


@pytest.mark.parametrize("order", [b"l", b"B"])
def test_a_big_grab_server_closes_and_a_short_one_passes(order: bytes) -> None:
    """The server may run GrabServer twice and re-read a big one a word short: fail closed."""
    enable = request(order, BIGREQ_MAJOR, 0, b"")
    short = request(order, 36, 0, b"")
    request_filter = RequestFilter(HIDDEN)
    stream = setup(order) + enable + short
    assert bytes(request_filter.feed(bytearray(stream))) == stream
    assert request_filter.problem is None
    assert request_filter.requests == 2
    request_filter.feed(bytearray(request(order, 36, 0, b"", big=True)))
    assert request_filter.problem is not None
    assert "execute twice" in request_filter.problem


def test_a_big_randr_create_lease_closes_and_other_big_randr_requests_pass() -> None:
    """Xwayland runs CreateLease twice: only that RANDR minor closes in big form."""
    randr = 140
    hidden = attrs.evolve(HIDDEN, reexecuted_minors={randr: frozenset({45})})
    enable = request(b"l", BIGREQ_MAJOR, 0, b"")
    other = request(b"l", randr, 44, b"x" * 8, big=True)
    request_filter = RequestFilter(hidden)
    stream = setup(b"l") + enable + other
    assert bytes(request_filter.feed(bytearray(stream))) == stream
    assert request_filter.problem is None
    request_filter.feed(bytearray(request(b"l", randr, 45, b"x" * 12, big=True)))
    assert request_filter.problem is not None
