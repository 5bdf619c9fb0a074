"""The passthrough's security promises, checked through a running relay against a real Xvfb."""

from __future__ import annotations

import random
import socket
import struct
import subprocess
import time

from collections.abc import Iterator
from pathlib import Path

import pytest

from x11passthrough import X11Passthrough
from x11passthrough._x11.wire import (
    SetupRequest,
    SetupStatus,
    encode_setup_request,
    parse_setup_reply,
)
from x11passthrough.exceptions import X11SetupError
from x11passthrough.xauth import Xauthority

from infra.ci import require_executables
from infra.xvfb import XServer


RANGE = range(800, 900)
MIT = b"MIT-MAGIC-COOKIE-1"


def _port(p: X11Passthrough) -> int:
    return 6000 + int(p.args.display.rsplit(":", 1)[1])


def _session_cookie(p: X11Passthrough) -> bytes:
    assert p.args.xauthority is not None
    return Xauthority.load(p.args.xauthority)[0].data


def _exchange(port: int, chunks: list[bytes], *, pause: float = 0.0) -> bytes:
    """Send `chunks` (pausing between them), then read what the relay answers until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for chunk in chunks:
            s.sendall(chunk)
            if pause:
                time.sleep(pause)
        data = b""
        while True:
            try:
                part = s.recv(65536)
            except ConnectionResetError:
                return data
            if not part:
                return data
            data += part


def _carries(message: bytes, cookie: bytes) -> bool:
    """Tell whether a message is a complete setup request with the session cookie."""
    try:
        request = SetupRequest.parse(message)
    except X11SetupError:
        return False
    return request is not None and (request.auth_name, request.auth_data) == (MIT, cookie)


def _status(reply: bytes, order: int = 0x6C) -> tuple[SetupStatus, str]:
    parsed = parse_setup_reply(reply, byte_order=order)
    assert parsed is not None, reply
    return parsed.status, parsed.reason


@pytest.fixture(name="passthrough")
def _passthrough(xvfb: XServer) -> Iterator[X11Passthrough]:
    p = X11Passthrough(
        xvfb.display, xvfb.xauthority, bind=["127.0.0.1"], display_range=RANGE, setup_timeout=1.0
    )
    p.start()
    yield p
    p.close()


BAD_MESSAGES = {
    "wrong cookie": [encode_setup_request(0x6C, MIT, b"\x01" * 16)],
    "no cookie": [encode_setup_request(0x6C, b"", b"")],
    "other protocol": [encode_setup_request(0x42, b"XDM-AUTHORIZATION-1", b"\x02" * 16)],
    "bad byte order": [b"Q" + bytes(11)],
    "absurd lengths": [struct.pack("<BxHHHHxx", 0x6C, 11, 0, 0xFFFF, 0xFFFF)],
}


@pytest.mark.parametrize("case", sorted(BAD_MESSAGES))
def test_bad_setup_is_refused_with_a_reason_and_nothing_forwarded(
    passthrough: X11Passthrough, case: str
) -> None:
    """Each bad message gets a Failed reply with a reason; no byte reaches the X server."""
    reply = _exchange(_port(passthrough), BAD_MESSAGES[case])
    first = BAD_MESSAGES[case][0][0]
    status, reason = _status(reply, first if first in b"lBrR" else 0x6C)
    assert status is SetupStatus.FAILED
    assert reason.startswith("x11passthrough:")
    assert passthrough.stats.bytes_up == 0
    assert passthrough.stats.rejected >= 1


def test_byte_at_a_time_with_the_right_cookie_gets_through(passthrough: X11Passthrough) -> None:
    """A good setup message sent one byte at a time is accepted: the server answers Success."""
    message = encode_setup_request(0x42, MIT, _session_cookie(passthrough))
    with socket.create_connection(("127.0.0.1", _port(passthrough)), timeout=10) as s:
        for byte in message:
            s.sendall(bytes([byte]))
        head = s.recv(8, socket.MSG_WAITALL)
    assert head[0] == SetupStatus.SUCCESS


def test_wrong_cookie_one_byte_at_a_time_is_refused(passthrough: X11Passthrough) -> None:
    """Splitting a wrong message into single bytes changes nothing."""
    message = encode_setup_request(0x6C, MIT, bytes(16))
    reply = _exchange(_port(passthrough), [bytes([b]) for b in message], pause=0.001)
    assert _status(reply)[0] is SetupStatus.FAILED
    assert passthrough.stats.bytes_up == 0


def test_stalled_client_is_dropped_and_the_next_one_served(passthrough: X11Passthrough) -> None:
    """A truncated setup message is dropped after the setup timeout; others are still served."""
    truncated = encode_setup_request(0x6C, MIT, _session_cookie(passthrough))[:20]
    start = time.monotonic()
    reply = _exchange(_port(passthrough), [truncated])
    assert time.monotonic() - start < 5
    if reply:
        assert _status(reply)[0] is SetupStatus.FAILED
    message = encode_setup_request(0x6C, MIT, _session_cookie(passthrough))
    with socket.create_connection(("127.0.0.1", _port(passthrough)), timeout=10) as s:
        s.sendall(message)
        assert s.recv(8, socket.MSG_WAITALL)[0] == SetupStatus.SUCCESS


def test_random_setup_messages_never_get_through(passthrough: X11Passthrough) -> None:
    """Random and mutated messages through the live relay: all refused, nothing forwarded."""
    rng = random.Random(7)
    good = encode_setup_request(0x6C, MIT, _session_cookie(passthrough))
    port = _port(passthrough)
    for _ in range(150):
        if rng.random() < 0.5:
            mutated = bytearray(good)
            mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
            message = bytes(mutated)
        else:
            message = rng.randbytes(rng.randrange(12, 80))
        if _carries(message, _session_cookie(passthrough)):
            continue  # a flipped pad or unused byte: still the right cookie
        reply = _exchange(port, [message])
        # A mutated message can still be an incomplete one (a length grew): that waits for the
        # setup timeout; everything else is answered at once.
        if reply:
            assert reply[0] == SetupStatus.FAILED, message
    assert passthrough.stats.bytes_up == 0


def test_session_cookie_never_opens_the_x_server_itself(
    passthrough: X11Passthrough, xvfb: XServer, tmp_path: Path
) -> None:
    """The X server never learns the session cookie: used directly, it is refused."""
    require_executables("xdpyinfo", "xauth")
    direct = xvfb.authority_file(tmp_path / "direct", _session_cookie(passthrough))
    result = subprocess.run(
        ["xdpyinfo"], env=xvfb.env(XAUTHORITY=str(direct)), capture_output=True, check=False
    )
    assert result.returncode != 0


def test_after_exit_the_session_cookie_opens_nothing(xvfb: XServer) -> None:
    """After exit nothing listens on the port, so the session cookie has nowhere to go."""
    p = X11Passthrough(xvfb.display, xvfb.xauthority, bind=["127.0.0.1"], display_range=RANGE)
    p.start()
    port, cookie = _port(p), _session_cookie(p)
    p.close()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert cookie  # it existed, and nothing accepts it any more
