"""
auth="untrusted" stays untrusted for as long as the passthrough runs, and fails closed.

The server also trusts ``SI:localuser:root`` (as GNOME and many Xwayland sessions do): a
cookie the server no longer knows then falls back to that rule, and the relay, which connects
as root, would be a trusted client.
"""

from __future__ import annotations

import socket
import struct

from collections.abc import Iterator

import pytest
import Xlib.display

from x11passthrough import X11Passthrough
from x11passthrough._x11.handshake import handshake
from x11passthrough._x11.security import SecurityClient
from x11passthrough._x11.wire import MIT_MAGIC_COOKIE_1, SetupStatus, encode_setup_request
from x11passthrough._x11.xlib import open_display
from x11passthrough.display import Endpoint
from x11passthrough.xauth import Xauthority

from infra.processes import wait_until
from infra.xvfb import XServer


RANGE = range(1300, 1400)
_LIST_EXTENSIONS = 99


def extension_count(sock: socket.socket) -> int:
    """Send ListExtensions on a set-up connection and return how many the server lists."""
    sock.sendall(struct.pack("<BxH", _LIST_EXTENSIONS, 1))
    head = b""
    while len(head) < 32:
        chunk = sock.recv(32 - len(head))
        assert chunk, "the server closed the connection"
        head += chunk
    assert head[0] == 1, head  # a reply
    return head[1]


def direct_count(server: XServer, cookie: bytes) -> int | None:
    """Extensions seen by a direct client presenting `cookie`, or None when refused."""
    with Endpoint.unix(server.unix_path).connect(5) as sock:
        reply = handshake(sock, MIT_MAGIC_COOKIE_1, cookie, timeout=5)
        if reply.status is not SetupStatus.SUCCESS:
            return None
        return extension_count(sock)


def relayed(passthrough: X11Passthrough) -> tuple[int, bytes]:
    """Connect through the relay with the session cookie: (setup status, rest of the reply)."""
    args = passthrough.args
    assert args.xauthority is not None
    cookie = Xauthority.load(args.xauthority)[0].data
    port = 6000 + int(args.display.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(encode_setup_request(0x6C, MIT_MAGIC_COOKIE_1, cookie))
    head = sock.recv(8, socket.MSG_WAITALL)
    (words,) = struct.unpack_from("<H", head, 6)
    body = sock.recv(4 * words, socket.MSG_WAITALL)
    if head[0] != 1:
        sock.close()
        return head[0], body
    count = extension_count(sock)
    sock.close()
    return 1, bytes([count])


@pytest.fixture(name="admin")
def _admin(xvfb: XServer) -> Iterator[Xlib.display.Display]:
    sock = Endpoint.unix(xvfb.unix_path).connect(5)
    display = open_display(
        sock, MIT_MAGIC_COOKIE_1, xvfb.cookie, number=xvfb.number, timeout=5, what="admin"
    )
    yield display
    display.close()


def test_the_untrusted_cookie_does_not_expire_under_the_relay(
    open_xvfb: XServer, admin: Xlib.display.Display
) -> None:
    """Long after a cookie of the same timeout expired, relay clients are still untrusted."""
    server = open_xvfb
    trusted = direct_count(server, server.cookie)
    assert trusted is not None
    control = SecurityClient(admin, timeout=5, where="admin").generate(timeout=1)
    passthrough = X11Passthrough(
        server.display,
        server.xauthority,
        auth="untrusted",
        untrusted_timeout=1,
        bind=["127.0.0.1"],
        display_range=RANGE,
    )
    with passthrough:
        passthrough_count = relayed(passthrough)
        untrusted = direct_count(server, control.data)
        assert untrusted is not None
        assert untrusted < trusted
        assert passthrough_count == (1, bytes([untrusted]))
        # Unused for its timeout, the control cookie dies; the server then falls back to
        # SI:localuser and admits its holder as a *trusted* client.
        # Each probe uses the cookie and restarts its timer: probe less often than it lasts.
        wait_until(
            lambda: direct_count(server, control.data) == trusted,
            "the control cookie to expire",
            timeout=20,
            interval=1.5,
        )
        assert relayed(passthrough) == (1, bytes([untrusted]))


def test_the_relay_refuses_clients_once_the_cookie_is_gone(
    open_xvfb: XServer, admin: Xlib.display.Display
) -> None:
    """
    When the server revokes the cookie (and so closes the connection holding it), new clients
    are refused: they would reach the server without it, as trusted clients.
    """
    passthrough = X11Passthrough(
        open_xvfb.display,
        open_xvfb.xauthority,
        auth="untrusted",
        bind=["127.0.0.1"],
        display_range=RANGE,
    )
    with passthrough:
        assert relayed(passthrough)[0] == 1
        # The server revokes it (any trusted client may); the passthrough's id names which.
        cookie = passthrough._untrusted
        assert cookie is not None
        admin.security_revoke_authorization(cookie.authid)
        admin.sync()
        status, reason = relayed(passthrough)
        assert status == 0  # Failed
        assert b"holding the untrusted cookie" in reason
        assert passthrough.stats.errors >= 1
    # Leaving still works: revoking a revoked cookie fails, and is only logged.
    assert passthrough.stats.connections_open == 0
