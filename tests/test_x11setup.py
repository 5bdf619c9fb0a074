"""The X11 setup message: encoding, parsing, the setup-reply parser and the CookieGate table."""

from __future__ import annotations

import random
import struct

from collections.abc import Iterable

import pytest

from x11passthrough._x11.gate import Accept, CookieGate, Reject
from x11passthrough._x11.wire import (
    MAX_AUTH_DATA_LENGTH,
    MAX_AUTH_NAME_LENGTH,
    MAX_SETUP_SIZE,
    MIT_MAGIC_COOKIE_1,
    SetupReply,
    SetupRequest,
    SetupStatus,
    encode_setup_request,
    failed_reply,
    parse_setup_reply,
)
from x11passthrough.exceptions import X11SetupError


FAKE = bytes.fromhex("0123456789abcdef0123456789abcdef")
REAL = bytes.fromhex("fedcba9876543210fedcba9876543210")
L, B, LR, BR = b"lBrR"[0], b"lBrR"[1], b"lBrR"[2], b"lBrR"[3]
ORDERS = [L, B, LR, BR]
# A GetInputFocus request (opcode 43, length 1) in little-endian: what a client sends next.
NEXT_REQUEST = bytes([43, 0, 1, 0])


def raw_request(
    order: int,
    name: bytes,
    data: bytes,
    *,
    major: int = 11,
    minor: int = 0,
    name_length: int | None = None,
    data_length: int | None = None,
    pad: int = 0,
) -> bytes:
    """Encode a setup request by hand, optionally lying about lengths or with non-zero pads."""
    fmt = ">" if order in b"BR" else "<"
    n = len(name) if name_length is None else name_length
    d = len(data) if data_length is None else data_length
    prefix = struct.pack(fmt + "BBHHHHH", order, pad, major, minor, n, d, pad * 257)
    return prefix + name + bytes([pad]) * (-len(name) % 4) + data + bytes([pad]) * (-len(data) % 4)


def gate(**changes: object) -> CookieGate:
    """The gate under test: fake cookie in, real cookie out."""
    options: dict[str, object] = {
        "expected_data": FAKE,
        "replacement_name": MIT_MAGIC_COOKIE_1,
        "replacement_data": REAL,
    }
    options.update(changes)
    return CookieGate(**options)  # type: ignore[arg-type]


def feed(judge: CookieGate, chunks: Iterable[bytes]) -> tuple[Accept | Reject | None, int]:
    """Feed chunks the way the relay does; return the verdict and the bytes it needed."""
    received = b""
    for chunk in chunks:
        received += chunk
        verdict = judge(received)
        if verdict is not None:
            return verdict, len(received)
    return None, len(received)


def one_at_a_time(message: bytes) -> list[bytes]:
    """Split a message into single bytes."""
    return [message[i : i + 1] for i in range(len(message))]


# --- encoding ---------------------------------------------------------------------------------


def test_encode_matches_the_protocol_example() -> None:
    """The 48-byte little-endian MIT example from the protocol encoding, byte for byte."""
    expected = (
        bytes.fromhex("6c000b0000001200100000 00".replace(" ", ""))
        + b"MIT-MAGIC-COOKIE-1\0\0"
        + FAKE
    )
    assert encode_setup_request(L, MIT_MAGIC_COOKIE_1, FAKE) == expected
    assert len(expected) == 48


def test_encode_big_endian_and_padding() -> None:
    """MSB-first lengths, and name and data each padded to 4 bytes with zeros."""
    encoded = encode_setup_request(BR, b"abcde", b"\x01\x02", major=11, minor=0)
    assert encoded == b"R\0\0\x0b\0\0\0\x05\0\x02\0\0abcde\0\0\0\x01\x02\0\0"
    assert SetupRequest(BR, 11, 0, b"abcde", b"\x01\x02").size == len(encoded) == 24


def test_encode_no_authorization_is_the_bare_prefix() -> None:
    """Empty name and data ("no explicit authorization") is just the 12-byte prefix."""
    assert encode_setup_request(L, b"", b"") == b"l\0\x0b\0\0\0\0\0\0\0\0\0"


