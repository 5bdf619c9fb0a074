"""The SECURITY extension client: untrusted cookies from a real Xvfb."""

from __future__ import annotations

import socket
import subprocess

from pathlib import Path

import pytest

from x11passthrough._x11.security import SecurityClient
from x11passthrough._x11.xlib import SetupRefusedError, open_display
from x11passthrough.display import Endpoint
from x11passthrough.exceptions import SecurityExtensionError, X11SetupError

from infra.ci import require_executables
from infra.xvfb import XServer


COOKIE = b"MIT-MAGIC-COOKIE-1"


def _auth_file(path: Path, server: XServer, data: bytes) -> Path:
    subprocess.run(
        ["xauth", "-f", str(path), "add", server.display, ".", data.hex()],
        check=True,
        capture_output=True,
    )
    return path


def _client(server: XServer, cookie: bytes) -> SecurityClient:
    sock = Endpoint.unix(server.unix_path).connect(5)
    display = open_display(
        sock, COOKIE, cookie, number=server.number, timeout=5, what="a test connection"
    )
    return SecurityClient(display, timeout=5, where=server.unix_path)


def _extensions(server: XServer, xauthority: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["xdpyinfo", "-queryExtensions"],
        env=server.env(XAUTHORITY=str(xauthority)),
        capture_output=True,
        text=True,
        check=False,
    )


def test_untrusted_cookie_sees_less_and_is_revocable(xvfb: XServer, tmp_path: Path) -> None:
    """A client with an untrusted cookie connects but sees fewer extensions; revoked, it can't."""
    require_executables("xdpyinfo", "xauth")
    client = _client(xvfb, xvfb.cookie)
    try:
        cookie = client.generate(timeout=60)
        assert len(cookie.data) == 16
        assert cookie.data != xvfb.cookie
        assert cookie.data.hex() not in repr(cookie)
        untrusted = _extensions(xvfb, _auth_file(tmp_path / "u", xvfb, cookie.data))
        trusted = _extensions(xvfb, xvfb.xauthority)
        assert untrusted.returncode == 0, untrusted.stderr
        assert trusted.returncode == 0, trusted.stderr
        assert "SECURITY" in trusted.stdout
        trusted_ext = trusted.stdout.count("opcode:")
        untrusted_ext = untrusted.stdout.count("opcode:")
        assert untrusted_ext < trusted_ext
        client.revoke(cookie)
        revoked = _extensions(xvfb, tmp_path / "u")
        assert revoked.returncode != 0
    finally:
        client.close()


def test_wrong_cookie_is_a_clear_error(xvfb: XServer) -> None:
    """A connection the server refuses is reported with the server's reason."""
    with pytest.raises(SetupRefusedError, match="refused the connection") as info:
        _client(xvfb, b"\0" * 16)
    assert info.value.reason == "Invalid MIT-MAGIC-COOKIE-1 key"


def test_server_without_security_extension(xvfb_factory: object) -> None:
    """A server started without SECURITY gives an error that names the way out."""
    server = xvfb_factory(extra_args=("-extension", "SECURITY"))  # type: ignore[operator]
    with pytest.raises(SecurityExtensionError, match="lacks the SECURITY extension"):
        _client(server, server.cookie)


def test_server_that_closes_at_once() -> None:
    """A peer that closes the connection before answering: a clear error, nothing hangs."""
    ours, theirs = socket.socketpair()
    theirs.close()
    with pytest.raises(X11SetupError, match="closed the connection"):
        open_display(ours, COOKIE, b"x" * 16, number=0, timeout=1, what="a test peer")
    assert ours.fileno() == -1


def test_server_that_never_answers_is_bounded() -> None:
    """A peer that accepts and stays silent: the setup fails after the timeout, no hang."""
    ours, theirs = socket.socketpair()
    with theirs, pytest.raises(X11SetupError, match=r"did not answer within 0\.5 s"):
        open_display(ours, COOKIE, b"x" * 16, number=0, timeout=0.5, what="a test peer")
