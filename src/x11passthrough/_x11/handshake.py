"""
One X11 connection setup on a socket of ours: the host-side check at start, and the keeper.

Strictly private. python-xlib would do the setup too, but its ``Display`` then lists and queries
every extension: 3.7 ms for ``Display()`` and close against 0.053 ms for the setup alone
(medians of 50 on Xvfb 21.1.7, a 2-core VM). A start needs only the setup's verdict, so this
sends the request and reads the reply with the codec of :mod:`.wire`.
"""

from __future__ import annotations

import socket
import struct
import time

from collections.abc import Iterable

from ..exceptions import X11SetupError
from .requests import QUERY_EXTENSION
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


class CookieKeeper:
    """
    Hold a connection authenticated with an untrusted cookie, so the server never expires it.

    Strictly private. The X server starts an untrusted cookie's timeout only once no client
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
                data = self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
            except OSError as e:
                data = b""
                self._dead = f"the connection holding the untrusted cookie failed ({e})"
            if data:
                return None
            self._dead = self._dead or (
                "the X server closed the connection holding the untrusted cookie (it was "
                "revoked or that client was killed), so clients behind the relay would reach "
                "the server without it"
            )
        return self._dead

    def close(self) -> None:
        """Close the connection; the server drops the cookie after its timeout."""
        self._sock.close()


def query_extensions(
    sock: socket.socket, names: Iterable[bytes], *, timeout: float
) -> dict[bytes, int | None]:
    """
    Ask the server for the major opcode of each extension in `names`.

    Args:
        sock: A connection past a successful :func:`handshake` (little-endian), on which
            nothing else is outstanding.
        names: Extension names, e.g. ``b"MIT-SHM"``.
        timeout: Seconds for the whole exchange.

    Returns:
        Each name with its major opcode, or None where the server lacks it.

    Raises:
        X11SetupError: The server closed the connection, did not answer in time, or sent
            something other than the replies.
    """
    wanted = list(dict.fromkeys(names))
    requests = b"".join(
        struct.pack("<BxHHxx", QUERY_EXTENSION, 2 + (len(n) + 3) // 4, len(n))
        + n
        + b"\0" * (-len(n) % 4)
        for n in wanted
    )
    deadline = time.monotonic() + timeout
    previous = sock.gettimeout()
    received = bytearray()
    try:
        sock.settimeout(timeout)
        sock.sendall(requests)
        while len(received) < 32 * len(wanted):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise X11SetupError(
                    f"the X server did not answer QueryExtension within {timeout:g} s"
                )
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                raise X11SetupError("the X server closed the connection after its setup")
            received += chunk
    except TimeoutError:
        raise X11SetupError(
            f"the X server did not answer QueryExtension within {timeout:g} s"
        ) from None
    except OSError as e:
        raise X11SetupError(f"the connection to the X server failed: {e.strerror or e}") from e
    finally:
        sock.settimeout(previous)
    found: dict[bytes, int | None] = {}
    for index, name in enumerate(wanted):
        kind, _, sequence, _, present, major = struct.unpack_from("<BBHIBB", received, 32 * index)
        if kind != 1 or sequence != index + 1:
            raise X11SetupError(
                f"the X server answered QueryExtension with a packet of type {kind} "
                f"(sequence {sequence}), not a reply"
            )
        found[name] = major if present else None
    return found