@pytest.mark.parametrize("order", ORDERS, ids=chr)
def test_parse_round_trips_every_byte_order(order: int) -> None:
    """parse(encode(x)) == x for l, B, r and R, including the version numbers."""
    request = SetupRequest(order, 11, 7, MIT_MAGIC_COOKIE_1, FAKE)
    assert SetupRequest.parse(request.encode()) == request
    assert SetupRequest.parse(request.encode() + b"later requests") == request


def test_parse_ignores_pad_contents() -> None:
    """Non-zero pad and unused bytes are accepted; re-encoding writes zeros."""
    message = raw_request(B, b"abcde", b"\x01\x02", pad=0xAA)
    request = SetupRequest.parse(message)
    assert request == SetupRequest(B, 11, 0, b"abcde", b"\x01\x02")
    assert request.encode() == encode_setup_request(B, b"abcde", b"\x01\x02")


def test_parse_passes_any_protocol_version_through() -> None:
    """A wrong version is the server's to judge: it is parsed and kept, not refused."""
    message = raw_request(L, MIT_MAGIC_COOKIE_1, FAKE, major=10, minor=99)
    request = SetupRequest.parse(message)
    assert request is not None
    assert (request.major, request.minor) == (10, 99)


def test_parse_needs_every_byte() -> None:
    """Every proper prefix of a request is "need more"; the whole request parses."""
    message = encode_setup_request(L, MIT_MAGIC_COOKIE_1, FAKE)
    for end in range(len(message)):
        assert SetupRequest.parse(message[:end]) is None, end
    assert SetupRequest.parse(message) is not None


def test_parse_rejects_a_bad_first_byte_at_once() -> None:
    """One byte that is not l/B/r/R is enough to refuse, and the message names it."""
    with pytest.raises(X11SetupError, match=r"invalid byte-order byte 0x47 .*'l', 'B'"):
        SetupRequest.parse(b"G")


@pytest.mark.parametrize("order", [L, B])
def test_parse_rejects_absurd_lengths_from_the_prefix(order: int) -> None:
    """An oversized name is refused with 8 bytes in, oversized data with 10 bytes in."""
    long_name = raw_request(order, b"", b"", name_length=MAX_AUTH_NAME_LENGTH + 1)
    assert SetupRequest.parse(long_name[:7]) is None
    with pytest.raises(X11SetupError, match=r"too large: .*name of 65 bytes \(the limit is 64\)"):
        SetupRequest.parse(long_name[:8])
    long_data = raw_request(order, b"", b"", data_length=0xFFFF)
    assert SetupRequest.parse(long_data[:9]) is None
    with pytest.raises(X11SetupError, match=r"too large: .*data of 65535 bytes"):
        SetupRequest.parse(long_data[:10])


def test_parse_accepts_the_largest_allowed_request() -> None:
    """A name and data exactly at the limits fill MAX_SETUP_SIZE bytes and parse."""
    name, data = b"N" * MAX_AUTH_NAME_LENGTH, b"D" * MAX_AUTH_DATA_LENGTH
    message = encode_setup_request(L, name, data)
    assert len(message) == MAX_SETUP_SIZE
    assert SetupRequest.parse(message) == SetupRequest(L, 11, 0, name, data)


def test_request_repr_hides_the_cookie() -> None:
    """The repr shows the byte order as a letter and the data only by its length."""
    text = repr(SetupRequest(L, 11, 0, MIT_MAGIC_COOKIE_1, FAKE))
    assert "auth_data=<16 bytes hidden>" in text
    assert "byte_order='l'" in text
    assert FAKE.hex() not in text
    assert repr(FAKE)[2:-1] not in text


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"byte_order": 0x41}, "invalid byte-order byte 0x41"),
        ({"byte_order": "l"}, "invalid byte-order byte 'l'"),
        ({"major": 70000}, "invalid protocol major version 70000"),
        ({"minor": -1}, "invalid protocol minor version -1"),
        ({"auth_name": b"x" * 65}, "name of 65 bytes"),
        ({"auth_data": b"x" * 1025}, "data of 1025 bytes"),
        ({"auth_data": "cookie"}, "auth_data must be bytes, not str"),
        ({"auth_name": bytearray(b"x")}, "auth_name must be bytes, not bytearray"),
    ],
)
def test_request_construction_is_checked(fields: dict[str, object], message: str) -> None:
    """Out-of-range fields raise X11SetupError naming the value."""
    values: dict[str, object] = {"byte_order": L, "auth_name": b"", "auth_data": b""}
    values.update(fields)
    with pytest.raises(X11SetupError, match=message):
        SetupRequest(**values)  # type: ignore[arg-type]


