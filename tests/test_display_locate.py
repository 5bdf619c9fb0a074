"""DisplayLocator.locate against real Xvfb servers and real sockets."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import tempfile

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from x11passthrough.display import DisplayLocator, DisplayName, Endpoint
from x11passthrough.exceptions import DisplayError, DisplayNameError, DisplayNotFoundError

from infra.users import free_display
from infra.xvfb import XServer


def setup_status(endpoint: Endpoint, cookie: bytes) -> int:
    """Open an X connection to `endpoint` with an MIT cookie; return the reply status byte."""
    name = b"MIT-MAGIC-COOKIE-1"
    request = struct.pack("<BxHHHHxx", 0x6C, 11, 0, len(name), len(cookie))
    request += name + b"\0" * (-len(name) % 4) + cookie + b"\0" * (-len(cookie) % 4)
    with endpoint.connect(5.0) as sock:
        sock.settimeout(5.0)
        sock.sendall(request)
        header = sock.recv(8, socket.MSG_WAITALL)
    assert len(header) == 8
    return header[0]


@pytest.fixture(name="quiet_number")
def _quiet_number() -> Iterator[int]:
    """
    A display number whose TCP port refuses connections for the whole test.

    The port is held by a bound, non-listening dual-stack socket, so connects to it are
    refused and nothing else (not even a parallel test) can listen on it meanwhile.
    """
    for number in range(700, 800):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind(("::", 6000 + number))
        except OSError:
            sock.close()
            continue
        with sock:
            yield number
        return
    pytest.fail("no display number from 700 to 799 has a free TCP port")


def test_locate_unix_socket_of_xvfb(xvfb: XServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """An Xvfb without TCP is found at its socket file, also through $DISPLAY."""
    locator = DisplayLocator()
    endpoint = locator.locate(xvfb.display)
    assert endpoint == Endpoint.unix(xvfb.unix_path)
    assert setup_status(endpoint, xvfb.cookie) == 1
    assert locator.locate(DisplayName.parse(xvfb.display)) == endpoint
    monkeypatch.setenv("DISPLAY", f"{xvfb.display}.0")
    assert locator.locate() == endpoint
    assert locator.locate(None) == endpoint


def test_locate_prefers_the_socket_and_uses_tcp_last(
    xvfb_tcp: XServer, xvfb_factory: Callable[..., XServer]
) -> None:
    """:N is found on the UNIX socket even when the server listens on TCP; TCP comes last."""
    locator = DisplayLocator()
    assert locator.candidates(xvfb_tcp.display)[-1] == Endpoint.tcp("localhost", xvfb_tcp.tcp_port)
    assert locator.locate(xvfb_tcp.display) == Endpoint.unix(xvfb_tcp.unix_path)
    # An explicit UNIX display never goes to TCP.
    for text in (f"unix:{xvfb_tcp.number}", f"unix/:{xvfb_tcp.number}"):
        assert locator.locate(text) == Endpoint.unix(xvfb_tcp.unix_path)
    # A server without sockets is reached over TCP, the last resort.
    tcp_only = xvfb_factory(
        tcp=True, extra_args=("-nolisten", "unix", "-nolisten", "local"), number=free_display()
    )
    endpoint = locator.locate(tcp_only.display)
    assert endpoint == Endpoint.tcp("localhost", tcp_only.tcp_port)
    assert setup_status(endpoint, tcp_only.cookie) == 1


def test_locate_tcp_display_uses_only_tcp(xvfb: XServer, xvfb_tcp: XServer) -> None:
    """localhost:N and 127.0.0.1:N are TCP displays: the socket file is not tried."""
    locator = DisplayLocator()
    assert locator.locate(f"localhost:{xvfb_tcp.number}") == Endpoint.tcp(
        "localhost", xvfb_tcp.tcp_port
    )
    endpoint = locator.locate(f"127.0.0.1:{xvfb_tcp.number}.0")
    assert endpoint == Endpoint.tcp("127.0.0.1", xvfb_tcp.tcp_port)
    assert setup_status(endpoint, xvfb_tcp.cookie) == 1
    # The UNIX-only server has a socket file, but a TCP display name must not use it.
    with pytest.raises(DisplayNotFoundError) as info:
        locator.locate(f"localhost:{xvfb.number}")
    message = str(info.value)
    assert f"tcp:localhost:{xvfb.tcp_port}: connection refused" in message
    assert "unix:" not in message
    assert "-listen tcp" in message


def test_locate_abstract_socket_when_the_file_is_gone(xvfb: XServer) -> None:
    """With the socket file removed, the Linux abstract socket is what answers."""
    os.unlink(xvfb.unix_path)
    endpoint = DisplayLocator().locate(xvfb.display)
    assert endpoint == Endpoint.abstract(xvfb.unix_path)
    assert setup_status(endpoint, xvfb.cookie) == 1
    with pytest.raises(DisplayNotFoundError) as info:
        DisplayLocator(abstract_sockets=False).locate(xvfb.display)
    assert f"unix:{xvfb.unix_path}: no such file" in str(info.value)
    assert "abstract:" not in str(info.value)


@pytest.fixture(name="xquartz_dir")
def _xquartz_dir() -> Iterator[Path]:
    """
    A launchd-like private directory with a short path, as launchd makes in /private/tmp.

    pytest's tmp_path can be too long: a socket path must fit in 108 bytes (104 on macOS).
    """
    directory = Path(tempfile.mkdtemp(prefix="com.apple.launchd.", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


@contextlib.contextmanager
def unix_listener(path: Path) -> Iterator[socket.socket]:
    """A plain UNIX stream listener at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        yield sock


