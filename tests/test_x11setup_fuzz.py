"""
Fuzzing the CookieGate: it admits exactly the fake cookie, and never raises.

Each message is checked against an independent reference decoder written from the protocol
encoding (12-byte prefix, padded name and data, client byte order) plus the documented limits.
"""

from __future__ import annotations

import random
import struct

from collections import Counter
from typing import Literal

import attrs
import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from x11passthrough._x11.gate import Accept, CookieGate, Reject
from x11passthrough._x11.wire import (
    MAX_AUTH_DATA_LENGTH,
    MAX_AUTH_NAME_LENGTH,
    MIT_MAGIC_COOKIE_1,
    SetupStatus,
    parse_setup_reply,
)


SEED = 20240611
FUZZ_MESSAGES = 120_000
FAKE = random.Random(SEED).randbytes(16)
REAL = random.Random(SEED + 1).randbytes(16)
GATES = [
    CookieGate(expected_data=FAKE, replacement_name=MIT_MAGIC_COOKIE_1, replacement_data=REAL),
    CookieGate(expected_data=FAKE, replacement_name=b"", replacement_data=b""),
    CookieGate(
        expected_data=FAKE,
        replacement_name=b"XDM-AUTHORIZATION-1",
        replacement_data=REAL + REAL[:8],
        admit_without_auth=True,
    ),
]


@attrs.frozen
class Decoded:
    """What the reference decoder makes of a message."""

    state: str  # "short": valid so far, "invalid": refused, "complete"
    order: int = 0
    major: int = 0
    minor: int = 0
    name: bytes = b""
    data: bytes = b""
    size: int = 0


def decode(message: bytes) -> Decoded:
    """Reference decoder, independent of the code under test."""
    if message[:1] and message[0] not in b"lBrR":
        return Decoded("invalid")
    endian: Literal["little", "big"] = "big" if message[:1] in {b"B", b"R"} else "little"
    n = int.from_bytes(message[6:8], endian) if len(message) >= 8 else None
    d = int.from_bytes(message[8:10], endian) if len(message) >= 10 else None
    if (n or 0) > MAX_AUTH_NAME_LENGTH or (d or 0) > MAX_AUTH_DATA_LENGTH:
        return Decoded("invalid")
    if n is None or d is None or len(message) < 12 + pad4(n) + pad4(d):
        return Decoded("short")
    return Decoded(
        "complete",
        message[0],
        int.from_bytes(message[2:4], endian),
        int.from_bytes(message[4:6], endian),
        message[12 : 12 + n],
        message[12 + pad4(n) : 12 + pad4(n) + d],
        12 + pad4(n) + pad4(d),
    )


def pad4(length: int) -> int:
    """Round up to a multiple of 4."""
    return (length + 3) // 4 * 4


def check(judge: CookieGate, message: bytes) -> str:
    """Run the gate on one message, assert every invariant, and name the verdict."""
    verdict = judge(message)  # must not raise: any exception fails the test
    ref = decode(message)
    carries_fake = ref.state == "complete" and (ref.name, ref.data) in {
        (judge.expected_name, judge.expected_data),
        *([(b"", b"")] if judge.admit_without_auth else []),
    }
    if verdict is None:
        assert ref.state == "short", message.hex()
        return "none"
    if isinstance(verdict, Accept):
        assert carries_fake, message.hex()
        forwarded = decode(verdict.forward)
        assert forwarded.state == "complete"
        assert (forwarded.name, forwarded.data) == (judge.replacement_name, judge.replacement_data)
        assert (forwarded.order, forwarded.major, forwarded.minor) == (
            ref.order,
            ref.major,
            ref.minor,
        )
        assert verdict.forward[forwarded.size :] == message[ref.size :]
        return "accept"
    assert isinstance(verdict, Reject)
    assert not carries_fake, message.hex()
    assert ref.state in {"invalid", "complete"}
    assert verdict.reason.startswith("x11passthrough: ")
    reply_order = message[0] if message[0] in b"lBrR" else ord("l")
    reply = parse_setup_reply(verdict.reply, byte_order=reply_order)
    assert reply is not None
    assert reply.status is SetupStatus.FAILED
    assert reply.reason == verdict.reason[:255]
    assert reply.size == len(verdict.reply)
    return "reject"


def check_prefix_stability(judge: CookieGate, message: bytes, cut: int) -> None:
    """A verdict reached on a prefix is the verdict for the longer message too."""
    early = judge(message[:cut])
    if early is None:
        return
    late = judge(message)
    if isinstance(early, Accept):
        assert late == Accept(early.forward + message[cut:])
    else:
        assert late == early


def encode_raw(
    order: int, name: bytes, data: bytes, *, pad: int, lengths: tuple[int, int]
) -> bytes:
    """Encode a setup request by hand with chosen pad bytes and (possibly lying) lengths."""
    fmt = ">" if order in b"BR" else "<"
    prefix = struct.pack(fmt + "BBHHHH", order, pad, 11, 0, *lengths) + bytes([pad, pad])
    return prefix + name + bytes([pad]) * (-len(name) % 4) + data + bytes([pad]) * (-len(data) % 4)


NAMES = [
    MIT_MAGIC_COOKIE_1,
    b"",
    b"XDM-AUTHORIZATION-1",
    b"MIT-MAGIC-COOKIE-2",
    MIT_MAGIC_COOKIE_1[:-1],
    MIT_MAGIC_COOKIE_1 + b"\0",
    MIT_MAGIC_COOKIE_1.lower(),
]


