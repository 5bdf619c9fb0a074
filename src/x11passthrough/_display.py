"""
Display names, endpoints and display-number reservations.

Strictly private: import the public names from :mod:`x11passthrough`.
"""

from __future__ import annotations

import socket

from typing import Literal

import attrs


EndpointKind = Literal["unix", "abstract", "tcp"]


@attrs.frozen(kw_only=True)
class Endpoint:
    """
    A place an X server listens on.

    Attributes:
        kind: ``"unix"`` (a filesystem socket), ``"abstract"`` (a Linux abstract socket) or
            ``"tcp"``.
        path: For ``unix`` and ``abstract``: the socket path (for ``abstract`` without the
            leading NUL byte, e.g. ``/tmp/.X11-unix/X0``).
        host: For ``tcp``: the host name or address.
        port: For ``tcp``: the port.
    """

    kind: EndpointKind
    path: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def unix(cls, path: str) -> Endpoint:
        """Return the endpoint of a filesystem UNIX socket."""
        return cls(kind="unix", path=path)

    @classmethod
    def abstract(cls, path: str) -> Endpoint:
        """Return the endpoint of a Linux abstract socket named ``"\\0" + path``."""
        return cls(kind="abstract", path=path)

    @classmethod
    def tcp(cls, host: str, port: int) -> Endpoint:
        """Return a TCP endpoint."""
        return cls(kind="tcp", host=host, port=port)

    def __str__(self) -> str:
        if self.kind == "tcp":
            host = f"[{self.host}]" if self.host and ":" in self.host else self.host
            return f"tcp:{host}:{self.port}"
        if self.kind == "abstract":
            return f"abstract:@{self.path}"
        return f"unix:{self.path}"

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """
        Open a connected, blocking socket to this endpoint within `timeout` seconds.

        TCP sockets get ``TCP_NODELAY``. Raises :class:`OSError` (``TimeoutError`` on timeout)
        when the endpoint does not answer.
        """
        if self.kind == "tcp":
            assert self.host is not None
            assert self.port is not None
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            assert self.path is not None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(self.path if self.kind == "unix" else "\0" + self.path)
            except BaseException:
                sock.close()
                raise
        sock.settimeout(None)
        return sock
