"""Socket helpers of the relay: addresses for logs, careful closing, checks of listeners."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import socket

from .._validate import IPNetwork
from ..exceptions import RelayError


TCP_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6})


def allowed(client: socket.socket, address: object, allow: tuple[IPNetwork, ...]) -> bool:
    """Tell whether a TCP client's address is in one of the `allow` networks."""
    if client.family not in TCP_FAMILIES or not isinstance(address, tuple):
        return True
    try:
        ip = ipaddress.ip_address(address[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in allow)


def describe_address(sock: socket.socket, peer: object) -> str:
    if sock.family in TCP_FAMILIES and isinstance(peer, tuple):
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "a local client"


def close_socket(sock: socket.socket | None) -> None:
    """Close `sock`, first reading what already arrived, so the close sends FIN, not RST."""
    if sock is None or sock.fileno() < 0:
        return
    with contextlib.suppress(OSError):
        for _ in range(4):
            if not sock.recv(65536):
                break
    sock.close()


def check_listener(listener: socket.socket) -> socket.socket:
    if listener.fileno() < 0:
        raise RelayError(f"the relay listener {listener!r} is closed; pass an open socket")
    try:
        listening = listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as exc:
        raise RelayError(f"cannot inspect the relay listener {listener!r}: {exc}") from exc
    if listener.type != socket.SOCK_STREAM or not listening:
        raise RelayError(
            f"the relay listener {listener!r} is not a listening stream socket; "
            "bind it and call listen() first"
        )
    return listener


#: Send buffer the relay asks for on each of its UNIX sockets (to clients and to the display).
UNIX_SNDBUF = 1024 * 1024


def widen_send_buffer(sock: socket.socket) -> None:
    """
    Ask for a :data:`UNIX_SNDBUF` send buffer on a UNIX socket (capped at net.core.wmem_max).

    The sender's buffer bounds a UNIX stream: a larger one moves a large request or reply in
    one send, not one wake-up of the receiver per 208 KiB (measured in the design note).
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SNDBUF)


def open_pipe(size: int) -> tuple[int, int] | None:
    """Return a non-blocking pipe of about `size` bytes, or None if none can be made."""
    try:
        pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, size)
    return pipe_r, pipe_w


def local_name(sock: socket.socket) -> object:
    try:
        name = sock.getsockname()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return name or "?"
