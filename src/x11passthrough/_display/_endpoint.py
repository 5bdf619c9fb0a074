"""
Endpoints: the places an X server listens on (a UNIX socket, an abstract socket, TCP).

Import :class:`Endpoint` from :mod:`x11passthrough.display`.
"""

from __future__ import annotations

import socket

from typing import Literal

import attrs

from ..exceptions import DisplayError


#: What an :class:`Endpoint` is: a filesystem UNIX socket, a Linux abstract socket, or TCP.
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

    Raises:
        DisplayError: When the fields do not fit the kind (a ``tcp`` endpoint without a port,
            a ``unix`` one without a path ...).
    """

    kind: EndpointKind
    path: str | None = None
    host: str | None = None
    port: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.kind == "tcp":
            ok = (
                isinstance(self.host, str)
                and bool(self.host)
                and isinstance(self.port, int)
                and 0 < self.port <= 65535
                and self.path is None
            )
            need = "a host and a port from 1 to 65535, and no path"
        elif self.kind in {"unix", "abstract"}:
            ok = (
                isinstance(self.path, str)
                and bool(self.path)
                and "\0" not in self.path
                and self.host is None
                and self.port is None
            )
            need = "a path (without NUL bytes) and no host or port"
        else:
            ok, need = False, "a kind of 'unix', 'abstract' or 'tcp'"
        if not ok:
            raise DisplayError(f"invalid endpoint {self!r}: it needs {need}")

    @classmethod
    def unix(cls, path: str) -> Endpoint:
        """
        Return the endpoint of a filesystem UNIX socket.

        Args:
            path: The socket's path.

        Returns:
            The endpoint.
        """
        return cls(kind="unix", path=path)

    @classmethod
    def abstract(cls, path: str) -> Endpoint:
        r"""
        Return the endpoint of a Linux abstract socket named ``"\0" + path``.

        Args:
            path: The name without its leading NUL byte, e.g. ``/tmp/.X11-unix/X0``.

        Returns:
            The endpoint.
        """
        return cls(kind="abstract", path=path)

    @classmethod
    def tcp(cls, host: str, port: int) -> Endpoint:
        """
        Return a TCP endpoint.

        Args:
            host: The host name or address (IPv6 without brackets).
            port: The port.

        Returns:
            The endpoint.
        """
        return cls(kind="tcp", host=host, port=port)

    @property
    def address(self) -> str | tuple[str, int]:
        r"""
        The address to pass to :meth:`socket.socket.connect` or asyncio.

        A ``(host, port)`` tuple for TCP, the path for ``unix``, and ``"\0" + path`` for
        ``abstract``.
        """
        if self.kind == "tcp":
            return (str(self.host), int(self.port or 0))
        path = str(self.path)
        return "\0" + path if self.kind == "abstract" else path

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

        TCP sockets get ``TCP_NODELAY``. The socket is not inheritable (Python's default).

        Args:
            timeout: Seconds to wait for the connection (name resolution is not included).

        Returns:
            The connected socket, in blocking mode; the caller closes it.

        Raises:
            OSError: When the endpoint does not answer: ``ConnectionRefusedError``,
                ``FileNotFoundError``, ``PermissionError``, ``TimeoutError`` and so on.
        """
        address = self.address
        if isinstance(address, tuple):
            sock = socket.create_connection(address, timeout=timeout)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
        sock.settimeout(None)
        return sock
