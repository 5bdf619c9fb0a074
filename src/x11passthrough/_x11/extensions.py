"""
What extensions an X server offers a connection: names, major opcodes, the request maximum.

The request filter (:mod:`.requests`) forwards an extension request only when
its major belongs to an extension the server reported, so the relay learns them on a
connection of its own, authenticated as its clients are (the real cookie, or the untrusted
one: the server shows untrusted clients fewer extensions). One exchange, pipelined:
``ListExtensions``, a ``QueryExtension`` per name, then ``BigReqEnable`` (whose reply carries
the longest request the server parses, and proves the server grants the enable to such a
client). About 1 ms on a local Xvfb with 30 extensions.
"""

from __future__ import annotations

import socket
import struct
import time

from collections.abc import Mapping

import attrs

from .._validate import shown
from ..exceptions import X11SetupError
from .requests import (
    BIG_REQUESTS,
    GRAB_SERVER,
    HIDDEN_EXTENSIONS,
    HIDDEN_REQUESTS,
    LIST_EXTENSIONS,
    MIT_SHM,
    QUERY_EXTENSION,
    REEXECUTED,
    REEXECUTED_MINORS,
    Hidden,
)


_REPLY = 1
_ERROR = 0
_GENERIC_EVENT = 35


@attrs.frozen(kw_only=True)
class ServerExtensions:
    """
    The extensions one server offers one kind of client.

    Attributes:
        majors: Each extension name the server listed, with its major opcode.
        max_request: The longest request in 4-byte words once BIG-REQUESTS is enabled, or 0
            when the server has no BIG-REQUESTS or refused its enable.
    """

    majors: Mapping[bytes, int]
    max_request: int

    def hidden(self, refused: Mapping[bytes, str] | None = None) -> Hidden:
        """
        Return what the relay keeps from clients of this server.

        Args:
            refused: Extensions the server refuses these clients (to name in the log), with
                why; the hidden ones are added.
        """
        hidden = {n: m for n, m in self.majors.items() if n in HIDDEN_EXTENSIONS}
        reasons = {n: f"the relay hides it: {why}" for n, why in HIDDEN_EXTENSIONS.items()}
        big = self.majors.get(BIG_REQUESTS)
        return Hidden(
            names=frozenset(HIDDEN_EXTENSIONS),
            majors=frozenset(hidden.values()),
            big_requests=big,
            extensions=frozenset(self.majors.values()),
            max_request=self.max_request if big is not None else 0,
            refused={**(refused or {}), **reasons},
            minors={m: HIDDEN_REQUESTS[n] for n, m in self.majors.items() if n in HIDDEN_REQUESTS},
            reexecuted=frozenset(
                {GRAB_SERVER, *(m for n, m in self.majors.items() if n in REEXECUTED)}
            ),
            reexecuted_minors={
                m: REEXECUTED_MINORS[n] for n, m in self.majors.items() if n in REEXECUTED_MINORS
            },
            shm=self.majors.get(MIT_SHM),
        )


def learn_extensions(sock: socket.socket, *, timeout: float) -> ServerExtensions:
    """
    Ask the server on `sock` which extensions it offers, and its longest request.

    Args:
        sock: A connection past a successful little-endian setup, with nothing sent since.
            It is left with BIG-REQUESTS enabled: send nothing more on it.
        timeout: Seconds for the whole exchange.

    Raises:
        X11SetupError: The server closed the connection, did not answer in time, or answered
            with something unexpected.
    """
    reader = _Reader(sock, timeout)
    try:
        sock.sendall(struct.pack("<BxH", LIST_EXTENSIONS, 1))
        head, body = reader.packet()
        if head[0] != _REPLY:
            raise X11SetupError(f"the X server answered ListExtensions with a packet {head[0]}")
        names: list[bytes] = []
        at = 0
        for _ in range(head[1]):
            length = body[at]
            names.append(bytes(body[at + 1 : at + 1 + length]))
            at += 1 + length
        sock.sendall(b"".join(_query(name) for name in names))
        majors: dict[bytes, int] = {}
        for name in names:
            head, _ = reader.packet()
            if head[0] != _REPLY:
                raise X11SetupError(
                    f"the X server answered QueryExtension({shown(name)}) with a packet {head[0]}"
                )
            if head[8]:
                majors[name] = head[9]
        max_request = 0
        big = majors.get(BIG_REQUESTS)
        if big is not None:
            sock.sendall(struct.pack("<BBH", big, 0, 1))
            head, _ = reader.packet()
            if head[0] == _REPLY:
                (max_request,) = struct.unpack_from("<I", head, 8)
    except TimeoutError:
        raise X11SetupError(
            f"the X server did not list its extensions within {timeout:g} s"
        ) from None
    except OSError as e:
        raise X11SetupError(f"the connection to the X server failed: {e.strerror or e}") from e
    finally:
        reader.close()
    return ServerExtensions(majors=majors, max_request=max_request)


def _query(name: bytes) -> bytes:
    return (
        struct.pack("<BxHHxx", QUERY_EXTENSION, 2 + (len(name) + 3) // 4, len(name))
        + name
        + b"\0" * (-len(name) % 4)
    )


class _Reader:
    """Read whole replies and errors from a socket, within one deadline."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._deadline = time.monotonic() + timeout
        self._previous = sock.gettimeout()
        self._buffer = bytearray()

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(65536)
            if not chunk:
                raise X11SetupError("the X server closed the connection after its setup")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def packet(self) -> tuple[bytes, bytes]:
        """Return the next reply or error (events are skipped): its 32 bytes and the rest."""
        while True:
            head = self._exactly(32)
            if head[0] == _REPLY:
                (extra,) = struct.unpack_from("<I", head, 4)
                return head, self._exactly(4 * extra)
            if head[0] == _ERROR:
                return head, b""
            if head[0] & 0x7F == _GENERIC_EVENT:
                (extra,) = struct.unpack_from("<I", head, 4)
                self._exactly(4 * extra)

    def close(self) -> None:
        self._sock.settimeout(self._previous)