def test_locate_xquartz_style_socket_path(
    xquartz_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DISPLAY that is a socket path connects to that path, ignoring a .screen suffix."""
    path = xquartz_dir / "org.xquartz:0"
    locator = DisplayLocator()
    with unix_listener(path) as server:
        expected = Endpoint.unix(str(path))
        for text in (str(path), f"{path}.0", f"{path}.1", f"unix:{path}"):
            assert locator.locate(text) == expected, text
            peer, _ = server.accept()
            peer.close()
        monkeypatch.setenv("DISPLAY", f"{path}.0")
        assert locator.locate() == expected
        server.accept()[0].close()


def test_locate_socket_path_prefers_the_full_name(xquartz_dir: Path) -> None:
    """As in libxcb, a socket whose name really ends in .N is used before stripping it."""
    full = xquartz_dir / "org.xquartz:0.1"
    with unix_listener(full):
        assert DisplayLocator().locate(str(full)) == Endpoint.unix(str(full))
    plain = xquartz_dir / "custom.1"
    with unix_listener(plain):
        assert DisplayLocator().locate(str(plain)) == Endpoint.unix(str(plain))
    stripped = xquartz_dir / "custom"
    with unix_listener(stripped):
        assert DisplayLocator().locate(f"{stripped}.2") == Endpoint.unix(str(stripped))


def test_locate_nothing_lists_every_place_tried(tmp_path: Path, quiet_number: int) -> None:
    """When nothing answers, the error names each endpoint and why it failed."""
    socket_dir = tmp_path / ".X11-unix"
    socket_dir.mkdir()
    locator = DisplayLocator(socket_dir=socket_dir)
    path = socket_dir / f"X{quiet_number}"
    assert locator.candidates(f":{quiet_number}") == (
        Endpoint.unix(str(path)),
        Endpoint.abstract(str(path)),
        Endpoint.tcp("localhost", 6000 + quiet_number),
    )
    with pytest.raises(DisplayNotFoundError) as info:
        locator.locate(f":{quiet_number}")
    message = str(info.value)
    assert f"':{quiet_number}'" in message
    assert f"tcp:localhost:{6000 + quiet_number}: connection refused" in message
    assert f"unix:{path}: no such file" in message
    assert f"abstract:@{path}: connection refused" in message
    # A display error, not a bad value or a missing key: only builtins that fit are bases.
    assert isinstance(info.value, DisplayError)
    assert not isinstance(info.value, (LookupError, ValueError))

    # A socket file left behind by a dead server refuses connections.
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))
    with pytest.raises(DisplayNotFoundError, match=f"unix:{path}: connection refused"):
        locator.locate(f"unix/:{quiet_number}")


def test_locate_reports_timeouts(tmp_path: Path) -> None:
    """A TCP display whose server does not accept connections fails with a timeout reason."""
    locator = DisplayLocator(socket_dir=tmp_path, connect_timeout=0.2)
    with locator.reserve(range=range(400, 500)) as reservation:
        server = reservation.sockets[0]
        server.listen(0)  # room for one queued connection; later SYNs are dropped
        queued = []
        try:
            # Fill the accept queue; the first connect that does not complete times out.
            for _ in range(8):
                sock = socket.socket()
                queued.append(sock)
                sock.settimeout(0.2)
                try:
                    sock.connect(("127.0.0.1", reservation.port))
                except TimeoutError:
                    break
            else:
                pytest.fail("the listen queue never filled up")
            with pytest.raises(DisplayNotFoundError) as info:
                locator.locate(f"127.0.0.1:{reservation.number}")
        finally:
            for sock in queued:
                sock.close()
    assert f"tcp:127.0.0.1:{reservation.port}: no answer within 0.2 s" in str(info.value)


def test_locate_reports_unresolvable_hosts() -> None:
    """A host name that does not resolve is reported as such."""
    with pytest.raises(DisplayNotFoundError, match="cannot resolve the host name"):
        DisplayLocator().locate("no-such-host.invalid:0")


def test_locate_without_display(monkeypatch: pytest.MonkeyPatch) -> None:
    """No argument and no DISPLAY: a DisplayError that says DISPLAY is not set."""
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(DisplayError, match="DISPLAY is not set"):
        DisplayLocator().locate()
    monkeypatch.setenv("DISPLAY", "")
    with pytest.raises(DisplayError, match="DISPLAY is set but empty"):
        DisplayLocator().locate()
    monkeypatch.setenv("DISPLAY", "nonsense")
    with pytest.raises(DisplayNameError, match="'nonsense'"):
        DisplayLocator().locate()


def test_candidates_by_form(tmp_path: Path) -> None:
    """The candidate order documents the search: TCP last, and only for plain :N."""
    locator = DisplayLocator(socket_dir=tmp_path)
    path = str(tmp_path / "X3")
    assert locator.candidates("unix:3") == (Endpoint.unix(path), Endpoint.abstract(path))
    assert locator.candidates("myhost/unix:3") == (Endpoint.unix(path), Endpoint.abstract(path))
    assert locator.candidates("tcp/remote.example:3") == (Endpoint.tcp("remote.example", 6003),)
    assert locator.candidates("[::1]:3") == (Endpoint.tcp("::1", 6003),)
    no_abstract = DisplayLocator(socket_dir=tmp_path, abstract_sockets=False)
    assert no_abstract.candidates(":3") == (Endpoint.unix(path), Endpoint.tcp("localhost", 6003))