def random_data(rng: random.Random) -> bytes:
    """A cookie: mostly the fake one or a near miss."""
    choice = rng.randrange(8)
    if choice <= 2:
        return FAKE
    if choice == 3:
        i = rng.randrange(16)
        return FAKE[:i] + bytes([FAKE[i] ^ (1 << rng.randrange(8))]) + FAKE[i + 1 :]
    if choice == 4:
        return FAKE[: rng.randrange(16)]
    if choice == 5:
        return FAKE + rng.randbytes(rng.randrange(1, 5))
    if choice == 6:
        return REAL
    return rng.randbytes(rng.randrange(40))


def structured(rng: random.Random) -> bytes:
    """A plausible setup message: right or wrong name, cookie, lengths, pads, trailing bytes."""
    order = rng.choice(b"lBrR") if rng.random() < 0.95 else rng.randrange(256)
    name = rng.choice(NAMES) if rng.random() < 0.9 else rng.randbytes(rng.randrange(70))
    data = random_data(rng)
    lengths = (len(name), len(data))
    if rng.random() < 0.1:
        lengths = (rng.randrange(0x10000), rng.randrange(0x10000))
    elif rng.random() < 0.1:
        lengths = (len(name) + rng.randrange(-3, 4) % 70, len(data) + rng.randrange(-3, 4) % 40)
    pad = 0 if rng.random() < 0.5 else rng.randrange(256)
    message = encode_raw(order, name, data, pad=pad, lengths=lengths)
    return message + rng.randbytes(rng.randrange(0, 12))


def mutated(rng: random.Random, valid: bytes) -> bytes:
    """`valid` with a few random byte edits, insertions, deletions or a truncation."""
    message = bytearray(valid)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(5)
        where = rng.randrange(len(message) + 1)
        if op == 0 and message:
            message[min(where, len(message) - 1)] = rng.randrange(256)
        elif op == 1 and message:
            message[min(where, len(message) - 1)] ^= 1 << rng.randrange(8)
        elif op == 2:
            message[where:where] = rng.randbytes(rng.randrange(1, 5))
        elif op == 3:
            del message[where : where + rng.randrange(1, 5)]
        else:
            del message[where:]
    return bytes(message)


def test_fuzz_seeded_messages() -> None:
    """120,000 seeded messages: valid, mutated, structured and random bytes.

    The gate never raises, accepts only exactly the fake cookie, always forwards a well-formed
    block with the replacement cookie and the rest unchanged, and answers every reject with a
    Failed reply in the client's byte order.
    """
    rng = random.Random(SEED)
    counts: Counter[str] = Counter()
    for i in range(FUZZ_MESSAGES):
        judge = GATES[i % len(GATES)]
        order = rng.choice(b"lBrR")
        valid = encode_raw(
            order, MIT_MAGIC_COOKIE_1, FAKE, pad=rng.choice((0, 0xFF)), lengths=(18, 16)
        ) + rng.randbytes(rng.randrange(0, 8))
        kind = rng.randrange(4)
        if kind == 0:
            message = valid
        elif kind == 1:
            message = mutated(rng, valid)
        elif kind == 2:
            message = structured(rng)
        else:
            message = rng.randbytes(rng.randrange(0, 80))
        counts[check(judge, message)] += 1
        check_prefix_stability(judge, message, rng.randrange(len(message) + 1))
    # The generator must actually reach every outcome often, or the fuzz proves little.
    assert counts["accept"] > FUZZ_MESSAGES // 5
    assert counts["reject"] > FUZZ_MESSAGES // 5
    assert counts["none"] > FUZZ_MESSAGES // 50


@st.composite
def setup_messages(draw: st.DrawFn) -> bytes:
    """Hypothesis: setup messages near the valid one, with arbitrary edits."""
    order = draw(st.sampled_from(b"lBrR") | st.integers(0, 255))
    name = draw(st.sampled_from(NAMES) | st.binary(max_size=70))
    data = draw(
        st.just(FAKE)
        | st.binary(min_size=16, max_size=16)
        | st.binary(max_size=40)
        | st.integers(0, 127).map(
            lambda bit: (int.from_bytes(FAKE, "big") ^ (1 << bit)).to_bytes(16, "big")
        )
    )
    honest = draw(st.booleans())
    lengths = (
        (len(name), len(data))
        if honest
        else (draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)))
    )
    message = encode_raw(order, name, data, pad=draw(st.integers(0, 255)), lengths=lengths)
    if draw(st.booleans()):
        at = draw(st.integers(0, len(message)))
        message = (
            message[:at] + draw(st.binary(max_size=4)) + message[at + draw(st.integers(0, 4)) :]
        )
    return message + draw(st.binary(max_size=16))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=setup_messages(), gate_index=st.integers(0, len(GATES) - 1), cut=st.integers(0))
def test_fuzz_hypothesis_messages(message: bytes, gate_index: int, cut: int) -> None:
    """Hypothesis-generated near-valid messages keep every gate invariant."""
    judge = GATES[gate_index]
    check(judge, message)
    check_prefix_stability(judge, message, cut % (len(message) + 1))


@settings(max_examples=500, deadline=None)
@given(message=st.binary(max_size=200))
def test_fuzz_hypothesis_raw_bytes(message: bytes) -> None:
    """Arbitrary bytes keep every gate invariant."""
    for judge in GATES:
        check(judge, message)


@pytest.mark.parametrize("judge", GATES, ids=["real-cookie", "no-auth", "rewrite"])
def test_reference_decoder_agrees_on_the_valid_message(judge: CookieGate) -> None:
    """Guard for the fuzz itself: the oracle sees the valid message as carrying the cookie."""
    valid = encode_raw(ord("B"), MIT_MAGIC_COOKIE_1, FAKE, pad=0, lengths=(18, 16))
    assert decode(valid) == Decoded("complete", ord("B"), 11, 0, MIT_MAGIC_COOKIE_1, FAKE, 48)
    assert check(judge, valid) == "accept"
    assert check(judge, valid[:-1]) == "none"
