"""The setup gate and Failed replies against real X parts: Xvfb, python-xlib and xdpyinfo."""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import secrets
import socket
import subprocess
import threading
import warnings

from collections.abc import Iterator

import pytest

from Xlib import X
from Xlib import display as xlib_display
from Xlib import error as xlib_error

from x11passthrough._x11.gate import Accept, CookieGate
from x11passthrough._x11.wire import (
    MIT_MAGIC_COOKIE_1,
    SetupReply,
    SetupRequest,
    SetupStatus,
    encode_setup_request,
    failed_reply,
    parse_setup_reply,
)

from infra.ci import require_executables
from infra.xvfb import XServer


TEST_REASON = "x11passthrough: test reason"
L, B = ord("l"), ord("B")


def get_input_focus(order: int) -> bytes:
    """A GetInputFocus request (opcode 43, length 1 word) in the client's byte order."""
    return bytes([43, 0, 0, 1]) if order == B else bytes([43, 0, 1, 0])


def talk(path: str, payload: bytes, *, order: int, extra: int = 0) -> tuple[SetupReply, bytes]:
    """Send `payload` to the server, read its setup reply and then `extra` more bytes."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(20)
        sock.connect(path)
        sock.sendall(payload)
        received = b""
        while True:
            reply = parse_setup_reply(received, byte_order=order)
            if reply is not None and len(received) >= reply.size + extra:
                return reply, received[reply.size : reply.size + extra]
            chunk = sock.recv(65536)
            if not chunk:
                msg = f"server closed after {len(received)} bytes"
                raise AssertionError(msg)
            received += chunk


def session_gate(server: XServer, fake: bytes) -> CookieGate:
    """The gate a relay would build for this server."""
    return CookieGate(
        expected_data=fake,
        replacement_name=MIT_MAGIC_COOKIE_1,
        replacement_data=server.cookie,
    )


@pytest.mark.parametrize("order", [L, B], ids=["l", "B"])
def test_server_accepts_the_gate_forward(xvfb: XServer, order: int) -> None:
    """The rewritten message (fake -> real cookie) gets Success from a real X server, and a
    request sent in the same read reaches the server unchanged and is answered."""
    fake = secrets.token_bytes(16)
    client = encode_setup_request(order, MIT_MAGIC_COOKIE_1, fake) + get_input_focus(order)
    verdict = session_gate(xvfb, fake)(client)
    assert isinstance(verdict, Accept)
    reply, after = talk(xvfb.unix_path, verdict.forward, order=order, extra=32)
    assert reply.status is SetupStatus.SUCCESS
    assert (reply.major, reply.minor) == (11, 0)
    # The GetInputFocus reply: type 1 (Reply), sequence number 1 in the client's byte order.
    assert after[0] == 1
    assert after[2:4] == (b"\0\x01" if order == B else b"\x01\0")


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        (MIT_MAGIC_COOKIE_1, secrets.token_bytes(16), "Invalid MIT-MAGIC-COOKIE-1 key"),
        (b"", b"", "Authorization required, but no authorization protocol specified\n"),
    ],
    ids=["fake", "empty"],
)
def test_server_refuses_unrewritten_messages(
    xvfb: XServer, name: bytes, data: bytes, reason: str
) -> None:
    """Without the gate, the fake cookie and empty auth are both refused by the server."""
    reply, _ = talk(xvfb.unix_path, encode_setup_request(L, name, data), order=L)
    assert reply.status is SetupStatus.FAILED
    assert reply.reason == reason


def test_server_judges_the_forwarded_protocol_version(xvfb: XServer) -> None:
    """The gate passes a wrong version through; the server answers it readably."""
    fake = secrets.token_bytes(16)
    client = SetupRequest(L, 10, 0, MIT_MAGIC_COOKIE_1, fake).encode()
    verdict = session_gate(xvfb, fake)(client)
    assert isinstance(verdict, Accept)
    reply, _ = talk(xvfb.unix_path, verdict.forward, order=L)
    assert reply.status is SetupStatus.FAILED
    assert "version mismatch" in reply.reason


def _serve_failed_replies(listener: socket.socket, stop: threading.Event) -> None:
    """Answer every connection with failed_reply(TEST_REASON) after reading its setup."""
    listener.settimeout(0.05)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(10)
            received = b""
            with contextlib.suppress(OSError):
                while SetupRequest.parse(received) is None:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    received += chunk
                conn.sendall(failed_reply(TEST_REASON, received[0] if received else L))
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(4096):
                    pass


@pytest.fixture(name="refusing_display")
def _refusing_display() -> Iterator[int]:
    """A fake X server on 127.0.0.1:6000+N (N in 400..500) that refuses with TEST_REASON."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        for number in range(400, 501):
            try:
                listener.bind(("127.0.0.1", 6000 + number))
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        else:
            pytest.fail("no free TCP port in 6400..6500 for the fake X server")
        listener.listen()
        stop = threading.Event()
        thread = threading.Thread(target=_serve_failed_replies, args=(listener, stop))
        thread.start()
        try:
            yield number
        finally:
            stop.set()
            thread.join()
    finally:
        listener.close()


def test_python_xlib_reports_the_failed_reason(
    refusing_display: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """python-xlib parses our Failed reply and raises DisplayConnectionError with the reason."""
    monkeypatch.setenv("XAUTHORITY", os.devnull)
    message = ""
    with warnings.catch_warnings():
        # python-xlib 0.33 leaves its socket open when the setup fails; let it be finalized
        # here, where its ResourceWarning is expected, instead of failing a later test.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            xlib_display.Display(f"127.0.0.1:{refusing_display}")
        except xlib_error.DisplayConnectionError as exc:
            message = str(exc)
        gc.collect()
    assert TEST_REASON in message


def test_xdpyinfo_prints_the_failed_reason(refusing_display: int) -> None:
    """libX11 (through xdpyinfo) prints our reason on stderr."""
    require_executables("xdpyinfo")
    env = {k: v for k, v in os.environ.items() if k not in {"DISPLAY", "XAUTHORITY"}}
    env.update(DISPLAY=f"127.0.0.1:{refusing_display}", XAUTHORITY=os.devnull)
    result = subprocess.run(
        ["xdpyinfo"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert TEST_REASON in result.stderr
    assert "unable to open display" in result.stderr


def test_no_auth_forward_for_a_server_that_needs_none(
    xvfb: XServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty replacement forwards "no authorization", which a server without access
    control (what `xhost +` sets, done here through python-xlib) accepts."""
    fake = secrets.token_bytes(16)
    judge = CookieGate(expected_data=fake, replacement_name=b"", replacement_data=b"")
    verdict = judge(encode_setup_request(B, MIT_MAGIC_COOKIE_1, fake))
    assert isinstance(verdict, Accept)
    assert len(verdict.forward) == 12
    refused, _ = talk(xvfb.unix_path, verdict.forward, order=B)
    assert refused.status is SetupStatus.FAILED
    monkeypatch.setenv("XAUTHORITY", str(xvfb.xauthority))
    # Keep this client connected: Xvfb restores access control when its last client leaves.
    admin = xlib_display.Display(xvfb.display)
    try:
        admin.set_access_control(X.DisableAccess)
        admin.sync()
        accepted, _ = talk(xvfb.unix_path, verdict.forward, order=B)
    finally:
        admin.close()
    assert accepted.status is SetupStatus.SUCCESS
