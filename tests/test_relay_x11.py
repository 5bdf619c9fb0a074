"""
The relay between real X clients (xdpyinfo, python-xlib, x11perf) and a real Xvfb, and what
happens when that X server goes away.
"""

from __future__ import annotations

import contextlib
import gc
import random
import select
import socket
import struct
import subprocess
import time
import warnings

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from x11passthrough._relay.options import Listener, RelayOptions
from x11passthrough._relay.thread import RelayThread
from x11passthrough._x11.gate import Accept, Reject
from x11passthrough.display import Endpoint

from infra.ci import require_executables
from infra.processes import wait_until
from infra.xvfb import XServer


@contextlib.contextmanager
def relay_display(
    xvfb: XServer, tmp_path: Path, **options: Any
) -> Iterator[tuple[RelayThread, int, dict[str, str]]]:
    """
    Run a relay to `xvfb` on 127.0.0.1:6000+M for a free M.

    Yields the relay, M, and a client environment: DISPLAY=localhost:M and an Xauthority file
    holding the server's cookie for display M (a FamilyLocal entry, which libxcb and
    python-xlib also use for connections to localhost).
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    numbers = list(range(100, 1000))
    random.shuffle(numbers)
    for number in numbers:
        try:
            listener.bind(("127.0.0.1", 6000 + number))
            break
        except OSError:
            continue
    else:  # pragma: no cover - 900 busy ports
        listener.close()
        pytest.fail("no free port in 6100-6999 for the relay")
    listener.listen(64)
    xauthority = tmp_path / f"relay-{number}.xauth"
    subprocess.run(
        ["xauth", "-f", str(xauthority), "add", f":{number}", ".", xvfb.cookie.hex()],
        check=True,
        capture_output=True,
    )
    env = xvfb.env(DISPLAY=f"localhost:{number}", XAUTHORITY=str(xauthority))
    setup_filter = options.pop("setup_filter", None)
    relay = RelayThread(
        [Listener(listener, setup_filter)], Endpoint.unix(xvfb.unix_path), RelayOptions(**options)
    )
    relay.start()
    try:
        yield relay, number, env
    finally:
        relay.stop()


def setup_request(cookie: bytes, byte_order: bytes = b"l") -> bytes:
    """An X11 connection setup message with an MIT-MAGIC-COOKIE-1."""
    name = b"MIT-MAGIC-COOKIE-1"
    fmt = "<" if byte_order == b"l" else ">"
    header = byte_order + b"\0" + struct.pack(fmt + "HHHH", 11, 0, len(name), len(cookie))
    return header + b"\0\0" + name + b"\0\0" + cookie


def read_setup_reply(sock: socket.socket) -> bytes:
    header = b""
    while len(header) < 8:
        chunk = sock.recv(8 - len(header))
        assert chunk, "EOF in the setup reply"
        header += chunk
    (units,) = struct.unpack("<H", header[6:8])
    body = b""
    while len(body) < 4 * units:
        chunk = sock.recv(4 * units - len(body))
        assert chunk, "EOF in the setup reply"
        body += chunk
    return header + body


def whole_setup(data: bytes) -> Accept | Reject | None:
    """A setup filter that waits for the complete setup message and forwards it unchanged."""
    if len(data) < 12:
        return None
    fmt = "<" if data[:1] in b"lr" else ">"
    name_len, data_len = struct.unpack(fmt + "HH", data[6:10])
    size = 12 + (name_len + 3) // 4 * 4 + (data_len + 3) // 4 * 4
    return Accept(data) if len(data) >= size else None


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "copy"])
def test_xdpyinfo_through_the_relay(xvfb: XServer, tmp_path: Path, splice: bool) -> None:
    require_executables("xdpyinfo", "xauth")
    with relay_display(xvfb, tmp_path, splice=splice) as (relay, number, env):
        result = subprocess.run(
            ["xdpyinfo"], env=env, capture_output=True, text=True, check=False, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert f"name of display:    localhost:{number}" in result.stdout
        assert "dimensions:    1024x768 pixels" in result.stdout
        stats = relay.stats
        assert stats.connections_total == 1
        assert stats.bytes_up > 0
        assert stats.bytes_down > 0


def test_xdpyinfo_through_a_setup_filter(xvfb: XServer, tmp_path: Path) -> None:
    """A filter that forwards the complete setup unchanged: the client works as before."""
    require_executables("xdpyinfo", "xauth")
    with relay_display(xvfb, tmp_path, setup_filter=whole_setup) as (_, _, env):
        result = subprocess.run(
            ["xdpyinfo"], env=env, capture_output=True, text=True, check=False, timeout=60
        )
        assert result.returncode == 0, result.stderr


def test_python_xlib_client_through_the_relay(
    xvfb: XServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """python-xlib opens a window, stores a property and reads it back through the relay."""
    require_executables("xauth")
    from Xlib import X, Xatom, display

    with relay_display(xvfb, tmp_path) as (relay, number, env):
        monkeypatch.setenv("XAUTHORITY", env["XAUTHORITY"])
        dpy = display.Display(f"localhost:{number}")
        try:
            screen = dpy.screen()
            assert (screen.width_in_pixels, screen.height_in_pixels) == (1024, 768)
            window = screen.root.create_window(0, 0, 50, 40, 0, screen.root_depth)
            atom = dpy.intern_atom("X11PASSTHROUGH_TEST")
            value = b"through the relay " * 1000
            window.change_property(atom, Xatom.STRING, 8, value)
            window.map()
            reply = window.get_full_property(atom, X.AnyPropertyType)
            assert reply.value == value
            geometry = window.get_geometry()
            assert (geometry.width, geometry.height) == (50, 40)
        finally:
            dpy.close()
        assert relay.stats.connections_total == 1


def test_x11perf_through_the_relay(xvfb: XServer, tmp_path: Path) -> None:
    """x11perf's round-trip and no-op tests complete through the relay and print results."""
    require_executables("x11perf", "xauth")
    with relay_display(xvfb, tmp_path) as (relay, _, env):
        result = subprocess.run(
            ["x11perf", "-repeat", "1", "-time", "1", "-prop", "-noop"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "reps @" in result.stdout
        assert "GetProperty" in result.stdout
        assert "X protocol NoOperation" in result.stdout
        assert relay.stats.errors == 0


def wait_eof(sock: socket.socket, deadline: float) -> bytes:
    """Read until EOF; fail if it does not come before `deadline` (time.monotonic)."""
    data = b""
    sock.setblocking(False)
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "the client's connection was not closed in time"
        readable, _, _ = select.select([sock], [], [], remaining)
        if not readable:
            continue
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


@pytest.mark.parametrize("how", ["terminate", "kill"])
def test_x_server_dying_mid_stream_closes_its_clients(
    xvfb_factory: Callable[..., XServer], tmp_path: Path, how: str
) -> None:
    """
    The X server goes away while a client is connected: the client sees EOF within a second,
    the relay keeps serving, and later clients get a clean "Failed" reply.
    """
    require_executables("xauth")
    xvfb = xvfb_factory()
    with relay_display(xvfb, tmp_path) as (relay, number, _):
        client = socket.create_connection(("127.0.0.1", 6000 + number), timeout=10)
        with client:
            client.sendall(setup_request(xvfb.cookie))
            reply = read_setup_reply(client)
            assert reply[0] == 1, reply  # Success
            if how == "kill":
                xvfb.process.kill()
                xvfb.process.wait()
            else:
                xvfb.stop()
            wait_eof(client, time.monotonic() + 1.0)
        wait_until(lambda: relay.stats.connections_open == 0, "the relay to close everything")
        for byte_order in (b"l", b"B"):
            with socket.create_connection(("127.0.0.1", 6000 + number), timeout=10) as late:
                late.sendall(setup_request(xvfb.cookie, byte_order))
                reply = wait_eof(late, time.monotonic() + 10)
            fmt = "<" if byte_order == b"l" else ">"
            assert reply[0] == 0, reply  # Failed
            assert struct.unpack(fmt + "HHH", reply[2:8])[0] == 11
            reason = reply[8 : 8 + reply[1]].decode()
            assert reason.startswith(
                f"x11passthrough: cannot reach the X display at unix:{xvfb.unix_path}: "
            )
            assert reason.endswith(
                ("connection refused (nothing listens there)", "no such file or directory")
            )
        stats = relay.stats
        assert stats.connections_total == 3
        assert stats.errors >= 2


def test_python_xlib_sees_the_reason_when_the_display_is_gone(
    xvfb_factory: Callable[..., XServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an X client shows its user when the display behind the relay is unreachable."""
    require_executables("xauth")
    from Xlib import display, error

    xvfb = xvfb_factory()
    with relay_display(xvfb, tmp_path) as (_, number, env):
        xvfb.stop()
        monkeypatch.setenv("XAUTHORITY", env["XAUTHORITY"])
        with pytest.raises(error.DisplayConnectionError) as info:
            display.Display(f"localhost:{number}")
        message = str(info.value)
        with warnings.catch_warnings():
            # python-xlib leaves its socket to the garbage collector after a failed setup.
            warnings.simplefilter("ignore", ResourceWarning)
            del info
            gc.collect()
    assert f"cannot reach the X display at unix:{xvfb.unix_path}" in message