def test_with_auth_returns_a_resized_copy() -> None:
    """with_auth changes only the authorization; size follows the new lengths."""
    original = SetupRequest(BR, 11, 0, MIT_MAGIC_COOKIE_1, FAKE)
    bare = original.with_auth(b"", b"")
    assert (bare.byte_order, bare.major, bare.minor) == (BR, 11, 0)
    assert (bare.auth_name, bare.auth_data, bare.size) == (b"", b"", 12)
    assert original.auth_data == FAKE
    with pytest.raises(X11SetupError, match="data of 2000 bytes"):
        original.with_auth(b"X", bytes(2000))


# --- setup replies ----------------------------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS, ids=chr)
def test_failed_reply_round_trips(order: int) -> None:
    """failed_reply in the client's byte order parses back to the same reason and length."""
    reply = failed_reply("x11passthrough: test reason", order)
    assert len(reply) == 8 + 28
    parsed = parse_setup_reply(reply + b"trailing", byte_order=order)
    assert parsed == SetupReply(SetupStatus.FAILED, 11, 0, "x11passthrough: test reason", 36)
    for end in range(len(reply)):
        assert parse_setup_reply(reply[:end], byte_order=order) is None


def test_failed_reply_uses_the_client_byte_order() -> None:
    """The length fields are MSB first for B/R clients and LSB first otherwise."""
    assert failed_reply("abcd", BR)[:8] == bytes([0, 4, 0, 11, 0, 0, 0, 1])
    assert failed_reply("abcd", LR)[:8] == bytes([0, 4, 11, 0, 0, 0, 1, 0])
    assert failed_reply("abcd", 0x00)[:8] == bytes([0, 4, 11, 0, 0, 0, 1, 0])


def test_failed_reply_is_ascii_and_bounded() -> None:
    """Non-ASCII becomes '?', and the reason is cut to the protocol's 255 bytes."""
    reply = failed_reply("\u00e9" * 300)
    assert len(reply) == 8 + 256
    assert parse_setup_reply(reply) == SetupReply(SetupStatus.FAILED, 11, 0, "?" * 255, 264)


def test_gate_shortens_a_long_protocol_name_in_the_reason() -> None:
    """An untrusted 64-byte name is shown cut to 40 characters."""
    verdict = gate()(encode_setup_request(L, b"A" * 64, FAKE))
    assert isinstance(verdict, Reject)
    assert f"protocol '{'A' * 40}...' (only" in verdict.reason


def test_parse_authenticate_and_success_replies() -> None:
    """Authenticate: the reason is the NUL-padded body; Success: status and size only."""
    authenticate = bytes([2, 0, 0, 0, 0, 0, 2, 0]) + b"more\0\0\0\0"
    assert parse_setup_reply(authenticate) == SetupReply(
        SetupStatus.AUTHENTICATE, 0, 0, "more", 16
    )
    success = struct.pack(">BBHHH", 1, 0, 11, 0, 1) + b"\0\0\0\x01"
    assert parse_setup_reply(success, byte_order=B) == SetupReply(
        SetupStatus.SUCCESS, 11, 0, "", 12
    )


