"""
One X11 connection setup on a socket of ours: the host-side check at start, and the keeper.

python-xlib would do the setup too, but its ``Display`` then lists and queries
every extension: 3.7 ms for ``Display()`` and close against 0.053 ms for the setup alone
(medians of 50 on Xvfb 21.1.7, a 2-core VM). A start needs only the setup's verdict, so this
sends the request and reads the reply with the codec of :mod:`.wire`.
"""

from __future__ import annotations

import socket
import time

from ..exceptions import X11SetupError
from .wire import SetupReply, encode_setup_request, parse_setup_reply


_LITTLE_ENDIAN = 0x6C


def handshake(
    sock: socket.socket, auth_name: bytes, auth_data: bytes, *, timeout: float
) -> SetupReply:
    """
    Send a setup request on `sock` and return the server's reply.

    Args:
        sock: A connected socket on which nothing was sent yet.
        auth_name: The authorization protocol name, empty for none.
        auth_data: The cookie, empty for none.
        timeout: Seconds for the whole exchange.

    Returns:
        The reply: Success, Failed (with the server's reason) or Authenticate.

    Raises:
        X11SetupError: The server closed the connection, did not answer in time, or sent
            something that is not a setup reply.
    """
    deadline = time.monotonic() + timeout
    previous = sock.gettimeout()
    received = b""
    reply = None
    closed = False
    try:
        sock.settimeout(timeout)
        sock.sendall(encode_setup_request(_LITTLE_ENDIAN, auth_name, auth_data))
        while reply is None and (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            closed = not chunk
            if closed:
                break
            received += chunk
            reply = parse_setup_reply(received, byte_order=_LITTLE_ENDIAN)
    except TimeoutError:
        pass
    except OSError as e:
        raise X11SetupError(f"the connection to the X server failed: {e.strerror or e}") from e
    finally:
        sock.settimeout(previous)
    if reply is not None:
        return reply
    if closed:
        raise X11SetupError("the X server closed the connection during its setup")
    raise X11SetupError(f"the X server did not answer its setup within {timeout:g} s")


def still_open(sock: socket.socket) -> bool:
    """
    Tell, in one system call that reads nothing, whether the X server has not closed `sock`.

    Open while nothing is waiting, or while something is (the server sent something unasked:
    still the same server); closed once the server ended the connection.

    Raises:
        OSError: The connection failed (e.g. reset).
    """
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True


class CookieKeeper:
    """
    Hold a connection authenticated with an untrusted cookie, so the server never expires it.

    The X server starts an untrusted cookie's timeout only once no client
    uses it. While the keeper's connection is open the cookie stays valid; when the keeper's
    process dies (even by SIGKILL) the kernel closes the connection and the server drops the
    cookie `timeout` seconds later. :meth:`problem` tells, in one system call, whether the
    cookie can still be presented: the server closes the keeper when the cookie is revoked or
    its client is killed.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._dead: str | None = None

    def problem(self) -> str | None:
        """Return why the cookie can no longer be presented, or None while it can."""
        if self._dead is None:
            try:
                if still_open(self._sock):
                    return None
            except OSError as e:
                self._dead = f"the connection holding the untrusted cookie failed ({e})"
            self._dead = self._dead or (
                "the X server closed the connection holding the untrusted cookie (it was "
                "revoked or that client was killed), so clients behind the relay would reach "
                "the server without it"
            )
        return self._dead

    def close(self) -> None:
        """Close the connection; the server drops the cookie after its timeout."""
        self._sock.close()
