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
HIDDEN = Hidden(
    names=frozenset({b"MIT-SHM", b"DRI3"}),
    majors=frozenset({SHM_MAJOR, DRI3_MAJOR}),
    big_requests=BIGREQ_MAJOR,
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


@st.composite
def requests(draw: st.DrawFn, order: bytes) -> list[Request]:
    big = False
    made: list[Request] = []
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["plain", "query", "hidden-query", "shm", "dri3", "bigreq"]))
        as_big = big and draw(st.booleans())
        if kind == "plain":
            major = draw(st.integers(1, 255).filter(lambda m: m not in (98, 130, 133, 149)))
            body = draw(st.binary(max_size=40))
            data = request(order, major, draw(st.integers(0, 255)), body, big=as_big)
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
        (request(b"l", 1, 0, b"")[:2] + b"\0\0" + b"x" * 8, "length 0 without enabling"),
        (
            request(b"l", BIGREQ_MAJOR, 0, b"") + struct.pack("<BBHI", 1, 0, 0, 1),
            "big request of 1 words",
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


def test_without_big_requests_on_the_server_length_zero_is_refused() -> None:
    no_big = RequestFilter(attrs.evolve(HIDDEN, big_requests=None))
    stream = setup(b"l") + request(b"l", BIGREQ_MAJOR, 0, b"") + struct.pack("<BBHI", 1, 0, 0, 3)
    no_big.feed(bytearray(stream + b"\0" * 4))
    assert no_big.problem is not None