def test_parse_reply_refuses_garbage() -> None:
    """An unknown status, a reason longer than the reply, or a bad byte order raise."""
    with pytest.raises(X11SetupError, match="unknown X11 setup reply status 72"):
        parse_setup_reply(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(X11SetupError, match="reason of 9 bytes in a reply of 12 bytes"):
        parse_setup_reply(bytes([0, 9, 11, 0, 0, 0, 1, 0]) + b"abcd")
    with pytest.raises(X11SetupError, match="invalid byte-order byte 0x00"):
        parse_setup_reply(failed_reply("x"), byte_order=0)


# --- the gate ---------------------------------------------------------------------------------


def expected_forward(order: int, name: bytes, data: bytes, rest: bytes = b"") -> bytes:
    """What the gate must send upstream."""
    return encode_setup_request(order, name, data) + rest


@pytest.mark.parametrize("order", ORDERS, ids=chr)
def test_gate_swaps_the_fake_cookie_for_the_real_one(order: int) -> None:
    """The fake cookie becomes the real one, in the client's byte order, lengths re-encoded."""
    verdict = gate()(encode_setup_request(order, MIT_MAGIC_COOKIE_1, FAKE))
    assert verdict == Accept(expected_forward(order, MIT_MAGIC_COOKIE_1, REAL))


@pytest.mark.parametrize("order", ORDERS, ids=chr)
def test_gate_can_forward_no_authorization(order: int) -> None:
    """With an empty replacement, the forwarded block shrinks to the 12-byte prefix."""
    verdict = gate(replacement_name=b"", replacement_data=b"")(
        encode_setup_request(order, MIT_MAGIC_COOKIE_1, FAKE) + NEXT_REQUEST
    )
    assert verdict == Accept(expected_forward(order, b"", b"", NEXT_REQUEST))
    assert isinstance(verdict, Accept)
    assert len(verdict.forward) == 12 + len(NEXT_REQUEST)


def test_gate_accepts_longer_replacements_and_odd_pads() -> None:
    """The replacement may differ in length; non-zero pads in the client's message are fine."""
    message = raw_request(B, MIT_MAGIC_COOKIE_1, FAKE, pad=0x5A) + b"rest"
    verdict = gate(replacement_data=REAL * 3)(message)
    assert verdict == Accept(expected_forward(B, MIT_MAGIC_COOKIE_1, REAL * 3, b"rest"))


@pytest.mark.parametrize("order", [L, B, LR, BR], ids=["l", "B", "r", "R"])
def test_gate_keeps_the_byte_order(order: int) -> None:
    """The client's byte-order byte is forwarded as sent."""
    message = encode_setup_request(order, MIT_MAGIC_COOKIE_1, FAKE)
    assert gate()(message) == Accept(expected_forward(order, MIT_MAGIC_COOKIE_1, REAL))


def test_gate_admits_no_auth_only_where_told() -> None:
    """admit_without_auth takes a client without authorization; a wrong cookie stays refused."""
    anonymous = encode_setup_request(L, b"", b"")
    assert isinstance(gate()(anonymous), Reject)
    assert gate(admit_without_auth=True)(anonymous) == Accept(
        expected_forward(L, MIT_MAGIC_COOKIE_1, REAL)
    )
    wrong = encode_setup_request(L, MIT_MAGIC_COOKIE_1, bytes(16))
    assert isinstance(gate(admit_without_auth=True)(wrong), Reject)


def test_gate_keeps_the_protocol_version() -> None:
    """A wrong version is forwarded as sent; the server answers it."""
    message = raw_request(L, MIT_MAGIC_COOKIE_1, FAKE, major=12, minor=3)
    verdict = gate()(message)
    assert isinstance(verdict, Accept)
    assert verdict.forward == SetupRequest(L, 12, 3, MIT_MAGIC_COOKIE_1, REAL).encode()


def flipped(data: bytes, index: int) -> bytes:
    """`data` with one bit of byte `index` flipped."""
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


REJECTS = [
    # id, message, reason, bytes needed for the verdict
    (
        "wrong-cookie",
        encode_setup_request(L, MIT_MAGIC_COOKIE_1, flipped(FAKE, 15)),
        "x11passthrough: wrong authorization cookie",
        48,
    ),
    (
        "real-cookie-instead-of-fake",
        encode_setup_request(B, MIT_MAGIC_COOKIE_1, REAL),
        "x11passthrough: wrong authorization cookie",
        48,
    ),
    (
        "short-cookie",
        encode_setup_request(L, MIT_MAGIC_COOKIE_1, FAKE[:15]),
        "x11passthrough: wrong authorization cookie",
        48,
    ),
    (
        "long-cookie",
        encode_setup_request(LR, MIT_MAGIC_COOKIE_1, FAKE + b"\0"),
        "x11passthrough: wrong authorization cookie",
        52,
    ),
    (
        "no-cookie",
        encode_setup_request(L, b"", b""),
        "x11passthrough: no authorization: this display needs the session cookie (set XAUTHORITY)",
        12,
    ),
    (
        "cookie-without-name",
        encode_setup_request(L, b"", FAKE),
        "x11passthrough: unsupported authorization protocol '' "
        "(only 'MIT-MAGIC-COOKIE-1' is accepted)",
        28,
    ),
    (
        "xdm",
        encode_setup_request(BR, b"XDM-AUTHORIZATION-1", bytes(24)),
        "x11passthrough: unsupported authorization protocol 'XDM-AUTHORIZATION-1' "
        "(only 'MIT-MAGIC-COOKIE-1' is accepted)",
        56,
    ),
    (
        "name-with-control-bytes",
        encode_setup_request(L, b"MIT\n'\xff", FAKE),
        "x11passthrough: unsupported authorization protocol 'MIT\\x0a\\x27\\xff' "
        "(only 'MIT-MAGIC-COOKIE-1' is accepted)",
        36,
    ),
    (
        "bad-byte-order",
        b"GET / HTTP/1.1\r\n\r\n",
        "x11passthrough: invalid byte-order byte 0x47 "
        "(an X11 client starts with 'l', 'B', 'r' or 'R')",
        1,
    ),
    (
        "tls-hello",
        bytes.fromhex("16030100f8010000f40303"),
        "x11passthrough: invalid byte-order byte 0x16 "
        "(an X11 client starts with 'l', 'B', 'r' or 'R')",
        1,
    ),
    (
        "absurd-name-length",
        raw_request(B, b"", b"", name_length=0x4000),
        "x11passthrough: setup message too large: authorization protocol name of 16384 bytes "
        "(the limit is 64)",
        8,
    ),
    (
        "absurd-data-length",
        raw_request(L, MIT_MAGIC_COOKIE_1, b"", data_length=0xFFFF),
        "x11passthrough: setup message too large: authorization data of 65535 bytes "
        "(the limit is 1024)",
        10,
    ),
]


@pytest.mark.parametrize(
    ("message", "reason", "needed"),
    [case[1:] for case in REJECTS],
    ids=[case[0] for case in REJECTS],
)
def test_gate_rejects_with_a_readable_reason(message: bytes, reason: str, needed: int) -> None:
    """Each bad message is refused as soon as its bytes prove it, with a Failed reply."""
    verdict, used = feed(gate(), one_at_a_time(message))
    assert isinstance(verdict, Reject)
    assert verdict.reason == reason
    assert used == needed
    # The Failed reply is in the client's byte order (little-endian for unknown first bytes).
    order = message[0] if message[0] in b"lBrR" else L
    assert verdict.reply == failed_reply(reason, order)
    parsed = parse_setup_reply(verdict.reply, byte_order=order)
    assert parsed is not None
    assert parsed.status is SetupStatus.FAILED
    assert parsed.reason == reason
    # More bytes never change the verdict.
    assert gate()(message + bytes(200)) == verdict


def test_gate_verdict_independent_of_read_sizes() -> None:
    """Any split of a valid message (plus later requests) gives None until complete, then the
    same Accept: every prefix, one byte at a time, and 200 random splits."""
    judge = gate()
    message = encode_setup_request(L, MIT_MAGIC_COOKIE_1, FAKE)
    stream = message + NEXT_REQUEST * 3
    for end in range(len(message)):
        assert judge(stream[:end]) is None, end
    whole = judge(stream)
    assert whole == Accept(expected_forward(L, MIT_MAGIC_COOKIE_1, REAL, NEXT_REQUEST * 3))
    # Whatever arrived together with the last setup byte is forwarded too.
    verdict, used = feed(judge, one_at_a_time(stream))
    assert (verdict, used) == (judge(message), len(message))
    rng = random.Random(1234)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randrange(1, 8)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        verdict, used = feed(judge, chunks)
        assert isinstance(verdict, Accept)
        assert verdict.forward == expected_forward(
            L, MIT_MAGIC_COOKIE_1, REAL, stream[len(message) : used]
        )


@pytest.mark.parametrize("order", ORDERS, ids=chr)
def test_gate_waits_on_a_truncated_message(order: int) -> None:
    """A message that never completes stays "need more" (the relay's timeout ends it)."""
    message = encode_setup_request(order, MIT_MAGIC_COOKIE_1, FAKE)[:-1]
    verdict, used = feed(gate(), one_at_a_time(message))
    assert verdict is None
    assert used == len(message)


def test_gate_decides_within_the_size_limit() -> None:
    """After MAX_SETUP_SIZE bytes there is always a verdict, even for random input."""
    rng = random.Random(99)
    judge = gate()
    for _ in range(300):
        noise = bytes([rng.choice(b"lBrR")]) + rng.randbytes(MAX_SETUP_SIZE - 1)
        assert judge(noise) is not None


def test_gate_never_raises_on_broken_input() -> None:
    """Even input that fails to index becomes a Reject (fail closed), not an exception."""

    class Exploding(bytes):
        def __getitem__(self, index: object) -> int:  # type: ignore[override]
            raise RuntimeError("simulated fault")

    verdict = gate()(Exploding(b"l"))
    assert isinstance(verdict, Reject)
    assert verdict.reason == "x11passthrough: internal error while checking the setup message"
    assert parse_setup_reply(verdict.reply) is not None


def test_gate_accepts_bytearray_and_memoryview() -> None:
    """A relay may pass its receive buffer directly; the forward is always bytes."""
    message = encode_setup_request(L, MIT_MAGIC_COOKIE_1, FAKE) + b"xyz"
    expected = Accept(expected_forward(L, MIT_MAGIC_COOKIE_1, REAL, b"xyz"))
    for buffer in (bytearray(message), memoryview(message)):
        verdict = gate()(buffer)  # type: ignore[arg-type]
        assert verdict == expected
        assert isinstance(verdict, Accept)
        assert type(verdict.forward) is bytes


def test_gate_repr_and_str_hide_cookies() -> None:
    """Neither repr nor str shows the fake or the real cookie, in any spelling."""
    judge = gate()
    for text in (repr(judge), str(judge), repr(judge(encode_setup_request(L, b"", b"")))):
        for secret in (FAKE, REAL):
            assert secret.hex() not in text
            assert secret.hex().upper() not in text
            assert repr(secret)[2:-1] not in text
    assert "expected_data=<16 bytes hidden>" in repr(judge)
    accept = judge(encode_setup_request(L, MIT_MAGIC_COOKIE_1, FAKE))
    assert repr(accept) == "Accept()"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"expected_data": b""}, "expected cookie name and data must not be empty"),
        ({"expected_name": b""}, "expected cookie name and data must not be empty"),
        ({"expected_data": "ab"}, "expected cookie name and data must be bytes"),
        ({"replacement_name": b""}, "replacement cookie data given without a protocol name"),
        ({"replacement_data": bytes(1025)}, "replacement cookie is too long"),
        ({"expected_name": b"N" * 65}, "expected cookie is too long: name of 65 bytes"),
    ],
)
def test_gate_construction_is_checked(changes: dict[str, object], message: str) -> None:
    """A misconfigured gate raises X11SetupError, without echoing cookie bytes."""
    with pytest.raises(X11SetupError, match=message) as caught:
        gate(**changes)
    assert FAKE.hex() not in str(caught.value)
    assert REAL.hex() not in str(caught.value)


def test_gate_options_are_keyword_only() -> None:
    """Positional construction is refused, so cookies cannot be swapped by argument order."""
    with pytest.raises(TypeError):
        CookieGate(FAKE, MIT_MAGIC_COOKIE_1, REAL)  # type: ignore[call-arg]
