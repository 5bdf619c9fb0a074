"""
A minimal client of the X SECURITY extension: issue and revoke untrusted cookies.

Strictly private. It speaks the wire protocol on a socket of its own (connection setup,
QueryExtension, SecurityQueryVersion, SecurityGenerateAuthorization, SecurityRevokeAuthorization),
so it works with whatever endpoint and cookie the locator and the Xauthority reader found,
including FamilyWild and IPv6 entries that python-xlib's own connection code cannot use.
"""

from __future__ import annotations

import logging
import struct
import time

import attrs

from ._display import Endpoint
from .exceptions import SecurityExtensionError


log = logging.getLogger("x11passthrough")

_QUERY_EXTENSION = 98
_GET_INPUT_FOCUS = 43
_SECURITY_QUERY_VERSION = 0
_SECURITY_GENERATE = 1
_SECURITY_REVOKE = 2
_TRUST_UNTRUSTED = 1
_MASK_TIMEOUT = 1 << 0
_MASK_TRUST_LEVEL = 1 << 1
_MIT_COOKIE = b"MIT-MAGIC-COOKIE-1"


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


@attrs.frozen
class UntrustedCookie:
    """An MIT-MAGIC-COOKIE-1 the X server issued for untrusted clients."""

    authid: int
    data: bytes = attrs.field(repr=False)


class SecurityClient:
    """
    A trusted connection to the X server that issues untrusted cookies and revokes them.

    Strictly private. Keep it open for as long as the cookies it issued are in use; closing it
    does not revoke them, :meth:`revoke` does.
    """

    def __init__(
        self, endpoint: Endpoint, auth_name: bytes, auth_data: bytes, *, timeout: float
    ) -> None:
        self._endpoint = endpoint
        self._timeout = timeout
        self._seq = 0
        try:
            self._sock = endpoint.connect(timeout)
        except OSError as e:
            raise SecurityExtensionError(
                f"cannot reach the X display at {endpoint} to ask for an untrusted cookie: {e}"
            ) from e
        try:
            self._sock.settimeout(timeout)
            self._setup(auth_name, auth_data)
            self._major = self._query_extension(b"SECURITY")
            self._query_version()
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._sock.close()

    def generate(self, *, timeout: int) -> UntrustedCookie:
        """
        Ask the server for a new untrusted MIT-MAGIC-COOKIE-1.

        Args:
            timeout: Seconds the server keeps the cookie after its last client disconnected
                (0: until revoked).
        """
        body = struct.pack("<HHI", len(_MIT_COOKIE), 0, _MASK_TIMEOUT | _MASK_TRUST_LEVEL)
        body += _pad(_MIT_COOKIE) + struct.pack("<II", timeout, _TRUST_UNTRUSTED)
        reply = self._request(self._major, _SECURITY_GENERATE, body, reply=True)
        authid, length = struct.unpack_from("<IH", reply, 8)
        data = reply[32 : 32 + length]
        if len(data) != length or length == 0:
            raise SecurityExtensionError("the X server sent a malformed untrusted cookie")
        return UntrustedCookie(authid, data)

    def revoke(self, cookie: UntrustedCookie) -> None:
        """Revoke a cookie: clients using it can no longer connect."""
        self._request(self._major, _SECURITY_REVOKE, struct.pack("<I", cookie.authid))
        # A round trip makes sure the server processed it (and reports an error if any).
        self._request(_GET_INPUT_FOCUS, 0, b"", reply=True)

    def _setup(self, name: bytes, data: bytes) -> None:
        msg = struct.pack("<BxHHHHxx", 0x6C, 11, 0, len(name), len(data))
        self._sock.sendall(msg + _pad(name) + _pad(data))
        head = self._recv(8)
        extra = self._recv(4 * struct.unpack_from("<H", head, 6)[0])
        if head[0] != 1:
            reason = extra[: head[1]].decode("ascii", "replace").strip()
            raise SecurityExtensionError(
                f"the X display at {self._endpoint} refused the connection used to ask for an "
                f"untrusted cookie: {reason or 'no reason given'}"
            )

    def _query_extension(self, name: bytes) -> int:
        body = struct.pack("<HH", len(name), 0) + _pad(name)
        reply = self._request(_QUERY_EXTENSION, 0, body, reply=True)
        if not reply[8]:
            raise SecurityExtensionError(
                f"the X server at {self._endpoint} lacks the SECURITY extension, so it cannot "
                "issue untrusted cookies; use auth='substitute' instead"
            )
        return reply[9]

    def _query_version(self) -> None:
        self._request(self._major, _SECURITY_QUERY_VERSION, struct.pack("<HH", 1, 0), reply=True)

    def _request(self, major: int, minor: int, body: bytes, *, reply: bool = False) -> bytes:
        length = 1 + len(body) // 4
        self._sock.sendall(struct.pack("<BBH", major, minor, length) + body)
        self._seq = (self._seq + 1) & 0xFFFF
        if not reply:
            return b""
        deadline = time.monotonic() + self._timeout
        while True:
            if time.monotonic() > deadline:
                raise SecurityExtensionError(f"the X server at {self._endpoint} did not answer")
            packet = self._recv(32)
            if packet[0] == 0:
                raise SecurityExtensionError(
                    f"the X server at {self._endpoint} answered a SECURITY request with X "
                    f"error {packet[1]} (request {major}.{minor})"
                )
            if packet[0] == 1:
                extra = self._recv(4 * struct.unpack_from("<I", packet, 4)[0])
                if struct.unpack_from("<H", packet, 2)[0] == self._seq:
                    return packet + extra
            # Events, and replies to requests that did not ask for one, are skipped.

    def _recv(self, size: int) -> bytes:
        chunks = []
        while size:
            try:
                chunk = self._sock.recv(size)
            except OSError as e:
                raise SecurityExtensionError(
                    f"lost the connection to the X server at {self._endpoint}: {e}"
                ) from e
            if not chunk:
                raise SecurityExtensionError(
                    f"the X server at {self._endpoint} closed the connection"
                )
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)
